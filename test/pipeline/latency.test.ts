import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { LatencyBackend, LatencyReadWriterAt } from '../../src/pipeline/latency.js';
import type { Backend, ReadWriterAt } from '../../src/pipeline/types.js';
import { MemoryStore } from '../support/memory-store.js';

/** Lets pending promise callbacks and immediates run. */
async function settle(): Promise<void> {
  for (let i = 0; i < 5; i++) await nextTurn();
}

describe('LatencyReadWriterAt', () => {
  it('passes calls straight through with 0 latency (the default)', () => {
    const promise = Promise.resolve();
    const next: ReadWriterAt = { readAt: () => promise, writeAt: () => promise };
    const rw = new LatencyReadWriterAt(next);
    assert.equal(rw.readAt(Buffer.alloc(1), 0), promise);
    assert.equal(rw.writeAt(Buffer.alloc(1), 0), promise);
  });

  const cases = [
    { name: 'reads', options: { readLatencyMs: 50 }, op: 'read' as const },
    { name: 'writes', options: { writeLatencyMs: 50 }, op: 'write' as const },
  ];
  for (const c of cases) {
    it(`holds ${c.name} back for the configured delay, all concurrent calls for one delay`, async (t) => {
      t.mock.timers.enable({ apis: ['setTimeout'] });
      const store = new MemoryStore(64);
      const rw = new LatencyReadWriterAt(store, c.options);
      const calls = [0, 8, 16].map((off) =>
        c.op === 'read' ? rw.readAt(Buffer.alloc(8), off) : rw.writeAt(Buffer.alloc(8, 1), off));
      await settle();
      assert.equal(store.calls.length, 0, 'nothing reached next before the delay');
      t.mock.timers.tick(49);
      await settle();
      assert.equal(store.calls.length, 0);
      t.mock.timers.tick(1);
      await Promise.all(calls);
      assert.equal(store.calls.length, 3);
    });
  }

  it('adds no delay to the other kind of call', async (t) => {
    t.mock.timers.enable({ apis: ['setTimeout'] });
    const store = new MemoryStore(64);
    const rw = new LatencyReadWriterAt(store, { readLatencyMs: 50 });
    await rw.writeAt(Buffer.alloc(4, 2), 0); // settles without any tick
    assert.deepEqual(store.peek(0, 4), Buffer.alloc(4, 2));
  });

  it('refuses a negative or non-finite latency with a usage error', () => {
    for (const bad of [{ readLatencyMs: -1 }, { writeLatencyMs: Number.NaN }, { readLatencyMs: Infinity }]) {
      assert.throws(() => new LatencyReadWriterAt(new MemoryStore(8), bad), { code: 'ERR_USAGE' });
    }
  });
});

describe('LatencyBackend', () => {
  it('keeps the size, capabilities and close of the backend it wraps and delays sync', async (t) => {
    t.mock.timers.enable({ apis: ['setTimeout'] });
    const store = new MemoryStore(64);
    const backend = new LatencyBackend(store, { writeLatencyMs: 10 });
    assert.equal(backend.size, 64);
    assert.equal(backend.trim, undefined, 'no trim when the backend has none');
    let synced = false;
    const sync = backend.sync().then(() => (synced = true));
    await settle();
    assert.equal(synced, false);
    t.mock.timers.tick(10);
    await sync;
    await backend.close();
    await assert.rejects(store.sync(), { code: 'ERR_CLOSED' });
  });

  it('forwards trim and zero when the backend has them', async () => {
    const seen: string[] = [];
    const done = Promise.resolve();
    const withTrim: Backend = {
      size: 64,
      readAt: () => done,
      writeAt: () => done,
      sync: () => done,
      close: () => done,
      trim: async (off, length) => void seen.push(`trim ${off}+${length}`),
      zero: async (off, length) => void seen.push(`zero ${off}+${length}`),
    };
    const backend = new LatencyBackend(withTrim);
    await backend.trim?.(0, 8);
    await backend.zero?.(8, 8);
    assert.deepEqual(seen, ['trim 0+8', 'zero 8+8']);
  });
});
