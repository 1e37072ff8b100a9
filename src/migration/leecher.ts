/**
 * Leecher: the destination side of a migration, composed in one place:
 *
 *   backend (what the leecher's device serves; locked until finalize())
 *     → ArbitraryReadWriterAt (any range → whole chunks)
 *     → LockableReadWriterAt (every call waits until finalize() unlocked it)
 *     → SyncedReadWriterAt ◄── Puller (pre-copy: every chunk, pullWorkers, pullPriority)
 *     → local cache (the caller's Backend, or memory)
 *   remote reads: the seeder (SeederRemote), through Synced, once per chunk
 *   every per-chunk fact: one ChunkTable; with `statePath`, saved in a CacheState next to the cache
 *
 * open(): Track on the seeder first, then the puller starts: a chunk read before Track reached the
 * seeder could be written there unseen. (The caller attaches its device meanwhile: the device's
 * backend is locked anyway.) With `statePath` and a state saved by an earlier leecher of the same
 * seeder session, the chunks it had pulled are restored, and one round (Dirty since the epoch it
 * saved) marks those written since remote again before anything is pulled: a leecher killed -9
 * resumes without pulling again what it had, and without keeping what went stale.
 * round(): a pre-copy round while the seeder's application runs on: the chunks written since the
 * last round are marked remote and pulled again first. preCopy() repeats rounds, each once every
 * chunk is local, until few enough chunks were dirty or the round limit is reached.
 * finalize(): Sync on the seeder since the last round (its application is suspended and flushed)
 * → those chunks are marked remote in the table → they go to the front of the pull queue → unlock.
 * Reads after the unlock of a chunk not local yet fetch it on demand. Finalize works at any share
 * of the pre-copy (0 %, 50 %, 100 %): the state is per chunk, never a counter.
 * complete(): every chunk local (dirty ones re-pulled) → Close on the seeder. close(): stops the
 * puller, saves the state, and disconnects (after complete(), the seeder has been told; before,
 * it goes on).
 */
import { EventEmitter } from 'node:events';
import { ClosedError, MigrationError, UsageError } from '../errors.js';
import { CacheState } from '../mount/cache-state.js';
import { silentLogger, type Logger } from '../log.js';
import { MemoryBackend } from '../backends/memory.js';
import { ArbitraryReadWriterAt } from '../pipeline/arbitrary.js';
import { ChunkTable } from '../pipeline/chunk-table.js';
import { LockableReadWriterAt } from '../pipeline/lockable.js';
import { Puller } from '../pipeline/puller.js';
import { ascending, type PullPriority } from '../pipeline/pull-priority.js';
import { SyncedReadWriterAt } from '../pipeline/synced.js';
import type { Backend } from '../pipeline/types.js';
import { DEFAULT_CHUNK_SIZE, checkChunkSize } from '../util/chunks.js';
import { ManagedBackend } from '../mount/managed-backend.js';
import type { SeederRemote } from './seeder-remote.js';

export interface LeecherOptions {
  /** The seeder, opened (the leecher takes it over). */
  readonly seeder: SeederRemote;
  /** Where the state lands; default a MemoryBackend of the seeder's size. Taken over, closed on close(). */
  readonly cache?: Backend;
  /**
   * Bytes per chunk; must equal the seeder's chunk size (the Seeder protocol names dirty chunks by
   * offset only, so a larger seeder chunk would be re-pulled only in part). Default DEFAULT_CHUNK_SIZE.
   */
  readonly chunkSize?: number;
  /** Concurrent pulls during pre-copy; 0 = none (every chunk is fetched on demand). Default 16. */
  readonly pullWorkers?: number;
  /**
   * From finalize() on, the queueing the background pull may add in front of the device's reads
   * (Puller's maxQueueMs); 0 = every worker in flight. Before finalize() nothing reads the device
   * (it is locked), so every worker is in flight whatever this is. Default 1.
   */
  readonly pullMaxQueueMs?: number;
  readonly pullPriority?: PullPriority;
  /**
   * The cache file's path, for a leecher that survives kill -9: which chunks are local and the
   * last round's epoch are saved in `<statePath>.r3map-state` (every `stateIntervalMs`, and on
   * close), and a leecher started again with the same cache and seeder resumes. Give it only with
   * a file cache at that path.
   */
  readonly statePath?: string;
  /** With statePath: save this often when something changed; default 1000; 0 = only on close. */
  readonly stateIntervalMs?: number;
  /** After finalize() unlocked the device (the destination's application may resume). */
  readonly onResume?: (result: FinalizeResult) => Promise<void> | void;
  /**
   * Every time a chunk becomes local (pulled, read or pulled again after a round), with its offset;
   * synchronously, before the call that made it local settles. What it throws or rejects with is
   * reported as an 'error' event (or a process warning) and never fails the data path.
   */
  readonly onChunkIsLocal?: (off: number) => unknown;
  readonly log?: Logger;
}

export interface PreCopyOptions {
  /** Most rounds; default 8. */
  readonly maxRounds?: number;
  /** Stop once a round found at most this many dirty chunks; default 0 (stop only at maxRounds or a clean round). */
  readonly dirtyThreshold?: number;
  /** Stops between rounds (finalize may follow at once). */
  readonly signal?: AbortSignal;
}

export interface RoundResult {
  /** 1 for the first round of this leecher. */
  readonly round: number;
  /** Chunks written on the seeder since the previous round (pulled again). */
  readonly dirtyChunks: number;
  /** The seeder's epoch this round covers. */
  readonly epoch: number;
}

export interface LeecherProgress {
  readonly localChunks: number;
  readonly totalChunks: number;
}

export interface LeecherEvents {
  /** A chunk became local. Emitted only while someone listens. */
  progress: [LeecherProgress];
  /** A pre-copy round ended. */
  round: [RoundResult];
  error: [unknown];
}

export interface FinalizeResult {
  /** The chunks the seeder said were written since Track (pulled again). */
  readonly dirtyOffsets: readonly number[];
  /** From the Sync request to the unlock, in ms: the application's downtime, less its resume. */
  readonly downtimeMs: number;
  /** Pre-copy rounds before the Sync. */
  readonly rounds: number;
  /** Chunks local when the Sync was asked for, of all. */
  readonly localChunksAtSync: number;
  /** True when this leecher was restarted after it had finalized (no Sync now: 0 ms, no dirty chunks). */
  readonly resumed?: boolean;
}

/**
 * The epoch a leecher's saved state carries once it has finalized (seeder epochs are far lower):
 * restarted, it skips Track (the seeder refuses it now) and pulls what is not local yet.
 */
const FINALIZED_EPOCH = 0xffffffff;

export class Leecher extends EventEmitter<LeecherEvents> {
  readonly table: ChunkTable;
  /** What the leecher's device serves; every call waits until finalize() has unlocked it. */
  readonly backend: Backend;
  readonly #seeder: SeederRemote;
  readonly #cache: Backend;
  readonly #lock: LockableReadWriterAt;
  readonly #synced: SyncedReadWriterAt;
  readonly #puller: Puller;
  readonly #log: Logger;
  readonly #options: LeecherOptions;
  /** The puller's maxQueueMs from finalize() on (pullMaxQueueMs, checked). */
  readonly #pullMaxQueueMs: number;
  #state: CacheState | undefined;
  /** The seeder epoch the last round covered (0: none yet: everything since Track). */
  #since = 0;
  #rounds = 0;
  #fetchedBytes = 0;
  #onAllLocal: (() => void) | undefined;
  /** Rounds and the Sync run one at a time. */
  #step: Promise<unknown> = Promise.resolve();
  #finalizing: Promise<FinalizeResult> | undefined;
  #completing: Promise<void> | undefined;
  #closed = false;

  private constructor(options: LeecherOptions, chunkSize: number, workers: number, pullMaxQueueMs: number) {
    super();
    const seeder = options.seeder;
    const size = seeder.size;
    this.#seeder = seeder;
    this.#options = options;
    this.#pullMaxQueueMs = pullMaxQueueMs;
    this.#log = (options.log ?? silentLogger).child({ component: 'leecher', seeder: seeder.uri });
    this.#cache = options.cache ?? new MemoryBackend({ size, chunkSize });
    if (this.#cache.size !== size) throw new UsageError(`the cache has ${this.#cache.size} bytes, the seeder ${size}`);
    this.table = new ChunkTable({ chunkSize, size });
    const onChunkIsLocal = (off: number): unknown => {
      const hooked = options.onChunkIsLocal?.(off);
      if (this.#onAllLocal !== undefined && this.table.localCount === this.table.chunks) this.#onAllLocal();
      if (this.listenerCount('progress') > 0) this.emit('progress', { localChunks: this.table.localCount, totalChunks: this.table.chunks });
      return hooked;
    };
    const remote = seeder.backend;
    const counted = {
      readAt: async (buf: Buffer, off: number): Promise<void> => {
        await remote.readAt(buf, off);
        this.#fetchedBytes += buf.length;
      },
    };
    const onError = (err: unknown): void => {
      if (this.listenerCount('error') > 0) this.emit('error', err);
      else this.#log.warn({ err }, 'onChunkIsLocal failed; the data path went on');
    };
    this.#synced = new SyncedReadWriterAt(counted, this.#cache, { chunkSize, size, table: this.table, onChunkIsLocal, onError });
    this.#lock = new LockableReadWriterAt(this.#synced);
    this.#lock.lock();
    // A flush of the device saves the state too (with a file cache): a chunk the application wrote
    // after finalize is then local on disk and in the state, so a restarted leecher never pulls
    // the seeder's older copy over a write that was acknowledged as durable.
    const flush = (): Promise<void> => (this.#state !== undefined ? this.#state.save('full') : this.#cache.sync());
    this.backend = new ManagedBackend(new ArbitraryReadWriterAt(this.#lock, { chunkSize, size }), size, false, { flush });
    // maxQueueMs 0 while locked: nothing can wait behind the pre-copy (see #finalize)
    this.#puller = new Puller(this.#synced, { chunkSize, size, table: this.table, workers, maxQueueMs: 0, priority: options.pullPriority ?? ascending, log: this.#log });
    this.#puller.on('error', (err: unknown) => void (this.listenerCount('error') > 0 && this.emit('error', err)));
  }

  /** Track on the seeder, then pulling starts; the device backend stays locked until finalize(). */
  static async open(options: LeecherOptions): Promise<Leecher> {
    const chunkSize = checkChunkSize(options.chunkSize ?? DEFAULT_CHUNK_SIZE, 'the chunk size of a leecher');
    const workers = options.pullWorkers ?? 16;
    if (!Number.isSafeInteger(workers) || workers < 0) throw new UsageError(`pullWorkers must be a whole number >= 0, got ${String(workers)}`);
    const maxQueueMs = options.pullMaxQueueMs ?? 1;
    if (!(maxQueueMs >= 0 && maxQueueMs < Infinity)) throw new UsageError(`pullMaxQueueMs must be a number of milliseconds >= 0, got ${String(maxQueueMs)}`);
    const leecher = new Leecher(options, chunkSize, workers, maxQueueMs);
    try {
      let session: number;
      try {
        session = await options.seeder.track();
      } catch (err) {
        // A seeder that was finalized refuses Track: if that was us (our saved state says so), go on.
        if (!(err instanceof MigrationError) || options.statePath === undefined || !(await leecher.#resumeFinalized(options.statePath))) throw err;
        leecher.#puller.start();
        return leecher;
      }
      if (options.statePath !== undefined) await leecher.#resume(options.statePath, session);
    } catch (err) {
      await leecher.close();
      throw err;
    }
    leecher.#puller.start();
    return leecher;
  }

  /**
   * After a refused Track: when the state saved for this seeder's session says we finalized, the
   * migration goes on from there (the device unlocked at once, what is not local pulled, Close at
   * the end) and this returns true; otherwise false (another leecher finalized) and nothing changed.
   */
  async #resumeFinalized(statePath: string): Promise<boolean> {
    const session = await this.#seeder.session().catch(() => 0);
    if (session === 0) return false;
    const identity = { size: this.table.size, chunkSize: this.table.chunkSize, remoteId: `r3map-seeder-session:${session}` };
    const state = await CacheState.load(statePath, identity, { intervalMs: this.#options.stateIntervalMs ?? 1000, log: this.#log }).catch(() => undefined);
    if (state === undefined || state.restored.fresh || state.restored.epoch !== FINALIZED_EPOCH) return false;
    state.restoreInto(this.table);
    await state.open(this.table, () => this.#cache.sync());
    this.#state = state;
    this.#puller.maxQueueMs = this.#pullMaxQueueMs;
    this.#puller.finalize([]);
    this.#lock.unlock();
    const result = { dirtyOffsets: [], downtimeMs: 0, rounds: 0, localChunksAtSync: this.table.localCount, resumed: true };
    this.#finalizing = Promise.resolve(result);
    this.#log.info({ localChunks: this.table.localCount, totalChunks: this.table.chunks, session }, 'resuming after finalize: the device is unlocked, pulling the rest');
    await this.#options.onResume?.(result);
    return true;
  }

  /** Loads the state saved for this seeder session; a resumed one gets its catch-up round. */
  async #resume(statePath: string, session: number): Promise<void> {
    const identity = { size: this.table.size, chunkSize: this.table.chunkSize, remoteId: `r3map-seeder-session:${session}` };
    const options = { intervalMs: this.#options.stateIntervalMs ?? 1000, log: this.#log };
    if (session === 0) this.#log.warn('the seeder names no session (not r3map-seed): a restarted leecher pulls everything again');
    let state: CacheState;
    try {
      state = await CacheState.load(statePath, identity, { ...options, reset: session === 0 });
    } catch (err) {
      if (!(err instanceof UsageError) || !err.message.includes('another remote')) throw err;
      this.#log.warn({ statePath }, 'the saved leecher state is from another seeder session: pulling everything again');
      state = await CacheState.load(statePath, identity, { ...options, reset: true });
    }
    state.restoreInto(this.table);
    this.#since = state.restored.epoch;
    await state.open(this.table, () => this.#cache.sync());
    this.#state = state;
    if (!state.restored.fresh) {
      this.#log.info({ localChunks: this.table.localCount, since: this.#since }, 'resuming: asking the seeder what changed since the saved epoch');
      await this.round();
    }
  }

  /** Chunks local so far, of all. */
  progress(): LeecherProgress {
    return { localChunks: this.table.localCount, totalChunks: this.table.chunks };
  }

  /** Bytes read from the seeder so far (pre-copy, re-pulls and demand reads). */
  get fetchedBytes(): number {
    return this.#fetchedBytes;
  }

  /** Pre-copy rounds so far. */
  get rounds(): number {
    return this.#rounds;
  }

  /** One pre-copy round: the chunks written on the seeder since the last one are pulled again, first. */
  round(): Promise<RoundResult> {
    if (this.#closed) return Promise.reject(new ClosedError('leecher'));
    if (this.#finalizing !== undefined) return Promise.reject(new UsageError('no pre-copy round after finalize()'));
    const run = this.#step.then(async () => {
      const { offsets, epoch } = await this.#seeder.dirty(this.#since);
      const mine = this.#chunksOf(offsets);
      this.#synced.markAsRemote(mine);
      this.#puller.requeue(mine);
      this.#since = epoch;
      if (this.#state !== undefined) this.#state.epoch = epoch; // after the marks: see CacheState
      const result = { round: ++this.#rounds, dirtyChunks: mine.length, epoch };
      this.#log.info({ ...result, localChunks: this.table.localCount }, 'pre-copy round');
      this.emit('round', result);
      return result;
    });
    this.#step = run.catch(() => {});
    return run;
  }

  /**
   * Pre-copy rounds: each waits until every chunk is local, then asks what was written since;
   * stops after a round with at most `dirtyThreshold` dirty chunks, after `maxRounds`, or on `signal`.
   */
  async preCopy(options: PreCopyOptions = {}): Promise<readonly RoundResult[]> {
    const { maxRounds = 8, dirtyThreshold = 0, signal } = options;
    const results: RoundResult[] = [];
    while (results.length < maxRounds && !(signal?.aborted ?? false)) {
      await this.untilPulled(signal);
      if (signal?.aborted ?? false) break;
      const result = await this.round();
      results.push(result);
      if (result.dirtyChunks <= dirtyThreshold) break;
    }
    return results;
  }

  /** Resolves once every chunk is local (during pre-copy too), or when `signal` aborts. */
  async untilPulled(signal?: AbortSignal): Promise<void> {
    if (signal === undefined) return this.#puller.whenPulled();
    if (signal.aborted) return;
    let onAbort!: () => void;
    const aborted = new Promise<void>((resolve) => {
      onAbort = () => resolve();
      signal.addEventListener('abort', onAbort, { once: true });
    });
    try {
      await Promise.race([this.#puller.whenPulled(), aborted]);
    } finally {
      signal.removeEventListener('abort', onAbort);
    }
  }

  /** finalize() was called (or this leecher was restarted after it had finalized). */
  get finalized(): boolean {
    return this.#finalizing !== undefined;
  }

  /** Sync on the seeder, the dirty chunks remote again and to the front, unlock. Once; later calls share it. */
  finalize(): Promise<FinalizeResult> {
    if (this.#closed) return Promise.reject(new ClosedError('leecher'));
    this.#finalizing ??= this.#finalize();
    return this.#finalizing;
  }

  /** Resolves once every chunk is local (after finalize()), then tells the seeder it may go. */
  complete(): Promise<void> {
    this.#completing ??= (async () => {
      await this.finalize();
      await this.#puller.wait();
      if (this.table.localCount < this.table.chunks) {
        // no pull workers: the chunks become local only as they are read
        await new Promise<void>((resolve) => (this.#onAllLocal = resolve));
      }
      await this.#seeder.close();
      this.#log.info({ chunks: this.table.chunks }, 'every chunk is local; the seeder was told it may go');
    })();
    return this.#completing;
  }

  /** Stops pulling, closes the cache and disconnects from the seeder; idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#puller.close();
    await this.#step;
    if (this.#state !== undefined) {
      try {
        await this.#state.save('full');
      } catch (err) {
        this.#log.error({ err }, 'saving the leecher state failed: a restart pulls more again');
      }
      await this.#state.close();
    }
    if (this.#completing === undefined) await this.#seeder.disconnect();
    else await this.#completing.catch(() => this.#seeder.disconnect());
    await this.#cache.close();
  }

  async #finalize(): Promise<FinalizeResult> {
    await this.#step; // a round under way ends first
    const localChunksAtSync = this.table.localCount;
    const started = performance.now();
    // From now on reads of the device come: the pulls in flight drain during the Sync round trip.
    this.#puller.maxQueueMs = this.#pullMaxQueueMs;
    let offsets: readonly number[];
    try {
      ({ offsets } = await this.#seeder.sync(this.#since));
    } catch (err) {
      this.#puller.maxQueueMs = 0; // still locked: the pre-copy goes on at full width
      throw err;
    }
    const mine = this.#chunksOf(offsets);
    this.#synced.markAsRemote(mine);
    this.#puller.finalize(mine);
    if (this.#state !== undefined) {
      // Saved before the unlock: a leecher restarted after this point must never take its
      // pre-copy of a dirty chunk as local, and must know it may go on without Track.
      // 'forget': the saved local bits lose the dirty chunks, no cache fdatasync in the downtime.
      this.#state.epoch = FINALIZED_EPOCH;
      await this.#state.save('forget');
    }
    this.#lock.unlock();
    const downtimeMs = performance.now() - started;
    const result = { dirtyOffsets: mine, downtimeMs, rounds: this.#rounds, localChunksAtSync };
    this.#log.info({ dirtyChunks: mine.length, downtimeMs, rounds: this.#rounds, localChunksAtSync, totalChunks: this.table.chunks }, 'finalized: the device is unlocked');
    await this.#options.onResume?.(result);
    return result;
  }

  /** The seeder's dirty offsets as chunk offsets of ours, deduplicated, inside the state. */
  #chunksOf(offsets: readonly number[]): number[] {
    const chunkSize = this.table.chunkSize;
    return [...new Set(offsets.map((off) => Math.floor(off / chunkSize) * chunkSize))].filter((off) => off < this.table.size);
  }
}
