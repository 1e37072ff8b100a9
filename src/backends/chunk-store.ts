/**
 * ChunkStoreBackend: a Backend over a key-value store that holds one value per chunk (Redis,
 * S3, Cassandra). It delivers what the store natively accepts, whole chunks, and declares it
 * (`blockSize` = chunkSize); mount/compose.ts puts ArbitraryReadWriterAt in front of it for
 * callers that need any range (openComposed, composeBackend).
 *
 * Guarantees:
 * - readAt/writeAt take exactly one whole chunk each (chunk i = [i*chunkSize, min((i+1)*chunkSize,
 *   size)), the last one may be short); anything else rejects before the store is touched, with
 *   OutOfRangeError, MisalignedError or BadLengthError (as ChunkedReadWriterAt does).
 * - trim/zero take whole chunks (a run of them; the end may be `size`), else they reject the same
 *   way: each chunk is deleted (deleteChunk, or a write of zeros when the store has none), at most
 *   `maxInFlight` at once.
 * - A chunk the store does not have (readChunk resolved false) reads as zeros, even into a
 *   dirty buffer (r3map's sparse backends returned the previous chunk's bytes instead).
 * - At most `maxInFlight` chunk calls reach the store at once (0 = no cap); the rest queue.
 * - Store errors reject as BackendError ({ backend: store.name, op, off, length }, cause).
 * - Writes, trim and zero reject with ReadOnlyError when readOnly; every call after close()
 *   rejects with ClosedError; close() waits for calls in flight, then closes the store; idempotent.
 * - `extents` (where the store has `present`): a chunk the store does not hold is a hole of zeros,
 *   at most MAX_EXTENT_CHUNKS chunks per call (the caller asks again for the rest).
 * Assumes of the store: whole chunks only, concurrent calls are fine, and it keeps no view of
 * the buffers it is given.
 */
import { BackendError, MisalignedError, OutOfRangeError, R3mapError, ReadOnlyError, UsageError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import { resolveGeometry, wholeChunkError } from '../pipeline/chunked.js';
import { appendExtent } from '../pipeline/extents.js';
import { EXTENT_HOLE, EXTENT_ZERO, type Backend, type BackendExtent } from '../pipeline/types.js';
import { CallGate } from '../util/call-gate.js';
import { checkChunkSize, chunkLength } from '../util/chunks.js';

/** A store of whole chunks; `index` is the chunk number and `off` = index * chunkSize. */
export interface ChunkStore {
  /** 'redis', 's3', … for errors and logs. */
  readonly name: string;
  /** Fills `dst` (the chunk's length; the last chunk may be short); false = missing (the caller zero-fills). */
  readChunk(index: number, off: number, dst: Buffer): Promise<boolean>;
  writeChunk(index: number, off: number, src: Buffer): Promise<void>;
  /** Removes a chunk (for trim); afterwards it is missing. */
  deleteChunk?(index: number, off: number): Promise<void>;
  /**
   * Which of chunks first .. first + count - 1 the store holds (for NBD block status: a missing
   * chunk is a hole). One answer per chunk, in order; stores that cannot tell cheaply leave it out.
   */
  present?(first: number, count: number, chunkSize: number): Promise<readonly boolean[]>;
  sync?(): Promise<void>;
  close(): Promise<void>;
}

export interface ChunkStoreBackendOptions {
  /** Bytes in the target (>= 0). */
  readonly size: number;
  /** Bytes per stored chunk, 1 byte to 1 GiB. */
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

/** At most `max` store calls at once; the rest wait in order. */
class Slots {
  readonly #max: number;
  #inFlight = 0;
  readonly #waiters: Array<() => void> = [];

  constructor(max: number) {
    this.#max = max === 0 ? Number.POSITIVE_INFINITY : max;
  }

  async run<T>(call: () => Promise<T>): Promise<T> {
    if (this.#inFlight < this.#max) this.#inFlight++;
    else await new Promise<void>((resolve) => this.#waiters.push(resolve)); // #release hands its slot over
    try {
      return await call();
    } finally {
      const next = this.#waiters.shift();
      if (next !== undefined) next();
      else this.#inFlight--;
    }
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
  /** What it accepts natively: whole chunks (the last one short). */
  readonly blockSize: number;
  readonly readOnly: boolean;
  readonly maxInFlight: number;
  readonly canMultiConn: boolean;
  readonly options: ResolvedChunkStoreBackendOptions;
  readonly #store: ChunkStore;
  readonly #slots: Slots;
  /** All zeros, one chunk long: what a trim writes when the store cannot delete. */
  readonly #zeros: Buffer;
  readonly #log: Logger;
  readonly #gate: CallGate;

  constructor(store: ChunkStore, options: ChunkStoreBackendOptions) {
    const { chunkSize, size } = resolveGeometry({ chunkSize: checkChunkSize(options.chunkSize, 'chunkSize'), size: options.size });
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
    this.blockSize = chunkSize;
    this.readOnly = this.options.readOnly;
    this.maxInFlight = maxInFlight;
    this.canMultiConn = this.options.canMultiConn;
    this.#store = store;
    this.#slots = new Slots(maxInFlight);
    this.#gate = new CallGate(`${store.name} backend`);
    this.#log = (options.log ?? silentLogger).child({ component: 'chunk-store', backend: store.name });
    this.#zeros = Buffer.alloc(chunkSize);
    if (store.present !== undefined) this.extents = (off, length) => this.#extents(off, length);
  }

  /** Block status: held chunks are data, missing ones holes of zeros; any range, chunk-granular. */
  async #extents(off: number, length: number): Promise<readonly BackendExtent[]> {
    this.#enter(false);
    try {
      if (!Number.isSafeInteger(off) || !Number.isSafeInteger(length) || off < 0 || length < 0 || off + length > this.size) {
        throw new OutOfRangeError(off, length, this.size);
      }
      const end = off + length;
      const first = Math.floor(off / this.chunkSize);
      const count = Math.min(Math.ceil(end / this.chunkSize) - first, ChunkStoreBackend.MAX_EXTENT_CHUNKS);
      if (count <= 0) return [];
      const held = await this.#call('extents', off, length, () => this.#store.present!(first, count, this.chunkSize));
      const out: { length: number; flags: number }[] = [];
      for (let i = 0; i < count; i++) {
        const start = Math.max(off, (first + i) * this.chunkSize);
        const stop = Math.min(end, (first + i + 1) * this.chunkSize);
        const flags = held[i] === true ? 0 : EXTENT_HOLE | EXTENT_ZERO;
        appendExtent(out, stop - start, flags);
      }
      return out;
    } finally {
      this.#gate.leave();
    }
  }

  /** Chunks one extents() call asks the store about. */
  static readonly MAX_EXTENT_CHUNKS = 4096;

  extents?: (off: number, length: number) => Promise<readonly BackendExtent[]>;

  /** The store underneath (for tests and diagnostics). */
  get store(): ChunkStore {
    return this.#store;
  }

  /** Reads exactly one whole chunk; a chunk the store does not have reads as zeros. */
  async readAt(buf: Buffer, off: number): Promise<void> {
    this.#enter(false);
    try {
      this.#checkChunk(off, buf.length);
      const found = await this.#call('read', off, buf.length, () => this.#store.readChunk(off / this.chunkSize, off, buf));
      if (!found) buf.fill(0);
    } finally {
      this.#gate.leave();
    }
  }

  /** Writes exactly one whole chunk. */
  async writeAt(buf: Buffer, off: number): Promise<void> {
    this.#enter(true);
    try {
      this.#checkChunk(off, buf.length);
      await this.#call('write', off, buf.length, () => this.#store.writeChunk(off / this.chunkSize, off, buf));
    } finally {
      this.#gate.leave();
    }
  }

  /** Deletes a run of whole chunks (writes zeros when the store cannot delete); afterwards they read as zeros. */
  async trim(off: number, length: number): Promise<void> {
    this.#enter(true);
    try {
      await this.#discard(off, length);
    } finally {
      this.#gate.leave();
    }
  }

  /** zero() deletes chunks where the store can; else it writes zeros (not quicker than a write). */
  get fastZero(): boolean {
    return this.store.deleteChunk !== undefined;
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
      this.#gate.leave();
    }
  }

  close(): Promise<void> {
    return this.#gate.close(async () => {
      try {
        await this.#store.close();
      } catch (err) {
        this.#log.warn({ err }, 'closing the store failed');
        throw wrapStoreError(this.#store.name, err, 'close');
      }
    });
  }

  /** One store call in a slot, its error wrapped. */
  async #call<T>(op: string, off: number, length: number, call: () => Promise<T>): Promise<T> {
    try {
      return await this.#slots.run(call);
    } catch (err) {
      throw wrapStoreError(this.#store.name, err, op, off, length);
    }
  }

  /** One chunk per worker at a time, `maxInFlight` workers (trims can be huge). */
  async #discard(off: number, length: number): Promise<void> {
    if (!Number.isSafeInteger(off) || !Number.isSafeInteger(length) || off < 0 || length < 0 || off + length > this.size) {
      throw new OutOfRangeError(off, length, this.size);
    }
    const end = off + length;
    const chunkSize = this.chunkSize;
    if (off % chunkSize !== 0) throw new MisalignedError(off, chunkSize);
    if (end !== this.size && end % chunkSize !== 0) throw new MisalignedError(end, chunkSize);
    const trim = this.#store.deleteChunk !== undefined;
    let next = off;
    let failed = false;
    const worker = async (): Promise<void> => {
      while (next < end && !failed) {
        const pos = next;
        const n = chunkLength(pos, this.size, chunkSize);
        next = pos + n;
        try {
          if (trim) await this.#call('trim', pos, n, () => this.#store.deleteChunk!(pos / chunkSize, pos));
          else await this.#call('write', pos, n, () => this.#store.writeChunk(pos / chunkSize, pos, this.#zeros.subarray(0, n)));
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

  #checkChunk(off: number, length: number): void {
    const err = wholeChunkError(off, length, this.chunkSize, this.size);
    if (err !== undefined) throw err;
  }

  #enter(write: boolean): void {
    this.#gate.assertOpen();
    if (write && this.readOnly) throw new ReadOnlyError(`${this.#store.name} backend`);
    this.#gate.enter();
  }
}
