/**
 * A Buffer-backed Backend for the NBD tests, with knobs for what the server must cope with:
 * optional trim/zero, read-only, multi-conn, per-op delays (to force out-of-order completion),
 * injected failures, and counters of syncs and of calls in flight.
 */
import type { Backend } from '../../src/pipeline/types.js';

export type Op = 'read' | 'write' | 'writev' | 'trim' | 'zero' | 'sync';

export interface BufferBackendOptions {
  readonly size: number;
  readonly readOnly?: boolean;
  readonly canMultiConn?: boolean;
  /** Provide backend.trim (else the server treats TRIM as advisory). */
  readonly withTrim?: boolean;
  /** Provide backend.zero (else the server emulates WRITE_ZEROES with writes). */
  readonly withZero?: boolean;
  /** Provide backend.writev (the server then hands multi-chunk WRITE payloads over as pieces). */
  readonly withWritev?: boolean;
  /** Milliseconds to hold a call; 0 settles on the next macrotask. */
  readonly delayMs?: (op: Op, off: number, length: number) => number;
  /** An error to fail a call with. */
  readonly fail?: (op: Op, off: number, length: number) => Error | undefined;
}

export class BufferBackend implements Backend {
  readonly data: Buffer;
  readonly size: number;
  readonly readOnly: boolean;
  readonly canMultiConn: boolean;
  readonly trim?: (off: number, length: number) => Promise<void>;
  readonly zero?: (off: number, length: number) => Promise<void>;
  readonly writev?: (bufs: readonly Buffer[], off: number) => Promise<void>;
  readonly calls: { op: Op; off: number; length: number }[] = [];
  /** Piece count of each writev call. */
  readonly writevPieces: number[] = [];
  syncs = 0;
  inFlight = 0;
  maxInFlightSeen = 0;
  closed = false;
  readonly #options: BufferBackendOptions;

  constructor(options: BufferBackendOptions) {
    this.#options = options;
    this.size = options.size;
    this.data = Buffer.alloc(options.size);
    this.readOnly = options.readOnly ?? false;
    this.canMultiConn = options.canMultiConn ?? false;
    if (options.withTrim === true) {
      this.trim = (off, length) => this.#run('trim', off, length, () => this.data.fill(0, off, off + length));
    }
    if (options.withWritev === true) {
      this.writev = (bufs, off) => {
        this.writevPieces.push(bufs.length);
        const length = bufs.reduce((n, b) => n + b.length, 0);
        // Copied only when the call runs (after a delay): the pieces must still be intact then.
        return this.#run('writev', off, length, () => Buffer.concat(bufs).copy(this.data, off));
      };
    }
    if (options.withZero === true) {
      this.zero = (off, length) => this.#run('zero', off, length, () => this.data.fill(0, off, off + length));
    }
  }

  readAt(buf: Buffer, off: number): Promise<void> {
    return this.#run('read', off, buf.length, () => this.data.copy(buf, 0, off, off + buf.length));
  }

  writeAt(buf: Buffer, off: number): Promise<void> {
    return this.#run('write', off, buf.length, () => buf.copy(this.data, off));
  }

  sync(): Promise<void> {
    return this.#run('sync', 0, 0, () => this.syncs++);
  }

  async close(): Promise<void> {
    this.closed = true;
  }

  async #run(op: Op, off: number, length: number, act: () => unknown): Promise<void> {
    this.calls.push({ op, off, length });
    this.inFlight++;
    this.maxInFlightSeen = Math.max(this.maxInFlightSeen, this.inFlight);
    try {
      const ms = this.#options.delayMs?.(op, off, length) ?? 0;
      await new Promise((resolve) => (ms > 0 ? setTimeout(resolve, ms) : setImmediate(resolve)));
      const err = this.#options.fail?.(op, off, length);
      if (err !== undefined) throw err;
      if (op !== 'read' && op !== 'sync' && off + length > this.size) throw new RangeError(`${op} past the end`);
      act();
    } finally {
      this.inFlight--;
    }
  }
}
