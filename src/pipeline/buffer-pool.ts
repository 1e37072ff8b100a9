/**
 * A small free list of Buffers per exact size (the size classes a stage uses are few: the chunk
 * size and the short last chunk). Guarantees: `take(size)` returns a Buffer of exactly `size`
 * bytes, all zeros, that no one else holds; `give(buf)` zero-fills it before keeping it, so a
 * buffer is never handed out again with old contents. Keeps at most `maxPerSize` buffers per
 * size; extra ones are left to the GC. Giving the same buffer back twice throws.
 *
 * Assumes the caller gives back only buffers it took, and stops touching one once given back.
 */
import { UsageError } from '../errors.js';

export interface BufferPoolOptions {
  /** Free buffers kept per size; 0 keeps none (every take allocates). Default 16. */
  readonly maxPerSize?: number;
}

export class BufferPool {
  readonly maxPerSize: number;
  readonly #free = new Map<number, Buffer[]>();

  constructor(options: BufferPoolOptions = {}) {
    const maxPerSize = options.maxPerSize ?? 16;
    if (!Number.isSafeInteger(maxPerSize) || maxPerSize < 0) {
      throw new UsageError(`maxPerSize must be a whole number >= 0, got ${maxPerSize}`);
    }
    this.maxPerSize = maxPerSize;
  }

  /** A zero-filled Buffer of exactly `size` bytes, reused when one is free. */
  take(size: number): Buffer {
    const buf = this.#free.get(size)?.pop();
    // Buffer.alloc never hands out a slice of Node's shared pool, so a buffer is ours alone.
    return buf ?? Buffer.alloc(size);
  }

  /** Returns `buf` to the pool (zero-filled first); the caller must not touch it afterwards. */
  give(buf: Buffer): void {
    let list = this.#free.get(buf.length);
    if (list === undefined) {
      if (this.maxPerSize === 0) return;
      list = [];
      this.#free.set(buf.length, list);
    }
    if (list.includes(buf)) throw new Error(`buffer of ${buf.length} bytes given back to the pool twice`);
    if (list.length >= this.maxPerSize) return;
    buf.fill(0);
    list.push(buf);
  }

  /** How many free buffers of `size` bytes the pool holds. */
  available(size: number): number {
    return this.#free.get(size)?.length ?? 0;
  }
}
