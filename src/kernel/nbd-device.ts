/**
 * Our NBD server as a kernel block device (/dev/nbdX), through the ioctl interface of `nbd.ko`.
 *
 * attach: socketpair → one end to `serve` (our server's transmission phase, no handshake) → the
 * other to the kernel: /dev/nbd0.. are tried in order with NBD_SET_SOCK and a busy one is skipped
 * (nbd-claim.ts). Then NBD_SET_BLKSIZE, NBD_SET_SIZE_BLOCKS, NBD_SET_FLAGS, NBD_SET_TIMEOUT, and
 * NBD_DO_IT on a worker thread of its own that blocks all signals first (do-it-thread.ts; never the
 * libuv threadpool, which it would starve). Ready once /sys/block/nbdX/size is non-zero (polled
 * every 1 ms). Our copy of the kernel's socket end is closed right after NBD_SET_SOCK: the kernel
 * holds its own reference until NBD_CLEAR_SOCK.
 *
 * detach: fsync the device (off the main thread, bounded), NBD_CLEAR_QUE, NBD_DISCONNECT,
 * NBD_CLEAR_SOCK, wait for NBD_DO_IT to return, close the device fd, end the socket. Once every
 * other opener has closed the device too, its size is 0 and its pid file is gone.
 *
 * Caveats:
 * - `process.exit()` joins worker threads, and a thread inside NBD_DO_IT cannot be joined: call
 *   `detach()` on every shutdown path first. As a safety net a process 'exit' hook disconnects
 *   every device still attached (without flushing), so the exit does not hang.
 * - The server runs on this process's event loop: never touch the device with synchronous I/O from
 *   this thread (it would wait for a reply only this thread can send), and keep in-process async
 *   I/O on the device well below the libuv threadpool size when the backend needs that pool too.
 */
import { fsync } from 'node:fs';
import { Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { KernelError, TimeoutError, UsageError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import { DoItThread } from './do-it-thread.js';
import { Errno } from './errno.js';
import { close, ioctl, socketpair } from './ffi.js';
import { claimNbdDevice, claimOwner, missingNbdDevice, nbdCandidates, openNbdDevice, releaseClaim, setClaimOwner, tryIoctl, type NbdClaim } from './nbd-claim.js';
import { NBD_CLEAR_QUE, NBD_CLEAR_SOCK, NBD_DISCONNECT, NBD_SET_BLKSIZE, NBD_SET_FLAGS, NBD_SET_SIZE_BLOCKS, NBD_SET_TIMEOUT, nbdIoctlName } from './nbd-ioctl.js';
import { listNbdIndexes, nbdIndexOf, nbdPath, readNbdSizeBytes, readNbdState } from './sysfs.js';

export interface NbdAttachOptions {
  /** Bytes; a multiple of blockSize. */
  readonly size: number;
  /** Logical block size in bytes: a power of two in 512..4096; default 4096. */
  readonly blockSize?: number;
  /** The export's NBD_FLAG_* (HAS_FLAGS, READ_ONLY, SEND_FLUSH, SEND_FUA, SEND_TRIM, ...), for NBD_SET_FLAGS. */
  readonly transmissionFlags: number;
  /** Use this device (/dev/nbdN) instead of the first free one. */
  readonly device?: string;
  /** Kernel request timeout in seconds (NBD_SET_TIMEOUT); 0 = none (default). */
  readonly timeoutSec?: number;
  /** How long the device may take to show its size once NBD_DO_IT runs; default 10 s; 0 = no limit. */
  readonly readyTimeoutMs?: number;
  readonly log?: Logger;
}

export interface NbdDevice {
  /** `/dev/nbdN`. */
  readonly path: string;
  readonly index: number;
  /** Flushes, disconnects and releases the device; idempotent. */
  detach(): Promise<void>;
  /** Resolves once NBD_DO_IT has returned and the device is released: with the error if that was not a detach. */
  readonly closed: Promise<Error | undefined>;
}

export interface NbdDeviceInfo {
  readonly path: string;
  readonly index: number;
  /** A connection is configured: the pid file exists or the size is non-zero. */
  readonly connected: boolean;
  readonly sizeBytes: number;
  /** The NBD_DO_IT thread id (possibly of a dead process). */
  readonly pid: number | undefined;
}

interface ResolvedAttachOptions {
  readonly size: number;
  readonly blockSize: number;
  readonly transmissionFlags: number;
  readonly device: string | undefined;
  readonly timeoutSec: number;
  readonly readyTimeoutMs: number;
}

const READY_POLL_MS = 1;
const THREAD_START_TIMEOUT_MS = 60_000;
const FLUSH_TIMEOUT_MS = 10_000;
const DO_IT_RETURN_TIMEOUT_MS = 10_000;
const SOCKET_CLOSE_GRACE_MS = 2_000;

/** Attaches `serve`'s NBD server to a free /dev/nbdX; resolves once the device is ready. */
export async function attachNbdDevice(serve: (socket: Socket) => void, options: NbdAttachOptions): Promise<NbdDevice> {
  const opts = resolveAttachOptions(options);
  const log = (options.log ?? silentLogger).child({ component: 'nbd-device' });
  const candidates = await nbdCandidates(opts.device);
  const thread = DoItThread.acquire(); // starts booting while the device is set up
  const [serverFd, kernelFd] = socketpair();
  let claimed: NbdClaim;
  try {
    claimed = claimNbdDevice(candidates, kernelFd, opts.device !== undefined);
  } catch (err) {
    close(serverFd);
    thread.release();
    throw err;
  } finally {
    close(kernelFd); // the kernel holds its own reference from NBD_SET_SOCK on
  }
  const { index, path, fd } = claimed;
  let socket: Socket | undefined;
  try {
    configure(fd, path, opts);
    socket = new Socket({ fd: serverFd, readable: true, writable: true, allowHalfOpen: true });
    serve(socket);
  } catch (err) {
    tryIoctl(fd, NBD_CLEAR_SOCK, path);
    close(fd, path);
    releaseClaim(index);
    if (socket === undefined) close(serverFd);
    else socket.destroy();
    thread.release();
    throw err;
  }
  const device = new AttachedNbdDevice(index, fd, socket, thread, log.child({ device: path }));
  setClaimOwner(index, device);
  await device.ready(opts.readyTimeoutMs);
  log.info({ device: path, sizeBytes: opts.size, blockSize: opts.blockSize, flags: opts.transmissionFlags }, 'NBD device ready');
  return device;
}

/**
 * Disconnects a device, e.g. one left behind by a dead process (`r3map-mount --disconnect`). When
 * its owner was killed and nothing else holds it open, the kernel has already freed it:
 * 'not-connected'. Otherwise NBD_DISCONNECT + NBD_CLEAR_SOCK make pending and new I/O fail at once;
 * the device is fully released (size 0, no pid file) when its last opener (a mount) closes it.
 */
export async function disconnectNbdDevice(path: string): Promise<'disconnected' | 'not-connected'> {
  const index = nbdIndexOf(path);
  if (index === undefined) throw new UsageError(`not an NBD device: ${path} (expected /dev/nbdN)`);
  const own = claimOwner(index);
  if (own !== undefined) {
    await own.detach();
    return 'disconnected';
  }
  const state = await readNbdState(index);
  if (!state.exists) throw await missingNbdDevice(path);
  if (state.pid === undefined && state.sizeBytes === 0) return 'not-connected';
  const fd = openNbdDevice(path);
  try {
    ioctl(fd, NBD_CLEAR_QUE, 0, 'NBD_CLEAR_QUE', path);
    ioctl(fd, NBD_DISCONNECT, 0, 'NBD_DISCONNECT', path);
    ioctl(fd, NBD_CLEAR_SOCK, 0, 'NBD_CLEAR_SOCK', path);
  } finally {
    close(fd, path);
  }
  return 'disconnected';
}

/** Every NBD device the kernel has, with what sysfs says about it. */
export async function listNbdDevices(): Promise<NbdDeviceInfo[]> {
  const indexes = await listNbdIndexes();
  return Promise.all(
    indexes.map(async (index) => {
      const { sizeBytes, pid } = await readNbdState(index);
      return { path: nbdPath(index), index, connected: pid !== undefined || sizeBytes > 0, sizeBytes, pid };
    }),
  );
}

class AttachedNbdDevice implements NbdDevice {
  readonly path: string;
  readonly index: number;
  readonly closed: Promise<Error | undefined>;
  readonly #fd: number;
  readonly #socket: Socket;
  readonly #log: Logger;
  /** Resolves when NBD_DO_IT returns (or its thread dies), with the error if any. */
  readonly #doItReturned: Promise<Error | undefined>;
  /** Resolves with the thread id once the worker is about to enter NBD_DO_IT. */
  readonly #started: Promise<number>;
  #resolveClosed!: (err: Error | undefined) => void;
  #returned = false;
  #returnError: Error | undefined = undefined;
  /** detach() was called: NBD_DO_IT returning is expected. */
  #detachRequested = false;
  #detaching: Promise<void> | undefined = undefined;
  #released = false;

  static readonly #live = new Set<AttachedNbdDevice>();

  /** Process 'exit' safety net: a thread left in NBD_DO_IT would make the exit hang. */
  static #onProcessExit(): void {
    for (const device of AttachedNbdDevice.#live) {
      if (device.#returned) continue;
      tryIoctl(device.#fd, NBD_DISCONNECT, device.path);
      tryIoctl(device.#fd, NBD_CLEAR_SOCK, device.path);
    }
  }

  static {
    process.on('exit', () => AttachedNbdDevice.#onProcessExit());
  }

  constructor(index: number, fd: number, socket: Socket, thread: DoItThread, log: Logger) {
    this.index = index;
    this.path = nbdPath(index);
    this.#fd = fd;
    this.#socket = socket;
    this.#log = log;
    this.closed = new Promise((resolve) => (this.#resolveClosed = resolve));
    AttachedNbdDevice.#live.add(this);
    let onStarted!: (tid: number) => void;
    this.#started = new Promise((resolve) => (onStarted = resolve));
    this.#doItReturned = thread.run({ fd, device: this.path }, (tid) => {
      log.debug({ tid }, 'NBD_DO_IT thread started');
      onStarted(tid);
    }).then((err) => {
      thread.release();
      this.#onReturn(err);
      return err;
    });
  }

  /**
   * Waits for the NBD_DO_IT thread to start (a worker boots in ~100 ms, but in seconds under
   * emulation), then up to `timeoutMs` for /sys/block/nbdX/size > 0. On failure the device is
   * detached and the error thrown.
   */
  async ready(timeoutMs: number): Promise<void> {
    try {
      const started = await Promise.race([this.#started, this.#doItReturned.then(() => 'returned' as const), sleep(THREAD_START_TIMEOUT_MS, 'timeout' as const, { ref: false })]);
      if (started === 'timeout') throw new TimeoutError(`the NBD_DO_IT thread for ${this.path} did not start within ${THREAD_START_TIMEOUT_MS} ms`);
      const deadline = timeoutMs === 0 ? Infinity : performance.now() + timeoutMs;
      for (;;) {
        if (this.#returned) throw this.#returnError ?? shutdownError(this.path, 'returned before the device was ready');
        const sizeBytes = await readNbdSizeBytes(this.index);
        if (sizeBytes !== undefined && sizeBytes > 0) return;
        if (performance.now() >= deadline) {
          throw new TimeoutError(`${this.path} was not ready within ${timeoutMs} ms (/sys/block/nbd${this.index}/size stayed 0)`);
        }
        await sleep(READY_POLL_MS);
      }
    } catch (err) {
      await this.detach().catch((detachErr: unknown) => this.#log.error({ err: detachErr }, 'detach after a failed attach failed'));
      throw err;
    }
  }

  detach(): Promise<void> {
    this.#detachRequested = true;
    this.#detaching ??= this.#detach();
    return this.#detaching;
  }

  async #detach(): Promise<void> {
    const errors: unknown[] = [];
    if (!this.#returned) {
      await this.#flush();
      for (const request of [NBD_CLEAR_QUE, NBD_DISCONNECT, NBD_CLEAR_SOCK]) {
        try {
          ioctl(this.#fd, request, 0, nbdIoctlName(request), this.path);
        } catch (err) {
          errors.push(err);
        }
      }
      const result = await Promise.race([this.#doItReturned, sleep(DO_IT_RETURN_TIMEOUT_MS, 'timeout' as const, { ref: false })]);
      if (result === 'timeout') {
        const err = new TimeoutError(`NBD_DO_IT on ${this.path} did not return within ${DO_IT_RETURN_TIMEOUT_MS} ms of NBD_DISCONNECT`);
        this.#log.error({ err }, 'detach failed');
        throw err;
      }
      if (result !== undefined) errors.push(result);
    }
    errors.push(...(await this.#release(false)));
    this.#log.info({ errors: errors.length }, 'NBD device detached');
    const error = errors.length === 0 ? undefined : errors.length === 1 ? (errors[0] as Error) : new AggregateError(errors, `detaching ${this.path}: ${errors.length} steps failed`);
    this.#resolveClosed(error);
    if (error !== undefined) throw error;
  }

  /** Writes back the page cache and sends a FLUSH, on the threadpool; bounded, never throws. */
  async #flush(): Promise<void> {
    const flushed = new Promise<Error | null>((resolve) => fsync(this.#fd, resolve));
    const result = await Promise.race([flushed, sleep(FLUSH_TIMEOUT_MS, 'timeout' as const, { ref: false })]);
    if (result === 'timeout') this.#log.warn({ timeoutMs: FLUSH_TIMEOUT_MS }, 'fsync before detach did not finish; disconnecting anyway');
    else if (result !== null) this.#log.warn({ err: result }, 'fsync before detach failed');
  }

  #onReturn(err: Error | undefined): void {
    this.#returned = true;
    this.#returnError = err;
    if (this.#detachRequested) return;
    // Nobody asked for this: the server closed the socket, a request timed out, or someone ran --disconnect.
    const error = err ?? shutdownError(this.path, 'the connection closed without a detach');
    this.#log.error({ err: error }, 'NBD device disconnected');
    this.#detaching = this.#release(true).then((errors) => {
      for (const releaseErr of errors) this.#log.error({ err: releaseErr }, 'releasing the device failed');
      this.#resolveClosed(error);
    });
  }

  /** Closes the device fd and the socket and gives the index back; idempotent; returns what failed. */
  async #release(clearSock: boolean): Promise<unknown[]> {
    if (this.#released) return [];
    this.#released = true;
    AttachedNbdDevice.#live.delete(this);
    const errors: unknown[] = [];
    if (clearSock) tryIoctl(this.#fd, NBD_CLEAR_SOCK, this.path);
    try {
      close(this.#fd, this.path);
    } catch (err) {
      errors.push(err);
    }
    releaseClaim(this.index);
    await endSocket(this.#socket);
    return errors;
  }
}

function shutdownError(path: string, hint: string): KernelError {
  return new KernelError({ syscall: 'NBD_DO_IT', errno: Errno.ESHUTDOWN, errnoName: 'ESHUTDOWN', device: path }, hint);
}

function resolveAttachOptions(options: NbdAttachOptions): ResolvedAttachOptions {
  const { size, transmissionFlags, device } = options;
  const blockSize = options.blockSize ?? 4096;
  const timeoutSec = options.timeoutSec ?? 0;
  const readyTimeoutMs = options.readyTimeoutMs ?? 10_000;
  if (!Number.isSafeInteger(blockSize) || blockSize < 512 || blockSize > 4096 || (blockSize & (blockSize - 1)) !== 0) {
    throw new UsageError(`NBD block size ${blockSize} is not a power of two in 512..4096`);
  }
  if (!Number.isSafeInteger(size) || size <= 0) throw new UsageError(`NBD device size ${size} must be a positive whole number of bytes`);
  if (size % blockSize !== 0) throw new UsageError(`NBD device size ${size} is not a multiple of the block size ${blockSize}`);
  if (!Number.isInteger(transmissionFlags) || transmissionFlags < 0 || transmissionFlags > 0xffff) {
    throw new UsageError(`NBD transmission flags ${transmissionFlags} are not a 16-bit value`);
  }
  if (device !== undefined && nbdIndexOf(device) === undefined) throw new UsageError(`not an NBD device: ${device} (expected /dev/nbdN)`);
  if (!Number.isSafeInteger(timeoutSec) || timeoutSec < 0) throw new UsageError(`NBD timeout ${timeoutSec} s must be a whole number >= 0`);
  if (!Number.isFinite(readyTimeoutMs) || readyTimeoutMs < 0) throw new UsageError(`ready timeout ${readyTimeoutMs} ms must be >= 0`);
  return Object.freeze({ size, blockSize, transmissionFlags, device, timeoutSec, readyTimeoutMs });
}

function configure(fd: number, path: string, opts: ResolvedAttachOptions): void {
  ioctl(fd, NBD_SET_BLKSIZE, opts.blockSize, 'NBD_SET_BLKSIZE', path);
  ioctl(fd, NBD_SET_SIZE_BLOCKS, opts.size / opts.blockSize, 'NBD_SET_SIZE_BLOCKS', path);
  ioctl(fd, NBD_SET_FLAGS, opts.transmissionFlags, 'NBD_SET_FLAGS', path);
  ioctl(fd, NBD_SET_TIMEOUT, opts.timeoutSec, 'NBD_SET_TIMEOUT', path);
}

async function endSocket(socket: Socket): Promise<void> {
  if (socket.destroyed) return;
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  socket.end();
  const result = await Promise.race([closed, sleep(SOCKET_CLOSE_GRACE_MS, 'timeout' as const, { ref: false })]);
  if (result === 'timeout') socket.destroy();
}
