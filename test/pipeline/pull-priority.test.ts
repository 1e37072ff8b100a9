import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { isR3mapError, UsageError } from '../../src/errors.js';
import {
  ascending, descending, firstAndLast, pullOrder, pullPriorityByName, pullPriorityNames, type PullPriority,
} from '../../src/pipeline/pull-priority.js';

describe('pull priorities', () => {
  const cases: Array<{ name: string; priority: PullPriority; chunks: number; order: number[] }> = [
    { name: 'ascending pulls the first chunk first', priority: ascending, chunks: 5, order: [0, 1, 2, 3, 4] },
    { name: 'descending pulls the last chunk first', priority: descending, chunks: 5, order: [4, 3, 2, 1, 0] },
    { name: 'first-and-last pulls both ends first, then the rest ascending', priority: firstAndLast, chunks: 6, order: [0, 5, 1, 2, 3, 4] },
    { name: 'first-and-last with one chunk pulls it', priority: firstAndLast, chunks: 1, order: [0] },
    { name: 'first-and-last with two chunks pulls both in order', priority: firstAndLast, chunks: 2, order: [0, 1] },
    { name: 'equal priorities keep index order', priority: (i) => (i % 2 === 0 ? 1 : 0), chunks: 7, order: [0, 2, 4, 6, 1, 3, 5] },
    { name: 'a custom priority may use fractions and negatives', priority: (i) => -Math.abs(i - 2.5), chunks: 6, order: [2, 3, 1, 4, 0, 5] },
    { name: 'infinite priorities sort to the ends', priority: (i) => (i === 3 ? Infinity : i === 0 ? -Infinity : 0), chunks: 4, order: [3, 1, 2, 0] },
    { name: 'no chunks gives an empty order', priority: ascending, chunks: 0, order: [] },
  ];
  for (const c of cases) {
    it(c.name, () => {
      assert.deepEqual([...pullOrder(c.chunks, c.priority)], c.order);
    });
  }

  it('is passed the chunk index and the number of chunks', () => {
    const seen: Array<[number, number]> = [];
    pullOrder(3, (i, n) => (seen.push([i, n]), 0));
    assert.deepEqual(seen, [[0, 3], [1, 3], [2, 3]]);
  });

  it('rejects a priority that returns NaN with a UsageError', () => {
    assert.throws(() => pullOrder(3, () => NaN), UsageError);
  });
});

describe('pullPriorityByName', () => {
  for (const [name, priority] of [['ascending', ascending], ['descending', descending], ['first-and-last', firstAndLast]] as const) {
    it(`finds ${name}`, () => {
      assert.equal(pullPriorityByName(name), priority);
    });
  }

  it('lists every name', () => {
    assert.deepEqual([...pullPriorityNames], ['ascending', 'descending', 'first-and-last']);
  });

  it('throws a UsageError that lists the valid names for an unknown name', () => {
    assert.throws(
      () => pullPriorityByName('random'),
      (err: unknown) => isR3mapError(err, 'ERR_USAGE') && pullPriorityNames.every((n) => err.message.includes(n)),
    );
  });

  it('does not accept inherited object keys as names', () => {
    assert.throws(() => pullPriorityByName('toString'), UsageError);
  });
});
