import { EventEmitter } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import { ClosedError, MisalignedError, OutOfRangeError, UsageError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import { chunkCount, chunkLength } from '../util/chunks.js';
import { ChunkTable, PullState } from './chunk-table.js';
import { ascending, pullOrder, type PullPriority } from './pull-priority.js';
import type { ReaderAt } from './types.js';

/**
 * A reader the puller can drive; `pull(off)` makes a chunk local without returning its data and
 * resolves with false when it had nothing to fetch (the chunk was local already): such a pull
 * says nothing about the remote's round trip, so the window leaves it out of its samples.
 */
export type PullSource = ReaderAt & Partial<{ pull(off: number): Promise<boolean | void> }>;

export interface PullerOptions {
  /** Bytes per chunk; every chunk but the last is this long. */
  readonly chunkSize: number;
  /** Bytes in total; need not be a multiple of chunkSize. */
  readonly size: number;
  /** Concurrent pulls. 0 means no pulling at all (see the class comment). */
  readonly workers: number;
  readonly priority?: PullPriority;
  /** Retries of a failed pull before the puller fails (default 3; 0 = none). */
  readonly retries?: number;
  /** Backoff before the first retry, doubled for each further one (default 100). */
  readonly retryDelayMs?: number;
  /**
   * The queueing (ms) the background pull may add to the remote connection and the event loop that
   * also serve the device's reads: the window (see the class comment) shrinks when pulls wait longer
   * than this. Default 1; 0 keeps `workers` in flight whatever happens. Settable later (maxQueueMs).
   */
  readonly maxQueueMs?: number;
  /** The time the window's samples are taken with, in ms (default performance.now; tests drive their own). */
  readonly clock?: () => number;
  /** The stack's chunk table (its `pull` column is this puller's queue); default: a table of its own. */
  readonly table?: ChunkTable;
  readonly log?: Logger;
}

/** Pulls in flight at first, while the window doubles per sample without queueing (slow start). */
const SLOW_START = 16;
/**
 * The window when maxQueueMs goes from 0 to a bound (a leecher's finalize): smaller than
 * SLOW_START, so the first reads of the device wait behind as few pulls as possible.
 */
const RESTART_WINDOW = 4;
/**
 * Pulls that may wait in queues (Vegas's alpha and beta): the window grows while fewer wait, and
 * shrinks only when more wait and they wait longer than maxQueueMs (so jitter on a long round trip
 * does not shrink a large window, and a path that needs a few pulls queued to be busy keeps them).
 */
const VEGAS_ALPHA = 2;
const VEGAS_BETA = 4;
/** The base pull time moves up by 1/BASE_DRIFT of the gap to each higher sample median. */
const BASE_DRIFT = 16;

export interface PullProgress {
  readonly pulledChunks: number;
  readonly totalChunks: number;
  readonly pulledBytes: number;
}

export interface PullerEvents {
  progress: [PullProgress];
  error: [unknown];
}

/** Per-chunk queue state (the table's `pull` column); counts are derived from it (#census). */
const CHUNK = { queued: PullState.QUEUED, pulling: PullState.PULLING, pullingStale: PullState.PULLING_STALE, pulled: PullState.PULLED } as const;
type ChunkState = PullState;

/**
 * Pulls every chunk (the last one included) through `source` with up to `workers` concurrent
 * pulls, in the order of `priority`. It calls `source.pull(off)` when the source has it, else
 * reads each chunk into a buffer of its own, reused across chunks (at most `workers` of them).
 *
 * - The window: the pulls share the remote connection and this thread's event loop with the
 *   device's reads, and a read of a chunk no pull has reached must not wait behind a flood of them.
 *   So, like a delay-based congestion control (TCP Vegas), the puller keeps as many pulls in
 *   flight as it can while few of them wait in queues. Per sample (a window's worth of pulls, at
 *   least 8), the median pull against the lowest median seen (the base) tells how long pulls wait
 *   and how many (window × (1 − base / median)). The window shrinks by a quarter when more than 4
 *   wait for longer than `maxQueueMs`, and grows by a quarter when fewer than 2 wait or they wait
 *   less than half of it; it starts at 16 and doubles until the first shrink; it stays between 1
 *   and `workers`. Measured on the pulls themselves: no timers, nothing polls.
 * - `requeue(dirtyOffsets)` (a pre-copy round) and `finalize(dirtyOffsets)` put those chunks in
 *   front of everything still queued: a pulled one is pulled again, a queued one is pulled once,
 *   one being pulled is pulled again right after. `whenPulled()` waits until all are pulled.
 * - `wait()` resolves once finalize() was called and every chunk is pulled (dirty ones re-pulled),
 *   rejects with the first error, or with ClosedError if close() came first.
 * - Progress: the 'progress' event, once per pulled chunk. 'error' is emitted only when somebody
 *   listens; the failure is logged once and always rejects wait().
 * - `workers: 0`: start() does nothing, nothing is ever pulled, and wait() resolves as soon as
 *   finalize() has been called.
 * - Nothing runs while nothing is queued: requeue() starts pulls again.
 */
export class Puller extends EventEmitter<PullerEvents> {
  readonly options: Readonly<Required<Omit<PullerOptions, 'log' | 'table' | 'maxQueueMs' | 'clock'>>>;
  readonly totalChunks: number;
  readonly #source: PullSource;
  readonly #usePull: boolean;
  readonly #log: Logger;
  readonly #order: Uint32Array;
  readonly #state: Uint8Array;
  readonly #census = new Uint32Array(4);
  readonly #front: number[] = [];
  #frontHead = 0;
  #cursor = 0;
  #started = false;
  #finalized = false;
  #closed = false;
  #settled = false;
  readonly #abort = new AbortController();
  readonly #done: Promise<void>;
  #resolve!: () => void;
  #reject!: (err: unknown) => void;
  /** Pulls in flight, and how many may be (see the class comment). */
  #inFlight = 0;
  #window: number;
  #slowStart: boolean;
  readonly #buffers: Buffer[] = [];
  /** The sample being taken (pull durations, ms; undefined: no window to keep), the lowest median seen. */
  readonly #sampleMs: Float64Array | undefined;
  #maxQueueMs: number;
  readonly #clock: () => number;
  #samplePulls = 0;
  #baseMs = Infinity;
  #whenPulled: Promise<void> | undefined;
  #onPulled: (() => void) | undefined;

  constructor(source: PullSource, options: PullerOptions) {
    super();
    const { chunkSize, size, workers, priority = ascending, retries = 3, retryDelayMs = 100, maxQueueMs = 1 } = options;
    for (const [name, value, min] of [['chunkSize', chunkSize, 1], ['size', size, 0], ['workers', workers, 0],
      ['retries', retries, 0], ['retryDelayMs', retryDelayMs, 0]] as const) {
      if (!Number.isSafeInteger(value) || value < min) {
        throw new UsageError(`puller ${name} must be an integer >= ${min}, got ${String(value)}`);
      }
    }
    if (!(maxQueueMs >= 0 && maxQueueMs < Infinity)) throw new UsageError(`puller maxQueueMs must be a number >= 0, got ${String(maxQueueMs)}`);
    this.options = Object.freeze({ chunkSize, size, workers, priority, retries, retryDelayMs });
    this.#maxQueueMs = maxQueueMs;
    this.#clock = options.clock ?? (() => performance.now());
    this.#slowStart = maxQueueMs > 0 && workers > SLOW_START;
    this.#window = this.#slowStart ? SLOW_START : workers;
    this.#sampleMs = workers > 1 ? new Float64Array(Math.max(8, workers)) : undefined;
    this.totalChunks = chunkCount(size, chunkSize);
    this.#source = source;
    this.#usePull = typeof source.pull === 'function';
    this.#log = (options.log ?? silentLogger).child({ component: 'puller' });
    this.#order = pullOrder(this.totalChunks, priority);
    const table = options.table ?? new ChunkTable({ chunkSize, size });
    table.checkGeometry(chunkSize, size, 'puller');
    this.#state = table.pull;
    this.#census[CHUNK.queued] = this.totalChunks;
    this.#done = new Promise<void>((resolve, reject) => {
      this.#resolve = resolve;
      this.#reject = reject;
    });
    this.#done.catch(() => {}); // handled by whoever calls wait(); never an unhandled rejection
  }

  /** Starts pulling; a no-op with 0 workers or when already started. */
  start(): void {
    if (this.#closed) throw new ClosedError('puller');
    if (this.#started || this.options.workers === 0) return;
    this.#started = true;
    this.#pump();
  }

  /** How many pulls may be in flight now (1..workers, see the class comment). */
  get window(): number {
    return this.#window;
  }

  /**
   * The queueing the pulls may cause (see PullerOptions.maxQueueMs); settable at any time: 0 opens
   * the window to every worker at once (nothing else could wait behind the pulls, e.g. a device
   * that is still locked); a value > 0 after 0 starts the window at 4 (and slow start), so that
   * what is already in flight drains before anything could wait behind it.
   */
  get maxQueueMs(): number {
    return this.#maxQueueMs;
  }

  set maxQueueMs(ms: number) {
    if (!(ms >= 0 && ms < Infinity)) throw new UsageError(`puller maxQueueMs must be a number >= 0, got ${String(ms)}`);
    const was = this.#maxQueueMs;
    this.#maxQueueMs = ms;
    this.#samplePulls = 0;
    if (ms === 0) {
      this.#window = this.options.workers;
      this.#pump();
    } else if (was === 0) {
      this.#slowStart = this.options.workers > RESTART_WINDOW; // from an open window: start small again
      this.#window = Math.min(this.options.workers, RESTART_WINDOW);
    }
  }

  /**
   * Pulls the chunks at `dirtyOffsets` again, before anything still queued (a pre-copy round): a
   * pulled one is pulled again, a queued one is pulled once, one being pulled is pulled again right
   * after. Any number of times, before or after finalize().
   */
  requeue(dirtyOffsets: readonly number[]): void {
    if (this.#closed) throw new ClosedError('puller');
    const { chunkSize, size } = this.options;
    for (const off of dirtyOffsets) {
      if (off % chunkSize !== 0) throw new MisalignedError(off, chunkSize);
      if (!Number.isSafeInteger(off) || off < 0 || off >= size) throw new OutOfRangeError(off, chunkSize, size, 'dirty offset');
    }
    for (const off of dirtyOffsets) {
      const index = off / chunkSize;
      const state = this.#state[index] as ChunkState;
      if (state === CHUNK.pulling) this.#set(index, CHUNK.pullingStale);
      else if (state === CHUNK.pulled) this.#set(index, CHUNK.queued);
      if (state === CHUNK.queued || state === CHUNK.pulled) this.#front.push(index);
    }
    this.#pump();
  }

  /** requeue(dirtyOffsets), and from now on wait() resolves once every chunk is pulled. Call it once. */
  finalize(dirtyOffsets: readonly number[]): void {
    if (this.#closed) throw new ClosedError('puller');
    if (this.#finalized) throw new UsageError('puller finalize() may be called only once');
    this.requeue(dirtyOffsets);
    this.#finalized = true;
    this.#checkDone();
  }

  /**
   * Resolves the next time every chunk is pulled (at once if they are now, or with 0 workers);
   * rejects like wait() when the puller fails or is closed first. For pre-copy rounds.
   */
  whenPulled(): Promise<void> {
    if (this.options.workers === 0 || this.pulledChunks === this.totalChunks) return Promise.resolve();
    if (this.#settled || this.#closed) return this.#done.then(() => undefined);
    this.#whenPulled ??= Promise.race([new Promise<void>((resolve) => (this.#onPulled = resolve)), this.#done]);
    return this.#whenPulled;
  }

  wait(): Promise<void> {
    return this.#done;
  }

  /** Stops starting pulls at once; in-flight pulls are abandoned. Idempotent. */
  close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      this.#abort.abort();
      this.#settle(new ClosedError('puller'));
    }
    return Promise.resolve();
  }

  get pulledChunks(): number {
    return this.#census[CHUNK.pulled]!;
  }

  get pulledBytes(): number {
    const { chunkSize, size } = this.options;
    const last = this.totalChunks - 1;
    const short = last >= 0 && this.#state[last] === CHUNK.pulled ? chunkSize - chunkLength(last * chunkSize, size, chunkSize) : 0;
    return this.pulledChunks * chunkSize - short;
  }

  /** Starts queued pulls while the window has room. */
  #pump(): void {
    if (!this.#started || this.#closed || this.#settled) return;
    while (this.#inFlight < this.#window) {
      const index = this.#take();
      if (index === -1) return;
      this.#inFlight++;
      void this.#run(index);
    }
  }

  async #run(index: number): Promise<void> {
    const buf = this.#usePull ? undefined : (this.#buffers.pop() ?? Buffer.allocUnsafe(this.options.chunkSize));
    try {
      await this.#pullChunk(index, buf);
    } finally {
      if (buf !== undefined) this.#buffers.push(buf);
      this.#inFlight--;
      this.#pump();
    }
  }

  /**
   * One pull took `ms`. A sample is a window's worth of pulls (at least 8); its median against the
   * lowest median seen is the queueing the pulls cause (the median, because timer and network
   * jitter scatter single pulls by a millisecond or more, while queueing delays most of them),
   * and each sample resizes the window on it.
   */
  #sample(ms: number): void {
    if (this.#sampleMs === undefined || this.#maxQueueMs === 0) return;
    this.#sampleMs[this.#samplePulls++] = ms;
    if (this.#samplePulls < Math.max(8, this.#window)) return;
    const sample = this.#sampleMs.subarray(0, this.#samplePulls).sort();
    const median = sample[sample.length >> 1]!;
    this.#samplePulls = 0;
    // The base follows the lowest median at once and any higher one slowly: one lucky sample must
    // not make every later one look queued, nor a path that became slower shrink the window forever.
    this.#baseMs = median < this.#baseMs ? median : this.#baseMs + (median - this.#baseMs) / BASE_DRIFT;
    const maxQueueMs = this.#maxQueueMs;
    const workers = this.options.workers;
    const queuedMs = median - this.#baseMs;
    const queuedPulls = this.#window * (1 - this.#baseMs / median); // Vegas: pulls waiting, not moving
    if (queuedMs > maxQueueMs && queuedPulls > VEGAS_BETA) {
      this.#slowStart = false;
      this.#window = Math.max(1, Math.floor((this.#window * 3) / 4));
    } else if ((queuedMs <= maxQueueMs / 2 || queuedPulls < VEGAS_ALPHA) && this.#window < workers) {
      this.#window = Math.min(workers, this.#window + (this.#slowStart ? this.#window : Math.max(1, this.#window >> 2)));
      this.#pump();
    }
  }

  /** The next queued chunk, marked as pulling: dirty chunks first, then the priority order. */
  #take(): number {
    while (this.#frontHead < this.#front.length) {
      const index = this.#front[this.#frontHead++]!;
      if (this.#state[index] === CHUNK.queued) return this.#set(index, CHUNK.pulling);
    }
    this.#front.length = this.#frontHead = 0;
    while (this.#cursor < this.totalChunks) {
      const index = this.#order[this.#cursor++]!;
      if (this.#state[index] === CHUNK.queued) return this.#set(index, CHUNK.pulling);
    }
    return -1;
  }

  async #pullChunk(index: number, buf: Buffer | undefined): Promise<void> {
    for (;;) {
      if (!(await this.#attempt(index, buf)) || this.#closed) return;
      if (this.#state[index] === CHUNK.pullingStale) {
        this.#set(index, CHUNK.pulling); // finalize() dirtied it mid-pull: pull it again now
        continue;
      }
      this.#set(index, CHUNK.pulled);
      if (this.listenerCount('progress') > 0) {
        this.emit('progress', { pulledChunks: this.pulledChunks, totalChunks: this.totalChunks, pulledBytes: this.pulledBytes });
      }
      this.#checkDone();
      return;
    }
  }

  /** One pull with retries; false if the puller failed or was closed meanwhile. */
  async #attempt(index: number, buf: Buffer | undefined): Promise<boolean> {
    const { chunkSize, size, retries, retryDelayMs } = this.options;
    const off = index * chunkSize;
    for (let attempt = 0; ; attempt++) {
      try {
        const started = this.#clock();
        let fetched: boolean | void = true;
        if (buf === undefined) fetched = await this.#source.pull!(off);
        else await this.#source.readAt(off + chunkSize > size ? buf.subarray(0, size - off) : buf, off);
        if (fetched !== false) this.#sample(this.#clock() - started);
        return true;
      } catch (err) {
        if (this.#closed || this.#settled) return false;
        if (attempt >= retries) {
          this.#fail(err, off, attempt + 1);
          return false;
        }
        this.#log.debug({ err, off, attempt: attempt + 1 }, 'pull failed, retrying');
        try {
          await sleep(retryDelayMs * 2 ** attempt, undefined, { signal: this.#abort.signal });
        } catch {
          return false; // closed while backing off
        }
      }
    }
  }

  #set(index: number, state: ChunkState): number {
    this.#census[this.#state[index]!]!--;
    this.#census[state]!++;
    this.#state[index] = state;
    return index;
  }

  #checkDone(): void {
    if (this.#onPulled !== undefined && this.pulledChunks === this.totalChunks) {
      const resolve = this.#onPulled;
      this.#onPulled = this.#whenPulled = undefined;
      resolve();
    }
    if (this.#finalized && (this.options.workers === 0 || this.pulledChunks === this.totalChunks)) this.#settle();
  }

  #fail(err: unknown, off: number, attempts: number): void {
    this.#log.error({ err, off, attempts }, 'pull failed; the puller stops');
    this.#settle(err);
    if (this.listenerCount('error') > 0) this.emit('error', err);
  }

  #settle(err?: unknown): void {
    if (this.#settled) return;
    this.#settled = true;
    if (err === undefined) this.#resolve();
    else this.#reject(err);
  }
}
