/**
 * Uffd: one userfaultfd(2) file descriptor, low level. Create it (with the UFFDIO_API
 * handshake), register an address range in MISSING mode, resolve faults with UFFDIO_COPY,
 * wake, unregister, close. Nothing here allocates per call: each instance reuses one argument
 * struct per ioctl, so one instance belongs to one thread (the fd itself is process-wide; a
 * worker thread wraps the same fd with `Uffd.fromFd`).
 *
 * Addresses are plain numbers: x86_64 and arm64 user addresses stay below 2^47 unless a mapping
 * is asked for above it, well inside Number.MAX_SAFE_INTEGER. Messages are read raw (32-byte
 * `uffd_msg`s) into a caller's buffer and decoded with the static helpers.
 */
import { KernelError } from '../errors.js';
import { Errno } from './errno.js';
import { close, ioctlBuffer, O_CLOEXEC, O_NONBLOCK, syscall, tryRead, type Pointer } from './ffi.js';
import {
  SYS_userfaultfd,
  UFFD_API,
  UFFD_MSG_BYTES,
  UFFD_MSG_EVENT_OFFSET,
  UFFD_MSG_PAGEFAULT_ADDRESS_OFFSET,
  UFFD_MSG_PAGEFAULT_FLAGS_OFFSET,
  UFFD_USER_MODE_ONLY,
  UFFDIO_API,
  UFFDIO_API_BYTES,
  UFFDIO_COPY,
  UFFDIO_COPY_BYTES,
  UFFDIO_COPY_COPY_OFFSET,
  UFFDIO_RANGE_BYTES,
  UFFDIO_REGISTER,
  UFFDIO_REGISTER_BYTES,
  UFFDIO_REGISTER_MODE_MISSING,
  UFFDIO_UNREGISTER,
  UFFDIO_WAKE,
  _UFFDIO_COPY,
  _UFFDIO_REGISTER,
  _UFFDIO_WAKE,
} from './uffd-constants.js';

const TWO_32 = 2 ** 32;

export interface UffdCreateOptions {
  /** UFFD_USER_MODE_ONLY: faults taken inside syscalls fail with EFAULT instead of waiting. Default false. */
  readonly userModeOnly?: boolean;
  /** uffdio_api.features to ask for; default 0 (page-fault events only). */
  readonly features?: number;
}

/** A u64 field from two u32 halves (exact below 2^53). */
export function readU64(buf: Buffer, off: number): number {
  return buf.readUInt32LE(off + 4) * TWO_32 + buf.readUInt32LE(off);
}

/** Whether bit `bit` (0..63) of the u64 at `off` is set (bit masks are not exact as doubles). */
function hasBit(buf: Buffer, off: number, bit: number): boolean {
  const word = bit < 32 ? buf.readUInt32LE(off) : buf.readUInt32LE(off + 4);
  return ((word >>> bit % 32) & 1) === 1;
}

function readS64(buf: Buffer, off: number): number {
  return buf.readInt32LE(off + 4) * TWO_32 + buf.readUInt32LE(off);
}

/** Writes a non-negative safe integer as a little-endian u64. */
export function writeU64(buf: Buffer, off: number, value: number): void {
  buf.writeUInt32LE(value % TWO_32, off);
  buf.writeUInt32LE(Math.floor(value / TWO_32), off + 4);
}

/** A pointer as a plain number; throws if it does not fit (a 57-bit address space). */
export function addressOf(pointer: Pointer): number {
  const n = Number(pointer);
  if (!Number.isSafeInteger(n)) throw new RangeError(`address 0x${pointer.toString(16)} is above 2^53`);
  return n;
}

export class Uffd {
  readonly fd: number;
  /** The features the kernel reported at UFFDIO_API (0 for an fd wrapped with fromFd). */
  readonly features: number;
  readonly #range = Buffer.alloc(UFFDIO_RANGE_BYTES);
  readonly #register = Buffer.alloc(UFFDIO_REGISTER_BYTES);
  readonly #copy = Buffer.alloc(UFFDIO_COPY_BYTES);
  #closed = false;

  private constructor(fd: number, features: number) {
    this.fd = fd;
    this.features = features;
  }

  /**
   * userfaultfd(O_CLOEXEC | O_NONBLOCK) and the UFFDIO_API handshake. EPERM means the caller
   * lacks CAP_SYS_PTRACE while /proc/sys/vm/unprivileged_userfaultfd is 0.
   */
  static create(options: UffdCreateOptions = {}): Uffd {
    const nr = SYS_userfaultfd[process.arch];
    if (nr === undefined) throw new KernelError({ syscall: 'userfaultfd', errno: Errno.ENOSYS, errnoName: 'ENOSYS' }, `no syscall number for ${process.arch}`);
    const flags = O_CLOEXEC | O_NONBLOCK | (options.userModeOnly === true ? UFFD_USER_MODE_ONLY : 0);
    let fd: number;
    try {
      fd = syscall(nr, flags, 'userfaultfd');
    } catch (err) {
      if (err instanceof KernelError && err.errno === Errno.EPERM) {
        throw new KernelError({ syscall: 'userfaultfd', errno: err.errno, errnoName: 'EPERM' }, 'needs root or /proc/sys/vm/unprivileged_userfaultfd = 1');
      }
      throw err;
    }
    try {
      const api = Buffer.alloc(UFFDIO_API_BYTES);
      writeU64(api, 0, UFFD_API);
      writeU64(api, 8, options.features ?? 0);
      ioctlBuffer(fd, UFFDIO_API, api, 'UFFDIO_API');
      if (!hasBit(api, 16, _UFFDIO_REGISTER)) {
        throw new KernelError({ syscall: 'UFFDIO_API', errno: Errno.ENOSYS, errnoName: 'ENOSYS' }, 'the kernel offers no UFFDIO_REGISTER');
      }
      return new Uffd(fd, readU64(api, 8));
    } catch (err) {
      close(fd);
      throw err;
    }
  }

  /** Wraps an fd created (and handshaken) elsewhere in this process, e.g. in another thread. */
  static fromFd(fd: number): Uffd {
    return new Uffd(fd, 0);
  }

  /**
   * UFFDIO_REGISTER [start, start+length) in MISSING mode: from now on a touch of a page with
   * nothing mapped blocks the touching thread and queues a UFFD_EVENT_PAGEFAULT message.
   * Both must be page aligned. Checks that the range offers UFFDIO_COPY and UFFDIO_WAKE.
   */
  register(start: number, length: number): void {
    const b = this.#register;
    writeU64(b, 0, start);
    writeU64(b, 8, length);
    writeU64(b, 16, UFFDIO_REGISTER_MODE_MISSING);
    writeU64(b, 24, 0);
    ioctlBuffer(this.fd, UFFDIO_REGISTER, b, 'UFFDIO_REGISTER');
    for (const bit of [_UFFDIO_COPY, _UFFDIO_WAKE]) {
      if (!hasBit(b, 24, bit)) {
        throw new KernelError({ syscall: 'UFFDIO_REGISTER', errno: Errno.EINVAL, errnoName: 'EINVAL' }, `the range does not support ioctl bit ${bit}`);
      }
    }
  }

  /** UFFDIO_UNREGISTER: threads waiting on the range wake up and their faults resolve normally (zero pages). */
  unregister(start: number, length: number): void {
    this.#rangeIoctl(UFFDIO_UNREGISTER, 'UFFDIO_UNREGISTER', start, length);
  }

  /** UFFDIO_WAKE: wakes threads waiting on faults in the range (after a copy made with DONTWAKE). */
  wake(start: number, length: number): void {
    this.#rangeIoctl(UFFDIO_WAKE, 'UFFDIO_WAKE', start, length);
  }

  #rangeIoctl(request: number, name: string, start: number, length: number): void {
    writeU64(this.#range, 0, start);
    writeU64(this.#range, 8, length);
    ioctlBuffer(this.fd, request, this.#range, name);
  }

  /**
   * UFFDIO_COPY of `length` bytes from `src` (any readable address) to `dst` (page aligned,
   * registered) and wakes the threads waiting on that range. Returns `length` when all of it
   * was installed; a smaller positive count when the kernel stopped early (EAGAIN with a
   * partial count: call again for the rest); -EEXIST when the first page at `dst` is already
   * mapped; -EAGAIN when nothing was copied because the address space was changing (retry).
   * Any other failure throws a KernelError (ENOENT/ESRCH: the mapping or the process is gone).
   */
  copy(dst: number, src: number, length: number, mode = 0): number {
    const b = this.#copy;
    writeU64(b, 0, dst);
    writeU64(b, 8, src);
    writeU64(b, 16, length);
    writeU64(b, 24, mode);
    writeU64(b, UFFDIO_COPY_COPY_OFFSET, 0);
    try {
      ioctlBuffer(this.fd, UFFDIO_COPY, b, 'UFFDIO_COPY');
      return length;
    } catch (err) {
      if (!(err instanceof KernelError) || (err.errno !== Errno.EEXIST && err.errno !== Errno.EAGAIN)) throw err;
      const copied = readS64(b, UFFDIO_COPY_COPY_OFFSET);
      return copied > 0 ? copied : -err.errno;
    }
  }

  /**
   * Reads the pending messages into `buf` (a multiple of 32 bytes) without blocking; returns
   * how many it read (0 when none was pending). The kernel hands out as many whole messages as
   * fit in one read, so a count below `buf.length / 32` means the queue is drained.
   */
  readMessages(buf: Buffer): number {
    const n = tryRead(this.fd, buf, 'userfaultfd');
    return n < 0 ? 0 : Math.floor(n / UFFD_MSG_BYTES);
  }

  /** The event of message `index` in a buffer filled by readMessages. */
  static eventOf(buf: Buffer, index: number): number {
    return buf[index * UFFD_MSG_BYTES + UFFD_MSG_EVENT_OFFSET]!;
  }

  /** pagefault.address of message `index` (page aligned unless UFFD_FEATURE_EXACT_ADDRESS). */
  static faultAddressOf(buf: Buffer, index: number): number {
    return readU64(buf, index * UFFD_MSG_BYTES + UFFD_MSG_PAGEFAULT_ADDRESS_OFFSET);
  }

  /** pagefault.flags of message `index` (UFFD_PAGEFAULT_FLAG_WRITE, ...). */
  static faultFlagsOf(buf: Buffer, index: number): number {
    return buf.readUInt32LE(index * UFFD_MSG_BYTES + UFFD_MSG_PAGEFAULT_FLAGS_OFFSET);
  }

  /** Closes the fd: any thread still waiting on a fault wakes up; idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    close(this.fd, 'userfaultfd');
  }
}
