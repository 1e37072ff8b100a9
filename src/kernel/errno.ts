/**
 * Linux errno values (asm-generic/errno-base.h and errno.h, the same on x86_64 and arm64) under
 * their kernel names, for KernelError messages such as `NBD_SET_SOCK /dev/nbd3: EBUSY`. Only the
 * numbers syscalls in this project can return are listed; anything else reads as `errno N`.
 */
export const Errno = {
  EPERM: 1,
  ENOENT: 2,
  ESRCH: 3,
  EINTR: 4,
  EIO: 5,
  ENXIO: 6,
  E2BIG: 7,
  EBADF: 9,
  ECHILD: 10,
  EAGAIN: 11,
  ENOMEM: 12,
  EACCES: 13,
  EFAULT: 14,
  ENOTBLK: 15,
  EBUSY: 16,
  EEXIST: 17,
  EXDEV: 18,
  ENODEV: 19,
  ENOTDIR: 20,
  EISDIR: 21,
  EINVAL: 22,
  ENFILE: 23,
  EMFILE: 24,
  ENOTTY: 25,
  ETXTBSY: 26,
  EFBIG: 27,
  ENOSPC: 28,
  ESPIPE: 29,
  EROFS: 30,
  EPIPE: 32,
  ERANGE: 34,
  EDEADLK: 35,
  ENAMETOOLONG: 36,
  ENOLCK: 37,
  ENOSYS: 38,
  ELOOP: 40,
  EOVERFLOW: 75,
  ENOTSOCK: 88,
  EPROTONOSUPPORT: 93,
  EOPNOTSUPP: 95,
  EAFNOSUPPORT: 97,
  EADDRINUSE: 98,
  ECONNABORTED: 103,
  ECONNRESET: 104,
  ENOBUFS: 105,
  ENOTCONN: 107,
  ESHUTDOWN: 108,
  ETIMEDOUT: 110,
  ECONNREFUSED: 111,
  EALREADY: 114,
  EINPROGRESS: 115,
} as const;

export type ErrnoName = keyof typeof Errno;

const NAMES: ReadonlyMap<number, ErrnoName> = new Map(
  (Object.entries(Errno) as [ErrnoName, number][]).map(([name, value]) => [value, name]),
);

/** `16` -> `'EBUSY'`; an unlisted number -> `'errno 200'`. */
export function errnoName(errno: number): string {
  return NAMES.get(errno) ?? `errno ${errno}`;
}
