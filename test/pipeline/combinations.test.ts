/**
 * The shared ReadWriterAt suite against stage combinations over a Buffer-backed store, with sizes
 * that are not a multiple of the chunk size (the last chunk is short).
 */
import { ArbitraryReadWriterAt } from '../../src/pipeline/arbitrary.js';
import { ChunkedReadWriterAt } from '../../src/pipeline/chunked.js';
import { LatencyReadWriterAt } from '../../src/pipeline/latency.js';
import { LockableReadWriterAt } from '../../src/pipeline/lockable.js';
import { SyncedReadWriterAt } from '../../src/pipeline/synced.js';
import { TrackingReadWriterAt } from '../../src/pipeline/tracking.js';
import type { ReadWriterAt } from '../../src/pipeline/types.js';
import { MemoryBackend } from '../../src/backends/memory.js';
import { MemoryStore } from '../support/memory-store.js';
import { pattern, readWriterAtSuite, type SuiteTarget } from '../support/rwat-suite.js';

interface Geometry {
  readonly chunkSize: number;
  readonly size: number;
}

const geometries: readonly Geometry[] = [
  { chunkSize: 64, size: 4 * 64 + 37 }, // short last chunk, long enough for 8 writers
  { chunkSize: 32, size: 5 * 32 + 3 }, // a 3-byte last chunk
  { chunkSize: 16, size: 4 * 16 }, // a multiple: the last chunk is whole
];

/** A remote that holds a pattern in every other chunk (and the last), zeros elsewhere. */
function partlyFilledRemote(g: Geometry): { remote: MemoryStore; initial: Buffer } {
  const remote = new MemoryStore(g.size);
  const initial = Buffer.alloc(g.size);
  const last = Math.ceil(g.size / g.chunkSize) - 1;
  for (let i = 0; i <= last; i++) {
    if (i % 2 === 1 && i !== last) continue;
    const off = i * g.chunkSize;
    const data = pattern(Math.min(g.chunkSize, g.size - off), 500 + i);
    data.copy(initial, off);
    remote.fill(off, data);
  }
  return { remote, initial };
}

/** A local store full of junk: a REMOTE chunk must never be served from it. */
function junkLocal(g: Geometry): MemoryStore {
  const local = new MemoryStore(g.size);
  local.fill(0, Buffer.alloc(g.size, 0xaa));
  return local;
}

type Build = (g: Geometry) => { rw: ReadWriterAt; initial?: Buffer; close(): Promise<void> };

const combinations: ReadonlyArray<readonly [string, Build]> = [
  ['MemoryStore alone', (g) => {
    const store = new MemoryStore(g.size);
    return { rw: store, close: () => store.close() };
  }],
  ['Arbitrary(MemoryBackend)', (g) => {
    const store = new MemoryBackend({ size: g.size, chunkSize: g.chunkSize });
    return { rw: new ArbitraryReadWriterAt(store, g), close: () => store.close() };
  }],
  ['Arbitrary(Chunked(store))', (g) => {
    const store = new MemoryStore(g.size);
    return { rw: new ArbitraryReadWriterAt(new ChunkedReadWriterAt(store, g), g), close: () => store.close() };
  }],
  ['Arbitrary(Synced(empty remote, junk local))', (g) => {
    const remote = new MemoryStore(g.size);
    const synced = new SyncedReadWriterAt(remote, junkLocal(g), g);
    return { rw: new ArbitraryReadWriterAt(synced, g), close: () => remote.close() };
  }],
  ['Arbitrary(Synced(partly filled remote, junk local))', (g) => {
    const { remote, initial } = partlyFilledRemote(g);
    const synced = new SyncedReadWriterAt(remote, junkLocal(g), g);
    return { rw: new ArbitraryReadWriterAt(synced, g), initial, close: () => remote.close() };
  }],
  ['Arbitrary(Tracking(store)) while tracking', (g) => {
    const store = new MemoryStore(g.size);
    const tracking = new TrackingReadWriterAt(store, g);
    tracking.track();
    return { rw: new ArbitraryReadWriterAt(tracking, g), close: () => store.close() };
  }],
  ['Arbitrary(Lockable(store))', (g) => {
    const store = new MemoryStore(g.size);
    return { rw: new ArbitraryReadWriterAt(new LockableReadWriterAt(store), g), close: () => store.close() };
  }],
  ['Arbitrary(Latency(store))', (g) => {
    const store = new MemoryStore(g.size);
    const latency = new LatencyReadWriterAt(store, { readLatencyMs: 1, writeLatencyMs: 1 });
    return { rw: new ArbitraryReadWriterAt(latency, g), close: () => store.close() };
  }],
  ['Arbitrary(Lockable(Tracking(Synced(Latency(partly filled remote), junk local))))', (g) => {
    const { remote, initial } = partlyFilledRemote(g);
    const slowRemote = new LatencyReadWriterAt(remote, { readLatencyMs: 1 });
    const tracking = new TrackingReadWriterAt(new SyncedReadWriterAt(slowRemote, junkLocal(g), g), g);
    tracking.track();
    const rw = new ArbitraryReadWriterAt(new LockableReadWriterAt(tracking), g);
    return { rw, initial, close: () => remote.close() };
  }],
];

for (const [name, build] of combinations) {
  for (const g of geometries) {
    readWriterAtSuite(`${name} with chunkSize ${g.chunkSize} and size ${g.size}`, async (): Promise<SuiteTarget> => {
      const built = build(g);
      return { ...built, size: g.size, chunkSize: g.chunkSize };
    });
  }
}
