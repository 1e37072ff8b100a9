import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { ChunkStoreBackend, type ChunkStore } from '../../src/backends/chunk-store.js';
import { BackendError, BadLengthError, MisalignedError, OutOfRangeError } from '../../src/errors.js';
import { composeBackend } from '../../src/mount/compose.js';
import type { Backend } from '../../src/pipeline/types.js';
import { pattern, readWriterAtSuite } from '../support/rwat-suite.js';

const KiB = 1024;

/** A Map of chunk offset to bytes; each call completes on a later turn; logs calls and the peak in flight. */
class MapStore implements ChunkStore {
  readonly name = 'map';
  readonly chunks = new Map<number, Buffer>();
  readonly calls: string[] = [];
  inFlight = 0;
  peak = 0;
  syncs = 0;
  closes = 0;
  failNext: Error | undefined;
  /** Turns each call waits, so many overlap. */
  turns = 1;
  deleteChunk: ((index: number, off: number) => Promise<void>) | undefined = async (index, off) => {
    await this.#enter(`delete ${index}@${off}`);
    this.chunks.delete(off);
    this.#leave();
  };

  async readChunk(index: number, off: number, dst: Buffer): Promise<boolean> {
    await this.#enter(`read ${index}@${off}+${dst.length}`);
    const data = this.chunks.get(off);
    this.#leave();
    if (data === undefined) {
      dst.fill(0xaa); // a store may scribble on dst for a missing chunk: the backend must zero it
      return false;
    }
    data.copy(dst);
    return true;
  }

  async present(first: number, count: number, chunkSize: number): Promise<readonly boolean[]> {
    await this.#enter(`present ${first}+${count}`);
    this.#leave();
    return Array.from({ length: count }, (_, i) => this.chunks.has((first + i) * chunkSize));
  }

  async writeChunk(index: number, off: number, src: Buffer): Promise<void> {
    await this.#enter(`write ${index}@${off}+${src.length}`);
    this.chunks.set(off, Buffer.from(src));
    this.#leave();
  }

  async sync(): Promise<void> {
    this.syncs++;
  }

  async close(): Promise<void> {
    this.closes++;
  }

  async #enter(call: string): Promise<void> {
    this.calls.push(call);
    this.inFlight++;
    this.peak = Math.max(this.peak, this.inFlight);
    for (let i = 0; i < this.turns; i++) await nextTurn();
    const err = this.failNext;
    this.failNext = undefined;
    if (err !== undefined) {
      this.inFlight--;
      throw err;
    }
  }

  #leave(): void {
    this.inFlight--;
  }
}

for (const { chunkSize, tail, maxInFlight } of [
  { chunkSize: 4 * KiB, tail: 123, maxInFlight: 16 },
  { chunkSize: 64, tail: 37, maxInFlight: 1 },
  { chunkSize: 64, tail: 0, maxInFlight: 0 },
]) {
  readWriterAtSuite(`ChunkStoreBackend over a Map with ${chunkSize}-byte chunks, ${tail} extra bytes and maxInFlight ${maxInFlight}`, async () => {
    const backend = composeBackend(new ChunkStoreBackend(new MapStore(), { size: 10 * chunkSize + tail, chunkSize, maxInFlight }));
    return { rw: backend, size: backend.size, chunkSize, close: () => backend.close() };
  });
}

describe('ChunkStoreBackend extents', () => {
  it('reports held chunks as data and missing ones as holes, for any range, also through composeBackend', async () => {
    const store = new MapStore();
    const backend = new ChunkStoreBackend(store, { size: 10 * KiB + 100, chunkSize: KiB });
    const H = 3;
    await backend.writeAt(Buffer.alloc(KiB, 1), 2 * KiB);
    await backend.writeAt(Buffer.alloc(KiB, 1), 3 * KiB);
    await backend.writeAt(Buffer.alloc(100, 1), 10 * KiB);
    assert.deepEqual(await backend.extents!(0, backend.size), [
      { length: 2 * KiB, flags: H }, { length: 2 * KiB, flags: 0 }, { length: 6 * KiB, flags: H }, { length: 100, flags: 0 },
    ]);
    const composed = composeBackend(backend);
    assert.deepEqual(await composed.extents!(2 * KiB + 10, KiB), [{ length: KiB, flags: 0 }]);
    assert.deepEqual(await composed.extents!(KiB + 1000, 100), [{ length: 24, flags: H }, { length: 76, flags: 0 }]);
    await assert.rejects(backend.extents!(10 * KiB, 101), OutOfRangeError);
    assert.ok(store.calls.filter((c) => c.startsWith('present')).length >= 3);
    const blind = new ChunkStoreBackend({ ...store, name: 'blind', readChunk: store.readChunk.bind(store), writeChunk: store.writeChunk.bind(store), close: async () => undefined, present: undefined }, { size: KiB, chunkSize: KiB });
    assert.equal(blind.extents, undefined, 'a store that cannot tell gives no extents (all data)');
  });
});

describe('ChunkStoreBackend, composed (any range)', () => {
  const make = (options: { maxInFlight?: number; readOnly?: boolean } = {}): { store: MapStore; backend: Backend } => {
    const store = new MapStore();
    return { store, backend: composeBackend(new ChunkStoreBackend(store, { size: 10 * KiB + 100, chunkSize: KiB, ...options })) };
  };

  it('zero-fills a missing chunk even when the store scribbled on the buffer', async () => {
    const { store, backend } = make();
    await backend.writeAt(pattern(KiB, 1), 0);
    const buf = Buffer.alloc(3 * KiB, 0xff);
    await backend.readAt(buf, 0);
    assert.deepEqual(buf.subarray(0, KiB), pattern(KiB, 1));
    assert.ok(buf.subarray(KiB).every((b) => b === 0));
    assert.deepEqual([...store.chunks.keys()], [0]);
  });

  it('sends whole chunks to the store, keyed by index and offset, with a short last chunk', async () => {
    const { store, backend } = make();
    await backend.writeAt(Buffer.alloc(200, 1), 10 * KiB - 100); // half of chunk 9 (RMW), all of the short chunk 10
    assert.deepEqual(store.calls.slice().sort(), ['read 9@9216+1024', 'write 10@10240+100', 'write 9@9216+1024']);
  });

  for (const { maxInFlight, peak } of [
    { maxInFlight: 1, peak: 1 },
    { maxInFlight: 3, peak: 3 },
    { maxInFlight: 0, peak: 11 }, // 0 = no cap: every chunk at once
  ]) {
    it(`keeps at most ${peak} store calls in flight with maxInFlight ${maxInFlight}`, async () => {
      const { store, backend } = make({ maxInFlight });
      store.turns = 3;
      await backend.writeAt(pattern(backend.size, 2), 0);
      await backend.readAt(Buffer.alloc(backend.size), 0);
      assert.equal(store.peak, peak);
      assert.equal(store.inFlight, 0);
    });
  }

  it('trims whole chunks with deleteChunk and writes zeros over the partial ones', async () => {
    const { store, backend } = make();
    await backend.writeAt(pattern(backend.size, 3), 0);
    store.calls.length = 0;
    await backend.trim!(KiB / 2, 3 * KiB);
    const calls = store.calls.slice().sort();
    assert.deepEqual(calls, ['delete 1@1024', 'delete 2@2048', 'read 0@0+1024', 'read 3@3072+1024', 'write 0@0+1024', 'write 3@3072+1024']);
    const expected = pattern(backend.size, 3).fill(0, KiB / 2, KiB / 2 + 3 * KiB);
    const buf = Buffer.alloc(backend.size, 0xff);
    await backend.readAt(buf, 0);
    assert.deepEqual(buf, expected);
    assert.deepEqual([...store.chunks.keys()].sort((a, b) => a - b), [0, 3072, 4096, 5120, 6144, 7168, 8192, 9216, 10240]);
  });

  it('zeroes a range by writing zeros when the store cannot delete', async () => {
    const { store, backend } = make();
    store.deleteChunk = undefined;
    await backend.writeAt(pattern(backend.size, 4), 0);
    await backend.zero!(0, backend.size);
    assert.equal(store.chunks.size, 11);
    for (const data of store.chunks.values()) assert.ok(data.every((b) => b === 0));
    const buf = Buffer.alloc(backend.size, 0xff);
    await backend.readAt(buf, 0);
    assert.ok(buf.every((b) => b === 0));
  });

  it('rejects a trim outside the target with ERR_OUT_OF_RANGE', async () => {
    const { backend } = make();
    await assert.rejects(backend.trim!(backend.size - 1, 2), { code: 'ERR_OUT_OF_RANGE' });
  });

  it('wraps a store error in a BackendError naming the store, the operation and the range', async () => {
    const { store, backend } = make();
    const cause = new Error('boom');
    store.failNext = cause;
    await assert.rejects(backend.readAt(Buffer.alloc(10), KiB + 5), (err) => {
      assert.ok(err instanceof BackendError);
      assert.deepEqual([err.backend, err.op, err.off, err.length, err.cause], ['map', 'read', KiB, KiB, cause]);
      return true;
    });
  });

  it('refuses writes, trims and zeroes when read-only but still reads', async () => {
    const { store, backend } = make({ readOnly: true });
    await assert.rejects(backend.writeAt(Buffer.alloc(1), 0), { code: 'ERR_READ_ONLY' });
    await assert.rejects(backend.trim!(0, 1), { code: 'ERR_READ_ONLY' });
    await assert.rejects(backend.zero!(0, 1), { code: 'ERR_READ_ONLY' });
    await backend.readAt(Buffer.alloc(1), 0);
    assert.deepEqual(store.calls, ['read 0@0+1024']);
  });

  it('passes sync to the store', async () => {
    const { store, backend } = make();
    await backend.sync();
    assert.equal(store.syncs, 1);
  });

  it('closes once, waits for calls in flight, and rejects every call afterwards with ERR_CLOSED', async () => {
    const { store, backend } = make();
    store.turns = 5;
    const write = backend.writeAt(pattern(3 * KiB, 5), 0);
    await Promise.all([backend.close(), backend.close()]);
    await write;
    assert.equal(store.closes, 1);
    assert.equal(store.chunks.size, 3);
    await assert.rejects(backend.readAt(Buffer.alloc(1), 0), { code: 'ERR_CLOSED' });
    await assert.rejects(backend.writeAt(Buffer.alloc(1), 0), { code: 'ERR_CLOSED' });
    await assert.rejects(backend.sync(), { code: 'ERR_CLOSED' });
    await assert.rejects(backend.trim!(0, 1), { code: 'ERR_CLOSED' });
  });

  it('rejects a bad maxInFlight with ERR_USAGE', () => {
    assert.throws(() => new ChunkStoreBackend(new MapStore(), { size: 10, chunkSize: 1, maxInFlight: -1 }), { code: 'ERR_USAGE' });
  });

  it('rejects a bad chunk size with ERR_USAGE', () => {
    for (const chunkSize of [0, -1, 1.5, 2 ** 30 + 1]) {
      assert.throws(() => new ChunkStoreBackend(new MapStore(), { size: 10, chunkSize }), { code: 'ERR_USAGE' });
    }
  });
});

describe('ChunkStoreBackend, bare (whole chunks only)', () => {
  const make = (options: { readOnly?: boolean } = {}): { store: MapStore; backend: ChunkStoreBackend } => {
    const store = new MapStore();
    return { store, backend: new ChunkStoreBackend(store, { size: 10 * KiB + 100, chunkSize: KiB, ...options }) };
  };

  it('declares its granularity as blockSize, and composeBackend wraps it while passing others through', () => {
    const { backend } = make();
    assert.equal(backend.blockSize, KiB);
    const composed = composeBackend(backend);
    assert.notEqual(composed, backend);
    assert.equal(composed.blockSize, 1);
    assert.deepEqual([composed.size, composed.readOnly, composed.maxInFlight, composed.canMultiConn], [backend.size, false, 16, false]);
    assert.equal(composeBackend(composed), composed);
  });

  it('takes whole chunks, the last one short, straight to the store', async () => {
    const { store, backend } = make();
    await backend.writeAt(pattern(KiB, 7), 2 * KiB);
    await backend.writeAt(pattern(100, 8), 10 * KiB);
    const buf = Buffer.alloc(100, 0xff);
    await backend.readAt(buf, 10 * KiB);
    assert.deepEqual(buf, pattern(100, 8));
    await backend.trim(2 * KiB, KiB);
    await backend.zero(9 * KiB, KiB + 100);
    assert.deepEqual(store.calls, ['write 2@2048+1024', 'write 10@10240+100', 'read 10@10240+100', 'delete 2@2048', 'delete 9@9216', 'delete 10@10240']);
  });

  it('rejects an unaligned or partial call with the pipeline\'s typed errors and never touches the store', async () => {
    const { store, backend } = make();
    await assert.rejects(backend.readAt(Buffer.alloc(KiB), 10), MisalignedError);
    await assert.rejects(backend.writeAt(Buffer.alloc(KiB), KiB + 1), MisalignedError);
    await assert.rejects(backend.readAt(Buffer.alloc(10), 0), BadLengthError);
    await assert.rejects(backend.writeAt(Buffer.alloc(2 * KiB), 0), BadLengthError);
    await assert.rejects(backend.writeAt(Buffer.alloc(KiB), 10 * KiB), BadLengthError); // the last chunk is 100 bytes
    await assert.rejects(backend.readAt(Buffer.alloc(KiB), 11 * KiB), OutOfRangeError);
    await assert.rejects(backend.trim(1, KiB - 1), MisalignedError);
    await assert.rejects(backend.trim(0, KiB + 1), MisalignedError);
    await assert.rejects(backend.zero(KiB, 10 * KiB), OutOfRangeError);
    assert.deepEqual(store.calls, []);
  });

  it('checks closed, then read-only, then the range', async () => {
    const { backend } = make({ readOnly: true });
    await assert.rejects(backend.writeAt(Buffer.alloc(1), 1), { code: 'ERR_READ_ONLY' });
    await backend.close();
    await assert.rejects(backend.writeAt(Buffer.alloc(1), 1), { code: 'ERR_CLOSED' });
    await assert.rejects(backend.readAt(Buffer.alloc(1), 1), { code: 'ERR_CLOSED' });
  });
});
