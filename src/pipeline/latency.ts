/**
 * LatencyReadWriterAt: adds a fixed delay before each call reaches `next` (a simulated round
 * trip for tests and benchmarks, like nbdkit's delay filter). LatencyBackend does the same in
 * front of a Backend (sync, trim and zero are delayed like a write; size, capabilities and close
 * pass through).
 *
 * Guarantees: a call waits `readLatencyMs` / `writeLatencyMs` and is then forwarded; calls do
 * not queue behind each other (ten concurrent reads take one delay, not ten). 0 means no delay:
 * the call is forwarded at once, with no timer. Assumes nothing of `next` beyond its contract.
 */
import { UsageError } from '../errors.js';
import type { Backend, BackendExtent, ReadWriterAt } from './types.js';

export interface LatencyOptions {
  /** Delay before each read, in milliseconds; 0 (default) means none. */
  readonly readLatencyMs?: number;
  /** Delay before each write (and sync, for LatencyBackend), in milliseconds; 0 (default) means none. */
  readonly writeLatencyMs?: number;
}

/** A plain timer promise (global setTimeout, which test mock timers control). */
function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function resolveMs(value: number | undefined, name: string): number {
  const ms = value ?? 0;
  if (!Number.isFinite(ms) || ms < 0) throw new UsageError(`${name} must be a number of milliseconds >= 0, got ${ms}`);
  return ms;
}

export class LatencyReadWriterAt implements ReadWriterAt {
  readonly readLatencyMs: number;
  readonly writeLatencyMs: number;
  readonly #next: ReadWriterAt;

  constructor(next: ReadWriterAt, options: LatencyOptions = {}) {
    this.#next = next;
    this.readLatencyMs = resolveMs(options.readLatencyMs, 'readLatencyMs');
    this.writeLatencyMs = resolveMs(options.writeLatencyMs, 'writeLatencyMs');
  }

  readAt(buf: Buffer, off: number): Promise<void> {
    if (this.readLatencyMs === 0) return this.#next.readAt(buf, off);
    return sleep(this.readLatencyMs).then(() => this.#next.readAt(buf, off));
  }

  writeAt(buf: Buffer, off: number): Promise<void> {
    if (this.writeLatencyMs === 0) return this.#next.writeAt(buf, off);
    return sleep(this.writeLatencyMs).then(() => this.#next.writeAt(buf, off));
  }
}

export class LatencyBackend extends LatencyReadWriterAt implements Backend {
  readonly size: number;
  readonly readOnly: boolean | undefined;
  readonly maxInFlight: number | undefined;
  readonly canMultiConn: boolean | undefined;
  /** Present when the wrapped backend has it; delayed like a write. */
  readonly trim: ((off: number, length: number) => Promise<void>) | undefined;
  readonly zero: ((off: number, length: number) => Promise<void>) | undefined;
  /** Present when the wrapped backend has it; delayed like a read. */
  readonly extents: ((off: number, length: number) => Promise<readonly BackendExtent[]>) | undefined;
  readonly #backend: Backend;

  constructor(backend: Backend, options: LatencyOptions = {}) {
    super(backend, options);
    this.#backend = backend;
    this.size = backend.size;
    this.readOnly = backend.readOnly;
    this.maxInFlight = backend.maxInFlight;
    this.canMultiConn = backend.canMultiConn;
    const { trim, zero } = backend;
    this.trim = trim && ((off, length) => this.#delayWrite().then(() => trim.call(backend, off, length)));
    this.zero = zero && ((off, length) => this.#delayWrite().then(() => zero.call(backend, off, length)));
    const { extents } = backend;
    this.extents = extents && ((off, length) => (this.readLatencyMs === 0 ? Promise.resolve() : sleep(this.readLatencyMs)).then(() => extents.call(backend, off, length)));
  }

  sync(): Promise<void> {
    if (this.writeLatencyMs === 0) return this.#backend.sync();
    return sleep(this.writeLatencyMs).then(() => this.#backend.sync());
  }

  #delayWrite(): Promise<void> {
    return this.writeLatencyMs === 0 ? Promise.resolve() : sleep(this.writeLatencyMs);
  }

  close(): Promise<void> {
    return this.#backend.close();
  }
}
