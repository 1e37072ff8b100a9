/**
 * ChunkStoreBackend: a Backend over a key-value store that holds one value per chunk (Redis,
 * S3, Cassandra). The store only sees whole chunks; this class does the rest.
 *
 * Guarantees:
 * - Any (off, length) inside [0, size) is split into whole chunks by ArbitraryReadWriterAt:
 *   partial-chunk writes are read-modify-write under that chunk's lock; outside the range
 *   rejects with OutOfRangeError before the store is touched.
 * - A chunk the store does not have (readChunk resolved false) reads as zeros, even into a
 *   dirty buffer (r3map's sparse backends returned the previous chunk's bytes instead).
 * - At most `maxInFlight` chunk calls reach the store at once (0 = no cap); the rest queue.
 * - trim/zero: whole chunks are deleted (deleteChunk, or a write of zeros when the store has
 *   none), under the same chunk lock as an RMW; partial chunks get zeros written.
 * - Store errors reject as BackendError ({ backend: store.name, op, off, length }, cause).
 * - Writes, trim and zero reject with ReadOnlyError when readOnly; every call after close()
 *   rejects with ClosedError; close() waits for calls in flight, then closes the store; idempotent.
 * Assumes of the store: whole chunks only (chunk i = [i*chunkSize, min((i+1)*chunkSize, size))),
 * concurrent calls are fine, and it keeps no view of the buffers it is given.
 */
import { BackendError, ClosedError, OutOfRangeError, R3mapError, ReadOnlyError, UsageError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import { ArbitraryReadWriterAt } from '../pipeline/arbitrary.js';
import { resolveGeometry } from '../pipeline/chunked.js';
import type { Backend, ReadWriterAt } from '../pipeline/types.js';

/** A store of whole chunks; `index` is the chunk number and `off` = index * chunkSize. */
export interface ChunkStore {
  /** 'redis', 's3', … for errors and logs. */
  readonly name: string;
  /** Fills `dst` (the chunk's length; the last chunk may be short); false = missing (the caller zero-fills). */
  readChunk(index: number, off: number, dst: Buffer): Promise<boolean>;
  writeChunk(index: number, off: number, src: Buffer): Promise<void>;
  /** Removes a chunk (for trim); afterwards it is missing. */
  deleteChunk?(index: number, off: number): Promise<void>;
  sync?(): Promise<void>;
  close(): Promise<void>;
}

export interface ChunkStoreBackendOptions {
  /** Bytes in the target (>= 0). */
  readonly size: number;
  /** Bytes per stored chunk (> 0). */
  readonly chunkSize: number;
  readonly readOnly?: boolean;
  /** Concurrent chunk calls to the store; default 16, 0 = no cap. */
  readonly maxInFlight?: number;
  /** Writes are visible to every client of the store at once (NBD CAN_MULTI_CONN). Default false. */
  readonly canMultiConn?: boolean;
  readonly log?: Logger;
}

interface ResolvedChunkStoreBackendOptions {
  readonly size: number;
  readonly chunkSize: number;
  readonly readOnly: boolean;
  readonly maxInFlight: number;
  readonly canMultiConn: boolean;
}

/** Whole-chunk calls onto the store, at most `max` at once; a write of `marker` deletes. */
class StoreChunks implements ReadWriterAt {
  readonly #store: ChunkStore;
  readonly #chunkSize: number;
  readonly #max: number;
  /** Whole-chunk writes whose bytes live in this ArrayBuffer are trims. */
  readonly #marker: ArrayBufferLike;
  #inFlight = 0;
  readonly #waiters: Array<() => void> = [];

  constructor(store: ChunkStore, chunkSize: number, max: number, marker: Buffer) {
    this.#store = store;
    this.#chunkSize = chunkSize;
    this.#max = max === 0 ? Number.POSITIVE_INFINITY : max;
    this.#marker = marker.buffer;
  }

  async readAt(buf: Buffer, off: number): Promise<void> {
    if (this.#inFlight < this.#max) this.#inFlight++;
    else await this.#slot();
    try {
      if (!(await this.#store.readChunk(off / this.#chunkSize, off, buf))) buf.fill(0);
    } catch (err) {
      throw wrapStoreError(this.#store.name, err, 'read', off, buf.length);
    } finally {
      this.#release();
    }
  }

  async writeAt(buf: Buffer, off: number): Promise<void> {
    if (this.#inFlight < this.#max) this.#inFlight++;
    else await this.#slot();
    const trim = buf.buffer === this.#marker && this.#store.deleteChunk !== undefined;
    try {
      if (trim) await this.#store.deleteChunk!(off / this.#chunkSize, off);
      else await this.#store.writeChunk(off / this.#chunkSize, off, buf);
    } catch (err) {
      throw wrapStoreError(this.#store.name, err, trim ? 'trim' : 'write', off, buf.length);
    } finally {
      this.#release();
    }
  }

  /** Waits for a slot; #release hands its slot over, so #inFlight stays as it is. */
  #slot(): Promise<void> {
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  #release(): void {
    const next = this.#waiters.shift();
    if (next !== undefined) next();
    else this.#inFlight--;
  }
}

/** Keeps r3map errors as they are; wraps anything else in a BackendError with the cause. */
export function wrapStoreError(backend: string, err: unknown, op: string, off?: number, length?: number): R3mapError {
  if (err instanceof R3mapError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new BackendError({ backend, op, ...(off === undefined ? {} : { off, length: length ?? 0 }) }, message, { cause: err });
}

export class ChunkStoreBackend implements Backend {
  readonly size: number;
  readonly chunkSize: number;
  readonly readOnly: boolean;
  readonly maxInFlight: number;
  readonly canMultiConn: boolean;
  readonly options: ResolvedChunkStoreBackendOptions;
  readonly #store: ChunkStore;
  readonly #arbitrary: ArbitraryReadWriterAt;
  /** All zeros, one chunk long; its ArrayBuffer marks trims for StoreChunks. */
  readonly #zeros: Buffer;
  readonly #log: Logger;
  #closed = false;
  #closing: Promise<void> | undefined;
  #inFlight = 0;
  #drained: (() => void) | undefined;

  constructor(store: ChunkStore, options: ChunkStoreBackendOptions) {
    const { chunkSize, size } = resolveGeometry(options);
    const maxInFlight = options.maxInFlight ?? 16;
    if (!Number.isSafeInteger(maxInFlight) || maxInFlight < 0) {
      throw new UsageError(`maxInFlight must be a whole number >= 0 (0 = no cap), got ${maxInFlight}`);
    }
    this.options = Object.freeze({
      size,
      chunkSize,
      readOnly: options.readOnly ?? false,
      maxInFlight,
      canMultiConn: options.canMultiConn ?? false,
    });
    this.size = size;
    this.chunkSize = chunkSize;
    this.readOnly = this.options.readOnly;
    this.maxInFlight = maxInFlight;
    this.canMultiConn = this.options.canMultiConn;
    this.#store = store;
    this.#log = (options.log ?? silentLogger).child({ component: 'chunk-store', backend: store.name });
    this.#zeros = Buffer.alloc(chunkSize); // Buffer.alloc never uses the shared pool: its own ArrayBuffer
    this.#arbitrary = new ArbitraryReadWriterAt(new StoreChunks(store, chunkSize, maxInFlight, this.#zeros), { chunkSize, size });
  }

  /** The store underneath (for tests and diagnostics). */
  get store(): ChunkStore {
    return this.#store;
  }

  async readAt(buf: Buffer, off: number): Promise<void> {
    this.#enter(false);
    try {
      await this.#arbitrary.readAt(buf, off);
    } finally {
      this.#leave();
    }
  }

  async writeAt(buf: Buffer, off: number): Promise<void> {
    this.#enter(true);
    try {
      await this.#arbitrary.writeAt(buf, off);
    } finally {
      this.#leave();
    }
  }

  /** Deletes whole chunks and writes zeros over partial ones; afterwards the range reads as zeros. */
  async trim(off: number, length: number): Promise<void> {
    this.#enter(true);
    try {
      await this.#discard(off, length);
    } finally {
      this.#leave();
    }
  }

  /** The same as trim here: a missing chunk reads as zeros. */
  zero(off: number, length: number): Promise<void> {
    return this.trim(off, length);
  }

  async sync(): Promise<void> {
    this.#enter(false);
    try {
      await this.#store.sync?.();
    } catch (err) {
      throw wrapStoreError(this.#store.name, err, 'sync');
    } finally {
      this.#leave();
    }
  }

  close(): Promise<void> {
    this.#closed = true;
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    if (this.#inFlight > 0) await new Promise<void>((resolve) => (this.#drained = resolve));
    try {
      await this.#store.close();
    } catch (err) {
      this.#log.warn({ err }, 'closing the store failed');
      throw wrapStoreError(this.#store.name, err, 'close');
    }
  }

  /** One chunk's piece at a time per worker, `maxInFlight` workers (trims can be huge). */
  async #discard(off: number, length: number): Promise<void> {
    if (!Number.isSafeInteger(off) || !Number.isSafeInteger(length) || off < 0 || length < 0 || off + length > this.size) {
      throw new OutOfRangeError(off, length, this.size);
    }
    const end = off + length;
    const chunkSize = this.chunkSize;
    let next = off;
    let failed = false;
    const worker = async (): Promise<void> => {
      while (next < end && !failed) {
        const pos = next;
        const stop = Math.min(end, (Math.floor(pos / chunkSize) + 1) * chunkSize);
        next = stop;
        try {
          await this.#arbitrary.writeAt(this.#zeros.subarray(0, stop - pos), pos);
        } catch (err) {
          failed = true;
          throw err;
        }
      }
    };
    const workers = Math.max(1, Math.min(this.maxInFlight || 16, Math.ceil(length / chunkSize)));
    const results = await Promise.allSettled(Array.from({ length: workers }, worker));
    for (const r of results) if (r.status === 'rejected') throw r.reason;
  }

  #enter(write: boolean): void {
    if (this.#closed) throw new ClosedError(`${this.#store.name} backend`);
    if (write && this.readOnly) throw new ReadOnlyError(`${this.#store.name} backend`);
    this.#inFlight++;
  }

  #leave(): void {
    if (--this.#inFlight === 0 && this.#drained !== undefined) {
      this.#drained();
      this.#drained = undefined;
    }
  }
}
