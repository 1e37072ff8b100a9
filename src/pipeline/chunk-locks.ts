/**
 * Per-chunk async mutexes, held only while a chunk is contended: an uncontended chunk costs one
 * typed-array check, and waiters are kept in a map that holds only the chunks with a queue.
 *
 *   const release = await locks.acquire(index); try { ... } finally { release(); }
 *   await locks.run(index, () => work());
 */
export class ChunkLocks {
  readonly #held: Uint8Array;
  readonly #waiters = new Map<number, Array<() => void>>();

  constructor(chunks: number) {
    this.#held = new Uint8Array(chunks);
  }

  /** Resolves with a release function once the chunk's lock is held. */
  acquire(index: number): Promise<() => void> {
    if (this.#held[index] === 0) {
      this.#held[index] = 1;
      return Promise.resolve(this.#releaser(index));
    }
    return new Promise((resolve) => {
      let queue = this.#waiters.get(index);
      if (queue === undefined) {
        queue = [];
        this.#waiters.set(index, queue);
      }
      queue.push(() => resolve(this.#releaser(index)));
    });
  }

  /** Runs `fn` while holding the chunk's lock; the lock is released however `fn` ends. */
  async run<T>(index: number, fn: () => Promise<T>): Promise<T> {
    const release = await this.acquire(index);
    try {
      return await fn();
    } finally {
      release();
    }
  }

  isHeld(index: number): boolean {
    return this.#held[index] === 1;
  }

  #releaser(index: number): () => void {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const queue = this.#waiters.get(index);
      const next = queue?.shift();
      if (queue !== undefined && queue.length === 0) this.#waiters.delete(index);
      if (next === undefined) this.#held[index] = 0;
      else next(); // hand the lock over directly: it stays held
    };
  }
}
