import { EventEmitter } from 'node:events';
import { ClosedError, MisalignedError, OutOfRangeError, UsageError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import { chunkCount } from '../util/chunks.js';
import { ChunkLocks } from './chunk-locks.js';
import type { ReadWriterAt, WriterAt } from './types.js';

export type PushTarget = WriterAt & Partial<{ sync(): Promise<void> }>;

export interface PusherOptions {
  /** Bytes per chunk; every chunk but the last is this long. */
  readonly chunkSize: number;
  /** Bytes in total; need not be a multiple of chunkSize. */
  readonly size: number;
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

/** Per-chunk state; a Uint32Array of write generations sits beside it. */
const CHUNK = { unpushable: 0, clean: 1, dirty: 2 } as const;
/** Rounds one sync() makes to re-push chunks written during its own pushes (see #run). */
const MAX_ROUNDS = 8;
const noop = (): void => {};

/**
 * Sits between the synced stage and the local store (whole-chunk, aligned calls) and pushes
 * changed chunks local → remote. Reads go straight to `local`. A write to a pushable chunk marks
 * it dirty after the local write landed, under the chunk's lock, and bumps its generation; a push
 * clears the dirty bit only if the generation it read is still current, so a write that lands
 * while its chunk is being pushed is pushed again. `markPushable(off)` must come before the writes
 * that should be pushed (use `markDirty` for data written earlier).
 *
 * sync() runs never overlap: a sync() during a run waits for it and then runs again, so once it
 * resolves the remote holds every write that completed before sync() was called.
 */
export class Pusher extends EventEmitter<PusherEvents> implements ReadWriterAt {
  readonly options: Readonly<Omit<PusherOptions, 'log'>>;
  readonly #local: ReadWriterAt;
  readonly #remote: PushTarget;
  readonly #log: Logger;
  readonly #chunks: number;
  readonly #state: Uint8Array;
  readonly #generation: Uint32Array;
  readonly #locks: ChunkLocks;
  readonly #buffers: Buffer[] = [];
  #interval: NodeJS.Timeout | undefined;
  #tail: Promise<unknown> = Promise.resolve();
  #queued: Promise<number> | undefined;
  #running = false;
  #failing = false;
  #closing: Promise<void> | undefined;

  constructor(local: ReadWriterAt, remote: PushTarget, options: PusherOptions) {
    super();
    const { chunkSize, size, workers, intervalMs } = options;
    for (const [name, value, min] of [['chunkSize', chunkSize, 1], ['size', size, 0], ['workers', workers, 1],
      ['intervalMs', intervalMs, 0]] as const) {
      if (!Number.isSafeInteger(value) || value < min) {
        const hint = name === 'workers' ? ' (0 push workers means no pusher: do not construct one)' : '';
        throw new UsageError(`pusher ${name} must be an integer >= ${min}, got ${String(value)}${hint}`);
      }
    }
    this.options = Object.freeze({ chunkSize, size, workers, intervalMs });
    this.#local = local;
    this.#remote = remote;
    this.#log = (options.log ?? silentLogger).child({ component: 'pusher' });
    this.#chunks = chunkCount(size, chunkSize);
    this.#state = new Uint8Array(this.#chunks);
    this.#generation = new Uint32Array(this.#chunks);
    this.#locks = new ChunkLocks(this.#chunks);
  }

  readAt(buf: Buffer, off: number): Promise<void> {
    return this.#local.readAt(buf, off);
  }

  async writeAt(buf: Buffer, off: number): Promise<void> {
    if (this.#closing !== undefined) throw new ClosedError('pusher');
    const index = Math.floor(off / this.options.chunkSize);
    if (this.#state[index] === CHUNK.unpushable) return this.#local.writeAt(buf, off);
    const release = await this.#locks.acquire(index);
    try {
      await this.#local.writeAt(buf, off);
      this.#markDirty(index);
    } finally {
      release();
    }
  }

  /** From now on, writes to the chunk at `off` are pushed. */
  markPushable(off: number): void {
    const index = this.#index(off);
    if (this.#state[index] === CHUNK.unpushable) this.#state[index] = CHUNK.clean;
  }

  isPushable(off: number): boolean {
    return this.#state[this.#index(off)] !== CHUNK.unpushable;
  }

  /** Offsets of the chunks not yet pushed, ascending (to persist them). */
  dirtyOffsets(): number[] {
    const offsets: number[] = [];
    for (let i = 0; i < this.#chunks; i++) if (this.#state[i] === CHUNK.dirty) offsets.push(i * this.options.chunkSize);
    return offsets;
  }

  /** Marks chunks pushable and dirty (to restore persisted state, or for data written earlier). */
  markDirty(offsets: readonly number[]): void {
    for (const off of offsets) this.#index(off);
    for (const off of offsets) this.#markDirty(off / this.options.chunkSize);
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
      let todo: number[] = [];
      for (let i = 0; i < this.#chunks; i++) if (this.#state[i] === CHUNK.dirty) todo.push(i);
      const pushed = todo.length;
      for (let round = 0; todo.length > 0 && round < MAX_ROUNDS; round++) {
        await this.#pushAll(todo);
        todo = todo.filter((i) => this.#state[i] === CHUNK.dirty);
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
    const { chunkSize, size } = this.options;
    const off = index * chunkSize;
    const chunk = off + chunkSize > size ? buf.subarray(0, size - off) : buf;
    let generation: number;
    const release = await this.#locks.acquire(index);
    try {
      generation = this.#generation[index]!;
      await this.#local.readAt(chunk, off);
    } finally {
      release();
    }
    await this.#remote.writeAt(chunk, off);
    if (this.#generation[index] === generation) this.#state[index] = CHUNK.clean;
  }

  #markDirty(index: number): void {
    this.#state[index] = CHUNK.dirty;
    this.#generation[index] = (this.#generation[index]! + 1) >>> 0;
  }

  #index(off: number): number {
    const { chunkSize, size } = this.options;
    if (off % chunkSize !== 0) throw new MisalignedError(off, chunkSize);
    if (!Number.isSafeInteger(off) || off < 0 || off >= size) throw new OutOfRangeError(off, chunkSize, size, 'chunk offset');
    return off / chunkSize;
  }
}
