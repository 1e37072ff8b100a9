/**
 * ChunkTable: the one home of every per-chunk fact of a managed stack, one typed-array column per
 * fact, indexed by chunk (chunk i = [i * chunkSize, min((i + 1) * chunkSize, size))). The stages
 * share one table and each column has one writer:
 *
 *   column       values                       written by           read by
 *   state        ChunkState remote/pulling/   SyncedReadWriterAt   Synced, CacheState (local bits),
 *                local                                             stats
 *   dirty        1 = written, not yet pushed   WriteMarks (set),    Pusher, CacheState, stats
 *                                             Pusher (clear)
 *   generation   bumped by every write         WriteMarks           Pusher (a push clears `dirty`
 *                                                                  only if it did not move)
 *   unsynced     RemoteSync clean/written/     RemoteStage          CacheState (still dirty until
 *                syncing                                           the remote synced it)
 *   writing      1 = a write is on its way     WriteMarks           CacheState (saved as dirty)
 *                into the cache
 *   pull         PullState queued/pulling/     Puller               Puller
 *                stale/pulled
 *   tracked      the seeder's epoch in which    TrackingReadWriterAt TrackingReadWriterAt (its
 *                the chunk was last written,                       dirtySince(epoch) lists the
 *                0 = not since track()                             chunks written after an epoch)
 *   remoteHole   RemoteHole unknown/hole/data:  SyncedReadWriterAt   Synced (a fetch of a hole
 *                what the remote's block                           writes zeros instead)
 *                status said of the chunk
 *
 * Counts (`localCount`, `dirtyCount`) are kept by the setters, so they never drift from the
 * columns; `changes` moves on every change worth persisting (CacheState saves when it moved).
 * Migration adds its columns (tracked since Track, and whatever later rounds need) to this table
 * rather than keeping chunk state anywhere else.
 */
import { MisalignedError, OutOfRangeError, UsageError } from '../errors.js';
import { chunkCount, chunkLength } from '../util/chunks.js';
import { ChunkState } from './chunk-state.js';
import { resolveGeometry } from './chunked.js';

/** `unsynced`: where a pushed chunk stands against the remote's own sync. */
export const RemoteSync = {
  /** Not written to the remote since the last remote sync that completed. */
  CLEAN: 0,
  /** Written to the remote; no sync begun after that write has completed yet. */
  WRITTEN: 1,
  /** Written, and a remote sync that covers the write is running. */
  SYNCING: 2,
} as const;
export type RemoteSync = (typeof RemoteSync)[keyof typeof RemoteSync];

/** `remoteHole`: what the remote's block status said of a chunk not fetched yet. */
export const RemoteHole = { UNKNOWN: 0, HOLE: 1, DATA: 2 } as const;
export type RemoteHole = (typeof RemoteHole)[keyof typeof RemoteHole];

/** `pull`: the Puller's work queue, one entry per chunk. */
export const PullState = { QUEUED: 0, PULLING: 1, PULLING_STALE: 2, PULLED: 3 } as const;
export type PullState = (typeof PullState)[keyof typeof PullState];

export interface ChunkTableOptions {
  /** Bytes per chunk (> 0); every chunk but the last is this long. */
  readonly chunkSize: number;
  /** Bytes in total (>= 0); need not be a multiple of chunkSize. */
  readonly size: number;
}

export class ChunkTable {
  readonly chunkSize: number;
  readonly size: number;
  readonly chunks: number;
  readonly state: Uint8Array;
  readonly dirty: Uint8Array;
  readonly generation: Uint32Array;
  readonly unsynced: Uint8Array;
  readonly writing: Uint8Array;
  readonly pull: Uint8Array;
  readonly tracked: Uint32Array;
  readonly remoteHole: Uint8Array;
  #localCount = 0;
  #dirtyCount = 0;
  #changes = 0;

  constructor(options: ChunkTableOptions) {
    const { chunkSize, size } = resolveGeometry(options);
    this.chunkSize = chunkSize;
    this.size = size;
    this.chunks = chunkCount(size, chunkSize);
    this.state = new Uint8Array(this.chunks);
    this.dirty = new Uint8Array(this.chunks);
    this.generation = new Uint32Array(this.chunks);
    this.unsynced = new Uint8Array(this.chunks);
    this.writing = new Uint8Array(this.chunks);
    this.pull = new Uint8Array(this.chunks);
    this.tracked = new Uint32Array(this.chunks);
    this.remoteHole = new Uint8Array(this.chunks);
  }

  /** Chunks whose state is LOCAL. */
  get localCount(): number {
    return this.#localCount;
  }

  /** Chunks written and not pushed yet. */
  get dirtyCount(): number {
    return this.#dirtyCount;
  }

  /** Moves on every change a saved copy of the table would miss. */
  get changes(): number {
    return this.#changes;
  }

  /** Sets chunk i's ChunkState, keeping localCount. */
  setState(i: number, to: ChunkState): void {
    const was = this.state[i];
    if (was === to) return;
    this.#localCount += (to === ChunkState.LOCAL ? 1 : 0) - (was === ChunkState.LOCAL ? 1 : 0);
    this.state[i] = to;
    this.#changes++;
  }

  isLocal(i: number): boolean {
    return this.state[i] === ChunkState.LOCAL;
  }

  /** A write landed in chunk i: it is dirty, and a push that read it before now must not clean it. */
  markDirty(i: number): void {
    this.generation[i] = (this.generation[i]! + 1) >>> 0;
    if (this.dirty[i] === 0) {
      this.dirty[i] = 1;
      this.#dirtyCount++;
    }
    this.#changes++;
  }

  /** A push of chunk i that read it at `generation` landed: clean unless written since. */
  markPushed(i: number, generation: number): boolean {
    if (this.generation[i] !== generation || this.dirty[i] === 0) return false;
    this.dirty[i] = 0;
    this.#dirtyCount--;
    this.#changes++;
    return true;
  }

  /** Something persisted outside the columns changed (a remote sync completed). */
  noteChange(): void {
    this.#changes++;
  }

  /** Chunk indexes whose `dirty` bit is set, ascending. */
  dirtyIndexes(): number[] {
    const out: number[] = [];
    for (let i = 0; i < this.chunks; i++) if (this.dirty[i] === 1) out.push(i);
    return out;
  }

  /** Bytes in chunk i (the last one may be short). */
  lengthOf(i: number): number {
    return chunkLength(i * this.chunkSize, this.size, this.chunkSize);
  }

  /** The index of the chunk starting at `off`; throws for an offset that does not start a chunk. */
  indexOf(off: number, what = 'chunk offset'): number {
    if (off % this.chunkSize !== 0) throw new MisalignedError(off, this.chunkSize);
    if (!Number.isSafeInteger(off) || off < 0 || off >= this.size) throw new OutOfRangeError(off, this.chunkSize, this.size, what);
    return off / this.chunkSize;
  }

  /** Throws unless chunkSize and size describe the same geometry (a stage given a table for another target). */
  checkGeometry(chunkSize: number, size: number, who: string): void {
    if (chunkSize !== this.chunkSize || size !== this.size) {
      throw new UsageError(`${who}: the chunk table is for ${this.size} bytes in chunks of ${this.chunkSize}, not ${size} in chunks of ${chunkSize}`);
    }
  }
}
