/**
 * SeederService: the Seeder service's logic (migration/v1/seeder.proto), knowing no transport.
 * The migration issue supplies the source (a tracking stage over the seeder's device); until then
 * any object of the `SeederSource` shape works. ReadAt is capped and range-checked as in
 * BackendService; Track, Sync (→ the dirty offsets since Track) and Close pass through.
 */
import { EMPTY, allocReadAtReply, type DirtyOffsetsReply, type Empty, type ReadAtReply, type SizeReply } from './codec.js';
import { checkCall, resolveMaxChunkSize } from './backend-service.js';

/** What a seeder exposes to a leecher. */
export interface SeederSource {
  readonly size: number;
  /** Fills all of `buf` or rejects. */
  readAt(buf: Buffer, off: number): Promise<void>;
  /** Starts recording written offsets. */
  track(): Promise<void>;
  /** Offsets written since `track()` (chunk offsets, deduplicated); stops tracking. */
  sync(): Promise<readonly number[]>;
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

  async track(): Promise<Empty> {
    await this.#source.track();
    return EMPTY;
  }

  async sync(): Promise<DirtyOffsetsReply> {
    return { dirtyOffsets: await this.#source.sync() };
  }

  async close(): Promise<Empty> {
    await this.#source.close();
    return EMPTY;
  }
}
