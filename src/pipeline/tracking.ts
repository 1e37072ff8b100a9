/**
 * TrackingReadWriterAt: records which chunks were written since the last `sync()`, in the
 * `tracked` column of a ChunkTable (the stack's, or one of its own).
 *
 * Guarantees: once `track()` was called, every write that succeeds sets the bit of each chunk it
 * touched (a write over several chunks sets each); a write that fails sets nothing. A write is
 * recorded when it completes, so one already in flight when `track()` is called is recorded too
 * (reporting too much is harmless; too little would lose data in a migration). `sync()` returns
 * the offsets sorted ascending and clears their bits; tracking stays on. Reads are forwarded
 * untouched. The bits are the set; a list of the chunks set since the last sync() indexes them,
 * so sync() costs O(d log d) for d chunks written, not a scan of the table.
 * Assumes of `next`: nothing beyond the ReadWriterAt contract; any (off, length) is passed through.
 */
import { UsageError } from '../errors.js';
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

export class TrackingReadWriterAt implements ReadWriterAt {
  readonly chunkSize: number;
  readonly table: ChunkTable;
  readonly #next: ReadWriterAt;
  readonly #bits: Uint8Array;
  readonly #set: number[] = [];
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
    this.#bits = this.table.tracked;
  }

  /** Whether writes are being recorded. */
  get tracking(): boolean {
    return this.#tracking;
  }

  /** Starts recording writes (idempotent; keeps what was recorded so far). */
  track(): void {
    this.#tracking = true;
  }

  /** The chunk offsets written since the last sync, ascending; clears them. Tracking stays on. */
  sync(): number[] {
    const indexes = this.#set.splice(0).sort((a, b) => a - b);
    for (const i of indexes) this.#bits[i] = 0;
    return indexes.map((i) => i * this.chunkSize);
  }

  readAt(buf: Buffer, off: number): Promise<void> {
    return this.#next.readAt(buf, off);
  }

  async writeAt(buf: Buffer, off: number): Promise<void> {
    await this.#next.writeAt(buf, off);
    if (!this.#tracking || buf.length === 0) return;
    const last = Math.min(Math.floor((off + buf.length - 1) / this.chunkSize), this.#bits.length - 1);
    for (let i = Math.floor(off / this.chunkSize); i <= last; i++) {
      if (this.#bits[i] === 1) continue;
      this.#bits[i] = 1;
      this.#set.push(i);
    }
  }
}
