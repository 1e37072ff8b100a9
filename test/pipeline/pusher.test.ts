import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ClosedError, MisalignedError, OutOfRangeError, UsageError } from '../../src/errors.js';
import { ChunkTable } from '../../src/pipeline/chunk-table.js';
import { Pusher } from '../../src/pipeline/pusher.js';
import { WriteMarks } from '../../src/pipeline/write-marks.js';
import { filled, Gate, settle, TestStore, within } from './support-store.js';

const chunkSize = 4;
const size = 11 * chunkSize + 2; // 12 chunks, the last one 2 bytes long
const lastOff = 11 * chunkSize;
const lengthAt = (off: number): number => Math.min(chunkSize, size - off);

interface Rig {
  local: TestStore;
  remote: TestStore & { syncs: number };
  table: ChunkTable;
  /** The data path's write stage: writes land in `local` and mark their chunk dirty. */
  marks: WriteMarks;
  pusher: Pusher;
}

function rig(workers = 2, intervalMs = 0, remoteHook?: TestStore['hook']): Rig {
  const local = new TestStore(size);
  const remote = Object.assign(new TestStore(size, remoteHook), { syncs: 0 });
  const remoteWithSync = Object.assign(remote, { sync: async () => void remote.syncs++ });
  const table = new ChunkTable({ chunkSize, size });
  const pusher = new Pusher(table, local, remoteWithSync, { workers, intervalMs });
  return { local, remote, table, marks: new WriteMarks(local, { table }), pusher };
}

/** Writes `byte` over the whole chunk at `off` through the write-marking stage. */
function write(r: Rig, off: number, byte: number): Promise<void> {
  return r.marks.writeAt(filled(lengthAt(off), byte), off);
}

function remoteChunk(r: Rig, off: number): Buffer {
  return r.remote.data.subarray(off, off + lengthAt(off));
}

describe('Pusher', () => {
  it('refuses 0 workers with a UsageError: 0 push workers means no pusher', () => {
    assert.throws(() => rig(0), UsageError);
  });

  it('pushes nothing while nothing is dirty; data put in local behind its back is not pushed', async () => {
    const r = rig();
    r.local.data.fill(7, 0, chunkSize); // as a fetch from the remote fills the cache
    assert.equal(await r.pusher.sync(), 0);
    assert.equal(r.remote.offsets('write').length, 0);
    assert.equal(r.remote.syncs, 1, 'the remote is synced all the same');
    assert.equal(r.table.dirtyCount, 0);
  });

  it('takes its geometry from the table', () => {
    const r = rig();
    assert.deepEqual(r.pusher.options, { chunkSize, size, workers: 2, intervalMs: 0 });
  });

  describe('sync() pushes exactly the dirty chunks', () => {
    for (const workers of [1, 2, 10]) {
      it(`with ${workers} worker(s)`, async () => {
        const r = rig(workers, 0, (op) => (op === 'write' ? settle() : undefined)); // pushes overlap
        const dirty = [chunkSize, 3 * chunkSize, 4 * chunkSize, 6 * chunkSize, lastOff];
        for (const off of dirty) await write(r, off, off + 1);
        assert.equal(r.table.dirtyCount, dirty.length);
        assert.deepEqual(r.pusher.dirtyOffsets(), dirty);
        assert.equal(await r.pusher.sync(), dirty.length);
        assert.deepEqual(r.remote.offsets('write').sort((a, b) => a - b), dirty);
        for (const off of dirty) assert.deepEqual(remoteChunk(r, off), filled(lengthAt(off), off + 1));
        assert.equal(r.remote.maxInFlight, Math.min(workers, dirty.length));
        assert.equal(r.remote.syncs, 1);
        assert.deepEqual(r.pusher.dirtyOffsets(), []);
        assert.equal(await r.pusher.sync(), 0);
        assert.equal(r.remote.offsets('write').length, dirty.length);
      });
    }
  });

  it('pushes again a write that lands while its chunk is being pushed', async () => {
    const gate = new Gate();
    const r = rig(1, 0, (op, _off, attempt) => (op === 'write' && attempt === 0 ? gate.wait() : undefined));
    await write(r, 0, 1);
    const synced = r.pusher.sync();
    await within(gate.entered, 'the first push');
    await within(write(r, 0, 2), 'the racing write'); // lands while the push of 1s is blocked
    gate.open();
    assert.equal(await within(synced, 'sync()'), 1);
    assert.deepEqual(remoteChunk(r, 0), filled(4, 2));
    assert.deepEqual(r.remote.offsets('write'), [0, 0]);
    assert.deepEqual(r.pusher.dirtyOffsets(), []);
  });

  it('runs concurrent sync() calls one after another, each covering the writes before it', async () => {
    const gate = new Gate();
    const r = rig(2, 0, (op, off) => (op === 'write' && off === 0 ? gate.wait() : undefined));
    r.pusher.markDirty([0]);
    const first = r.pusher.sync();
    await within(gate.entered, 'the first push');
    await write(r, chunkSize, 9);
    const second = r.pusher.sync();
    const third = r.pusher.sync();
    assert.equal(second, third, 'a sync() queued behind a run is shared');
    await settle();
    assert.deepEqual(r.remote.offsets('write'), [0], 'the second run waits for the first');
    gate.open();
    assert.equal(await within(first, 'the first sync()'), 1);
    assert.equal(await within(second, 'the second sync()'), 1);
    assert.deepEqual(remoteChunk(r, chunkSize), filled(4, 9));
    assert.equal(r.remote.syncs, 2);
  });

  it('pushes on its interval', async () => {
    const r = rig(2, 5);
    r.pusher.open();
    r.pusher.open();
    await write(r, lastOff, 3);
    const pushed = new Promise<void>((resolve) => {
      r.pusher.on('push', ({ pushedChunks }) => pushedChunks > 0 && resolve());
    });
    await within(pushed, 'an interval push');
    assert.deepEqual(remoteChunk(r, lastOff), filled(2, 3));
    await r.pusher.close();
  });

  it('does a final sync on close(), is idempotent, and cannot be opened again', async () => {
    const r = rig(2);
    await write(r, 2 * chunkSize, 5);
    const closing = r.pusher.close();
    assert.equal(r.pusher.close(), closing);
    await within(closing, 'close()');
    assert.deepEqual(remoteChunk(r, 2 * chunkSize), filled(4, 5));
    assert.throws(() => r.pusher.open(), ClosedError);
  });

  it('keeps a chunk dirty when its push fails and pushes it on the next sync()', async () => {
    let down = true;
    const r = rig(2, 0, (op) => {
      if (op === 'write' && down) throw new Error('remote down');
    });
    r.pusher.markDirty([0, chunkSize]);
    await assert.rejects(r.pusher.sync(), /remote down|chunks failed/);
    assert.deepEqual(r.pusher.dirtyOffsets(), [0, chunkSize]);
    down = false;
    assert.equal(await r.pusher.sync(), 2);
    assert.deepEqual(r.pusher.dirtyOffsets(), []);
  });

  it('reports interval push failures to an error listener and never crashes without one', async () => {
    let failures = 0;
    let thirdFailure!: () => void;
    const failedThrice = new Promise<void>((resolve) => (thirdFailure = resolve));
    const r = rig(1, 2, (op) => {
      if (op !== 'write') return;
      if (++failures === 3) thirdFailure();
      throw new Error('remote down');
    });
    r.pusher.markDirty([0]);
    r.pusher.open();
    const failed = new Promise<unknown>((resolve) => r.pusher.once('error', resolve));
    assert.match(String(await within(failed, 'an interval failure')), /remote down/);
    await within(failedThrice, 'two more failing ticks without an error listener');
    await settle();
    r.remote.hook = undefined;
    await r.pusher.close();
    assert.deepEqual(r.pusher.dirtyOffsets(), []);
  });

  it('pushes data written earlier once markDirty() names it', async () => {
    const r = rig(1);
    r.local.data.fill(8, chunkSize, 2 * chunkSize);
    r.pusher.markDirty([chunkSize]);
    assert.deepEqual(r.pusher.dirtyOffsets(), [chunkSize]);
    assert.equal(await r.pusher.sync(), 1);
    assert.deepEqual(remoteChunk(r, chunkSize), filled(4, 8));
  });

  it('rejects offsets that are misaligned or out of range', () => {
    const r = rig();
    assert.throws(() => r.pusher.markDirty([1]), MisalignedError);
    assert.throws(() => r.pusher.markDirty([0, size + 2]), OutOfRangeError);
    assert.deepEqual(r.pusher.dirtyOffsets(), [], 'a bad offset changes nothing');
    assert.throws(() => r.pusher.markDirty([-4]), OutOfRangeError);
  });
});
