/**
 * Per-connection buffers for READ data and WRITE payloads, in power-of-two size classes from 4 KiB.
 * Reusing them keeps large buffers' pages mapped instead of faulting fresh ones in per request.
 *
 * `acquire(length)` returns a buffer of at least `length` bytes (callers take a `subarray`); below
 * 4 KiB it is a plain `Buffer.allocUnsafe` (Node's own slab pool) and `release` ignores it. A
 * released buffer must no longer be used by anyone, the socket included: release READ buffers in
 * the write callback. At most `maxRetainedBytes` are kept; the rest is left to the GC.
 */
export interface PayloadPoolOptions {
  /** Bytes of free buffers kept for reuse; 0 keeps none. */
  readonly maxRetainedBytes: number;
}

const MIN_CLASS_SHIFT = 12;
const MIN_CLASS_SIZE = 1 << MIN_CLASS_SHIFT;
const MAX_CLASS_SHIFT = 31;

export class PayloadPool {
  readonly #free: Buffer[][] = [];
  readonly #maxRetainedBytes: number;
  #retainedBytes = 0;

  constructor(options: PayloadPoolOptions) {
    this.#maxRetainedBytes = options.maxRetainedBytes;
    for (let shift = 0; shift <= MAX_CLASS_SHIFT; shift++) this.#free.push([]);
  }

  /** Bytes held in free buffers now. */
  get retainedBytes(): number {
    return this.#retainedBytes;
  }

  acquire(length: number): Buffer {
    if (length < MIN_CLASS_SIZE) return Buffer.allocUnsafe(length);
    const shift = 32 - Math.clz32(length - 1);
    if (shift > MAX_CLASS_SHIFT) return Buffer.allocUnsafeSlow(length);
    const buf = this.#free[shift]!.pop();
    if (buf !== undefined) {
      this.#retainedBytes -= buf.length;
      return buf;
    }
    return Buffer.allocUnsafeSlow(2 ** shift);
  }

  release(buf: Buffer): void {
    const size = buf.length;
    if (size < MIN_CLASS_SIZE || (size & (size - 1)) !== 0 || buf.byteOffset !== 0) return;
    if (this.#retainedBytes + size > this.#maxRetainedBytes) return;
    const shift = 31 - Math.clz32(size);
    if (shift > MAX_CLASS_SHIFT) return;
    this.#free[shift]!.push(buf);
    this.#retainedBytes += size;
  }
}
