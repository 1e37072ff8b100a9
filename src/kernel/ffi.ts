/**
 * Every foreign call r3map makes, through koffi and glibc: the only file that loads either.
 *
 * - Each wrapper checks the C result and turns `errno` into a KernelError naming the call (or the
 *   ioctl request) and the device, e.g. `NBD_SET_SOCK /dev/nbd3: EBUSY`. errno is read right after
 *   the call with `koffi.errno()`, before any other JS runs.
 * - Variadic C functions (`ioctl`, `syscall`, `prctl`) are declared with fixed-arity prototypes,
 *   as koffi requires; `unsigned long` arguments take a number or a BigInt.
 * - koffi 3 returns pointers as BigInt (`mmap`), plain `int`/`long` results as numbers.
 * - Every call is synchronous and runs on the calling thread. Calls that block (NBD_DO_IT, reads on
 *   a userfaultfd) belong on a worker thread; koffi loads and works inside worker_threads.
 * - The glibc library is bound lazily on first use, once per thread (each worker has its own copy).
 */
import * as koffi from 'koffi';
import { KernelError } from '../errors.js';
import { Errno, errnoName } from './errno.js';

/** An address in this process, as koffi 3 returns pointers. */
export type Pointer = bigint;

// open(2) flags shared by x86_64 and asm-generic (arm64); O_DIRECT differs: use fs.constants.O_DIRECT.
export const O_RDONLY = 0;
export const O_WRONLY = 1;
export const O_RDWR = 2;
export const O_NONBLOCK = 0o4000;
export const O_CLOEXEC = 0o2000000;

export const PROT_NONE = 0;
export const PROT_READ = 1;
export const PROT_WRITE = 2;
export const MAP_SHARED = 0x01;
export const MAP_PRIVATE = 0x02;
export const MAP_ANONYMOUS = 0x20;
export const MAP_NORESERVE = 0x4000;
export const MAP_POPULATE = 0x8000;
export const MS_ASYNC = 1;
export const MS_INVALIDATE = 2;
export const MS_SYNC = 4;
export const MADV_NORMAL = 0;
export const MADV_RANDOM = 1;
export const MADV_SEQUENTIAL = 2;
export const MADV_WILLNEED = 3;
export const MADV_DONTNEED = 4;
export const MADV_REMOVE = 9;

export const POLLIN = 0x001;
export const POLLPRI = 0x002;
export const POLLOUT = 0x004;
export const POLLERR = 0x008;
export const POLLHUP = 0x010;
export const POLLNVAL = 0x020;

export const PR_SET_PDEATHSIG = 1;
export const PR_SET_NAME = 15;
export const PR_GET_NAME = 16;
/** Marks the calling thread as part of the I/O path (no reclaim recursion); needs CAP_SYS_RESOURCE. */
export const PR_SET_IO_FLUSHER = 57;

const AF_UNIX = 1;
const SOCK_STREAM = 1;
const SOCK_CLOEXEC = O_CLOEXEC;
const SIG_BLOCK = 0;
/** glibc's sigset_t: 1024 bits. */
const SIGSET_BYTES = 128;
const MAP_FAILED = 0xffff_ffff_ffff_ffffn;
const POLLFD_BYTES = 8;

/** SYS_gettid per architecture (glibc's gettid() wrapper needs 2.30+; the syscall always works). */
const SYS_GETTID: Readonly<Record<string, number>> = Object.freeze({ x64: 186, arm64: 178, riscv64: 178, ia32: 224, arm: 224 });

/* eslint-disable @typescript-eslint/no-explicit-any */
type Fn = (...args: any[]) => any;

interface Libc {
  readonly ioctl: Fn;
  readonly ioctlPtr: Fn;
  readonly socketpair: Fn;
  readonly open: Fn;
  readonly close: Fn;
  readonly dup: Fn;
  readonly fcntl: Fn;
  readonly memfdCreate: Fn;
  readonly fallocate: Fn;
  readonly mmap: Fn;
  readonly munmap: Fn;
  readonly msync: Fn;
  readonly mlock: Fn;
  readonly munlock: Fn;
  readonly madvise: Fn;
  readonly prctl: Fn;
  readonly sigfillset: Fn;
  readonly pthreadSigmask: Fn;
  readonly syscall0: Fn;
  readonly poll: Fn & { readonly async: Fn };
  readonly syscall1: Fn;
  readonly read: Fn;
  readonly write: Fn;
  readonly pipe2: Fn;
  readonly mprotect: Fn;
  readonly getpagesize: Fn;
  readonly lseek: Fn;
}

let bound: Libc | undefined;

function libc(): Libc {
  if (bound !== undefined) return bound;
  const lib = koffi.load('libc.so.6');
  bound = Object.freeze({
    ioctl: lib.func('int ioctl(int fd, unsigned long request, unsigned long arg)'),
    ioctlPtr: lib.func('ioctl', 'int', ['int', 'unsigned long', 'void *']),
    socketpair: lib.func('int socketpair(int domain, int type, int protocol, _Out_ int *sv)'),
    open: lib.func('int open(const char *path, int flags, uint32_t mode)'),
    close: lib.func('int close(int fd)'),
    dup: lib.func('int dup(int fd)'),
    fcntl: lib.func('int fcntl(int fd, int cmd, int arg)'),
    memfdCreate: lib.func('int memfd_create(const char *name, unsigned int flags)'),
    fallocate: lib.func('int fallocate(int fd, int mode, int64_t offset, int64_t len)'),
    mmap: lib.func('void *mmap(void *addr, size_t length, int prot, int flags, int fd, int64_t offset)'),
    munmap: lib.func('int munmap(void *addr, size_t length)'),
    msync: lib.func('int msync(void *addr, size_t length, int flags)'),
    mlock: lib.func('int mlock(void *addr, size_t length)'),
    munlock: lib.func('int munlock(void *addr, size_t length)'),
    madvise: lib.func('int madvise(void *addr, size_t length, int advice)'),
    prctl: lib.func('int prctl(int option, unsigned long arg2, unsigned long arg3, unsigned long arg4, unsigned long arg5)'),
    sigfillset: lib.func('int sigfillset(void *set)'),
    pthreadSigmask: lib.func('int pthread_sigmask(int how, void *set, void *oldset)'),
    syscall0: lib.func('long syscall(long number)'),
    poll: lib.func('int poll(void *fds, unsigned long nfds, int timeout)'),
    syscall1: lib.func('syscall', 'long', ['long', 'long']),
    read: lib.func('long read(int fd, void *buf, size_t count)'),
    write: lib.func('long write(int fd, void *buf, size_t count)'),
    pipe2: lib.func('int pipe2(_Out_ int *fds, int flags)'),
    mprotect: lib.func('int mprotect(void *addr, size_t length, int prot)'),
    getpagesize: lib.func('int getpagesize()'),
    lseek: lib.func('int64_t lseek(int fd, int64_t offset, int whence)'),
  });
  return bound;
}
/* eslint-enable @typescript-eslint/no-explicit-any */

/** Throws the KernelError for the errno left by the call that just failed. */
function fail(syscall: string, device: string | undefined, errno = koffi.errno()): never {
  throw new KernelError({ syscall, errno, errnoName: errnoName(errno), device });
}

function check(result: number, syscall: string, device?: string): number {
  if (result < 0) fail(syscall, device);
  return result;
}

/**
 * ioctl with an integer argument. `name` is what errors call it (the request's kernel name, such
 * as `NBD_SET_SOCK`); `device` is the path the fd belongs to.
 */
export function ioctl(fd: number, request: number, arg: number | bigint, name = 'ioctl', device?: string): number {
  return check(libc().ioctl(fd, request, arg) as number, name, device);
}

/** ioctl whose argument points at `buf` (a struct the kernel reads or fills in place). */
export function ioctlBuffer(fd: number, request: number, buf: Buffer, name = 'ioctl', device?: string): number {
  return check(libc().ioctlPtr(fd, request, buf) as number, name, device);
}

export const SEEK_DATA = 3;
export const SEEK_HOLE = 4;

/**
 * lseek(2) with SEEK_DATA or SEEK_HOLE: the next offset at or after `offset` where data (or a
 * hole; the end of the file counts as one) starts, or -1 when there is no data after `offset`
 * (ENXIO). A filesystem without the feature reports everything as data, as the call defines.
 */
export function seekExtent(fd: number, offset: number, whence: typeof SEEK_DATA | typeof SEEK_HOLE): number {
  const result = Number(libc().lseek(fd, offset, whence));
  if (result >= 0) return result;
  const errno = koffi.errno();
  if (errno === Errno.ENXIO) return -1;
  return fail(whence === SEEK_DATA ? 'lseek(SEEK_DATA)' : 'lseek(SEEK_HOLE)', undefined, errno);
}

/** A connected AF_UNIX stream pair, both ends close-on-exec. */
export function socketpair(): [number, number] {
  const sv = [-1, -1];
  check(libc().socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) as number, 'socketpair');
  return [sv[0]!, sv[1]!];
}

/** open(2); errors name the path. Pass O_CLOEXEC unless a child process must inherit the fd. */
export function open(path: string, flags: number, mode = 0): number {
  return check(libc().open(path, flags, mode) as number, 'open', path);
}

export function close(fd: number, device?: string): void {
  check(libc().close(fd) as number, 'close', device);
}

export function dup(fd: number, device?: string): number {
  return check(libc().dup(fd) as number, 'dup', device);
}

const F_DUPFD_CLOEXEC = 1030;
const MFD_CLOEXEC = 1;
const FALLOC_FL_KEEP_SIZE = 1;
const FALLOC_FL_PUNCH_HOLE = 2;

/** memfd_create(2) with close-on-exec: an anonymous file in memory (shmem), sparse until written. */
export function memfdCreate(name: string): number {
  return check(libc().memfdCreate(name, MFD_CLOEXEC) as number, 'memfd_create', name);
}

/** fallocate(2) PUNCH_HOLE | KEEP_SIZE: the range reads as zeros and its storage is freed. */
export function punchHole(fd: number, offset: number, length: number): void {
  check(libc().fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) as number, 'fallocate(PUNCH_HOLE)');
}

/** dup(2) with close-on-exec set (fcntl F_DUPFD_CLOEXEC): the copy does not leak into child processes. */
export function dupCloexec(fd: number, device?: string): number {
  return check(libc().fcntl(fd, F_DUPFD_CLOEXEC, 0) as number, 'fcntl(F_DUPFD_CLOEXEC)', device);
}

/** mmap(2) at an address the kernel picks; `fd` -1 with MAP_ANONYMOUS. */
export function mmap(length: number, prot: number, flags: number, fd = -1, offset = 0, device?: string): Pointer {
  const addr = libc().mmap(null, length, prot, flags, fd, offset) as Pointer | null;
  if (addr === null || addr === MAP_FAILED) fail('mmap', device);
  return addr;
}

export function munmap(addr: Pointer, length: number): void {
  check(libc().munmap(addr, length) as number, 'munmap');
}

export function msync(addr: Pointer, length: number, flags = MS_SYNC, device?: string): void {
  check(libc().msync(addr, length, flags) as number, 'msync', device);
}

export function mlock(addr: Pointer, length: number): void {
  check(libc().mlock(addr, length) as number, 'mlock');
}

export function munlock(addr: Pointer, length: number): void {
  check(libc().munlock(addr, length) as number, 'munlock');
}

export function madvise(addr: Pointer, length: number, advice: number): void {
  check(libc().madvise(addr, length, advice) as number, 'madvise');
}

/**
 * A Buffer over `length` bytes at `addr`, without copying (koffi.view). It is valid only until
 * the memory is unmapped: touching it after munmap kills the process with SIGSEGV.
 */
export function viewOf(addr: Pointer, length: number): Buffer {
  return Buffer.from(koffi.view(addr, length), 0, length);
}

/** The address of the first byte of a Buffer or typed array (byteOffset included), or of an ArrayBuffer. */
export function bufferAddress(buf: ArrayBufferView | ArrayBuffer | SharedArrayBuffer): Pointer {
  return koffi.address(buf);
}

export function prctl(option: number, arg2: number | bigint = 0, arg3: number | bigint = 0, arg4: number | bigint = 0, arg5: number | bigint = 0): number {
  return check(libc().prctl(option, arg2, arg3, arg4, arg5) as number, 'prctl');
}

/**
 * Blocks every signal the calling thread may block (all but SIGKILL, SIGSTOP and glibc's two
 * internal ones). Process-directed signals then go to other threads. The thread that sits in
 * NBD_DO_IT must call this first: a signal delivered to it makes the kernel drop the connection.
 */
export function blockAllSignals(): void {
  const set = Buffer.alloc(SIGSET_BYTES);
  const lib = libc();
  check(lib.sigfillset(set) as number, 'sigfillset');
  // pthread_sigmask returns the error number instead of setting errno.
  const err = lib.pthreadSigmask(SIG_BLOCK, set, null) as number;
  if (err !== 0) fail('pthread_sigmask', undefined, err);
}

/** The kernel thread id of the calling thread (what /sys/block/nbdX/pid shows for NBD_DO_IT). */
export function gettid(): number {
  const nr = SYS_GETTID[process.arch];
  if (nr === undefined) throw new KernelError({ syscall: 'gettid', errno: 38, errnoName: 'ENOSYS' }, `no syscall number for ${process.arch}`);
  return check(libc().syscall0(nr) as number, 'gettid');
}

export interface PollFd {
  readonly fd: number;
  /** POLLIN, POLLOUT, ... */
  readonly events: number;
}

/** poll(2): blocks the calling thread up to `timeoutMs` (-1: forever). Returns each fd's revents. */
export function poll(fds: readonly PollFd[], timeoutMs: number): number[] {
  const buf = Buffer.alloc(fds.length * POLLFD_BYTES);
  fds.forEach((p, i) => {
    buf.writeInt32LE(p.fd, i * POLLFD_BYTES);
    buf.writeInt16LE(p.events, i * POLLFD_BYTES + 4);
  });
  check(libc().poll(buf, fds.length, timeoutMs) as number, 'poll');
  return fds.map((_, i) => buf.readInt16LE(i * POLLFD_BYTES + 6));
}

/**
 * syscall(2) with one integer argument, for calls glibc has no wrapper for (userfaultfd).
 * `name` is what errors call it.
 */
export function syscall(nr: number, arg: number, name: string): number {
  return check(libc().syscall1(nr, arg) as number, name);
}

/**
 * read(2) of up to `buf.length` bytes into `buf`. Returns the byte count, or -1 when a
 * non-blocking fd has nothing to read (EAGAIN); any other failure throws.
 */
export function tryRead(fd: number, buf: Buffer, device?: string): number {
  const n = libc().read(fd, buf, buf.length) as number;
  if (n >= 0) return n;
  const errno = koffi.errno();
  if (errno === Errno.EAGAIN) return -1;
  fail('read', device, errno);
}

/** write(2) of all of `buf` in one call; returns the byte count (a short write is returned, not retried). */
export function write(fd: number, buf: Buffer, device?: string): number {
  return check(libc().write(fd, buf, buf.length) as number, 'write', device);
}

/** pipe2(2): [read end, write end]; pass O_CLOEXEC (and O_NONBLOCK) in `flags`. */
export function pipe2(flags: number): [number, number] {
  const fds = [-1, -1];
  check(libc().pipe2(fds, flags) as number, 'pipe2');
  return [fds[0]!, fds[1]!];
}

export function mprotect(addr: Pointer, length: number, prot: number): void {
  check(libc().mprotect(addr, length, prot) as number, 'mprotect');
}

/** The size of a memory page in bytes (getpagesize(2)). */
export function pageSize(): number {
  return libc().getpagesize() as number;
}

/** A `struct pollfd` array for pollAsync: fill it once, read each fd's revents with reventsOf. */
export function pollFds(fds: readonly PollFd[]): Buffer {
  const buf = Buffer.alloc(fds.length * POLLFD_BYTES);
  fds.forEach((p, i) => {
    buf.writeInt32LE(p.fd, i * POLLFD_BYTES);
    buf.writeInt16LE(p.events, i * POLLFD_BYTES + 4);
  });
  return buf;
}

/** The revents poll left for entry `index` of a pollFds buffer. */
export function reventsOf(fds: Buffer, index: number): number {
  return fds.readInt16LE(index * POLLFD_BYTES + 6);
}

/**
 * poll(2) on a pollFds buffer, blocking the calling thread (and its event loop) up to
 * `timeoutMs`. Returns the number of ready fds (0 on timeout or EINTR); revents stay in `fds`.
 */
export function pollBuffer(fds: Buffer, timeoutMs: number): number {
  const n = libc().poll(fds, fds.length / POLLFD_BYTES, timeoutMs) as number;
  if (n >= 0) return n;
  const errno = koffi.errno();
  if (errno === Errno.EINTR) return 0;
  fail('poll', undefined, errno);
}

/**
 * poll(2) on a koffi async call: it blocks a libuv threadpool thread, not the calling thread,
 * whose event loop keeps running. Resolves with the number of ready fds (0 on timeout) and
 * leaves revents in `fds` (a pollFds buffer, which must not be touched until it settles).
 * EINTR resolves 0. Every pending call holds one of the process's UV_THREADPOOL_SIZE threads
 * (default 4) for up to `timeoutMs`: keep the timeout bounded so fs and crypto work still runs.
 */
export function pollAsync(fds: Buffer, timeoutMs: number): Promise<number> {
  return new Promise((resolve, reject) => {
    libc().poll.async(fds, fds.length / POLLFD_BYTES, timeoutMs, (err: unknown, result: number) => {
      if (err !== null && err !== undefined) reject(err instanceof Error ? err : new Error(String(err)));
      else if (result >= 0) resolve(result);
      else {
        const errno = koffi.errno();
        if (errno === Errno.EINTR) resolve(0);
        else reject(new KernelError({ syscall: 'poll', errno, errnoName: errnoName(errno) }));
      }
    });
  });
}
