import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { BufferPool } from '../../src/pipeline/buffer-pool.js';

describe('BufferPool', () => {
  it('hands out zero-filled buffers of exactly the size asked for', () => {
    const pool = new BufferPool();
    for (const size of [1, 16, 4096, 4097]) {
      const buf = pool.take(size);
      assert.equal(buf.length, size);
      assert.ok(buf.every((b) => b === 0));
    }
  });

  it('reuses a buffer that was given back, zero-filled again', () => {
    const pool = new BufferPool();
    const buf = pool.take(64);
    buf.fill(0xab);
    pool.give(buf);
    assert.equal(pool.available(64), 1);
    const again = pool.take(64);
    assert.equal(again, buf, 'the same buffer comes back');
    assert.ok(again.every((b) => b === 0), 'with no old contents');
    assert.equal(pool.available(64), 0);
  });

  it('keeps sizes apart', () => {
    const pool = new BufferPool();
    pool.give(pool.take(64));
    assert.equal(pool.available(64), 1);
    assert.equal(pool.take(63).length, 63);
    assert.equal(pool.available(64), 1);
  });

  it('keeps at most maxPerSize free buffers per size, and none with 0', () => {
    const cases = [
      { maxPerSize: 2, given: 5, kept: 2 },
      { maxPerSize: 0, given: 3, kept: 0 },
    ];
    for (const { maxPerSize, given, kept } of cases) {
      const pool = new BufferPool({ maxPerSize });
      const bufs = Array.from({ length: given }, () => pool.take(8));
      for (const b of bufs) pool.give(b);
      assert.equal(pool.available(8), kept, `maxPerSize ${maxPerSize}`);
    }
  });

  it('refuses a buffer given back twice', () => {
    const pool = new BufferPool();
    const buf = pool.take(8);
    pool.give(buf);
    assert.throws(() => pool.give(buf), Error);
  });

  it('rejects a negative or fractional maxPerSize with a usage error', () => {
    for (const maxPerSize of [-1, 1.5, Number.NaN]) {
      assert.throws(() => new BufferPool({ maxPerSize }), { code: 'ERR_USAGE' });
    }
  });
});
