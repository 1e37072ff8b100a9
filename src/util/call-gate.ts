/**
 * CallGate: the in-flight / close-drain gate a backend puts around its calls.
 *
 * Guarantees:
 * - `enter()` counts a call in; after `close()` began it throws ClosedError(`what`) instead, so no
 *   call starts once closing has begun. `leave()` counts it out (call it exactly once per enter,
 *   in a `finally`).
 * - `close(release)` marks the gate closed at once, waits until every call in flight has left,
 *   then runs `release` (closing handles, the store, …) once. Every later `close()` returns the
 *   same promise, settled as the first one settled (idempotent).
 */
import { ClosedError } from '../errors.js';

export class CallGate {
  /** Names the resource in ClosedError ('file backend', 'redis backend', …). */
  readonly what: string;
  #closed = false;
  #inFlight = 0;
  #drained: (() => void) | undefined;
  #closing: Promise<void> | undefined;

  constructor(what: string) {
    this.what = what;
  }

  /** True once close() was called. */
  get closed(): boolean {
    return this.#closed;
  }

  /** Calls entered and not yet left. */
  get inFlight(): number {
    return this.#inFlight;
  }

  /** Throws ClosedError once close() was called (for checks that must come before others). */
  assertOpen(): void {
    if (this.#closed) throw new ClosedError(this.what);
  }

  /** Counts a call in; throws ClosedError once close() was called. */
  enter(): void {
    this.assertOpen();
    this.#inFlight++;
  }

  /** Counts a call out; the last one out lets a waiting close() go on. */
  leave(): void {
    if (--this.#inFlight === 0 && this.#drained !== undefined) {
      this.#drained();
      this.#drained = undefined;
    }
  }

  /** Closes the gate, waits for the calls in flight, then runs `release` once; idempotent. */
  close(release: () => Promise<void>): Promise<void> {
    this.#closed = true;
    this.#closing ??= this.#drain().then(release);
    return this.#closing;
  }

  async #drain(): Promise<void> {
    if (this.#inFlight > 0) await new Promise<void>((resolve) => (this.#drained = resolve));
  }
}
