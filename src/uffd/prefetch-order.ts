/**
 * UffdPrefetchOrder: which chunk a userfaultfd region prefetches next. First the
 * `readaheadChunks` chunks after the latest fault (a sequential reader finds them resident),
 * then the pull order computed from a pull priority; chunks that are no longer missing are
 * skipped. O(1) per pick on average: both cursors only move forward (a new fault restarts the
 * read-ahead window).
 */
export class UffdPrefetchOrder {
  readonly #order: Uint32Array;
  readonly #chunks: number;
  readonly #readaheadChunks: number;
  #cursor = 0;
  #readaheadNext = 0;
  #readaheadEnd = 0;

  constructor(order: Uint32Array, chunks: number, readaheadChunks: number) {
    this.#order = order;
    this.#chunks = chunks;
    this.#readaheadChunks = readaheadChunks;
  }

  /** Restarts the read-ahead window after `chunk`; true when there is one. */
  faulted(chunk: number): boolean {
    if (this.#readaheadChunks === 0) return false;
    this.#readaheadNext = chunk + 1;
    this.#readaheadEnd = Math.min(this.#chunks, chunk + 1 + this.#readaheadChunks);
    return this.#readaheadNext < this.#readaheadEnd;
  }

  /** The next chunk whose `state` equals `missing`, or -1 when none is left. */
  next(state: Uint8Array, missing: number): number {
    while (this.#readaheadNext < this.#readaheadEnd) {
      const chunk = this.#readaheadNext++;
      if (state[chunk] === missing) return chunk;
    }
    const order = this.#order;
    while (this.#cursor < order.length) {
      const chunk = order[this.#cursor++]!;
      if (state[chunk] === missing) return chunk;
    }
    return -1;
  }
}
