import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { UsageError } from '../../src/errors.js';
import { hotRangesPriority, parseHotRanges } from '../../src/mount/hot-ranges.js';
import { pullOrder } from '../../src/pipeline/pull-priority.js';

const KiB = 1024;

describe('parseHotRanges', () => {
  it('reads "<offset> <length>" lines with units, skipping comments and blank lines', () => {
    const text = '# boot\n0 1MiB\n\n  512MiB   64KiB  # a hot file\n4096 1\n';
    assert.deepEqual(parseHotRanges(text), [
      { offset: 0, length: 1024 * KiB, line: 2 },
      { offset: 512 * 1024 * KiB, length: 64 * KiB, line: 4 },
      { offset: 4096, length: 1, line: 5 },
    ]);
  });

  const bad: Array<{ name: string; text: string; message: RegExp }> = [
    { name: 'one field', text: '4096\n', message: /ranges.txt:1: expected "<offset> <length>"/ },
    { name: 'three fields', text: '0 1 2\n', message: /expected "<offset> <length>"/ },
    { name: 'a zero length', text: '\n0 0\n', message: /ranges.txt:2: the length must be > 0/ },
    { name: 'a bad size', text: '0 lots\n', message: /ranges.txt:1: length: cannot parse 'lots'/ },
  ];
  for (const c of bad) {
    it(`${c.name} is a UsageError naming the file and line`, () => {
      assert.throws(() => parseHotRanges(c.text, 'ranges.txt'), (err: Error) => err instanceof UsageError && c.message.test(err.message));
    });
  }
});

describe('hotRangesPriority', () => {
  const cases: Array<{ name: string; text: string; chunks: number; order: number[] }> = [
    { name: 'listed ranges come first, in the listed order, then the rest ascending', text: '8192 8192\n0 1\n', chunks: 6, order: [2, 3, 0, 1, 4, 5] },
    { name: 'a chunk in two lines goes with the first', text: '4096 8192\n0 8192\n', chunks: 4, order: [1, 2, 0, 3] },
    { name: 'a range running past the end is cut there', text: '12288 1MiB\n', chunks: 4, order: [3, 0, 1, 2] },
    { name: 'an unaligned range takes every chunk it touches', text: '4095 2\n', chunks: 3, order: [0, 1, 2] },
    { name: 'no ranges: ascending', text: '# nothing\n', chunks: 3, order: [0, 1, 2] },
  ];
  for (const c of cases) {
    it(c.name, () => {
      const priority = hotRangesPriority(parseHotRanges(c.text), 4096);
      assert.deepEqual([...pullOrder(c.chunks, priority)], c.order);
    });
  }

  it('a range that starts past the end is a UsageError naming its line', () => {
    const priority = hotRangesPriority(parseHotRanges('0 1\n1GiB 1\n', 'hot.txt'), 4096, 'hot.txt');
    assert.throws(() => pullOrder(4, priority), (err: Error) => err instanceof UsageError && /hot.txt:2/.test(err.message));
  });
});
