/** Chunk i covers [i * chunkSize, min((i + 1) * chunkSize, size)); the last chunk may be short. */
export function chunkCount(size: number, chunkSize: number): number {
  return Math.ceil(size / chunkSize);
}

/** The length of the chunk that starts at `off` (short for the last chunk of an unaligned size). */
export function chunkLength(off: number, size: number, chunkSize: number): number {
  return Math.min(chunkSize, size - off);
}
