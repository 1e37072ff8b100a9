/**
 * TrackingReadWriterAt: records which chunks were written after track(), by epoch, in the
 * `tracked` column of a ChunkTable (the stack's, or one of its own).
 *
 * Epochs: tracking starts in epoch 1. A write that lands stamps each chunk it touched with the
 * current epoch (a write over several chunks stamps each; a write that fails stamps nothing).
 * `dirtySince(since)` returns the chunks stamped after epoch `since` and the epoch it covers, and
 * starts the next epoch, in one synchronous step: a write that lands later is stamped with the new
 * epoch, so the next `dirtySince(covered)` returns it. Nothing is ever cleared, so a caller that
 * lost a reply (a leecher killed -9) asks again with the last epoch it kept and gets a superset.
 *
 * A write is stamped when it completes, never before: a chunk listed by dirtySince() holds that
 * write's data already, so a reader that fetches it afterwards gets it; a write in flight during
 * dirtySince() is stamped with the next epoch. One in flight when track() is called is recorded
 * too (reporting too much is harmless; too little would lose data in a migration).
 *
 * Cost: the chunks stamped in the current epoch are also kept in a list, so the usual call (since =
 * the epoch the previous call covered) is O(d log d) for d chunks written; any other `since` scans
 * the table once. Reads are forwarded untouched.
 * Assumes of `next`: nothing beyond the ReadWriterAt contract; any (off, length) is passed through.
 */
import { MigrationError, UsageError } from '../errors.js';
import { ChunkTable } from './chunk-table.js';
import type { ReadWriterAt } from './types.js';

export interface TrackingOptions {
  /** Bytes per chunk (> 0): recorded offsets are multiples of it. */
  readonly chunkSize: number;
  /** Bytes in the target; default `next.size`. */
  readonly size?: number;
  /** The stack's chunk table (its `tracked` column is this stage's); default: a table of its own. */
  readonly table?: ChunkTable;
}

/** What dirtySince() found. */
export interface DirtySince {
  /** Chunk offsets written after the epoch asked for, ascending. */
  readonly offsets: number[];
  /** The last epoch these offsets cover: ask with it next time. */
  readonly epoch: number;
}

export class TrackingReadWriterAt implements ReadWriterAt {
  readonly chunkSize: number;
  readonly table: ChunkTable;
  readonly #next: ReadWriterAt;
  readonly #stamps: Uint32Array;
  /** Chunks stamped in the current epoch. */
  #current: number[] = [];
  #epoch = 1;
  #tracking = false;

  constructor(next: ReadWriterAt & { readonly size?: number }, options: TrackingOptions) {
    const { chunkSize } = options;
    if (!Number.isSafeInteger(chunkSize) || chunkSize <= 0) {
      throw new UsageError(`chunkSize must be a whole number of bytes > 0, got ${chunkSize}`);
    }
    const size = options.size ?? options.table?.size ?? next.size;
    if (size === undefined) throw new UsageError('a tracking stage needs the size of its target (size, table, or a next with a size)');
    this.table = options.table ?? new ChunkTable({ chunkSize, size });
    this.table.checkGeometry(chunkSize, size, 'tracking');
    this.#next = next;
    this.chunkSize = chunkSize;
    this.#stamps = this.table.tracked;
  }

  /** Whether writes are being recorded. */
  get tracking(): boolean {
    return this.#tracking;
  }

  /** The epoch writes landing now are stamped with. */
  get epoch(): number {
    return this.#epoch;
  }

  /** Starts recording writes (idempotent; keeps what was recorded so far). */
  track(): void {
    this.#tracking = true;
  }

  /**
   * The chunks written after epoch `since` (0: every chunk written since track()), and the epoch
   * this answer covers; the next epoch starts. A `since` the tracker has not reached yet is refused.
   */
  dirtySince(since: number): DirtySince {
    const covered = this.#epoch;
    if (!Number.isSafeInteger(since) || since < 0 || since >= covered) {
      throw new MigrationError(`dirty chunks since epoch ${String(since)} asked for, but this seeder is in epoch ${covered}: the leecher's state belongs to another migration`);
    }
    let indexes: number[];
    if (since === covered - 1) {
      indexes = this.#current.sort((a, b) => a - b);
    } else {
      indexes = [];
      const stamps = this.#stamps;
      for (let i = 0; i < stamps.length; i++) if (stamps[i]! > since) indexes.push(i);
    }
    this.#current = [];
    this.#epoch = covered + 1;
    return { offsets: indexes.map((i) => i * this.chunkSize), epoch: covered };
  }

  readAt(buf: Buffer, off: number): Promise<void> {
    return this.#next.readAt(buf, off);
  }

  async writeAt(buf: Buffer, off: number): Promise<void> {
    await this.#next.writeAt(buf, off);
    if (!this.#tracking || buf.length === 0) return;
    const epoch = this.#epoch;
    const stamps = this.#stamps;
    const last = Math.min(Math.floor((off + buf.length - 1) / this.chunkSize), stamps.length - 1);
    for (let i = Math.floor(off / this.chunkSize); i <= last; i++) {
      if (stamps[i] === epoch) continue;
      stamps[i] = epoch;
      this.#current.push(i);
    }
  }
}
