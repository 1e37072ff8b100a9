/**
 * The contracts every pipeline stage and backend speaks.
 *
 * - A read fills all of `buf` or rejects; there are no short reads.
 * - A range that was never written reads as zeros, even into a dirty buffer.
 * - Buffer ownership: a stage may touch `buf` only until its promise settles and never keeps
 *   `buf` or a view of it.
 * - Offsets and lengths are plain numbers of bytes (safe integers).
 */
export interface ReaderAt {
  readAt(buf: Buffer, off: number): Promise<void>;
}

export interface WriterAt {
  writeAt(buf: Buffer, off: number): Promise<void>;
}

export interface ReadWriterAt extends ReaderAt, WriterAt {}

/** A stage or backend that may take one write as several pieces (see Backend.writev). */
export interface ScatterWriter {
  writev?(bufs: readonly Buffer[], off: number): Promise<void>;
}

/** What a backend can do, declared up front (as nbdkit plugins declare a thread model). */
export interface BackendCapabilities {
  /** Writes are refused (the NBD server advertises READ_ONLY). */
  readonly readOnly?: boolean;
  /** How many calls it serves well at once; 0 means no preference. */
  readonly maxInFlight?: number;
  /** Flush/FUA effects are visible across connections (NBD CAN_MULTI_CONN). */
  readonly canMultiConn?: boolean;
  /**
   * `zero` is quicker than writing zeros (it drops storage rather than writing it): the NBD server
   * serves NBD_CMD_FLAG_FAST_ZERO only then, and answers ENOTSUP at once otherwise.
   */
  readonly fastZero?: boolean;
  /**
   * `extents` answers from local state at the cost of a system call or two (a file's SEEK_HOLE):
   * the NBD server then asks it before a large structured READ and sends the holes as hole chunks.
   */
  readonly localExtents?: boolean;
  /**
   * The granularity it accepts natively, in bytes: every readAt/writeAt/trim/zero must cover whole
   * blocks (block i = [i * blockSize, min((i + 1) * blockSize, size)), so the last one may be
   * short), and anything else rejects with the pipeline's typed errors (MisalignedError,
   * BadLengthError). Undefined or 1 means any range. A caller that needs any range opens it through
   * mount/compose.ts, which puts ArbitraryReadWriterAt in front when this is above 1.
   */
  readonly blockSize?: number;
}

/**
 * A store with a fixed size. `trim` and `zero` are optional: the NBD server emulates
 * WRITE_ZEROES with writes of zeros and treats TRIM as advisory when they are missing.
 */
/** One extent of `Backend.extents`: `length` bytes with EXTENT_* flags (0 = data). */
export interface BackendExtent {
  readonly length: number;
  readonly flags: number;
}
/** Not allocated (NBD_STATE_HOLE); a hole that also has EXTENT_ZERO reads as zeros. */
export const EXTENT_HOLE = 1;
/** Reads as zeros; NBD_STATE_ZERO. */
export const EXTENT_ZERO = 2;

/**
 * What another thread needs to attach the same store (Backend.share): `module` exports
 * `attachShared(data)`, which returns a Backend over it (or a promise of one); `data` survives
 * postMessage. The thread closes what it attached when it is done.
 */
export interface SharedBackendHandle {
  readonly module: string;
  readonly data: unknown;
}

export interface Backend extends ReadWriterAt, BackendCapabilities {
  readonly size: number;
  /** Makes every completed write durable. */
  sync(): Promise<void>;
  /** Releases resources; idempotent. */
  close(): Promise<void>;
  /** Discard a range; afterwards it reads as zeros. */
  trim?(off: number, length: number): Promise<void>;
  /** Write zeros over a range, cheaper than writeAt where the store allows (see `fastZero`). */
  zero?(off: number, length: number): Promise<void>;
  /**
   * Make a range quick to read soon (NBD_CMD_CACHE): a managed mount pulls its chunks ahead. The
   * NBD server treats CACHE on a backend without it as a no-op that succeeds.
   */
  cache?(off: number, length: number): Promise<void>;
  /**
   * What [off, off + length) holds, in order from `off` (NBD base:allocation): extents whose
   * lengths add up to at most `length` (less is allowed: the caller asks again), each with
   * EXTENT_HOLE and/or EXTENT_ZERO where it knows, 0 for data. Without it everything is data.
   */
  extents?(off: number, length: number): Promise<readonly BackendExtent[]>;
  /**
   * Scatter write: `bufs` are the contiguous pieces of one write of their total length at `off`
   * (as if concatenated; empty pieces allowed). Same result and errors as `writeAt` of the
   * concatenation. The pieces are valid only until the promise settles and are never kept. The
   * NBD server hands a WRITE payload that arrived in several socket chunks to it as is.
   */
  writev?(bufs: readonly Buffer[], off: number): Promise<void>;
  /**
   * The store's own memory for [off, off + length), as views in order, for a caller that moves
   * bytes without a copy of its own (the NBD server reads a WRITE payload from the socket into
   * them and sends a READ reply from them). Synchronous; checks and throws as readAt/writeAt do.
   * - `write` true: filling the views *is* the write (storage is allocated, zeroed, as needed).
   *   The bytes are visible as they land, so a write cut short leaves part of it, as on a disk.
   * - `write` false: views to send as they are; a hole is a `zeroView()` (pipeline/zero-views.ts)
   *   that no one may write into, and the NBD server answers it as a hole. A later write to the range shows through a view not sent yet.
   * A view stays the store's memory until the range is trimmed or zeroed.
   */
  views?(off: number, length: number, write: boolean): readonly Buffer[];
  /**
   * The store can be attached by other threads of this process, all seeing one state (the NBD
   * server then serves its connections on worker threads): what they need to attach it.
   */
  share?(): SharedBackendHandle;
}
