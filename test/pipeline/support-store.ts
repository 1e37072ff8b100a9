/**
 * A tiny Buffer-backed ReadWriterAt for the puller and pusher tests. Every call is recorded
 * (op, offset, length) when it starts, and an optional `hook` runs before the data moves: it may
 * block (await a Gate) or throw to simulate a slow or failing store.
 */
import type { ReadWriterAt } from '../../src/pipeline/types.js';

export type Op = 'read' | 'write' | 'pull';

export interface Call {
  readonly op: Op;
  readonly off: number;
  readonly length: number;
}

export type Hook = (op: Op, off: number, attempt: number) => void | Promise<void>;

export class TestStore implements ReadWriterAt {
  readonly data: Buffer;
  readonly calls: Call[] = [];
  hook: Hook | undefined;
  inFlight = 0;
  maxInFlight = 0;

  constructor(size: number, hook?: Hook) {
    this.data = Buffer.alloc(size);
    this.hook = hook;
  }

  async readAt(buf: Buffer, off: number): Promise<void> {
    await this.#enter('read', off, buf.length);
    try {
      this.data.copy(buf, 0, off, off + buf.length);
    } finally {
      this.inFlight--;
    }
  }

  async writeAt(buf: Buffer, off: number): Promise<void> {
    await this.#enter('write', off, buf.length);
    try {
      buf.copy(this.data, off);
    } finally {
      this.inFlight--;
    }
  }

  /** Offsets of the calls of one kind, in the order they started. */
  offsets(op: Op): number[] {
    return this.calls.filter((c) => c.op === op).map((c) => c.off);
  }

  /** How many calls of one kind touched `off`. */
  count(op: Op, off: number): number {
    return this.calls.filter((c) => c.op === op && c.off === off).length;
  }

  async #enter(op: Op, off: number, length: number): Promise<void> {
    const attempt = this.count(op, off);
    this.calls.push({ op, off, length });
    this.inFlight++;
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
    try {
      await this.hook?.(op, off, attempt);
    } catch (err) {
      this.inFlight--;
      throw err;
    }
  }
}

/** A promise a test resolves by hand; `entered` resolves when the first waiter arrives. */
export class Gate {
  readonly #opened: Promise<void>;
  readonly #entered: Promise<void>;
  #open!: () => void;
  #enter!: () => void;
  waiters = 0;

  constructor() {
    this.#opened = new Promise((resolve) => (this.#open = resolve));
    this.#entered = new Promise((resolve) => (this.#enter = resolve));
  }

  /** Blocks until open() is called. */
  wait(): Promise<void> {
    this.waiters++;
    this.#enter();
    return this.#opened;
  }

  open(): void {
    this.#open();
  }

  get entered(): Promise<void> {
    return this.#entered;
  }
}

/** Rejects if `promise` does not settle within `ms`, so a broken test fails instead of hanging. */
export async function within<T>(promise: Promise<T>, what: string, ms = 2000): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Lets every pending microtask and I/O callback run (not a timing assumption: no work is left). */
export function settle(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/** A buffer of `length` bytes filled with `byte`. */
export function filled(length: number, byte: number): Buffer {
  return Buffer.alloc(length, byte);
}
