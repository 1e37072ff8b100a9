/**
 * MemoryBackend: a sparse in-process store of a fixed size.
 *
 * Guarantees: pages of `pageSize` bytes (its lazy allocation unit, not a chunk size: any range
 * is accepted) are allocated on their first write, so a 1 GiB
 * backend costs nothing until it is written; a never-written range reads as zeros (the
 * caller's buffer is overwritten). A page that one write covers whole is allocated without
 * zeroing; `writev` copies each piece straight into its pages. Any offset and length inside
 * [0, size) is accepted, sizes above 4 GiB included (page indexes are plain numbers, no
 * 32-bit arithmetic). Every call runs to completion synchronously inside its promise, so
 * concurrent calls never interleave.
 * `trim` and `zero` drop whole pages and zero partial ones. `extents` reports the pages never
 * allocated as holes of zeros (NBD base:allocation). `views` hands out the pages themselves, so
 * the NBD server moves payloads between socket and pages without a copy of its own.
 */
import { appendExtent } from '../pipeline/extents.js';
import { EXTENT_HOLE, EXTENT_ZERO, type Backend, type BackendExtent } from '../pipeline/types.js';
import { zeroView } from '../pipeline/zero-views.js';
import { ClosedError, OutOfRangeError, ReadOnlyError, UsageError } from '../errors.js';

export interface MemoryBackendOptions {
  /** Size in bytes. */
  readonly size: number;
  /** The lazy allocation unit in bytes (1 byte to 1 GiB); default DEFAULT_MEMORY_PAGE_SIZE (1 MiB). */
  readonly pageSize?: number;
  /** @deprecated The old name of `pageSize` (used when that is not given). */
  readonly chunkSize?: number;
  /** Refuse writes, trims and zeroes. */
  readonly readOnly?: boolean;
}

interface ResolvedMemoryBackendOptions {
  readonly size: number;
  readonly pageSize: number;
  readonly readOnly: boolean;
}

/** The memory backend's default allocation unit: 1 MiB (a page, not a chunk: any range is accepted). */
export const DEFAULT_MEMORY_PAGE_SIZE = 1024 * 1024;

export class MemoryBackend implements Backend {
  readonly size: number;
  /** Bytes per lazily allocated page. */
  readonly pageSize: number;
  readonly readOnly: boolean;
  readonly maxInFlight = 0;
  readonly canMultiConn = true;
  /** zero() drops pages. */
  readonly fastZero = true;
  readonly options: ResolvedMemoryBackendOptions;
  /** Page index → page; a missing page reads as zeros. */
  #pages = new Map<number, Buffer>();
  #closed = false;

  constructor(options: MemoryBackendOptions) {
    const size = options.size;
    const pageSize = options.pageSize ?? options.chunkSize ?? DEFAULT_MEMORY_PAGE_SIZE;
    if (!Number.isSafeInteger(size) || size < 0) {
      throw new UsageError(`memory backend size is out of range (0..2^53-1): ${size}`);
    }
    if (!Number.isSafeInteger(pageSize) || pageSize < 1 || pageSize > 2 ** 30) {
      throw new UsageError(`memory backend pageSize is out of range (1..1G): ${pageSize}`);
    }
    this.options = Object.freeze({ size, pageSize, readOnly: options.readOnly ?? false });
    this.size = size;
    this.pageSize = pageSize;
    this.readOnly = this.options.readOnly;
  }

  /** @deprecated The old name of `pageSize`. */
  get chunkSize(): number {
    return this.pageSize;
  }

  /**
   * base:allocation: a never-written (or trimmed, or zeroed) page is a hole that reads as zeros;
   * an allocated page is data (it may hold zeros: only its allocation is known). Page-granular.
   */
  async extents(off: number, length: number): Promise<readonly BackendExtent[]> {
    this.#check(off, length, false);
    const out: { length: number; flags: number }[] = [];
    const end = off + length;
    for (let pos = off; pos < end; ) {
      const index = Math.floor(pos / this.pageSize);
      const stop = Math.min(end, (index + 1) * this.pageSize);
      const flags = this.#pages.has(index) ? 0 : EXTENT_HOLE | EXTENT_ZERO;
      appendExtent(out, stop - pos, flags);
      pos = stop;
    }
    return out;
  }

  /** Backend.views: the pages themselves (allocated and zeroed for a write), zeros for holes. */
  views(off: number, length: number, write: boolean): readonly Buffer[] {
    this.#check(off, length, write);
    const pageSize = this.pageSize;
    const out: Buffer[] = [];
    const end = off + length;
    for (let pos = off; pos < end; ) {
      const index = Math.floor(pos / pageSize);
      const pageStart = index * pageSize;
      const n = Math.min(pageStart + pageSize, end) - pos;
      let page = this.#pages.get(index);
      if (page === undefined && write) {
        page = Buffer.alloc(Math.min(pageSize, this.size - pageStart));
        this.#pages.set(index, page);
      }
      const inPage = pos - pageStart;
      out.push(page === undefined ? zeroView(n) : inPage === 0 && n === page.length ? page : page.subarray(inPage, inPage + n));
      pos += n;
    }
    return out;
  }

  /** Pages currently allocated (for tests and diagnostics). */
  get allocatedPages(): number {
    return this.#pages.size;
  }

  async readAt(buf: Buffer, off: number): Promise<void> {
    this.#check(off, buf.length, false);
    const pageSize = this.pageSize;
    let done = 0;
    while (done < buf.length) {
      const pos = off + done;
      const index = Math.floor(pos / pageSize);
      const inPage = pos - index * pageSize;
      const n = Math.min(pageSize - inPage, buf.length - done);
      const page = this.#pages.get(index);
      if (page === undefined) buf.fill(0, done, done + n);
      else page.copy(buf, done, inPage, inPage + n);
      done += n;
    }
  }

  async writeAt(buf: Buffer, off: number): Promise<void> {
    this.#check(off, buf.length, true);
    this.#copyIn(buf, off, off, off + buf.length);
  }

  /** Scatter write: each piece is copied straight into its pages (no gathering copy). */
  async writev(bufs: readonly Buffer[], off: number): Promise<void> {
    let length = 0;
    for (let i = 0; i < bufs.length; i++) length += bufs[i]!.length;
    this.#check(off, length, true);
    const end = off + length;
    let pos = off;
    for (let i = 0; i < bufs.length; i++) {
      const buf = bufs[i]!;
      this.#copyIn(buf, pos, off, end);
      pos += buf.length;
    }
  }

  /**
   * Copies `buf` to `off`, as part of one write covering [writeStart, writeEnd). A page first
   * touched here is left unzeroed when that write covers it whole (every byte is about to be
   * written, synchronously); otherwise it starts as zeros.
   */
  #copyIn(buf: Buffer, off: number, writeStart: number, writeEnd: number): void {
    const pageSize = this.pageSize;
    let done = 0;
    while (done < buf.length) {
      const pos = off + done;
      const index = Math.floor(pos / pageSize);
      const pageStart = index * pageSize;
      const inPage = pos - pageStart;
      const n = Math.min(pageSize - inPage, buf.length - done);
      let page = this.#pages.get(index);
      if (page === undefined) {
        const pageLength = Math.min(pageSize, this.size - pageStart);
        const whole = writeStart <= pageStart && pageStart + pageLength <= writeEnd;
        page = whole ? Buffer.allocUnsafeSlow(pageLength) : Buffer.alloc(pageLength);
        this.#pages.set(index, page);
      }
      buf.copy(page, inPage, done, done + n);
      done += n;
    }
  }

  async trim(off: number, length: number): Promise<void> {
    this.#discard(off, length);
  }

  async zero(off: number, length: number): Promise<void> {
    this.#discard(off, length);
  }

  async sync(): Promise<void> {
    if (this.#closed) throw new ClosedError('memory backend');
  }

  async close(): Promise<void> {
    this.#closed = true;
    this.#pages.clear();
  }

  #discard(off: number, length: number): void {
    this.#check(off, length, true);
    const pageSize = this.pageSize;
    const end = off + length;
    let pos = off;
    while (pos < end) {
      const index = Math.floor(pos / pageSize);
      const pageStart = index * pageSize;
      const pageEnd = Math.min(pageStart + pageSize, this.size);
      const n = Math.min(pageEnd, end) - pos;
      if (n === pageEnd - pageStart) this.#pages.delete(index);
      else this.#pages.get(index)?.fill(0, pos - pageStart, pos - pageStart + n);
      pos += n;
    }
  }

  #check(off: number, length: number, write: boolean): void {
    if (this.#closed) throw new ClosedError('memory backend');
    if (write && this.readOnly) throw new ReadOnlyError('memory backend');
    if (!Number.isSafeInteger(off) || !Number.isSafeInteger(length) || off < 0 || length < 0 || off + length > this.size) {
      throw new OutOfRangeError(off, length, this.size);
    }
  }
}
