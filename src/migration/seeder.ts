/**
 * Seeder: the source side of a migration. It owns the state being migrated (a Backend) and gives
 * it out twice:
 *
 * - `backend`: what the application's device serves. Its writes go through a TrackingReadWriterAt
 *   whose epochs live in the seeder's ChunkTable (`tracked`), so after `track()` every chunk the
 *   application writes is known, and when.
 * - `source`: the Seeder service's logic (rpc/seeder-service.ts SeederSource) for leechers:
 *   ReadAt and Size read the state; Track starts tracking and names this seeder's session; Dirty
 *   (a pre-copy round) returns the chunks written after an epoch while the application runs on;
 *   Sync suspends the application (`onBeforeSuspend`, `onSuspend`), flushes its device (`flush`)
 *   and the backend, and returns the chunks written after the epoch the leecher's last round
 *   covered (`onAfterSync`); Close ends the migration, but only after a Sync: a leecher that dies
 *   or gives up before it synced can never take the seeder, or the application on it, down.
 *   Nothing is cleared by a round, so a leecher restarted with its saved epoch asks again.
 *   After a Sync the seeder refuses Track and a second Sync: its application is suspended and
 *   belongs to the leecher that finalized.
 *
 * `done` resolves once a leecher closed it after a Sync (the seed command then exits).
 */
import { randomInt } from 'node:crypto';
import { MigrationError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import { ChunkTable } from '../pipeline/chunk-table.js';
import { TrackingReadWriterAt, type DirtySince } from '../pipeline/tracking.js';
import type { Backend } from '../pipeline/types.js';
import type { SeederSource } from '../rpc/seeder-service.js';
import { DEFAULT_CHUNK_SIZE, checkChunkSize } from '../util/chunks.js';

export interface SeederOptions {
  /** The state being migrated; the seeder takes it over and closes it on close(). */
  readonly backend: Backend;
  /** The unit of tracking: Sync names written chunks of this size; default DEFAULT_CHUNK_SIZE. */
  readonly chunkSize?: number;
  /** Sync, first: told the application is about to be suspended (e.g. to quiesce it). */
  readonly onBeforeSuspend?: () => Promise<void> | void;
  /** Sync, then: the application stops writing (the seeder's downtime starts here). */
  readonly onSuspend?: () => Promise<void> | void;
  /** Sync, then: the device's dirty pages reach the backend (a direct mount's fsync). */
  readonly flush?: () => Promise<void>;
  /** Sync, last: the chunk offsets going to the leecher (a throw fails the Sync). */
  readonly onAfterSync?: (dirtyOffsets: readonly number[]) => Promise<void> | void;
  readonly log?: Logger;
}

export class Seeder {
  readonly table: ChunkTable;
  /** The application's view: a Backend whose writes are tracked. */
  readonly backend: Backend;
  /** The Seeder service's source, for GrpcServer({ seeder }). */
  readonly source: SeederSource;
  /** Resolves once a leecher closed the seeder after a Sync. */
  readonly done: Promise<void>;
  /** Names this seeder to leechers (TrackReply.Session): a restarted leecher's state is valid only for it. */
  readonly session = randomInt(1, 2 ** 47);
  readonly #state: Backend;
  readonly #tracking: TrackingReadWriterAt;
  readonly #options: SeederOptions;
  readonly #log: Logger;
  #syncing: Promise<unknown> | undefined;
  #synced = false;
  #finish!: () => void;

  constructor(options: SeederOptions) {
    const chunkSize = checkChunkSize(options.chunkSize ?? DEFAULT_CHUNK_SIZE, 'the chunk size of a seeder');
    const state = options.backend;
    this.#state = state;
    this.#options = options;
    this.#log = (options.log ?? silentLogger).child({ component: 'seeder' });
    this.table = new ChunkTable({ chunkSize, size: state.size });
    this.#tracking = new TrackingReadWriterAt(state, { chunkSize, table: this.table });
    this.done = new Promise<void>((resolve) => (this.#finish = resolve));
    const tracking = this.#tracking;
    this.backend = {
      size: state.size,
      readOnly: state.readOnly ?? false,
      maxInFlight: state.maxInFlight ?? 0,
      canMultiConn: state.canMultiConn ?? false,
      readAt: (buf, off) => tracking.readAt(buf, off),
      writeAt: (buf, off) => tracking.writeAt(buf, off),
      sync: () => state.sync(),
      close: () => Promise.resolve(), // the seeder closes the state itself
    };
    this.source = {
      size: state.size,
      readAt: (buf, off) => state.readAt(buf, off),
      track: async () => {
        if (this.#syncing !== undefined) throw new MigrationError('this seeder was finalized by a leecher already; start a new seeder from the leecher (--seed-after)');
        tracking.track();
        this.#log.info({ session: this.session, epoch: tracking.epoch }, 'a leecher started tracking');
        return this.session;
      },
      session: () => Promise.resolve(this.session),
      dirty: async (since) => {
        const round = this.#tracking.dirtySince(since);
        this.#log.debug({ since, epoch: round.epoch, dirtyChunks: round.offsets.length }, 'pre-copy round');
        return round;
      },
      sync: (since) => this.#sync(since),
      close: () => this.#close(),
    };
  }

  /** Closes the state (the application's device must be gone first). */
  close(): Promise<void> {
    return this.#state.close();
  }

  async #sync(since: number): Promise<DirtySince> {
    if (!this.#tracking.tracking) throw new MigrationError('Sync before Track: the leecher must call Track first, or the dirty list would be incomplete');
    if (this.#syncing !== undefined) throw new MigrationError('Sync was called already: this seeder is finalized (its application is suspended)');
    const started = performance.now();
    const run = (async () => {
      await this.#options.onBeforeSuspend?.();
      await this.#options.onSuspend?.();
      await this.#options.flush?.();
      await this.#state.sync();
      const dirty = this.#tracking.dirtySince(since);
      await this.#options.onAfterSync?.(dirty.offsets);
      return dirty;
    })();
    this.#syncing = run;
    let dirty: DirtySince;
    try {
      dirty = await run;
    } catch (err) {
      this.#syncing = undefined; // not finalized: a leecher may try again
      this.#log.error({ err }, 'Sync failed; the seeder goes on');
      throw err;
    }
    this.#synced = true;
    this.#log.info({ dirtyChunks: dirty.offsets.length, since, epoch: dirty.epoch, ms: performance.now() - started }, 'suspended and synced: the dirty list goes to the leecher');
    return dirty;
  }

  async #close(): Promise<void> {
    if (!this.#synced) throw new MigrationError('Close before Sync is refused: the seeder (and the application on it) goes on');
    this.#log.info('the leecher is done with this seeder');
    this.#finish();
  }
}
