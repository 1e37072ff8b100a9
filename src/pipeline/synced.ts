/**
 * SyncedReadWriterAt: a remote reader plus a local store, one state per chunk (ChunkState), kept
 * in the `state` column of the stack's ChunkTable (this stage is that column's only writer).
 *
 * Guarantees:
 * - A LOCAL chunk is read from and written to `local` directly.
 * - Reading a REMOTE chunk fetches it under the chunk's lock (remote.readAt into the caller's
 *   buffer, local.writeAt, LOCAL, onChunkIsLocal); concurrent readers wait for it, then read local.
 * - Writing a REMOTE chunk writes `local` under the same lock, without a fetch, and makes it LOCAL.
 *   A write that races a fetch of the same chunk waits for it, so the fetch's older data can never
 *   overwrite the write.
 * - onChunkIsLocal fires exactly once per REMOTE -> LOCAL transition caused by a read, a pull or a
 *   write (again after markAsRemote), synchronously, before the call that caused it settles.
 *   markAsLocal restores state and fires nothing. A hook that throws (or rejects) never fails the
 *   data path: the error goes to `onError`, or, without one, to process.emitWarning as an Error
 *   named 'R3mapHookWarning' with the hook's error as `cause` (never dropped silently).
 * - markAsRemote during a fetch wins: that fetch's data is not marked LOCAL.
 * Assumes: whole chunks only (it sits under ArbitraryReadWriterAt; others reject with the errors of
 * ChunkedReadWriterAt); `remote` and `local` allow concurrent calls, fill whole buffers, keep no view.
 */
import { chunkLength } from '../util/chunks.js';
import { settleAll } from '../util/settle-all.js';
import { BufferPool } from './buffer-pool.js';
import { ChunkLocks } from './chunk-locks.js';
import { ChunkState } from './chunk-state.js';
import { ChunkTable } from './chunk-table.js';
import { wholeChunkError } from './chunked.js';
import type { ReadWriterAt, ReaderAt, ScatterWriter } from './types.js';

export interface SyncedOptions {
  readonly chunkSize: number;
  readonly size: number;
  /** The stack's chunk table (its `state` column is this stage's); default: a table of its own. */
  readonly table?: ChunkTable;
  /** Called with the chunk offset on every REMOTE -> LOCAL transition; a promise it returns is not awaited. */
  readonly onChunkIsLocal?: (off: number) => unknown;
  /** Receives what onChunkIsLocal threw or rejected with; default: process.emitWarning. */
  readonly onError?: (err: unknown) => void;
}

export class SyncedReadWriterAt implements ReadWriterAt, Required<ScatterWriter> {
  readonly chunkSize: number;
  readonly size: number;
  readonly #remote: ReaderAt;
  readonly #local: ReadWriterAt & ScatterWriter;
  readonly table: ChunkTable;
  readonly #state: Uint8Array;
  readonly #locks: ChunkLocks;
  readonly #pool = new BufferPool({ maxPerSize: 16 });
  readonly #onChunkIsLocal: ((off: number) => unknown) | undefined;
  readonly #onError: ((err: unknown) => void) | undefined;

  constructor(remote: ReaderAt, local: ReadWriterAt & ScatterWriter, options: SyncedOptions) {
    this.table = options.table ?? new ChunkTable(options);
    this.table.checkGeometry(options.chunkSize, options.size, 'synced');
    this.chunkSize = this.table.chunkSize;
    this.size = this.table.size;
    this.#remote = remote;
    this.#local = local;
    this.#state = this.table.state;
    this.#locks = new ChunkLocks(this.table.chunks);
    this.#onChunkIsLocal = options.onChunkIsLocal;
    this.#onError = options.onError;
  }

  /** Chunks currently LOCAL. */
  get localCount(): number {
    return this.table.localCount;
  }

  isLocal(off: number): boolean {
    return this.#state[this.#index(off)] === ChunkState.LOCAL;
  }

  readAt(buf: Buffer, off: number): Promise<void> {
    const err = wholeChunkError(off, buf.length, this.chunkSize, this.size);
    if (err !== undefined) return Promise.reject(err);
    if (this.#state[off / this.chunkSize] === ChunkState.LOCAL) return this.#local.readAt(buf, off);
    return this.#viaLock(buf, off, false);
  }

  writeAt(buf: Buffer, off: number): Promise<void> {
    const err = wholeChunkError(off, buf.length, this.chunkSize, this.size);
    if (err !== undefined) return Promise.reject(err);
    if (this.#state[off / this.chunkSize] === ChunkState.LOCAL) return this.#local.writeAt(buf, off);
    return this.#viaLock(buf, off, true);
  }

  /**
   * One whole chunk given as pieces: to a LOCAL chunk, they go to `local.writev` as they are;
   * otherwise (or without local.writev) they are gathered into a pooled buffer for writeAt.
   */
  async writev(bufs: readonly Buffer[], off: number): Promise<void> {
    let length = 0;
    for (const b of bufs) length += b.length;
    const err = wholeChunkError(off, length, this.chunkSize, this.size);
    if (err !== undefined) throw err;
    if (this.#local.writev !== undefined && this.#state[off / this.chunkSize] === ChunkState.LOCAL) return this.#local.writev(bufs, off);
    const tmp = this.#pool.take(length);
    try {
      let at = 0;
      for (const b of bufs) at += b.copy(tmp, at);
      await this.writeAt(tmp, off);
    } finally {
      this.#pool.give(tmp);
    }
  }

  /**
   * Makes the chunk at `off` LOCAL without returning its data (for the Puller); true when it
   * fetched it, false when the chunk was LOCAL already. If markAsRemote hits the chunk while it is
   * being fetched, it resolves (true) with the chunk still REMOTE.
   */
  async pull(off: number): Promise<boolean> {
    const i = this.#index(off);
    if (this.#state[i] === ChunkState.LOCAL) return false;
    const release = await this.#locks.acquire(i);
    const tmp = this.#state[i] === ChunkState.LOCAL ? undefined : this.#pool.take(chunkLength(off, this.size, this.chunkSize));
    try {
      if (tmp !== undefined) await this.#becomeLocal(i, tmp, off, true);
    } finally {
      if (tmp !== undefined) this.#pool.give(tmp);
      release();
    }
    return tmp !== undefined;
  }

  /**
   * Makes every chunk that [off, off + length) touches LOCAL (NBD_CMD_CACHE), `concurrency` pulls at
   * a time; resolves when they all are. Rejects with the first failure (the others still finish).
   */
  async pullRange(off: number, length: number, concurrency = 16): Promise<void> {
    if (length <= 0) return;
    const end = Math.min(off + length, this.size);
    let next = Math.floor(off / this.chunkSize) * this.chunkSize;
    const lane = async (): Promise<void> => {
      while (next < end) {
        const at = next;
        next += this.chunkSize;
        await this.pull(at);
      }
    };
    const lanes = Math.max(1, Math.min(concurrency, Math.ceil((end - next) / this.chunkSize)));
    await settleAll(Array.from({ length: lanes }, lane));
  }

  /** Marks chunks REMOTE again (their remote data is newer); the next read or pull fetches them. */
  markAsRemote(offsets: readonly number[]): void {
    this.#mark(offsets, ChunkState.REMOTE);
  }

  /** Marks chunks LOCAL without a fetch or a callback (resuming from a persisted state). */
  markAsLocal(offsets: readonly number[]): void {
    this.#mark(offsets, ChunkState.LOCAL);
  }

  /** Validates every offset first, so a bad one changes nothing. */
  #mark(offsets: readonly number[], to: ChunkState): void {
    for (const off of offsets) this.#index(off);
    for (const off of offsets) this.table.setState(off / this.chunkSize, to);
  }

  /** The slow path, for a chunk that is not LOCAL (yet): under its lock, make it LOCAL first. */
  async #viaLock(buf: Buffer, off: number, write: boolean): Promise<void> {
    const i = off / this.chunkSize;
    const release = await this.#locks.acquire(i);
    try {
      if (this.#state[i] !== ChunkState.LOCAL) return await this.#becomeLocal(i, buf, off, !write);
      if (write) return await this.#local.writeAt(buf, off);
    } finally {
      release();
    }
    return this.#local.readAt(buf, off); // another call made it LOCAL while we waited
  }

  /** With chunk i's lock held: optionally fetch into `buf`, write it locally, mark it LOCAL. */
  async #becomeLocal(i: number, buf: Buffer, off: number, fetch: boolean): Promise<void> {
    const table = this.table;
    table.setState(i, ChunkState.PULLING);
    try {
      if (fetch) await this.#remote.readAt(buf, off);
      await this.#local.writeAt(buf, off);
    } catch (err) {
      if (this.#state[i] === ChunkState.PULLING) table.setState(i, ChunkState.REMOTE);
      throw err;
    }
    if (this.#state[i] !== ChunkState.PULLING) return; // marked remote (or local) meanwhile
    table.setState(i, ChunkState.LOCAL);
    this.#notify(off);
  }

  /** Runs the hook; what it throws or rejects with goes to #report. */
  #notify(off: number): void {
    try {
      const result = this.#onChunkIsLocal?.(off);
      if (result instanceof Promise) result.catch((err: unknown) => this.#report(err, off));
    } catch (err) {
      this.#report(err, off);
    }
  }

  /** Hands a hook failure to onError, else (or if onError throws) to process.emitWarning. */
  #report(err: unknown, off: number): void {
    let cause = err;
    try {
      if (this.#onError !== undefined) return this.#onError(err);
    } catch (onErrorFailed) {
      cause = onErrorFailed;
    }
    const warning = new Error(`onChunkIsLocal(${off}) failed; the data path went on`, { cause });
    warning.name = 'R3mapHookWarning';
    process.emitWarning(warning);
  }

  /** The chunk index of `off`; throws if `off` is not a chunk offset inside the target. */
  #index(off: number): number {
    const err = wholeChunkError(off, chunkLength(off, this.size, this.chunkSize), this.chunkSize, this.size);
    if (err !== undefined) throw err;
    return off / this.chunkSize;
  }
}
