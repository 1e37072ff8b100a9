/**
 * A tiny Buffer-backed Backend for pipeline tests (the real one is src/backends/memory.ts).
 *
 * Any (off, length) inside [0, size) is accepted; anything else rejects with OutOfRangeError.
 * Each call completes on a later turn of the event loop (setImmediate), as real I/O does, so
 * concurrent callers really interleave and lost-update races in the stages above can show up.
 * For tests it logs every call it accepted (`calls`, e.g. 'read 0+16'), can hold reads or writes
 * until released (they are logged and counted at once, their data is copied at release), and can
 * fail the next call of a kind.
 */
import { setImmediate as nextTurn } from 'node:timers/promises';
import { ClosedError, OutOfRangeError } from '../../src/errors.js';
import type { Backend } from '../../src/pipeline/types.js';

type Op = 'read' | 'write';

export class MemoryStore implements Backend {
  readonly size: number;
  readonly #data: Buffer;
  #closed = false;
  readonly calls: string[] = [];
  readCalls = 0;
  writeCalls = 0;
  readonly #held: Record<Op, Promise<void> | undefined> = { read: undefined, write: undefined };
  readonly #fail: Record<Op, Error | undefined> = { read: undefined, write: undefined };

  constructor(size: number) {
    this.size = size;
    this.#data = Buffer.alloc(size);
  }

  async readAt(buf: Buffer, off: number): Promise<void> {
    await this.#enter('read', off, buf.length);
    this.#data.copy(buf, 0, off, off + buf.length);
  }

  async writeAt(buf: Buffer, off: number): Promise<void> {
    await this.#enter('write', off, buf.length);
    buf.copy(this.#data, off);
  }

  async sync(): Promise<void> {
    if (this.#closed) throw new ClosedError('memory store');
  }

  async close(): Promise<void> {
    this.#closed = true;
  }

  /** Calls of `op` from now on wait (already logged and counted) until the returned function runs. */
  hold(op: Op): () => void {
    let release!: () => void;
    this.#held[op] = new Promise((resolve) => {
      release = resolve;
    });
    return () => {
      this.#held[op] = undefined;
      release();
    };
  }

  /** The next call of `op` rejects with `err` (after being logged and counted). */
  failNext(op: Op, err: Error): void {
    this.#fail[op] = err;
  }

  /** Direct access for test set-up: copies `data` in at `off` without logging a call. */
  fill(off: number, data: Buffer): void {
    data.copy(this.#data, off);
  }

  /** A copy of [off, off + length), without logging a call. */
  peek(off: number, length: number): Buffer {
    return Buffer.from(this.#data.subarray(off, off + length));
  }

  async #enter(op: Op, off: number, length: number): Promise<void> {
    if (this.#closed) throw new ClosedError('memory store');
    if (!Number.isSafeInteger(off) || off < 0 || off + length > this.size) {
      throw new OutOfRangeError(off, length, this.size);
    }
    this.calls.push(`${op} ${off}+${length}`);
    if (op === 'read') this.readCalls++;
    else this.writeCalls++;
    const err = this.#fail[op];
    this.#fail[op] = undefined;
    const held = this.#held[op];
    if (held !== undefined) await held;
    await nextTurn();
    if (err !== undefined) throw err;
  }
}
