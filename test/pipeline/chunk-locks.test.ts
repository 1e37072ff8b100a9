import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { ChunkLocks } from '../../src/pipeline/chunk-locks.js';

describe('ChunkLocks', () => {
  it('gives an uncontended lock at once and frees it on release', async () => {
    const locks = new ChunkLocks(4);
    const release = await locks.acquire(2);
    assert.equal(locks.isHeld(2), true);
    assert.equal(locks.isHeld(1), false);
    release();
    assert.equal(locks.isHeld(2), false);
  });

  it('makes a second acquirer of one chunk wait until the holder releases', async () => {
    const locks = new ChunkLocks(1);
    const release = await locks.acquire(0);
    let got = false;
    const second = locks.acquire(0).then((r) => {
      got = true;
      return r;
    });
    await nextTurn();
    assert.equal(got, false);
    release();
    const release2 = await second;
    assert.equal(got, true);
    assert.equal(locks.isHeld(0), true, 'the lock is handed over, not freed');
    release2();
    assert.equal(locks.isHeld(0), false);
  });

  it('hands the lock to waiters in the order they asked', async () => {
    const locks = new ChunkLocks(1);
    const order: number[] = [];
    const first = await locks.acquire(0);
    const waiters = [1, 2, 3, 4].map((n) => locks.run(0, async () => {
      order.push(n);
      await nextTurn();
    }));
    first();
    await Promise.all(waiters);
    assert.deepEqual(order, [1, 2, 3, 4]);
    assert.equal(locks.isHeld(0), false);
  });

  it('lets different chunks be held at the same time', async () => {
    const locks = new ChunkLocks(3);
    const a = await locks.acquire(0);
    const b = await locks.acquire(1);
    assert.equal(locks.isHeld(0) && locks.isHeld(1), true);
    a();
    b();
  });

  it('ignores a second release of the same hold', async () => {
    const locks = new ChunkLocks(1);
    const release = await locks.acquire(0);
    const next = locks.acquire(0);
    release();
    const release2 = await next;
    release(); // must not free the lock the waiter now holds
    assert.equal(locks.isHeld(0), true);
    release2();
    assert.equal(locks.isHeld(0), false);
  });

  it('releases the lock when the function given to run() throws', async () => {
    const locks = new ChunkLocks(1);
    await assert.rejects(locks.run(0, async () => {
      throw new Error('boom');
    }), /boom/);
    assert.equal(locks.isHeld(0), false);
    assert.equal(await locks.run(0, async () => 7), 7);
  });
});
