/**
 * A ReadWriterAt over a backend with `writev` that turns every `writeAt` into a `writev` of the
 * same bytes cut into pieces at pseudo-random points (empty pieces included), so the shared suite
 * runs its every write through the scatter path. Pieces are views of the caller's buffer, as the
 * NBD server's are views of socket chunks.
 */
import type { Backend, ReadWriterAt } from '../../src/pipeline/types.js';

/** A PRNG with a seed, so a failing split can be replayed. */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Cuts `buf` into views at random points: 1..maxPieces pieces, some possibly empty. */
export function splitAtRandom(buf: Buffer, random: () => number, maxPieces: number): Buffer[] {
  const cuts: number[] = [];
  const n = Math.floor(random() * maxPieces);
  for (let i = 0; i < n; i++) cuts.push(Math.floor(random() * (buf.length + 1)));
  cuts.sort((a, b) => a - b);
  const pieces: Buffer[] = [];
  let at = 0;
  for (const cut of cuts) {
    pieces.push(buf.subarray(at, cut));
    at = cut;
  }
  pieces.push(buf.subarray(at));
  return pieces;
}

export class ScatterWriter implements ReadWriterAt {
  readonly #backend: Backend;
  readonly #random: () => number;
  /** writev calls made, and pieces passed in all. */
  calls = 0;
  pieces = 0;

  constructor(backend: Backend, seed: number) {
    if (backend.writev === undefined) throw new TypeError('ScatterWriter needs a backend with writev');
    this.#backend = backend;
    this.#random = mulberry32(seed);
  }

  readAt(buf: Buffer, off: number): Promise<void> {
    return this.#backend.readAt(buf, off);
  }

  writeAt(buf: Buffer, off: number): Promise<void> {
    const pieces = splitAtRandom(buf, this.#random, 6);
    this.calls++;
    this.pieces += pieces.length;
    return this.#backend.writev!(pieces, off);
  }
}
