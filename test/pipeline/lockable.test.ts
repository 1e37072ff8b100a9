import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { LockableReadWriterAt } from '../../src/pipeline/lockable.js';
import type { ReadWriterAt } from '../../src/pipeline/types.js';
import { MemoryStore } from '../support/memory-store.js';

function setup() {
  const store = new MemoryStore(64);
  return { store, lockable: new LockableReadWriterAt(store) };
}

describe('LockableReadWriterAt', () => {
  it('passes calls straight through while unlocked', () => {
    const promise = Promise.resolve();
    const next: ReadWriterAt = { readAt: () => promise, writeAt: () => promise };
    const lockable = new LockableReadWriterAt(next);
    assert.equal(lockable.locked, false);
    assert.equal(lockable.readAt(Buffer.alloc(1), 0), promise);
    assert.equal(lockable.writeAt(Buffer.alloc(1), 0), promise);
  });

  it('blocks reads and writes while locked and lets them through on unlock', async () => {
    const { store, lockable } = setup();
    lockable.lock();
    assert.equal(lockable.locked, true);
    let done = false;
    const calls = Promise.all([lockable.writeAt(Buffer.alloc(4, 3), 0), lockable.readAt(Buffer.alloc(4), 8)]).then(() => {
      done = true;
    });
    for (let i = 0; i < 5; i++) await nextTurn();
    assert.equal(store.calls.length, 0, 'nothing reached next while locked');
    assert.equal(done, false);
    lockable.unlock();
    assert.equal(lockable.locked, false);
    await calls;
    assert.equal(done, true);
    assert.deepEqual(store.peek(0, 4), Buffer.alloc(4, 3));
  });

  it('lets waiting calls through in the order they arrived, before any later call', async () => {
    const { store, lockable } = setup();
    lockable.lock();
    const waiting = [0, 8, 16, 24].map((off, i) =>
      i % 2 === 0 ? lockable.readAt(Buffer.alloc(4), off) : lockable.writeAt(Buffer.alloc(4), off));
    lockable.unlock();
    const later = lockable.readAt(Buffer.alloc(4), 32);
    await Promise.all([...waiting, later]);
    assert.deepEqual(store.calls, ['read 0+4', 'write 8+4', 'read 16+4', 'write 24+4', 'read 32+4']);
  });

  it('does not hold back a call already in flight when locked', async () => {
    const { store, lockable } = setup();
    const release = store.hold('read');
    const inFlight = lockable.readAt(Buffer.alloc(4), 0);
    lockable.lock();
    release();
    await inFlight; // would never settle if lock() held it back: the test would time out
    assert.equal(lockable.locked, true);
    lockable.unlock();
  });

  it('blocks again after a relock', async () => {
    const { store, lockable } = setup();
    lockable.lock();
    lockable.unlock();
    await lockable.readAt(Buffer.alloc(4), 0);
    lockable.lock();
    lockable.lock(); // idempotent
    const blocked = lockable.readAt(Buffer.alloc(4), 4);
    for (let i = 0; i < 5; i++) await nextTurn();
    assert.deepEqual(store.calls, ['read 0+4']);
    lockable.unlock();
    await blocked;
    assert.deepEqual(store.calls, ['read 0+4', 'read 4+4']);
  });

  it("passes a waiting call's error back to its caller", async () => {
    const { store, lockable } = setup();
    lockable.lock();
    const boom = new Error('broken');
    store.failNext('write', boom);
    const write = lockable.writeAt(Buffer.alloc(4), 0);
    lockable.unlock();
    await assert.rejects(write, (err) => err === boom);
  });
});
