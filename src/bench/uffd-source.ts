/**
 * The memory source of `r3map-bench uffd` (and of the userfaultfd tests): a reader over a
 * pre-filled Buffer, built inside the fault handler thread by mapReader's module reader. Word i
 * (bytes 4i..4i+3, little-endian) is `(i + seed) * 2654435761 mod 2^32`, exactly as
 * scripts/uffd-native/handler.c fills its source, so every misplaced word is caught. Also the
 * shared page order (xorshift32 Fisher-Yates) both sides touch in "rand" order.
 */
import { OutOfRangeError } from '../errors.js';
import type { ReaderAt } from '../pipeline/types.js';

/** Fills `buf` with the pattern words starting at word `firstWord` (buf.length a multiple of 4). */
export function fillPattern(buf: Buffer, seed: number, firstWord = 0): void {
  const words = new Uint32Array(buf.buffer, buf.byteOffset, buf.length >>> 2);
  for (let i = 0; i < words.length; i++) words[i] = Math.imul(firstWord + i + seed, 2654435761) >>> 0;
}

/** A Buffer of `size` bytes of the pattern (size rounded up to whole words, then trimmed). */
export function patternBuffer(size: number, seed: number): Buffer {
  const buf = Buffer.allocUnsafe(Math.ceil(size / 4) * 4);
  fillPattern(buf, seed);
  return buf.subarray(0, size);
}

/** Page indexes 0..pages-1, shuffled with the native handler's xorshift32 Fisher-Yates when `shuffle`. */
export function pageOrder(pages: number, shuffle: boolean, seed: number): Uint32Array {
  const order = new Uint32Array(pages);
  for (let i = 0; i < pages; i++) order[i] = i;
  if (!shuffle) return order;
  let x = seed >>> 0 || 1;
  for (let i = pages - 1; i > 0; i--) {
    x = (x ^ (x << 13)) >>> 0;
    x = (x ^ (x >>> 17)) >>> 0;
    x = (x ^ (x << 5)) >>> 0;
    const j = x % (i + 1);
    const t = order[i]!;
    order[i] = order[j]!;
    order[j] = t;
  }
  return order;
}

/** A ReaderAt over the pattern held in memory: each read is one copy. */
export class PatternSource implements ReaderAt {
  readonly size: number;
  readonly #data: Buffer;
  readonly #zeroCopy: boolean;

  /** `zeroCopy` false hides viewAt's result, so every fault goes through readAt (a copy). */
  constructor(size: number, seed: number, zeroCopy = true) {
    this.size = size;
    this.#data = patternBuffer(size, seed);
    this.#zeroCopy = zeroCopy;
  }

  readAt(buf: Buffer, off: number): Promise<void> {
    if (off < 0 || off + buf.length > this.size) return Promise.reject(new OutOfRangeError(off, buf.length, this.size));
    this.#data.copy(buf, 0, off, off + buf.length);
    return Promise.resolve();
  }

  /** A view of the bytes themselves (the fault handler then installs them with no extra copy). */
  viewAt(off: number, length: number): Buffer | undefined {
    if (!this.#zeroCopy || off < 0 || off + length > this.size) return undefined;
    return this.#data.subarray(off, off + length);
  }

  close(): Promise<void> {
    return Promise.resolve();
  }
}

/** The module-reader entry: `{ module: <this file>, exportName: 'openPatternSource', args: [size, seed, zeroCopy?] }`. */
export function openPatternSource(size: number, seed: number, zeroCopy = true): PatternSource {
  return new PatternSource(size, seed, zeroCopy);
}
