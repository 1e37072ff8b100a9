import { test } from 'node:test';
import assert from 'node:assert/strict';
import { formatSize, parseDurationMs, parseSize } from '../../src/util/size.js';

const sizes: Array<[string, number]> = [
  ['4096', 4096],
  ['64KiB', 64 * 1024],
  ['64k', 64 * 1024],
  ['1GiB', 2 ** 30],
  ['1G', 2 ** 30],
  ['1GB', 1e9],
  ['512MiB', 512 * 2 ** 20],
  ['1.5KiB', 1536],
  ['2TiB', 2 * 2 ** 40],
];
for (const [text, bytes] of sizes) {
  test(`parseSize reads ${text} as ${bytes} bytes`, () => assert.equal(parseSize(text), bytes));
}

for (const bad of ['', 'abc', '1XB', '-1', '1.3B', '1 0']) {
  test(`parseSize rejects '${bad}' with a usage error`, () => {
    assert.throws(() => parseSize(bad, '--size'), { code: 'ERR_USAGE' });
  });
}

test('parseDurationMs reads ms, s, m and bare numbers', () => {
  assert.equal(parseDurationMs('250ms'), 250);
  assert.equal(parseDurationMs('5s'), 5000);
  assert.equal(parseDurationMs('2m'), 120_000);
  assert.equal(parseDurationMs('10'), 10);
  assert.throws(() => parseDurationMs('soon'), { code: 'ERR_USAGE' });
});

test('formatSize prints binary units', () => {
  assert.equal(formatSize(1536), '1.5 KiB');
  assert.equal(formatSize(2 ** 30), '1 GiB');
  assert.equal(formatSize(12), '12 B');
});
