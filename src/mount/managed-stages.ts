/**
 * The three small stages only a managed mount needs; managed.ts puts them in place.
 *
 * - RemoteStage (right above the remote): counts the bytes pulled and pushed, and remembers which
 *   chunks were written to the remote since the last remote.sync() that completed. Until then a
 *   pushed chunk still counts as dirty in the cache state: the remote may not hold it durably.
 * - WriteMarks (between ArbitraryReadWriterAt and SyncedReadWriterAt; whole chunks, one write per
 *   chunk at a time, as Arbitrary holds the chunk's lock across the call): makes every write
 *   count. The Pusher only marks writes to chunks already pushable, but a whole-chunk write to a
 *   REMOTE chunk lands in the cache before onChunkIsLocal makes the chunk pushable; such a write
 *   is marked dirty here right after it landed, before it is acknowledged. With a file cache it
 *   also brackets each write with CacheState.beginWrite()/endWrite() (crash safety), and without
 *   a pusher it records which chunks were written (the dirty bits of the cache state).
 * - ManagedBackend: the composed stack as the Backend the NBD server serves; a FLUSH (sync) runs
 *   the mount's flush, close() is left to the mount, which owns every stage.
 */
import { chunkCount } from '../util/chunks.js';
import type { Pusher } from '../pipeline/pusher.js';
import type { Backend, ReadWriterAt } from '../pipeline/types.js';
import type { CacheState } from './cache-state.js';

const CLEAN = 0;
const WRITTEN = 1;
const SYNCING = 2;

export class RemoteStage implements ReadWriterAt {
  /** Bytes read from the remote (pulls and reads of remote chunks). */
  pulledBytes = 0;
  /** Bytes written to the remote (pushes). */
  pushedBytes = 0;
  readonly #next: Backend;
  readonly #chunkSize: number;
  readonly #unsynced: Uint8Array;
  #syncing: Promise<void> = Promise.resolve();

  constructor(next: Backend, chunkSize: number) {
    this.#next = next;
    this.#chunkSize = chunkSize;
    this.#unsynced = new Uint8Array(chunkCount(next.size, chunkSize));
  }

  async readAt(buf: Buffer, off: number): Promise<void> {
    await this.#next.readAt(buf, off);
    this.pulledBytes += buf.length;
  }

  async writeAt(buf: Buffer, off: number): Promise<void> {
    await this.#next.writeAt(buf, off);
    this.#unsynced[Math.floor(off / this.#chunkSize)] = WRITTEN;
    this.pushedBytes += buf.length;
  }

  /** remote.sync(); calls run one after the other, so "synced" always means "by a sync begun after the write". */
  sync(): Promise<void> {
    const run = this.#syncing.then(() => this.#sync());
    this.#syncing = run.catch(() => undefined);
    return run;
  }

  /** Sets bytes[i] for every chunk written to the remote and not yet covered by a completed sync. */
  fillUnsynced(bytes: Uint8Array): void {
    for (let i = 0; i < this.#unsynced.length; i++) if (this.#unsynced[i] !== CLEAN) bytes[i] = 1;
  }

  async #sync(): Promise<void> {
    const unsynced = this.#unsynced;
    for (let i = 0; i < unsynced.length; i++) if (unsynced[i] === WRITTEN) unsynced[i] = SYNCING;
    try {
      await this.#next.sync();
    } catch (err) {
      for (let i = 0; i < unsynced.length; i++) if (unsynced[i] === SYNCING) unsynced[i] = WRITTEN;
      throw err;
    }
    for (let i = 0; i < unsynced.length; i++) if (unsynced[i] === SYNCING) unsynced[i] = CLEAN;
  }
}

export interface WriteMarksOptions {
  readonly chunkSize: number;
  readonly size: number;
  readonly pusher: Pusher | undefined;
  readonly state: CacheState | undefined;
}

export class WriteMarks implements ReadWriterAt {
  readonly #next: ReadWriterAt;
  readonly #chunkSize: number;
  readonly #pusher: Pusher | undefined;
  readonly #state: CacheState | undefined;
  /** Without a pusher and with a file cache: chunks written (never pushed). */
  readonly #written: Uint8Array | undefined;
  #writtenCount = 0;

  constructor(next: ReadWriterAt, options: WriteMarksOptions) {
    this.#next = next;
    this.#chunkSize = options.chunkSize;
    this.#pusher = options.pusher;
    this.#state = options.state;
    this.#written = options.pusher === undefined && options.state !== undefined ? new Uint8Array(chunkCount(options.size, options.chunkSize)) : undefined;
  }

  /** Chunks written and not pushable (only counted without a pusher and with a file cache). */
  get writtenChunks(): number {
    return this.#writtenCount;
  }

  readAt(buf: Buffer, off: number): Promise<void> {
    return this.#next.readAt(buf, off);
  }

  writeAt(buf: Buffer, off: number): Promise<void> {
    if (this.#state === undefined && (this.#pusher === undefined || this.#pusher.isPushable(off))) return this.#next.writeAt(buf, off);
    return this.#write(buf, off);
  }

  /** Restores written chunks (push off) from the cache state. */
  markWritten(indexes: readonly number[]): void {
    for (const i of indexes) this.#mark(i);
  }

  fillWritten(bytes: Uint8Array): void {
    const written = this.#written;
    if (written !== undefined) for (let i = 0; i < written.length; i++) bytes[i] |= written[i]!;
  }

  async #write(buf: Buffer, off: number): Promise<void> {
    const index = Math.floor(off / this.#chunkSize);
    const gate = this.#state?.beginWrite(index);
    try {
      if (gate !== undefined) await gate;
      this.#mark(index);
      const pushable = this.#pusher === undefined || this.#pusher.isPushable(off);
      await this.#next.writeAt(buf, off);
      if (!pushable) this.#pusher!.markDirty([off]); // it landed before onChunkIsLocal made it pushable
    } finally {
      this.#state?.endWrite(index);
    }
  }

  #mark(index: number): void {
    if (this.#written === undefined || this.#written[index] === 1) return;
    this.#written[index] = 1;
    this.#writtenCount++;
  }
}

export class ManagedBackend implements Backend {
  readonly size: number;
  readonly readOnly: boolean;
  readonly maxInFlight = 0;
  readonly canMultiConn = false;
  readonly #next: ReadWriterAt;
  readonly #flush: () => Promise<void>;

  constructor(next: ReadWriterAt, size: number, readOnly: boolean, flush: () => Promise<void>) {
    this.#next = next;
    this.size = size;
    this.readOnly = readOnly;
    this.#flush = flush;
  }

  readAt(buf: Buffer, off: number): Promise<void> {
    return this.#next.readAt(buf, off);
  }

  writeAt(buf: Buffer, off: number): Promise<void> {
    return this.#next.writeAt(buf, off);
  }

  /** FLUSH: what "durable" means for this mount (see managed.ts). */
  sync(): Promise<void> {
    return this.#flush();
  }

  /** The mount closes every stage itself, in order. */
  close(): Promise<void> {
    return Promise.resolve();
  }
}
