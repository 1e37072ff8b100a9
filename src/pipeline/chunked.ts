/**
 * ChunkedReadWriterAt: lets only whole chunks through.
 *
 * Guarantees: a call reaches `next` only if its offset is a chunk boundary inside [0, size) and
 * its length is exactly that chunk's length (chunkSize, or the shorter remainder for the last
 * chunk when size is not a multiple of chunkSize). Otherwise it rejects, without touching `next`,
 * with OutOfRangeError (offset outside the target), MisalignedError (offset not a multiple of
 * chunkSize) or BadLengthError (wrong length for that chunk), checked in that order.
 * Assumes nothing of `next` beyond the ReadWriterAt contract; calls are forwarded as they are.
 */
import { BadLengthError, MisalignedError, OutOfRangeError, UsageError, type R3mapError } from '../errors.js';
import { chunkLength } from '../util/chunks.js';
import type { ReadWriterAt } from './types.js';

export interface ChunkedOptions {
  /** Bytes per chunk (> 0). */
  readonly chunkSize: number;
  /** Bytes in the target (>= 0); the last chunk is short when it is not a multiple of chunkSize. */
  readonly size: number;
}

/** Checks and freezes chunk geometry; shared by the whole-chunk stages. */
export function resolveGeometry(options: ChunkedOptions): Readonly<ChunkedOptions> {
  const { chunkSize, size } = options;
  if (!Number.isSafeInteger(chunkSize) || chunkSize <= 0) {
    throw new UsageError(`chunkSize must be a whole number of bytes > 0, got ${chunkSize}`);
  }
  if (!Number.isSafeInteger(size) || size < 0) {
    throw new UsageError(`size must be a whole number of bytes >= 0, got ${size}`);
  }
  return Object.freeze({ chunkSize, size });
}

/** The error for a call that is not exactly one whole chunk, or undefined when it is one. */
export function wholeChunkError(off: number, length: number, chunkSize: number, size: number): R3mapError | undefined {
  if (!Number.isSafeInteger(off) || off < 0 || off >= size) return new OutOfRangeError(off, length, size, 'chunk offset and length');
  if (off % chunkSize !== 0) return new MisalignedError(off, chunkSize);
  const expected = chunkLength(off, size, chunkSize);
  if (length !== expected) return new BadLengthError(length, expected, `length of the chunk at ${off}`);
  return undefined;
}

export class ChunkedReadWriterAt implements ReadWriterAt {
  readonly chunkSize: number;
  readonly size: number;
  readonly #next: ReadWriterAt;

  constructor(next: ReadWriterAt, options: ChunkedOptions) {
    const geometry = resolveGeometry(options);
    this.#next = next;
    this.chunkSize = geometry.chunkSize;
    this.size = geometry.size;
  }

  readAt(buf: Buffer, off: number): Promise<void> {
    const err = wholeChunkError(off, buf.length, this.chunkSize, this.size);
    return err === undefined ? this.#next.readAt(buf, off) : Promise.reject(err);
  }

  writeAt(buf: Buffer, off: number): Promise<void> {
    const err = wholeChunkError(off, buf.length, this.chunkSize, this.size);
    return err === undefined ? this.#next.writeAt(buf, off) : Promise.reject(err);
  }
}
