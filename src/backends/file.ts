/**
 * FileBackend: a regular file or a block device, accessed with positional I/O.
 *
 * Guarantees: reads and writes at any offset and length inside [0, size); there is no lock
 * around reads or writes (each call is one or more pread/pwrite on the libuv thread pool, so
 * concurrent calls run in parallel). A read past the end of a shorter, sparse file yields
 * zeros. `sync()` is fdatasync. `close()` waits for calls in flight, then closes the handle.
 *
 * Sizes: an existing regular file defaults to its own size; a block device's size is read
 * from /sys/dev/block/<major>:<minor>/size (512-byte sectors), as fstat reports 0 for it and
 * Node has no lseek or BLKGETSIZE64 (without sysfs, pass `size`). A missing file is created
 * (sparse, with ftruncate) when `size` is given, unless `create: false`. A regular file
 * smaller than the requested size is extended with ftruncate (a read-only file or a block
 * device cannot be: UsageError). A requested size smaller than the file exposes its first
 * `size` bytes and never truncates.
 *
 * `writev` is one pwritev of the caller's pieces (no gathering copy).
 *
 * trim/zero: Node has no fallocate, so both write zeros in bounded pieces from one shared,
 * never-modified zero buffer; the range is not deallocated.
 */
import { constants, type FileHandle, open, readFile } from 'node:fs/promises';
import { SEEK_DATA, SEEK_HOLE, seekExtent } from '../kernel/ffi.js';
import { EXTENT_HOLE, EXTENT_ZERO, type Backend, type BackendExtent, type SharedBackendHandle } from '../pipeline/types.js';
import { BackendError, OutOfRangeError, ReadOnlyError, UsageError } from '../errors.js';
import { CallGate } from '../util/call-gate.js';

export interface FileBackendOptions {
  /** Size in bytes; default the file's size. Required to create a file. */
  readonly size?: number;
  /** Open O_RDONLY and refuse writes. */
  readonly readOnly?: boolean;
  /** Create the file when it is missing; default true when `size` is given. Needs `size`. */
  readonly create?: boolean;
}

const ZEROS = Buffer.alloc(256 * 1024);
const THREAD_POOL_SIZE = Number(process.env.UV_THREADPOOL_SIZE) || 4;
const SECTOR_SIZE = 512;
/** Most extents one extents() call reports. */
const MAX_EXTENTS = 1024;

export class FileBackend implements Backend {
  readonly path: string;
  readonly size: number;
  readonly readOnly: boolean;
  /** Calls beyond the libuv thread pool size only queue. */
  readonly maxInFlight = THREAD_POOL_SIZE;
  readonly canMultiConn = true;
  /** extents() is two lseek calls: the NBD server sends a large READ's holes as hole chunks. */
  readonly localExtents = true;
  readonly isBlockDevice: boolean;
  #handle: FileHandle;
  readonly #gate = new CallGate('file backend');

  private constructor(path: string, handle: FileHandle, size: number, readOnly: boolean, isBlockDevice: boolean) {
    this.path = path;
    this.#handle = handle;
    this.size = size;
    this.readOnly = readOnly;
    this.isBlockDevice = isBlockDevice;
  }

  /** Another thread opens the same file (a descriptor of its own; the page cache is shared). */
  share(): SharedBackendHandle {
    return { module: import.meta.url, data: { path: this.path, readOnly: this.readOnly } };
  }

  static async open(path: string, options: FileBackendOptions = {}): Promise<FileBackend> {
    const { size, readOnly = false } = options;
    if (size !== undefined && (!Number.isSafeInteger(size) || size < 0)) {
      throw new UsageError(`file backend size is out of range (0..2^53-1): ${size}`);
    }
    if (options.create === true && (size === undefined || readOnly)) {
      throw new UsageError(`creating ${path} needs a size and a writable backend`);
    }
    const mayCreate = !readOnly && (options.create ?? size !== undefined);
    const flags = readOnly ? constants.O_RDONLY : constants.O_RDWR | (mayCreate ? constants.O_CREAT : 0);
    let handle: FileHandle;
    try {
      handle = await open(path, flags, 0o644);
    } catch (err) {
      throw new BackendError({ backend: 'file', op: 'open' }, `${path}: ${(err as Error).message}`, { cause: err });
    }
    try {
      const stat = await handle.stat();
      const isBlockDevice = stat.isBlockDevice();
      if (!isBlockDevice && !stat.isFile()) throw new UsageError(`${path} is neither a regular file nor a block device`);
      const actual = isBlockDevice ? await blockDeviceSize(stat.rdev) : stat.size;
      if (actual === undefined && size === undefined) {
        throw new UsageError(`cannot read the size of block device ${path} from /sys/dev/block; pass a size`);
      }
      const wanted = size ?? (actual as number);
      if (actual !== undefined && wanted > actual) {
        if (readOnly || isBlockDevice) {
          throw new UsageError(`size ${wanted} is larger than ${readOnly ? 'read-only ' : ''}${path} (${actual} bytes)`);
        }
        await handle.truncate(wanted);
      }
      return new FileBackend(path, handle, wanted, readOnly, isBlockDevice);
    } catch (err) {
      await handle.close().catch(() => undefined); // the first error is the one to report
      if (err instanceof UsageError || err instanceof BackendError) throw err;
      throw new BackendError({ backend: 'file', op: 'open' }, `${path}: ${(err as Error).message}`, { cause: err });
    }
  }

  async readAt(buf: Buffer, off: number): Promise<void> {
    this.#check(off, buf.length, false);
    this.#gate.enter();
    try {
      let done = 0;
      while (done < buf.length) {
        const { bytesRead } = await this.#handle.read(buf, done, buf.length - done, off + done);
        if (bytesRead === 0) {
          buf.fill(0, done); // past the end of a shorter, sparse file
          break;
        }
        done += bytesRead;
      }
    } catch (err) {
      throw this.#wrap(err, 'read', off, buf.length);
    } finally {
      this.#gate.leave();
    }
  }

  async writeAt(buf: Buffer, off: number): Promise<void> {
    this.#check(off, buf.length, true);
    this.#gate.enter();
    try {
      await this.#writeAll(buf, buf.length, off);
    } catch (err) {
      throw this.#wrap(err, 'write', off, buf.length);
    } finally {
      this.#gate.leave();
    }
  }

  /** Scatter write: one pwritev of the pieces as they are (no JS copy), continued after a short write. */
  async writev(bufs: readonly Buffer[], off: number): Promise<void> {
    let length = 0;
    for (let i = 0; i < bufs.length; i++) length += bufs[i]!.length;
    this.#check(off, length, true);
    this.#gate.enter();
    try {
      let pieces = bufs;
      for (let done = 0; done < length; ) {
        const { bytesWritten } = await this.#handle.writev(pieces, off + done);
        if (bytesWritten <= 0) throw new Error(`pwritev wrote ${bytesWritten} of ${length - done} bytes`);
        done += bytesWritten;
        if (done < length) pieces = dropFront(pieces, bytesWritten);
      }
    } catch (err) {
      throw this.#wrap(err, 'write', off, length);
    } finally {
      this.#gate.leave();
    }
  }

  trim(off: number, length: number): Promise<void> {
    return this.#zero(off, length, 'trim');
  }

  /**
   * base:allocation from the filesystem (lseek SEEK_DATA / SEEK_HOLE): holes of a sparse file read
   * as zeros. Everything is data for a block device, or when the filesystem cannot tell. At most
   * MAX_EXTENTS extents (the caller asks again for the rest).
   */
  async extents(off: number, length: number): Promise<readonly BackendExtent[]> {
    this.#check(off, length, false);
    const all: readonly BackendExtent[] = [{ length, flags: 0 }];
    if (this.isBlockDevice || length === 0) return all;
    this.#gate.enter();
    try {
      const fd = this.#handle.fd;
      const end = off + length;
      const out: BackendExtent[] = [];
      for (let pos = off; pos < end && out.length < MAX_EXTENTS; ) {
        const data = seekExtent(fd, pos, SEEK_DATA);
        if (data === -1 || data >= end) {
          out.push({ length: end - pos, flags: EXTENT_HOLE | EXTENT_ZERO });
          break;
        }
        if (data > pos) out.push({ length: data - pos, flags: EXTENT_HOLE | EXTENT_ZERO });
        const hole = seekExtent(fd, data, SEEK_HOLE);
        const stop = Math.min(hole === -1 ? end : hole, end);
        out.push({ length: stop - data, flags: 0 });
        pos = stop;
      }
      return out;
    } catch {
      return all; // the filesystem cannot tell: data, as without extents
    } finally {
      this.#gate.leave();
    }
  }

  zero(off: number, length: number): Promise<void> {
    return this.#zero(off, length, 'zero');
  }

  async #zero(off: number, length: number, op: string): Promise<void> {
    this.#check(off, length, true);
    this.#gate.enter();
    try {
      for (let done = 0; done < length; ) {
        const n = Math.min(ZEROS.length, length - done);
        await this.#writeAll(ZEROS, n, off + done);
        done += n;
      }
    } catch (err) {
      throw this.#wrap(err, op, off, length);
    } finally {
      this.#gate.leave();
    }
  }

  async sync(): Promise<void> {
    this.#gate.assertOpen();
    if (this.readOnly) return;
    this.#gate.enter();
    try {
      await this.#handle.datasync();
    } catch (err) {
      throw this.#wrap(err, 'sync');
    } finally {
      this.#gate.leave();
    }
  }

  close(): Promise<void> {
    return this.#gate.close(() => this.#close());
  }

  async #close(): Promise<void> {
    try {
      await this.#handle.close();
    } catch (err) {
      throw this.#wrap(err, 'close');
    }
  }

  async #writeAll(buf: Buffer, length: number, off: number): Promise<void> {
    let done = 0;
    while (done < length) {
      const { bytesWritten } = await this.#handle.write(buf, done, length - done, off + done);
      done += bytesWritten;
    }
  }

  #check(off: number, length: number, write: boolean): void {
    this.#gate.assertOpen();
    if (write && this.readOnly) throw new ReadOnlyError(`file backend ${this.path}`);
    if (!Number.isSafeInteger(off) || !Number.isSafeInteger(length) || off < 0 || length < 0 || off + length > this.size) {
      throw new OutOfRangeError(off, length, this.size);
    }
  }

  #wrap(err: unknown, op: string, off?: number, length?: number): BackendError {
    const info = off === undefined ? { backend: 'file', op } : { backend: 'file', op, off, length };
    return new BackendError(info, `${this.path}: ${(err as Error).message}`, { cause: err });
  }
}

/**
 * What is left of `bufs` after their first `n` bytes (fewer than their total), for going on after
 * a short pwritev. Exported for tests only.
 */
export function dropFront(bufs: readonly Buffer[], n: number): Buffer[] {
  let i = 0;
  while (n >= bufs[i]!.length) n -= bufs[i++]!.length;
  const rest = bufs.slice(i);
  rest[0] = rest[0]!.subarray(n);
  return rest;
}

/** Block device size from sysfs (the kernel's dev_t split, then sectors × 512); undefined if unreadable. */
async function blockDeviceSize(rdev: number): Promise<number | undefined> {
  const major = ((rdev >>> 8) & 0xfff) | (Math.floor(rdev / 2 ** 32) & ~0xfff);
  const minor = ((rdev & 0xff) | (Math.floor(rdev / 2 ** 12) & ~0xff)) >>> 0;
  try {
    const sectors = Number((await readFile(`/sys/dev/block/${major}:${minor}/size`, 'utf8')).trim());
    return Number.isSafeInteger(sectors) ? sectors * SECTOR_SIZE : undefined;
  } catch {
    return undefined; // no sysfs (a container): the caller must pass a size
  }
}

/** Opens the file a SharedBackendHandle of this module names (on a worker thread; never creates it). */
export function attachShared(data: unknown): Promise<Backend> {
  const { path, readOnly } = data as { path: string; readOnly: boolean };
  return FileBackend.open(path, { readOnly, create: false });
}
