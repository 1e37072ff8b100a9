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
 * - With `remoteExtents` (the remote's block status), a pull first learns what the remote holds
 *   for the HOLE_WINDOW chunks around it (one call, shared by concurrent pulls) into the table's
 *   `remoteHole` column; a chunk the remote reports as a hole of zeros is then made LOCAL by
 *   writing zeros, without a fetch (so a sparse remote costs no transfer for its holes). Reads use
 *   what is known and never wait to learn it. markAsRemote forgets it (the remote changed there).
 * Assumes: whole chunks only (it sits under ArbitraryReadWriterAt; others reject with the errors of
 * ChunkedReadWriterAt); `remote` and `local` allow concurrent calls, fill whole buffers, keep no view.
 */
import { chunkLength } from '../util/chunks.js';
import { settleAll } from '../util/settle-all.js';
import { BufferPool } from './buffer-pool.js';
import { ChunkLocks } from './chunk-locks.js';
import { ChunkState } from './chunk-state.js';
import { ChunkTable, RemoteHole } from './chunk-table.js';
import { wholeChunkError } from './chunked.js';
import { EXTENT_HOLE, EXTENT_ZERO, type BackendExtent, type ReadWriterAt, type ReaderAt, type ScatterWriter } from './types.js';

export interface SyncedOptions {
  readonly chunkSize: number;
  readonly size: number;
  /** The stack's chunk table (its `state` column is this stage's); default: a table of its own. */
  readonly table?: ChunkTable;
  /** Called with the chunk offset on every REMOTE -> LOCAL transition; a promise it returns is not awaited. */
  readonly onChunkIsLocal?: (off: number) => unknown;
  /** Receives what onChunkIsLocal threw or rejected with; default: process.emitWarning. */
  readonly onError?: (err: unknown) => void;
  /** The remote's block status (Backend.extents), to skip fetching its holes. */
  readonly remoteExtents?: (off: number, length: number) => Promise<readonly BackendExtent[]>;
}

/** Chunks one remoteExtents call asks about. */
const HOLE_WINDOW = 1024;

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
  readonly #remoteExtents: ((off: number, length: number) => Promise<readonly BackendExtent[]>) | undefined;
  /** Windows (by first chunk) whose block status is being learned. */
  readonly #learning = new Map<number, Promise<void>>();

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
    this.#remoteExtents = options.remoteExtents;
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
    if (this.#remoteExtents !== undefined && this.table.remoteHole[i] === RemoteHole.UNKNOWN) await this.#learn(i);
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
    for (const off of offsets) {
      this.table.setState(off / this.chunkSize, to);
      if (to === ChunkState.REMOTE) this.table.remoteHole[off / this.chunkSize] = RemoteHole.UNKNOWN;
    }
  }

  /** Learns the remote's block status for chunk i's window; a failure leaves it unknown (fetched). */
  #learn(i: number): Promise<void> {
    const first = i - (i % HOLE_WINDOW);
    let learning = this.#learning.get(first);
    if (learning === undefined) {
      learning = this.#learnWindow(first).finally(() => this.#learning.delete(first));
      this.#learning.set(first, learning);
    }
    return learning;
  }

  async #learnWindow(first: number): Promise<void> {
    const { chunkSize, size } = this;
    const start = first * chunkSize;
    const end = Math.min(size, (first + HOLE_WINDOW) * chunkSize);
    const holes = this.table.remoteHole;
    for (let pos = start; pos < end; ) {
      let extents: readonly BackendExtent[];
      try {
        extents = await this.#remoteExtents!(pos, end - pos);
      } catch {
        extents = [];
      }
      const from = pos;
      for (const e of extents) {
        if (e.length <= 0) break;
        const zeros = (e.flags & EXTENT_HOLE) !== 0 && (e.flags & EXTENT_ZERO) !== 0;
        const stop = Math.min(end, pos + e.length);
        // A chunk is a hole only if the whole of it is; a chunk the extent covers in part is data.
        for (let c = Math.floor(pos / chunkSize); c * chunkSize < stop; c++) {
          const whole = c * chunkSize >= pos && Math.min(size, (c + 1) * chunkSize) <= stop;
          if (zeros && whole) {
            if (holes[c] === RemoteHole.UNKNOWN) holes[c] = RemoteHole.HOLE;
          } else {
            holes[c] = RemoteHole.DATA;
          }
        }
        pos = stop;
        if (pos >= end) break;
      }
      if (pos === from) {
        // Nothing learned (an error, or no extents): fetched as usual, not asked again until marked remote.
        for (let c = Math.floor(pos / chunkSize); c * chunkSize < end; c++) if (holes[c] === RemoteHole.UNKNOWN) holes[c] = RemoteHole.DATA;
        return;
      }
    }
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
      if (fetch && this.table.remoteHole[i] === RemoteHole.HOLE) buf.fill(0);
      else if (fetch) await this.#remote.readAt(buf, off);
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
