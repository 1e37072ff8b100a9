/**
 * LockableReadWriterAt: a gate in front of `next`.
 *
 * Guarantees: while locked, every new readAt/writeAt waits in a queue and reaches `next` only
 * after `unlock()`; calls already in flight when `lock()` is called are not affected. `unlock()`
 * hands every queued call to `next` at once, synchronously and in arrival order, so they reach
 * `next` before any call made after the unlock. Unlocked, calls are forwarded as they are, with
 * no extra await and no allocation.
 * Assumes nothing of `next` beyond the ReadWriterAt contract.
 */
import type { ReadWriterAt } from './types.js';

interface Waiter {
  readonly write: boolean;
  readonly buf: Buffer;
  readonly off: number;
  readonly resolve: () => void;
  readonly reject: (err: unknown) => void;
}

export class LockableReadWriterAt implements ReadWriterAt {
  readonly #next: ReadWriterAt;
  #locked = false;
  #queue: Waiter[] = [];

  constructor(next: ReadWriterAt) {
    this.#next = next;
  }

  get locked(): boolean {
    return this.#locked;
  }

  /** Makes new calls wait until unlock() (idempotent). */
  lock(): void {
    this.#locked = true;
  }

  /** Lets every waiting call through, in arrival order (idempotent). */
  unlock(): void {
    this.#locked = false;
    const queue = this.#queue;
    this.#queue = [];
    for (const w of queue) {
      try {
        const done = w.write ? this.#next.writeAt(w.buf, w.off) : this.#next.readAt(w.buf, w.off);
        done.then(w.resolve, w.reject);
      } catch (err) {
        w.reject(err); // a `next` that throws instead of rejecting must not strand the others
      }
    }
  }

  readAt(buf: Buffer, off: number): Promise<void> {
    if (!this.#locked) return this.#next.readAt(buf, off);
    return new Promise((resolve, reject) => this.#queue.push({ write: false, buf, off, resolve, reject }));
  }

  writeAt(buf: Buffer, off: number): Promise<void> {
    if (!this.#locked) return this.#next.writeAt(buf, off);
    return new Promise((resolve, reject) => this.#queue.push({ write: true, buf, off, resolve, reject }));
  }
}
