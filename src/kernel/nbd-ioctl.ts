/**
 * The kernel NBD client's ioctl interface, from the UAPI header `linux/nbd.h`, under the kernel's
 * names. Each request is `_IO(0xab, n)`, which is `0xab00 | n` on every Linux architecture.
 *
 * The ioctl sequence (see nbd-device.ts): SET_SOCK, SET_BLKSIZE, SET_SIZE_BLOCKS, SET_FLAGS,
 * SET_TIMEOUT, then DO_IT on a thread of its own; teardown CLEAR_QUE, DISCONNECT, CLEAR_SOCK.
 */
export const NbdIoctl = {
  /** Hands the kernel a connected socket (arg: fd); EBUSY when another task set the device up. */
  NBD_SET_SOCK: 0xab00 | 0,
  /** Logical block size in bytes (512..PAGE_SIZE, a power of two). */
  NBD_SET_BLKSIZE: 0xab00 | 1,
  /** Size in bytes (an `unsigned long`: 4 GiB at most on 32-bit; prefer SET_SIZE_BLOCKS). */
  NBD_SET_SIZE: 0xab00 | 2,
  /** Starts the device and blocks the calling thread until it disconnects. */
  NBD_DO_IT: 0xab00 | 3,
  /** Shuts the socket down, fails queued requests, releases the device for the next SET_SOCK. */
  NBD_CLEAR_SOCK: 0xab00 | 4,
  /** Kept for compatibility; the queue is cleared by DO_IT and CLEAR_SOCK. */
  NBD_CLEAR_QUE: 0xab00 | 5,
  /** Kept for compatibility; a no-op. */
  NBD_PRINT_DEBUG: 0xab00 | 6,
  /** Size in blocks of SET_BLKSIZE bytes. */
  NBD_SET_SIZE_BLOCKS: 0xab00 | 7,
  /** Sends NBD_CMD_DISC to the server; DO_IT returns once the connection is gone. */
  NBD_DISCONNECT: 0xab00 | 8,
  /** Request timeout in seconds; 0 = requests never time out. */
  NBD_SET_TIMEOUT: 0xab00 | 9,
  /** The server's transmission flags (NBD_FLAG_*): read-only, flush, FUA, trim. */
  NBD_SET_FLAGS: 0xab00 | 10,
} as const;

export type NbdIoctlName = keyof typeof NbdIoctl;

export const {
  NBD_SET_SOCK,
  NBD_SET_BLKSIZE,
  NBD_SET_SIZE,
  NBD_DO_IT,
  NBD_CLEAR_SOCK,
  NBD_CLEAR_QUE,
  NBD_PRINT_DEBUG,
  NBD_SET_SIZE_BLOCKS,
  NBD_DISCONNECT,
  NBD_SET_TIMEOUT,
  NBD_SET_FLAGS,
} = NbdIoctl;

const NAMES: ReadonlyMap<number, NbdIoctlName> = new Map(
  (Object.entries(NbdIoctl) as [NbdIoctlName, number][]).map(([name, value]) => [value, name]),
);

/** `0xab00` -> `'NBD_SET_SOCK'`, for errors and logs. */
export function nbdIoctlName(request: number): string {
  return NAMES.get(request) ?? `ioctl 0x${request.toString(16)}`;
}

/**
 * The transmission flags `linux/nbd.h` defines (the same bits as the protocol's NBD_FLAG_*): what
 * NBD_SET_FLAGS acts on. Other protocol bits are stored by the kernel and ignored unless it knows
 * them (newer kernels add SEND_WRITE_ZEROES, for instance), so pass the server's flags unchanged.
 */
export const NbdKernelFlag = {
  NBD_FLAG_HAS_FLAGS: 1 << 0,
  /** The device becomes read-only (`blockdev --getro` = 1). */
  NBD_FLAG_READ_ONLY: 1 << 1,
  /** The kernel sends NBD_CMD_FLUSH (fsync, sync, barriers reach the server). */
  NBD_FLAG_SEND_FLUSH: 1 << 2,
  /** With SEND_FLUSH: writes may carry NBD_CMD_FLAG_FUA. */
  NBD_FLAG_SEND_FUA: 1 << 3,
  /** The kernel sends NBD_CMD_TRIM (discard). */
  NBD_FLAG_SEND_TRIM: 1 << 5,
  /** Required before the kernel accepts more than one socket for a device. */
  NBD_FLAG_CAN_MULTI_CONN: 1 << 8,
} as const;

/** Client flags of the netlink interface (NBD_ATTR_CLIENT_FLAGS). */
export const NbdClientFlag = {
  NBD_CFLAG_DESTROY_ON_DISCONNECT: 1 << 0,
  NBD_CFLAG_DISCONNECT_ON_CLOSE: 1 << 1,
} as const;
