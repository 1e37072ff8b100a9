/**
 * TrackingReadWriterAt: records which chunks were written since the last `sync()`.
 *
 * Guarantees: once `track()` was called, every write that succeeds adds the offset of each chunk
 * it touched (a write over several chunks adds each) to a deduplicated set; a write that fails
 * adds nothing. A write is recorded when it completes, so one already in flight when `track()` is
 * called is recorded too (reporting too much is harmless; too little would lose data in a
 * migration). `sync()` returns the offsets sorted ascending and clears the set; tracking stays on.
 * Reads are forwarded untouched.
 * Assumes of `next`: nothing beyond the ReadWriterAt contract; any (off, length) is passed through.
 */
import { UsageError } from '../errors.js';
import type { ReadWriterAt } from './types.js';

export interface TrackingOptions {
  /** Bytes per chunk (> 0): recorded offsets are multiples of it. */
  readonly chunkSize: number;
}

export class TrackingReadWriterAt implements ReadWriterAt {
  readonly chunkSize: number;
  readonly #next: ReadWriterAt;
  readonly #dirty = new Set<number>();
  #tracking = false;

  constructor(next: ReadWriterAt, options: TrackingOptions) {
    const { chunkSize } = options;
    if (!Number.isSafeInteger(chunkSize) || chunkSize <= 0) {
      throw new UsageError(`chunkSize must be a whole number of bytes > 0, got ${chunkSize}`);
    }
    this.#next = next;
    this.chunkSize = chunkSize;
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
    const offsets = [...this.#dirty].sort((a, b) => a - b);
    this.#dirty.clear();
    return offsets;
  }

  readAt(buf: Buffer, off: number): Promise<void> {
    return this.#next.readAt(buf, off);
  }

  async writeAt(buf: Buffer, off: number): Promise<void> {
    await this.#next.writeAt(buf, off);
    if (!this.#tracking || buf.length === 0) return;
    const last = Math.floor((off + buf.length - 1) / this.chunkSize) * this.chunkSize;
    for (let chunk = Math.floor(off / this.chunkSize) * this.chunkSize; chunk <= last; chunk += this.chunkSize) {
      this.#dirty.add(chunk);
    }
  }
}
