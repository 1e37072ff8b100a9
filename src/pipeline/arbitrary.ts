/**
 * ArbitraryReadWriterAt: any (off, length) inside [0, size) onto whole chunks of `next`.
 *
 * Guarantees:
 * - A range outside [0, size) rejects with OutOfRangeError before `next` is touched.
 * - A read covering a whole chunk reads straight into the caller's buffer; a partial chunk is read
 *   whole into a pooled buffer and the requested part copied out. The chunks of one call are read
 *   concurrently; the call settles only after every chunk call to `next` has settled.
 * - A partial-chunk write is read-modify-write under that chunk's lock, so concurrent partial
 *   writes to one chunk all survive. A whole aligned chunk is written without the read, but under
 *   the same lock, so it orders with an RMW of that chunk in progress.
 * - `writev` (one write given as pieces) splits the pieces at chunk boundaries without copying:
 *   a chunk inside one piece is written from a view of it, one spanning pieces goes to
 *   `next.writev` (or is gathered into a pooled buffer when `next` has none).
 * - Pooled buffers are zero-filled before reuse; no view of the caller's buffer outlives the call.
 * Assumes of `next`: whole chunks only (chunk i = [i*chunkSize, min((i+1)*chunkSize, size)), the
 * last one may be short), reads fill the whole buffer or reject, concurrent calls are allowed, and
 * `next` keeps no view of the buffers it is given.
 */
import { OutOfRangeError } from '../errors.js';
import { chunkCount, chunkLength } from '../util/chunks.js';
import { settleAll } from '../util/settle-all.js';
import { BufferPool } from './buffer-pool.js';
import { ChunkLocks } from './chunk-locks.js';
import { resolveGeometry } from './chunked.js';
import type { ReadWriterAt, ScatterWriter } from './types.js';

export interface ArbitraryOptions {
  /** Bytes per chunk of `next` (> 0). */
  readonly chunkSize: number;
  /** Bytes in the target (>= 0). */
  readonly size: number;
  /** Free chunk buffers kept per size for partial chunks; 0 allocates each time. Default 16. */
  readonly poolMaxPerSize?: number;
}

export class ArbitraryReadWriterAt implements ReadWriterAt, Required<ScatterWriter> {
  readonly chunkSize: number;
  readonly size: number;
  readonly #next: ReadWriterAt & ScatterWriter;
  readonly #locks: ChunkLocks;
  readonly #pool: BufferPool;

  constructor(next: ReadWriterAt & ScatterWriter, options: ArbitraryOptions) {
    const { chunkSize, size } = resolveGeometry(options);
    this.#next = next;
    this.chunkSize = chunkSize;
    this.size = size;
    this.#locks = new ChunkLocks(chunkCount(size, chunkSize));
    this.#pool = new BufferPool({ maxPerSize: options.poolMaxPerSize ?? 16 });
  }

  async readAt(buf: Buffer, off: number): Promise<void> {
    this.#checkRange(off, buf.length);
    if (buf.length === 0) return;
    const first = Math.floor(off / this.chunkSize);
    const last = Math.floor((off + buf.length - 1) / this.chunkSize);
    if (first === last) return this.#readChunk(buf, off, first);
    const parts: Array<Promise<void>> = [];
    for (let i = first; i <= last; i++) parts.push(this.#readChunk(buf, off, i));
    return settleAll(parts);
  }

  async writeAt(buf: Buffer, off: number): Promise<void> {
    this.#checkRange(off, buf.length);
    if (buf.length === 0) return;
    const first = Math.floor(off / this.chunkSize);
    const last = Math.floor((off + buf.length - 1) / this.chunkSize);
    if (first === last) return this.#writeChunk(buf, off, first);
    const parts: Array<Promise<void>> = [];
    for (let i = first; i <= last; i++) parts.push(this.#writeChunk(buf, off, i));
    return settleAll(parts);
  }

  /** One write of the pieces' total length at `off`, the pieces as if concatenated. */
  async writev(bufs: readonly Buffer[], off: number): Promise<void> {
    let length = 0;
    for (const b of bufs) length += b.length;
    this.#checkRange(off, length);
    if (length === 0) return;
    const parts: Array<Promise<void>> = [];
    const end = off + length;
    let piece = 0;
    let at = 0; // position inside bufs[piece]
    for (let pos = off; pos < end;) {
      const i = Math.floor(pos / this.chunkSize);
      const stop = Math.min((i + 1) * this.chunkSize, end);
      const from = pos;
      const views: Buffer[] = [];
      while (pos < stop) {
        const b = bufs[piece]!;
        const take = Math.min(b.length - at, stop - pos);
        if (take > 0) views.push(b.subarray(at, at + take));
        at += take;
        pos += take;
        if (at === b.length) {
          piece++;
          at = 0;
        }
      }
      parts.push(views.length === 1 ? this.#writeChunk(views[0]!, from, i) : this.#writeViews(views, from, i));
    }
    return parts.length === 1 ? parts[0]! : settleAll(parts);
  }

  #checkRange(off: number, length: number): void {
    if (!Number.isSafeInteger(off) || off < 0 || off + length > this.size) {
      throw new OutOfRangeError(off, length, this.size);
    }
  }

  /** Reads the part of chunk `i` that [off, off + buf.length) covers into `buf`. */
  async #readChunk(buf: Buffer, off: number, i: number): Promise<void> {
    const chunkOff = i * this.chunkSize;
    const chunkLen = chunkLength(chunkOff, this.size, this.chunkSize);
    const from = Math.max(off, chunkOff);
    const to = Math.min(off + buf.length, chunkOff + chunkLen);
    if (to - from === chunkLen) return this.#next.readAt(buf.subarray(from - off, to - off), chunkOff);
    const tmp = this.#pool.take(chunkLen);
    try {
      await this.#next.readAt(tmp, chunkOff);
      tmp.copy(buf, from - off, from - chunkOff, to - chunkOff);
    } finally {
      this.#pool.give(tmp);
    }
  }

  /** Writes the part of `buf` that falls into chunk `i`, under that chunk's lock. */
  async #writeChunk(buf: Buffer, off: number, i: number): Promise<void> {
    const chunkOff = i * this.chunkSize;
    const chunkLen = chunkLength(chunkOff, this.size, this.chunkSize);
    const from = Math.max(off, chunkOff);
    const to = Math.min(off + buf.length, chunkOff + chunkLen);
    const release = await this.#locks.acquire(i);
    try {
      if (to - from === chunkLen) {
        await this.#next.writeAt(buf.subarray(from - off, to - off), chunkOff);
        return;
      }
      await this.#modify(chunkOff, chunkLen, (tmp) => buf.copy(tmp, from - chunkOff, from - off, to - off));
    } finally {
      release();
    }
  }

  /** Writes `views` (the pieces of [from, from + their length), all inside chunk i) under its lock. */
  async #writeViews(views: readonly Buffer[], from: number, i: number): Promise<void> {
    const chunkOff = i * this.chunkSize;
    const chunkLen = chunkLength(chunkOff, this.size, this.chunkSize);
    let length = 0;
    for (const v of views) length += v.length;
    const gather = (tmp: Buffer): void => {
      let at = from - chunkOff;
      for (const v of views) at += v.copy(tmp, at);
    };
    const release = await this.#locks.acquire(i);
    try {
      if (length !== chunkLen) return await this.#modify(chunkOff, chunkLen, gather);
      if (this.#next.writev !== undefined) return await this.#next.writev(views, chunkOff);
      const tmp = this.#pool.take(chunkLen);
      try {
        gather(tmp);
        await this.#next.writeAt(tmp, chunkOff);
      } finally {
        this.#pool.give(tmp);
      }
    } finally {
      release();
    }
  }

  /** Read-modify-write of a whole chunk (its lock held by the caller): `change` edits the copy. */
  async #modify(chunkOff: number, chunkLen: number, change: (tmp: Buffer) => void): Promise<void> {
    const tmp = this.#pool.take(chunkLen);
    try {
      await this.#next.readAt(tmp, chunkOff);
      change(tmp);
      await this.#next.writeAt(tmp, chunkOff);
    } finally {
      this.#pool.give(tmp);
    }
  }
}
