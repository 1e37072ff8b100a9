/**
 * Leecher: the destination side of a migration, composed in one place:
 *
 *   backend (what the leecher's device serves; locked until finalize())
 *     → ArbitraryReadWriterAt (any range → whole chunks)
 *     → LockableReadWriterAt (every call waits until finalize() unlocked it)
 *     → SyncedReadWriterAt ◄── Puller (pre-copy: every chunk, pullWorkers, pullPriority)
 *     → local cache (the caller's Backend, or memory)
 *   remote reads: the seeder (SeederRemote), through Synced, once per chunk
 *   every per-chunk fact: one ChunkTable
 *
 * open(): Track on the seeder first, then the puller starts: a chunk read before Track reached
 * the seeder could be written there unseen. (The caller attaches its device meanwhile: the
 * device's backend is locked anyway.) finalize(): Sync on the seeder (the application there is suspended and flushed) → the
 * dirty chunks are marked remote in the table → they go to the front of the pull queue → unlock.
 * Reads after the unlock of a chunk not local yet fetch it on demand. Finalize works at any
 * share of the pre-copy (0 %, 50 %, 100 %): the state is per chunk, never a counter.
 * complete(): every chunk local (dirty ones re-pulled) → Close on the seeder. close(): stops
 * the puller and disconnects (after complete(), the seeder has been told; before, it goes on).
 */
import { EventEmitter } from 'node:events';
import { ClosedError, UsageError } from '../errors.js';
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
  readonly pullPriority?: PullPriority;
  readonly log?: Logger;
}

export interface LeecherProgress {
  readonly localChunks: number;
  readonly totalChunks: number;
}

export interface LeecherEvents {
  /** A chunk became local. Emitted only while someone listens. */
  progress: [LeecherProgress];
  error: [unknown];
}

export interface FinalizeResult {
  /** The chunks the seeder said were written since Track (pulled again). */
  readonly dirtyOffsets: readonly number[];
  /** From the Sync request to the unlock, in ms: the application's downtime, less its resume. */
  readonly downtimeMs: number;
}

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
  #finalizing: Promise<FinalizeResult> | undefined;
  #completing: Promise<void> | undefined;
  #closed = false;

  private constructor(options: LeecherOptions, chunkSize: number, workers: number) {
    super();
    const seeder = options.seeder;
    const size = seeder.size;
    this.#seeder = seeder;
    this.#log = (options.log ?? silentLogger).child({ component: 'leecher', seeder: seeder.uri });
    this.#cache = options.cache ?? new MemoryBackend({ size, chunkSize });
    if (this.#cache.size !== size) throw new UsageError(`the cache has ${this.#cache.size} bytes, the seeder ${size}`);
    this.table = new ChunkTable({ chunkSize, size });
    const onChunkIsLocal = (): void => {
      if (this.listenerCount('progress') > 0) this.emit('progress', { localChunks: this.table.localCount, totalChunks: this.table.chunks });
    };
    this.#synced = new SyncedReadWriterAt(seeder.backend, this.#cache, { chunkSize, size, table: this.table, onChunkIsLocal });
    this.#lock = new LockableReadWriterAt(this.#synced);
    this.#lock.lock();
    this.backend = new ManagedBackend(new ArbitraryReadWriterAt(this.#lock, { chunkSize, size }), size, false, () => this.#cache.sync());
    this.#puller = new Puller(this.#synced, { chunkSize, size, table: this.table, workers, priority: options.pullPriority ?? ascending, log: this.#log });
    this.#puller.on('error', (err: unknown) => void (this.listenerCount('error') > 0 && this.emit('error', err)));
  }

  /** Track on the seeder, then pulling starts; the device backend stays locked until finalize(). */
  static async open(options: LeecherOptions): Promise<Leecher> {
    const chunkSize = checkChunkSize(options.chunkSize ?? DEFAULT_CHUNK_SIZE, 'the chunk size of a leecher');
    const workers = options.pullWorkers ?? 16;
    if (!Number.isSafeInteger(workers) || workers < 0) throw new UsageError(`pullWorkers must be a whole number >= 0, got ${String(workers)}`);
    const leecher = new Leecher(options, chunkSize, workers);
    try {
      await options.seeder.track();
    } catch (err) {
      await leecher.close();
      throw err;
    }
    leecher.#puller.start();
    return leecher;
  }

  /** Chunks local so far, of all. */
  progress(): LeecherProgress {
    return { localChunks: this.table.localCount, totalChunks: this.table.chunks };
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
    if (this.#completing === undefined) await this.#seeder.disconnect();
    else await this.#completing.catch(() => this.#seeder.disconnect());
    await this.#cache.close();
  }

  async #finalize(): Promise<FinalizeResult> {
    const started = performance.now();
    const dirtyOffsets = await this.#seeder.sync();
    const chunkSize = this.table.chunkSize;
    const mine = [...new Set(dirtyOffsets.map((off) => Math.floor(off / chunkSize) * chunkSize))].filter((off) => off < this.table.size);
    this.#synced.markAsRemote(mine);
    this.#puller.finalize(mine);
    this.#lock.unlock();
    const downtimeMs = performance.now() - started;
    this.#log.info({ dirtyChunks: mine.length, downtimeMs, localChunks: this.table.localCount, totalChunks: this.table.chunks }, 'finalized: the device is unlocked');
    return { dirtyOffsets: mine, downtimeMs };
  }
}
