/**
 * Read-only views of shared zeros, for stores that hand out their own memory (Backend.views) and
 * have nothing stored for a range: the NBD server recognises them and answers a hole
 * (NBD_REPLY_TYPE_OFFSET_HOLE) instead of sending zeros. No one may write into them.
 */
let zeros = Buffer.alloc(0);
/** Every zeros buffer ever handed out (a longer one replaces the current, older views stay valid). */
const zeroBuffers = new WeakSet<ArrayBufferLike>();

/** `length` bytes of zeros that nobody may write into. */
export function zeroView(length: number): Buffer {
  if (zeros.length < length) {
    zeros = Buffer.alloc(Math.max(length, 1024 * 1024));
    zeroBuffers.add(zeros.buffer);
  }
  return zeros.subarray(0, length);
}

/** True for a view that zeroView() returned. */
export function isZeroView(buf: Buffer): boolean {
  return zeroBuffers.has(buf.buffer);
}
