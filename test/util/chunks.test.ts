import { test } from 'node:test';
import assert from 'node:assert/strict';
import { UsageError } from '../../src/errors.js';
import { CHUNK_SIZE_LIMIT, DEFAULT_CHUNK_SIZE, checkChunkSize, chunkCount, chunkLength } from '../../src/util/chunks.js';

test('DEFAULT_CHUNK_SIZE is 64 KiB and within the limit', () => {
  assert.equal(DEFAULT_CHUNK_SIZE, 64 * 1024);
  assert.equal(checkChunkSize(DEFAULT_CHUNK_SIZE, 'chunk-size'), DEFAULT_CHUNK_SIZE);
});

test('chunkCount and chunkLength: the last chunk may be short', () => {
  assert.equal(chunkCount(0, 4096), 0);
  assert.equal(chunkCount(10_000, 4096), 3);
  assert.equal(chunkLength(8192, 10_000, 4096), 10_000 - 8192);
  assert.equal(chunkLength(0, 10_000, 4096), 4096);
});

test('checkChunkSize returns a whole number of bytes from 1 to the limit', () => {
  assert.equal(checkChunkSize(1, 'x'), 1);
  assert.equal(checkChunkSize(CHUNK_SIZE_LIMIT, 'x'), CHUNK_SIZE_LIMIT);
  assert.equal(checkChunkSize(32 * 1024 * 1024, 'x', 32 * 1024 * 1024), 32 * 1024 * 1024);
});

for (const bad of [0, -1, 1.5, Number.NaN, Number.POSITIVE_INFINITY, CHUNK_SIZE_LIMIT + 1]) {
  test(`checkChunkSize rejects ${bad} with a UsageError naming what was checked`, () => {
    assert.throws(
      () => checkChunkSize(bad, 'chunk-size'),
      (err: unknown) => err instanceof UsageError && /^chunk-size must be a whole number of bytes from 1 to 1 GiB, got /.test(err.message),
    );
  });
}

test('checkChunkSize honours a smaller limit and names it exactly', () => {
  assert.throws(() => checkChunkSize(32 * 1024 * 1024 + 1, 'chunkSize', 32 * 1024 * 1024), /from 1 to 32 MiB, got 33554433/);
  assert.throws(() => checkChunkSize(2 ** 31, 'chunkSize', 2 ** 31 - 1), /from 1 to 2147483647 bytes, got 2147483648/);
});
