import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { ChunkTable } from '../../src/pipeline/chunk-table.js';
import { TrackingReadWriterAt } from '../../src/pipeline/tracking.js';
import { MemoryStore } from '../support/memory-store.js';

const chunkSize = 4;

/** The chunks written since the previous call (the usual round: since = the epoch it covered). */
function nextRound(tracking: TrackingReadWriterAt): number[] {
  return tracking.dirtySince(tracking.epoch - 1).offsets;
}

function setup() {
  const store = new MemoryStore(8 * chunkSize + 2);
  return { store, tracking: new TrackingReadWriterAt(store, { chunkSize }) };
}

interface Case {
  readonly name: string;
  readonly writes: ReadonlyArray<readonly [off: number, length: number]>;
  readonly dirty: readonly number[];
}

const cases: readonly Case[] = [
  { name: 'records one aligned chunk write', writes: [[8, 4]], dirty: [8] },
  { name: 'records the same offset written twice once', writes: [[8, 4], [8, 4]], dirty: [8] },
  { name: 'records every chunk a write covers', writes: [[2, 10]], dirty: [0, 4, 8] },
  { name: 'records the chunk holding an unaligned write', writes: [[9, 1]], dirty: [8] },
  { name: 'records the short last chunk', writes: [[32, 2]], dirty: [32] },
  { name: 'returns offsets sorted whatever the write order', writes: [[20, 4], [0, 1], [13, 2]], dirty: [0, 12, 20] },
];

describe('TrackingReadWriterAt', () => {
  for (const c of cases) {
    it(c.name, async () => {
      const { tracking } = setup();
      tracking.track();
      for (const [off, length] of c.writes) await tracking.writeAt(Buffer.alloc(length, 1), off);
      assert.deepEqual(nextRound(tracking), c.dirty);
    });
  }

  it('records nothing before track() is called', async () => {
    const { store, tracking } = setup();
    assert.equal(tracking.tracking, false);
    await tracking.writeAt(Buffer.alloc(4, 1), 0);
    assert.deepEqual(store.peek(0, 4), Buffer.alloc(4, 1), 'the write still lands');
    tracking.track();
    assert.equal(tracking.tracking, true);
    assert.deepEqual(nextRound(tracking), []);
  });

  it('writing and syncing twice only returns the second delta', async () => {
    const { tracking } = setup();
    tracking.track();
    await tracking.writeAt(Buffer.alloc(4, 1), 0);
    assert.deepEqual(nextRound(tracking), [0]);
    await tracking.writeAt(Buffer.alloc(4, 2), 4);
    assert.deepEqual(nextRound(tracking), [4]);
    assert.equal(tracking.tracking, true, 'sync leaves tracking on');
  });

  it('does not record reads', async () => {
    const { tracking } = setup();
    tracking.track();
    await tracking.readAt(Buffer.alloc(8), 0);
    assert.deepEqual(nextRound(tracking), []);
  });

  it('does not record a write that failed', async () => {
    const { store, tracking } = setup();
    tracking.track();
    const boom = new Error('no space');
    store.failNext('write', boom);
    await assert.rejects(tracking.writeAt(Buffer.alloc(4), 4), (err) => err === boom);
    assert.deepEqual(nextRound(tracking), []);
  });

  it('records a write only once it has landed, including one in flight when track() is called', async () => {
    const { store, tracking } = setup();
    const release = store.hold('write');
    const write = tracking.writeAt(Buffer.alloc(4, 1), 12);
    await nextTurn();
    tracking.track();
    assert.deepEqual(nextRound(tracking), [], 'not recorded before it lands');
    release();
    await write;
    assert.deepEqual(nextRound(tracking), [12]);
  });

  it('refuses a chunk size that is not a whole number of bytes above 0', () => {
    for (const bad of [0, -1, 2.5]) {
      assert.throws(() => new TrackingReadWriterAt(new MemoryStore(8), { chunkSize: bad }), { code: 'ERR_USAGE' });
    }
  });

  it('keeps its epochs in the tracked column of the table it is given', async () => {
    const store = new MemoryStore(8 * chunkSize);
    const table = new ChunkTable({ chunkSize, size: 8 * chunkSize });
    const tracking = new TrackingReadWriterAt(store, { chunkSize, table });
    tracking.track();
    await tracking.writeAt(Buffer.alloc(6), 3);
    assert.deepEqual([...table.tracked], [1, 1, 1, 0, 0, 0, 0, 0]);
    assert.deepEqual(tracking.dirtySince(0), { offsets: [0, 4, 8], epoch: 1 });
    await tracking.writeAt(Buffer.alloc(1), 20);
    assert.deepEqual([...table.tracked], [1, 1, 1, 0, 0, 2, 0, 0], 'nothing is cleared; the new write has epoch 2');
    assert.throws(() => new TrackingReadWriterAt(store, { chunkSize: 8, table }), /tracking: the chunk table/);
  });

  it('answers any earlier epoch with every chunk written after it (a leecher that lost replies asks again)', async () => {
    const { tracking } = setup();
    tracking.track();
    await tracking.writeAt(Buffer.alloc(1), 0);
    assert.deepEqual(tracking.dirtySince(0), { offsets: [0], epoch: 1 });
    await tracking.writeAt(Buffer.alloc(1), 8);
    assert.deepEqual(tracking.dirtySince(1), { offsets: [8], epoch: 2 });
    await tracking.writeAt(Buffer.alloc(1), 16);
    await tracking.writeAt(Buffer.alloc(1), 0);
    assert.deepEqual(tracking.dirtySince(1), { offsets: [0, 8, 16], epoch: 3 }, 'since 1: a superset, by scanning');
    assert.deepEqual(tracking.dirtySince(0).offsets, [0, 8, 16]);
    assert.deepEqual(tracking.dirtySince(4), { offsets: [], epoch: 5 }, 'the fast path after a scan');
  });

  it('refuses an epoch it has not reached (state from another migration)', () => {
    const { tracking } = setup();
    tracking.track();
    for (const bad of [1, 7, -1, 0.5]) assert.throws(() => tracking.dirtySince(bad), { code: 'ERR_MIGRATION' });
    assert.deepEqual(tracking.dirtySince(0), { offsets: [], epoch: 1 });
  });

  it('stamps a write in flight during dirtySince() with the next epoch', async () => {
    const { store, tracking } = setup();
    tracking.track();
    const release = store.hold('write');
    const write = tracking.writeAt(Buffer.alloc(4, 1), 4);
    await nextTurn();
    assert.deepEqual(tracking.dirtySince(0).offsets, [], 'not landed yet');
    release();
    await write;
    assert.deepEqual(tracking.dirtySince(1), { offsets: [4], epoch: 2 });
  });

  it('needs the size of its target', () => {
    const sizeless = { readAt: async () => undefined, writeAt: async () => undefined };
    assert.throws(() => new TrackingReadWriterAt(sizeless, { chunkSize }), /needs the size/);
    assert.equal(new TrackingReadWriterAt(sizeless, { chunkSize, size: 10 }).table.chunks, 3);
  });
});
