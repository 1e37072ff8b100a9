/**
 * SeederService: the Seeder service's logic (migration/v1/seeder.proto), knowing no transport;
 * the source is migration/seeder.ts (any object of the `SeederSource` shape works). ReadAt is
 * capped and range-checked as in BackendService; Since is checked to be a safe integer; Track,
 * Session, Sync, Dirty and Close pass through.
 */
import { UsageError } from '../errors.js';
import { EMPTY, allocReadAtReply, type DirtyOffsetsReply, type Empty, type ReadAtReply, type SizeReply, type TrackReply } from './codec.js';
import { checkCall, resolveMaxChunkSize } from './backend-service.js';

/** Chunk offsets written after an epoch, and the last epoch they cover. */
export interface DirtyChunks {
  readonly offsets: readonly number[];
  readonly epoch: number;
}

/** What a seeder exposes to a leecher. */
export interface SeederSource {
  readonly size: number;
  /** Fills all of `buf` or rejects. */
  readAt(buf: Buffer, off: number): Promise<void>;
  /** Starts recording written chunks (idempotent); the seeder's session number (never 0). */
  track(): Promise<number>;
  /** The same session number, without tracking; also after a Sync. */
  session(): Promise<number>;
  /** A pre-copy round: the chunks written after epoch `since` (0: since Track), no suspend. */
  dirty(since: number): Promise<DirtyChunks>;
  /** Suspends the application, flushes, and returns the chunks written after epoch `since`. */
  sync(since: number): Promise<DirtyChunks>;
  /** The leecher is done with this seeder. */
  close(): Promise<void>;
}

export interface SeederServiceOptions {
  /** Most bytes one ReadAt may move; default 32 MiB. */
  readonly maxChunkSize?: number;
}

export class SeederService {
  readonly options: Readonly<{ maxChunkSize: number }>;
  readonly #source: SeederSource;

  constructor(source: SeederSource, options: SeederServiceOptions = {}) {
    this.#source = source;
    this.options = Object.freeze({ maxChunkSize: resolveMaxChunkSize(options.maxChunkSize) });
  }

  async readAt(length: number, off: number): Promise<ReadAtReply> {
    checkCall('ReadAt', length, off, this.#source.size, this.options.maxChunkSize);
    const reply = allocReadAtReply(length);
    if (length > 0) await this.#source.readAt(reply.p, off);
    return reply;
  }

  size(): Promise<SizeReply> {
    return Promise.resolve({ size: this.#source.size });
  }

  async track(): Promise<TrackReply> {
    return { session: await this.#source.track() };
  }

  async session(): Promise<TrackReply> {
    return { session: await this.#source.session() };
  }

  async dirty(since: number): Promise<DirtyOffsetsReply> {
    const { offsets, epoch } = await this.#source.dirty(checkSince('Dirty', since));
    return { dirtyOffsets: offsets, epoch };
  }

  async sync(since: number): Promise<DirtyOffsetsReply> {
    const { offsets, epoch } = await this.#source.sync(checkSince('Sync', since));
    return { dirtyOffsets: offsets, epoch };
  }

  async close(): Promise<Empty> {
    await this.#source.close();
    return EMPTY;
  }
}

function checkSince(op: string, since: number): number {
  if (!Number.isSafeInteger(since) || since < 0) throw new UsageError(`${op}: Since ${since} is not an epoch (a whole number >= 0)`);
  return since;
}
