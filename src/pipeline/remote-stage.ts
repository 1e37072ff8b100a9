/**
 * RemoteStage: the stage right above the remote. It counts the bytes pulled and pushed, and keeps
 * the table's `unsynced` column: a chunk written to the remote stays WRITTEN until a remote sync
 * begun after that write has completed. Until then the cache state still saves the chunk as
 * dirty, since the remote may not hold it durably.
 *
 * sync() calls run one after the other, so "synced" always means "by a sync begun after the write".
 * A failed sync puts its chunks back to WRITTEN.
 */
import { RemoteSync, type ChunkTable } from './chunk-table.js';
import type { Backend, ReadWriterAt } from './types.js';

export class RemoteStage implements ReadWriterAt {
  /** Bytes read from the remote (pulls and reads of remote chunks). */
  pulledBytes = 0;
  /** Bytes written to the remote (pushes). */
  pushedBytes = 0;
  readonly #next: Backend;
  readonly #table: ChunkTable;
  #syncing: Promise<void> = Promise.resolve();

  constructor(next: Backend, table: ChunkTable) {
    table.checkGeometry(table.chunkSize, next.size, 'remote stage');
    this.#next = next;
    this.#table = table;
  }

  async readAt(buf: Buffer, off: number): Promise<void> {
    await this.#next.readAt(buf, off);
    this.pulledBytes += buf.length;
  }

  async writeAt(buf: Buffer, off: number): Promise<void> {
    await this.#next.writeAt(buf, off);
    this.#table.unsynced[Math.floor(off / this.#table.chunkSize)] = RemoteSync.WRITTEN;
    this.pushedBytes += buf.length;
  }

  sync(): Promise<void> {
    const run = this.#syncing.then(() => this.#sync());
    this.#syncing = run.catch(() => undefined);
    return run;
  }

  async #sync(): Promise<void> {
    const unsynced = this.#table.unsynced;
    for (let i = 0; i < unsynced.length; i++) if (unsynced[i] === RemoteSync.WRITTEN) unsynced[i] = RemoteSync.SYNCING;
    try {
      await this.#next.sync();
    } catch (err) {
      for (let i = 0; i < unsynced.length; i++) if (unsynced[i] === RemoteSync.SYNCING) unsynced[i] = RemoteSync.WRITTEN;
      throw err;
    }
    for (let i = 0; i < unsynced.length; i++) if (unsynced[i] === RemoteSync.SYNCING) unsynced[i] = RemoteSync.CLEAN;
    this.#table.noteChange();
  }
}
