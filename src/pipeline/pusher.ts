import { EventEmitter } from 'node:events';
import { ClosedError, UsageError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import type { ChunkTable } from './chunk-table.js';
import type { ReaderAt, WriterAt } from './types.js';

export type PushTarget = WriterAt & Partial<{ sync(): Promise<void> }>;

export interface PusherOptions {
  /** Concurrent pushes, at least 1: 0 push workers means "no pusher", so do not build one. */
  readonly workers: number;
  /** Push dirty chunks every intervalMs; 0 = only on sync() and close(). */
  readonly intervalMs: number;
  readonly log?: Logger;
}

export interface PusherEvents {
  /** After every sync run, explicit or from the interval. */
  push: [{ readonly pushedChunks: number }];
  /** A failed interval push (explicit sync() calls reject instead); emitted only if listened to. */
  error: [unknown];
}

/** Rounds one sync() makes to re-push chunks written during its own pushes (see #run). */
const MAX_ROUNDS = 8;
const noop = (): void => {};

/**
 * Pushes the chunks the table says are dirty, local → remote. It is not in the data path: the
 * write-marking stage (write-marks.ts) sets a chunk's `dirty` bit and bumps its `generation` after
 * each write landed in `local`, and a push clears the bit only if the generation it read before
 * reading the chunk is still current. A write that lands while its chunk is being pushed (even one
 * the push read half of) therefore leaves the chunk dirty, and it is pushed again; no lock is
 * needed between writes and pushes, because the mark always follows the data.
 *
 * sync() runs never overlap: a sync() during a run waits for it and then runs again, so once it
 * resolves the remote holds every write that completed before sync() was called.
 */
export class Pusher extends EventEmitter<PusherEvents> {
  readonly options: Readonly<{ chunkSize: number; size: number; workers: number; intervalMs: number }>;
  readonly #table: ChunkTable;
  readonly #local: ReaderAt;
  readonly #remote: PushTarget;
  readonly #log: Logger;
  readonly #buffers: Buffer[] = [];
  #interval: NodeJS.Timeout | undefined;
  #tail: Promise<unknown> = Promise.resolve();
  #queued: Promise<number> | undefined;
  #running = false;
  #failing = false;
  #closing: Promise<void> | undefined;

  constructor(table: ChunkTable, local: ReaderAt, remote: PushTarget, options: PusherOptions) {
    super();
    const { workers, intervalMs } = options;
    for (const [name, value, min] of [['workers', workers, 1], ['intervalMs', intervalMs, 0]] as const) {
      if (!Number.isSafeInteger(value) || value < min) {
        const hint = name === 'workers' ? ' (0 push workers means no pusher: do not construct one)' : '';
        throw new UsageError(`pusher ${name} must be an integer >= ${min}, got ${String(value)}${hint}`);
      }
    }
    this.options = Object.freeze({ chunkSize: table.chunkSize, size: table.size, workers, intervalMs });
    this.#table = table;
    this.#local = local;
    this.#remote = remote;
    this.#log = (options.log ?? silentLogger).child({ component: 'pusher' });
  }

  /** Offsets of the chunks not yet pushed, ascending. */
  dirtyOffsets(): number[] {
    return this.#table.dirtyIndexes().map((i) => i * this.options.chunkSize);
  }

  /** Marks chunks dirty (data written to `local` behind the stack's back); validates every offset first. */
  markDirty(offsets: readonly number[]): void {
    for (const off of offsets) this.#table.indexOf(off);
    for (const off of offsets) this.#table.markDirty(off / this.options.chunkSize);
  }

  /** Starts the push interval (none when intervalMs is 0). Idempotent. */
  open(): void {
    if (this.#closing !== undefined) throw new ClosedError('pusher');
    if (this.#interval !== undefined || this.options.intervalMs === 0) return;
    this.#interval = setInterval(this.#tick, this.options.intervalMs).unref();
  }

  /**
   * Pushes every dirty chunk, then syncs the remote; resolves with the number of distinct chunks
   * pushed. A failed push leaves its chunk dirty for the next sync().
   */
  sync(): Promise<number> {
    if (this.#queued !== undefined) return this.#queued; // a run that has not started yet covers us
    const run = this.#tail.then(() => {
      this.#queued = undefined;
      return this.#run();
    });
    this.#queued = run;
    this.#tail = run.then(noop, noop);
    return run;
  }

  /** Stops the interval and pushes what is left. Idempotent; does not close local or remote. */
  close(): Promise<void> {
    if (this.#closing === undefined) {
      clearInterval(this.#interval);
      this.#interval = undefined;
      this.#closing = this.sync().then(noop);
    }
    return this.#closing;
  }

  readonly #tick = (): void => {
    if (this.#running || this.#queued !== undefined) return; // skip: a run is under way
    this.sync().then(
      () => (this.#failing = false),
      (err: unknown) => {
        if (this.#failing) this.#log.debug({ err }, 'interval push failed again');
        else this.#log.error({ err }, 'interval push failed; chunks stay dirty and are retried');
        this.#failing = true;
        if (this.listenerCount('error') > 0) this.emit('error', err);
      },
    );
  };

  /**
   * One sync run. Round 1 pushes every chunk dirty at the start; later rounds re-push those of
   * them written again meanwhile. Round 1 alone keeps sync()'s promise; the bound on rounds only
   * stops a chunk written without pause from holding sync() forever.
   */
  async #run(): Promise<number> {
    this.#running = true;
    try {
      const dirty = this.#table.dirty;
      let todo = this.#table.dirtyIndexes();
      const pushed = todo.length;
      for (let round = 0; todo.length > 0 && round < MAX_ROUNDS; round++) {
        await this.#pushAll(todo);
        todo = todo.filter((i) => dirty[i] === 1);
      }
      if (this.#remote.sync !== undefined) await this.#remote.sync();
      if (this.listenerCount('push') > 0) this.emit('push', { pushedChunks: pushed });
      return pushed;
    } finally {
      this.#running = false;
    }
  }

  /** Pushes `todo` with up to `workers` concurrent pushes; rejects with every failure. */
  async #pushAll(todo: readonly number[]): Promise<void> {
    let next = 0;
    const errors: unknown[] = [];
    const worker = async (): Promise<void> => {
      const buf = this.#buffers.pop() ?? Buffer.allocUnsafe(this.options.chunkSize);
      try {
        while (next < todo.length && errors.length === 0) {
          try {
            await this.#push(todo[next++]!, buf);
          } catch (err) {
            errors.push(err);
          }
        }
      } finally {
        this.#buffers.push(buf);
      }
    };
    const workers: Promise<void>[] = [];
    for (let i = 0; i < Math.min(this.options.workers, todo.length); i++) workers.push(worker());
    await Promise.all(workers);
    if (errors.length === 1) throw errors[0];
    if (errors.length > 1) throw new AggregateError(errors, `${errors.length} chunks failed to push`);
  }

  async #push(index: number, buf: Buffer): Promise<void> {
    const table = this.#table;
    const off = index * table.chunkSize;
    const chunk = buf.subarray(0, table.lengthOf(index));
    const generation = table.generation[index]!;
    await this.#local.readAt(chunk, off);
    await this.#remote.writeAt(chunk, off);
    table.markPushed(index, generation);
  }
}
