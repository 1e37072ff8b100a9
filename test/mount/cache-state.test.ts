import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { UsageError } from '../../src/errors.js';
import { CacheState, type CacheStateIdentity } from '../../src/mount/cache-state.js';
import { ChunkState } from '../../src/pipeline/chunk-state.js';
import { ChunkTable, RemoteSync } from '../../src/pipeline/chunk-table.js';
import { makeTempDir, removeDir } from '../support/tools.js';

const identity: CacheStateIdentity = { size: 20 * 4096 + 100, chunkSize: 4096, remoteId: 'grpc://host:1337' };
const chunks = 21;
let dir: string;
let n = 0;

before(async () => {
  dir = await makeTempDir('r3map-cache-state-');
});
after(async () => {
  await removeDir(dir);
});

/** A cache path with an (empty) cache file next to which the state lives. */
async function newCache(): Promise<string> {
  const cache = path.join(dir, `cache-${++n}.img`);
  await writeFile(cache, '');
  return cache;
}

/** The stack's side of a cache state: its chunk table and the cache's fdatasync. */
interface FakeSource {
  readonly table: ChunkTable;
  syncCache(): Promise<void>;
  syncs: number;
  failSync: boolean;
  /** syncCache waits for this while set. */
  gate: Promise<void> | undefined;
}

function fakeSource(): FakeSource {
  const s: FakeSource = {
    table: new ChunkTable(identity),
    syncs: 0,
    failSync: false,
    gate: undefined,
    syncCache: async () => {
      s.syncs++;
      await s.gate;
      if (s.failSync) throw new Error('EIO');
    },
  };
  return s;
}

async function openState(cache: string, source = fakeSource(), id = identity): Promise<{ state: CacheState; source: FakeSource }> {
  const state = await CacheState.load(cache, id);
  await state.open(source.table, source.syncCache);
  return { state, source: source as FakeSource };
}

/** Exactly `indexes` are LOCAL in the table. */
function setLocal(table: ChunkTable, indexes: readonly number[]): void {
  for (let i = 0; i < chunks; i++) table.setState(i, indexes.includes(i) ? ChunkState.LOCAL : ChunkState.REMOTE);
}

/** Exactly `indexes` are dirty in the table (the others pushed). */
function setDirty(table: ChunkTable, indexes: readonly number[]): void {
  for (let i = 0; i < chunks; i++) {
    if (indexes.includes(i)) {
      if (table.dirty[i] === 0) table.markDirty(i);
    } else {
      table.markPushed(i, table.generation[i]!);
    }
  }
}

describe('CacheState', () => {
  it('starts fresh without a state file, creates one of two aligned slots, and restores what a full save recorded', async () => {
    const cache = await newCache();
    const { state, source } = await openState(cache);
    assert.equal(state.restored.fresh, true);
    assert.equal((await stat(state.path)).size % 8192, 0);
    setLocal(source.table, [0, 1, 5, 20]);
    setDirty(source.table, [1, 20]);
    await state.save('full');
    assert.equal(source.syncs, 1, 'the cache was fdatasynced before the bits were saved');
    await state.close();
    const again = await CacheState.load(cache, identity);
    assert.deepEqual(again.restored, { fresh: false, local: [0, 1, 5, 20], dirty: [1, 20], discarded: 0, epoch: 0 });
  });

  it('saves the epoch with the local bits of the same snapshot: an intent save keeps the last full one', async () => {
    const cache = await newCache();
    const { state, source } = await openState(cache);
    setLocal(source.table, [3]);
    state.epoch = 7;
    await state.save('full');
    state.epoch = 9;
    await state.save('intent');
    await state.close();
    const again = await CacheState.load(cache, identity);
    assert.deepEqual([again.restored.local, again.restored.epoch, again.epoch], [[3], 7, 7]);
  });

  it('a forget save drops chunks no longer local and records the epoch, without a cache fdatasync and never adding one', async () => {
    const cache = await newCache();
    const { state, source } = await openState(cache);
    setLocal(source.table, [2, 3, 5]);
    await state.save('full');
    source.table.setState(3, ChunkState.REMOTE); // marked remote again (a dirty chunk at a Sync)
    source.table.setState(7, ChunkState.LOCAL); // local now, but the cache was not fdatasynced since
    state.epoch = 0xffffffff;
    await state.save('forget');
    assert.equal(source.syncs, 1, 'no cache fdatasync for the forget save');
    await state.close();
    const again = await CacheState.load(cache, identity);
    assert.deepEqual([again.restored.local, again.restored.epoch], [[2, 5], 0xffffffff]);
  });

  it('an intent save raises dirty bits but keeps the local bits of the last full save, without a cache fdatasync', async () => {
    const cache = await newCache();
    const { state, source } = await openState(cache);
    setLocal(source.table, [2, 3]);
    await state.save('full');
    setLocal(source.table, [2, 3, 4]);
    setDirty(source.table, [3, 4]);
    await state.save('intent');
    assert.equal(source.syncs, 1);
    await state.close();
    const again = await CacheState.load(cache, identity);
    assert.deepEqual(again.restored.local, [2, 3]);
    assert.deepEqual(again.restored.dirty, [3], 'chunk 4 is dirty but was never saved local: dropped');
    assert.equal(again.restored.discarded, 1);
  });

  it('beginWrite() holds a write to a chunk saved local and clean until a save has raised its dirty bit', async () => {
    const cache = await newCache();
    const { state, source } = await openState(cache);
    setLocal(source.table, [7, 8]);
    setDirty(source.table, [8]);
    await state.save('full');
    assert.equal(state.beginWrite(3), undefined, 'not saved local: no wait');
    assert.equal(state.beginWrite(8), undefined, 'saved dirty: no wait');
    source.table.writing[7] = 1; // as WriteMarks sets it before beginWrite()
    const wait = state.beginWrite(7);
    assert.ok(wait instanceof Promise, 'saved local and clean: wait for a save');
    await wait;
    await state.close();
    assert.deepEqual((await CacheState.load(cache, identity)).restored.dirty, [7, 8], 'the write in flight is saved dirty');
  });

  it('a write that ended and was pushed no longer keeps its chunk dirty', async () => {
    const cache = await newCache();
    const { state, source } = await openState(cache);
    setLocal(source.table, [1]);
    await state.save('full');
    source.table.writing[1] = 1;
    await state.beginWrite(1);
    source.table.writing[1] = 0;
    await state.save('full'); // the source says clean now (pushed and synced)
    await state.close();
    assert.deepEqual((await CacheState.load(cache, identity)).restored.dirty, []);
  });

  it('saves requested while one runs share one later save', async () => {
    const cache = await newCache();
    const { state, source } = await openState(cache);
    let open!: () => void;
    source.gate = new Promise((resolve) => (open = resolve));
    const first = state.save('full');
    while (source.syncs === 0) await new Promise((resolve) => setImmediate(resolve));
    const waiting = [state.save('full'), state.save('intent'), state.save('full')];
    open();
    await Promise.all([first, ...waiting]);
    assert.equal(source.syncs, 2, 'the first save, then one for the three that waited');
    await state.close();
  });

  it('a failed save leaves the last good slot in place and the next save succeeds', async () => {
    const cache = await newCache();
    const { state, source } = await openState(cache);
    setLocal(source.table, [1]);
    await state.save('full');
    source.failSync = true;
    setLocal(source.table, [1, 2]);
    await assert.rejects(state.save('full'), /EIO/);
    assert.deepEqual((await CacheState.load(cache, identity)).restored.local, [1]);
    source.failSync = false;
    await state.save('full');
    await state.close();
    assert.deepEqual((await CacheState.load(cache, identity)).restored.local, [1, 2]);
  });

  it('a torn newest slot falls back to the other one; two bad slots are a UsageError', async () => {
    const cache = await newCache();
    const { state, source } = await openState(cache);
    setLocal(source.table, [1]);
    await state.save('full'); // sequence 2, slot 0
    setLocal(source.table, [1, 2]);
    await state.save('full'); // sequence 3, slot 1
    await state.close();
    const file = await readFile(state.path);
    const half = file.length / 2;
    file[half + 100] ^= 0xff;
    await writeFile(state.path, file);
    assert.deepEqual((await CacheState.load(cache, identity)).restored.local, [1]);
    file[100] ^= 0xff;
    await writeFile(state.path, file);
    await assert.rejects(CacheState.load(cache, identity), (err: Error) => err instanceof UsageError && /corrupt/.test(err.message) && /reset-cache/.test(err.message));
    assert.equal((await CacheState.load(cache, identity, { reset: true })).restored.fresh, true);
  });

  it('a state written by a newer format is refused by name', async () => {
    const cache = await newCache();
    const { state } = await openState(cache);
    await state.close();
    const file = await readFile(state.path);
    file.writeUInt32LE(2, 8);
    file.writeUInt32LE(2, 8 + file.length / 2);
    await writeFile(state.path, file);
    await assert.rejects(CacheState.load(cache, identity), /newer r3map/);
  });

  const mismatches: Array<{ name: string; id: CacheStateIdentity; message: RegExp }> = [
    { name: 'size', id: { ...identity, size: identity.size + 4096 }, message: /remote of 82020 bytes, but this remote has 86116/ },
    { name: 'chunk size', id: { ...identity, chunkSize: 8192 }, message: /chunk size 4096, not 8192/ },
    { name: 'remote id', id: { ...identity, remoteId: 'grpc://other:1337' }, message: /another remote/ },
  ];
  for (const c of mismatches) {
    it(`a state for another ${c.name} is a UsageError that says how to go on`, async () => {
      const cache = await newCache();
      const { state } = await openState(cache);
      await state.close();
      await assert.rejects(CacheState.load(cache, c.id), (err: Error) => err instanceof UsageError && c.message.test(err.message) && /reset-cache/.test(err.message));
    });
  }

  it('a state whose cache is gone: fresh when nothing was dirty, a UsageError when writes would be lost', async () => {
    const cache = await newCache();
    const { state, source } = await openState(cache);
    setLocal(source.table, [0]);
    await state.save('full');
    await removeDir(cache);
    assert.equal((await CacheState.load(cache, identity)).restored.fresh, true);
    setDirty(source.table, [0]);
    await state.save('full');
    await state.close();
    await assert.rejects(CacheState.load(cache, identity), /missing, but its state says 1 chunk/);
  });

  it('the interval saves only when something changed', async (t) => {
    t.mock.timers.enable({ apis: ['setInterval'] });
    const cache = await newCache();
    const state = await CacheState.load(cache, identity, { intervalMs: 1000 });
    const source = fakeSource();
    await state.open(source.table, source.syncCache);
    t.mock.timers.tick(1000);
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(source.syncs, 0);
    source.table.markDirty(3);
    t.mock.timers.tick(1000);
    await state.close();
    assert.equal(source.syncs, 1);
  });

  it('saves the table: pushed-not-synced and in-flight writes count as dirty; restoreInto() puts it back', async () => {
    const cache = await newCache();
    const { state, source } = await openState(cache);
    setLocal(source.table, [1, 2, 3, 4]);
    setDirty(source.table, [1]);
    source.table.unsynced[2] = RemoteSync.WRITTEN; // pushed, the remote not synced yet
    source.table.writing[3] = 1;
    await state.save('full');
    await state.close();
    const again = await CacheState.load(cache, identity);
    assert.deepEqual(again.restored.dirty, [1, 2, 3]);
    const table = new ChunkTable(identity);
    again.restoreInto(table);
    assert.equal(table.localCount, 4);
    assert.ok(table.isLocal(4) && !table.isLocal(0));
    assert.deepEqual(table.dirtyIndexes(), [1, 2, 3]);
    assert.throws(() => again.restoreInto(new ChunkTable({ ...identity, chunkSize: 8192 })), /the chunk table is for/);
  });
});
