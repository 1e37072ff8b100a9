import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { PayloadPool } from '../../src/nbd/payload-pool.js';

describe('PayloadPool', () => {
  test('rounds up to a power-of-two class and reuses released buffers', () => {
    const pool = new PayloadPool({ maxRetainedBytes: 1 << 20 });
    const a = pool.acquire(5000);
    assert.equal(a.length, 8192);
    pool.release(a);
    assert.equal(pool.retainedBytes, 8192);
    assert.equal(pool.acquire(8192), a);
    assert.equal(pool.retainedBytes, 0);
  });

  test('hands out exact small buffers and never keeps them', () => {
    const pool = new PayloadPool({ maxRetainedBytes: 1 << 20 });
    const small = pool.acquire(100);
    assert.equal(small.length, 100);
    pool.release(small);
    assert.equal(pool.retainedBytes, 0);
  });

  test('keeps no more than maxRetainedBytes', () => {
    const pool = new PayloadPool({ maxRetainedBytes: 3 * 65536 });
    const bufs = Array.from({ length: 5 }, () => pool.acquire(65536));
    for (const buf of bufs) pool.release(buf);
    assert.equal(pool.retainedBytes, 3 * 65536);
  });

  test('ignores views and buffers that are not a class size', () => {
    const pool = new PayloadPool({ maxRetainedBytes: 1 << 20 });
    pool.release(Buffer.alloc(5000));
    pool.release(Buffer.alloc(16384).subarray(4096, 8192));
    assert.equal(pool.retainedBytes, 0);
  });

  test('a pool that keeps nothing still allocates', () => {
    const pool = new PayloadPool({ maxRetainedBytes: 0 });
    const buf = pool.acquire(4096);
    pool.release(buf);
    assert.equal(pool.retainedBytes, 0);
    assert.notEqual(pool.acquire(4096), buf);
  });
});
