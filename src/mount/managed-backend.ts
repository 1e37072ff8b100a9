/**
 * ManagedBackend: a managed mount's composed stack as the Backend the NBD server serves. Reads and
 * writes go to the top stage (ArbitraryReadWriterAt); a WRITE payload that arrived in several
 * socket chunks goes down as pieces (`writev`), so managed mounts keep the zero-copy write path of
 * direct mounts. A FLUSH (sync) runs the mount's flush (see managed.ts); a CACHE runs `cache` and a
 * BLOCK_STATUS `extents` when given; close() is left to the mount, which owns every stage and
 * closes them in order.
 */
import type { Backend, BackendExtent, ReadWriterAt, ScatterWriter } from '../pipeline/types.js';

/** What a mount does for the commands beyond reads and writes. */
export interface ManagedBackendHooks {
  /** FLUSH: what "durable" means for this mount. */
  readonly flush: () => Promise<void>;
  /** NBD_CMD_CACHE: pull the range ahead. */
  readonly cache?: (off: number, length: number) => Promise<void>;
  /** NBD_CMD_BLOCK_STATUS (see managed-extents.ts). */
  readonly extents?: (off: number, length: number) => Promise<readonly BackendExtent[]>;
}

export class ManagedBackend implements Backend {
  readonly size: number;
  readonly readOnly: boolean;
  readonly maxInFlight = 0;
  readonly canMultiConn = false;
  readonly #next: ReadWriterAt & Required<ScatterWriter>;
  readonly #flush: () => Promise<void>;
  /** Present when the mount can pull a range ahead (NBD_CMD_CACHE). */
  readonly cache: ((off: number, length: number) => Promise<void>) | undefined;
  /** Present when the mount can tell holes (its remote can). */
  readonly extents: ((off: number, length: number) => Promise<readonly BackendExtent[]>) | undefined;

  constructor(next: ReadWriterAt & Required<ScatterWriter>, size: number, readOnly: boolean, hooks: ManagedBackendHooks) {
    this.#next = next;
    this.size = size;
    this.readOnly = readOnly;
    this.#flush = hooks.flush;
    this.cache = hooks.cache;
    this.extents = hooks.extents;
  }

  readAt(buf: Buffer, off: number): Promise<void> {
    return this.#next.readAt(buf, off);
  }

  writeAt(buf: Buffer, off: number): Promise<void> {
    return this.#next.writeAt(buf, off);
  }

  writev(bufs: readonly Buffer[], off: number): Promise<void> {
    return this.#next.writev(bufs, off);
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
