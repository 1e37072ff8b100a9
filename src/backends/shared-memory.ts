/**
 * SharedMemoryBackend: the memory backend for a server that serves connections on worker threads.
 * Its bytes live in a memfd (an anonymous shmem file) mapped into every thread that attaches it,
 * so all threads see one store; `share()` names what another thread needs to attach it.
 *
 * Guarantees, as MemoryBackend's: a fixed size, nothing allocated until written (the kernel gives
 * the memfd pages on first touch), a never-written range reads as zeros, any range accepted, every
 * call runs to completion synchronously inside its promise. `views` hands out the mapping itself
 * (the NBD server moves payloads between socket and memory without a copy of its own). A bitmap in
 * shared memory records which GRANULE-sized pieces were ever written: reads of the others get
 * zeroView()s (so reading a hole never touches, and so never allocates, the mapping), and
 * `extents` reports them as holes. `trim`/`zero` punch holes in the memfd for whole granules
 * (their memory is freed) and write zeros over partial ones.
 * Threads may write the same range at once; as for concurrent NBD requests, the result is then
 * one of them or a mix.
 */
import { ftruncateSync } from 'node:fs';
import { ClosedError, OutOfRangeError, ReadOnlyError, UsageError } from '../errors.js';
import { MAP_NORESERVE, MAP_SHARED, PROT_READ, PROT_WRITE, close as closeFd, memfdCreate, mmap, munmap, punchHole, viewOf, type Pointer } from '../kernel/ffi.js';
import { appendExtent } from '../pipeline/extents.js';
import { EXTENT_HOLE, EXTENT_ZERO, type Backend, type BackendExtent, type SharedBackendHandle } from '../pipeline/types.js';
import { zeroView } from '../pipeline/zero-views.js';

/** The piece whose first write the bitmap records, and the unit trim frees. */
const GRANULE = 64 * 1024;
/** Views never span this (a Buffer holds at most 4 GiB). */
const SEGMENT = 2 ** 30;

export interface SharedMemoryData {
  readonly fd: number;
  readonly size: number;
  readonly readOnly: boolean;
  /** One byte per granule: 1 = written. */
  readonly written: SharedArrayBuffer;
}

export class SharedMemoryBackend implements Backend {
  readonly size: number;
  readonly readOnly: boolean;
  readonly maxInFlight = 0;
  readonly canMultiConn = true;
  /** zero() punches holes. */
  readonly fastZero = true;
  readonly #data: SharedMemoryData;
  readonly #owner: boolean;
  readonly #addr: Pointer | undefined;
  readonly #segments: Buffer[] = [];
  readonly #written: Uint8Array;
  #closed = false;

  /** A new store of `size` bytes (the memfd belongs to it: close() closes it). */
  static create(options: { readonly size: number; readonly readOnly?: boolean }): SharedMemoryBackend {
    const { size } = options;
    if (!Number.isSafeInteger(size) || size < 0) throw new UsageError(`memory backend size is out of range (0..2^53-1): ${size}`);
    const fd = memfdCreate('r3map-memory');
    try {
      ftruncateSync(fd, size);
      const written = new SharedArrayBuffer(Math.ceil(size / GRANULE));
      return new SharedMemoryBackend({ fd, size, readOnly: options.readOnly ?? false, written }, true);
    } catch (err) {
      closeFd(fd);
      throw err;
    }
  }

  /** The store another thread created (from its share()); close() unmaps it only. */
  static attach(data: SharedMemoryData): SharedMemoryBackend {
    return new SharedMemoryBackend(data, false);
  }

  private constructor(data: SharedMemoryData, owner: boolean) {
    this.#data = data;
    this.#owner = owner;
    this.size = data.size;
    this.readOnly = data.readOnly;
    this.#written = new Uint8Array(data.written);
    if (data.size > 0) {
      this.#addr = mmap(data.size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, data.fd);
      for (let at = 0; at < data.size; at += SEGMENT) this.#segments.push(viewOf(this.#addr + BigInt(at), Math.min(SEGMENT, data.size - at)));
    }
  }

  /** What a worker thread passes to `attach` (this module's `attachShared`). */
  share(): SharedBackendHandle {
    return { module: import.meta.url, data: this.#data };
  }

  views(off: number, length: number, write: boolean): readonly Buffer[] {
    this.#check(off, length, write);
    const out: Buffer[] = [];
    const end = off + length;
    const written = this.#written;
    for (let pos = off; pos < end; ) {
      const segment = Math.floor(pos / SEGMENT);
      let stop = Math.min(end, (segment + 1) * SEGMENT);
      if (write) {
        for (let g = Math.floor(pos / GRANULE), last = Math.floor((stop - 1) / GRANULE); g <= last; g++) written[g] = 1;
      } else {
        // A run of granules that are all written, or all not: data views or zeros.
        const g0 = Math.floor(pos / GRANULE);
        const held = written[g0] === 1;
        let g = g0 + 1;
        while (g * GRANULE < stop && (written[g] === 1) === held) g++;
        stop = Math.min(stop, g * GRANULE);
        if (!held) {
          out.push(zeroView(stop - pos));
          pos = stop;
          continue;
        }
      }
      const base = segment * SEGMENT;
      out.push(this.#segments[segment]!.subarray(pos - base, stop - base));
      pos = stop;
    }
    return out;
  }

  async readAt(buf: Buffer, off: number): Promise<void> {
    let at = 0;
    for (const view of this.views(off, buf.length, false)) at += view.copy(buf, at);
  }

  async writeAt(buf: Buffer, off: number): Promise<void> {
    let at = 0;
    for (const view of this.views(off, buf.length, true)) at += buf.copy(view, 0, at, at + view.length);
  }

  async writev(bufs: readonly Buffer[], off: number): Promise<void> {
    let length = 0;
    for (const b of bufs) length += b.length;
    const views = this.views(off, length, true);
    let v = 0;
    let inView = 0;
    for (const b of bufs) {
      for (let done = 0; done < b.length; ) {
        const view = views[v]!;
        const n = b.copy(view, inView, done, done + Math.min(b.length - done, view.length - inView));
        done += n;
        inView += n;
        if (inView === view.length) {
          v++;
          inView = 0;
        }
      }
    }
  }

  /** base:allocation: granules never written (or trimmed) are holes of zeros. */
  async extents(off: number, length: number): Promise<readonly BackendExtent[]> {
    this.#check(off, length, false);
    const out: { length: number; flags: number }[] = [];
    const end = off + length;
    for (let pos = off; pos < end; ) {
      const g = Math.floor(pos / GRANULE);
      const stop = Math.min(end, (g + 1) * GRANULE);
      const flags = this.#written[g] === 1 ? 0 : EXTENT_HOLE | EXTENT_ZERO;
      appendExtent(out, stop - pos, flags);
      pos = stop;
    }
    return out;
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
    if (this.#closed) return;
    this.#closed = true;
    this.#segments.length = 0;
    if (this.#addr !== undefined) munmap(this.#addr, this.size);
    if (this.#owner) closeFd(this.#data.fd);
  }

  /** Whole granules are punched out of the memfd (freed); partial ones get zeros written. */
  #discard(off: number, length: number): void {
    this.#check(off, length, true);
    const end = off + length;
    const first = Math.ceil(off / GRANULE);
    const last = end === this.size ? Math.ceil(end / GRANULE) : Math.floor(end / GRANULE);
    const wholeStart = Math.min(end, first * GRANULE);
    const wholeEnd = Math.max(wholeStart, Math.min(end, last * GRANULE));
    if (off < wholeStart) this.#fillZeros(off, wholeStart);
    if (wholeEnd > wholeStart) {
      punchHole(this.#data.fd, wholeStart, wholeEnd - wholeStart);
      this.#written.fill(0, first, last);
    }
    if (wholeEnd < end) this.#fillZeros(Math.max(wholeEnd, off), end);
  }

  /** [from, to) lies in one granule; one never written reads as zeros already (and holds none). */
  #fillZeros(from: number, to: number): void {
    if (this.#written[Math.floor(from / GRANULE)] !== 1) return;
    for (const view of this.views(from, to - from, true)) view.fill(0);
  }

  #check(off: number, length: number, write: boolean): void {
    if (this.#closed) throw new ClosedError('memory backend');
    if (write && this.readOnly) throw new ReadOnlyError('memory backend');
    if (!Number.isSafeInteger(off) || !Number.isSafeInteger(length) || off < 0 || length < 0 || off + length > this.size) {
      throw new OutOfRangeError(off, length, this.size);
    }
  }
}

/** Attaches the store a SharedBackendHandle of this module names (called on a worker thread). */
export function attachShared(data: unknown): Backend {
  return SharedMemoryBackend.attach(data as SharedMemoryData);
}
