/**
 * userfaultfd constants from linux/userfaultfd.h, spelled as in the header so they can be
 * grepped there. ioctl numbers are the header's `_IOWR`/`_IOR` values computed for the struct
 * sizes below (the same on x86_64 and arm64). Struct layouts are the header's, little-endian,
 * with each u64 at the offset named here.
 */

/** The only API version: UFFDIO_API must be called with it before anything else. */
export const UFFD_API = 0xaa;

export const UFFDIO_API = 0xc018aa3f;
export const UFFDIO_REGISTER = 0xc020aa00;
export const UFFDIO_UNREGISTER = 0x8010aa01;
export const UFFDIO_WAKE = 0x8010aa02;
export const UFFDIO_COPY = 0xc028aa03;
export const UFFDIO_ZEROPAGE = 0xc020aa04;
export const UFFDIO_WRITEPROTECT = 0xc018aa06;
export const UFFDIO_CONTINUE = 0xc020aa07;

/** Bit numbers of the ioctls in uffdio_api.ioctls and uffdio_register.ioctls. */
export const _UFFDIO_REGISTER = 0x00;
export const _UFFDIO_UNREGISTER = 0x01;
export const _UFFDIO_WAKE = 0x02;
export const _UFFDIO_COPY = 0x03;
export const _UFFDIO_ZEROPAGE = 0x04;
export const _UFFDIO_WRITEPROTECT = 0x06;
export const _UFFDIO_CONTINUE = 0x07;
export const _UFFDIO_API = 0x3f;

/** uffd_msg.event values. */
export const UFFD_EVENT_PAGEFAULT = 0x12;
export const UFFD_EVENT_FORK = 0x13;
export const UFFD_EVENT_REMAP = 0x14;
export const UFFD_EVENT_REMOVE = 0x15;
export const UFFD_EVENT_UNMAP = 0x16;

/** uffd_msg.arg.pagefault.flags bits. */
export const UFFD_PAGEFAULT_FLAG_WRITE = 1 << 0;
export const UFFD_PAGEFAULT_FLAG_WP = 1 << 1;
export const UFFD_PAGEFAULT_FLAG_MINOR = 1 << 2;

/** uffdio_api.features bits. */
export const UFFD_FEATURE_PAGEFAULT_FLAG_WP = 1 << 0;
export const UFFD_FEATURE_EVENT_FORK = 1 << 1;
export const UFFD_FEATURE_EVENT_REMAP = 1 << 2;
export const UFFD_FEATURE_EVENT_REMOVE = 1 << 3;
export const UFFD_FEATURE_MISSING_HUGETLBFS = 1 << 4;
export const UFFD_FEATURE_MISSING_SHMEM = 1 << 5;
export const UFFD_FEATURE_EVENT_UNMAP = 1 << 6;
export const UFFD_FEATURE_SIGBUS = 1 << 7;
export const UFFD_FEATURE_THREAD_ID = 1 << 8;
export const UFFD_FEATURE_MINOR_HUGETLBFS = 1 << 9;
export const UFFD_FEATURE_MINOR_SHMEM = 1 << 10;
export const UFFD_FEATURE_EXACT_ADDRESS = 1 << 11;
export const UFFD_FEATURE_WP_HUGETLBFS_SHMEM = 1 << 12;

/** uffdio_register.mode bits. */
export const UFFDIO_REGISTER_MODE_MISSING = 1 << 0;
export const UFFDIO_REGISTER_MODE_WP = 1 << 1;
export const UFFDIO_REGISTER_MODE_MINOR = 1 << 2;

/** uffdio_copy.mode bits. */
export const UFFDIO_COPY_MODE_DONTWAKE = 1 << 0;
export const UFFDIO_COPY_MODE_WP = 1 << 1;

/** userfaultfd(2) flag: handle faults from user mode only (no kernel-mode copy_from_user faults). */
export const UFFD_USER_MODE_ONLY = 1;

/** sizeof(struct uffd_msg): event u8 at 0, pagefault.flags u64 at 8, pagefault.address u64 at 16. */
export const UFFD_MSG_BYTES = 32;
export const UFFD_MSG_EVENT_OFFSET = 0;
export const UFFD_MSG_PAGEFAULT_FLAGS_OFFSET = 8;
export const UFFD_MSG_PAGEFAULT_ADDRESS_OFFSET = 16;

/** sizeof(struct uffdio_api): api, features, ioctls (u64 each). */
export const UFFDIO_API_BYTES = 24;
/** sizeof(struct uffdio_range): start, len. */
export const UFFDIO_RANGE_BYTES = 16;
/** sizeof(struct uffdio_register): range.start, range.len, mode, ioctls. */
export const UFFDIO_REGISTER_BYTES = 32;
/** sizeof(struct uffdio_copy): dst, src, len, mode, copy (s64, written by the kernel). */
export const UFFDIO_COPY_BYTES = 40;
export const UFFDIO_COPY_COPY_OFFSET = 32;

/** __NR_userfaultfd per Node architecture name (process.arch). */
export const SYS_userfaultfd: Readonly<Record<string, number>> = Object.freeze({ x64: 323, arm64: 282, riscv64: 282, ia32: 374, arm: 388 });
