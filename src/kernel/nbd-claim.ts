/**
 * Finding and claiming a free NBD device without races. Processes are kept apart by the kernel:
 * NBD_SET_SOCK fails with EBUSY when another task set the device up (EINVAL when it is a netlink
 * device), so each device is tried in order and a busy one skipped; nothing is decided from sysfs
 * alone (check-then-use). NBD_SET_SOCK refuses only *other* threads, so attaches within this
 * process are kept apart by the `claims` registry, which holds each device from its NBD_SET_SOCK
 * until it is released.
 */
import { KernelError } from '../errors.js';
import { Errno, errnoName } from './errno.js';
import { close, ioctl, O_CLOEXEC, O_RDWR, open } from './ffi.js';
import { NBD_SET_SOCK, nbdIoctlName } from './nbd-ioctl.js';
import { listNbdIndexes, nbdIndexOf, nbdModuleLoaded, nbdPath, readNbdState } from './sysfs.js';

export interface NbdClaim {
  readonly index: number;
  readonly path: string;
  /** The /dev/nbdX fd (O_RDWR, close-on-exec) that holds the socket. */
  readonly fd: number;
}

/** What a claimed device answers to `disconnectNbdDevice`. */
export interface NbdClaimOwner {
  detach(): Promise<void>;
}

const claims = new Map<number, NbdClaimOwner | undefined>();

export function setClaimOwner(index: number, owner: NbdClaimOwner): void {
  claims.set(index, owner);
}

export function claimOwner(index: number): NbdClaimOwner | undefined {
  return claims.get(index);
}

/** Gives the index back to this process's attaches (after the device fd is closed). */
export function releaseClaim(index: number): void {
  claims.delete(index);
}

/** The devices to try, in order: the forced one, or every one the kernel has. */
export async function nbdCandidates(device: string | undefined): Promise<number[]> {
  if (device !== undefined) {
    const index = nbdIndexOf(device)!;
    if (!(await readNbdState(index)).exists) throw await missingNbdDevice(device);
    return [index];
  }
  const indexes = await listNbdIndexes();
  if (indexes.length === 0) throw await missingNbdDevice(nbdPath(0));
  return indexes;
}

export async function missingNbdDevice(path: string): Promise<KernelError> {
  const loaded = await nbdModuleLoaded();
  const hint = !loaded
    ? 'the nbd kernel module is not loaded: run "modprobe nbd"'
    : `no such NBD device; the nbd module has ${(await listNbdIndexes()).length} (modprobe nbd nbds_max=N for more)`;
  return new KernelError({ syscall: 'open', errno: Errno.ENOENT, errnoName: 'ENOENT', device: path }, hint);
}

/**
 * Tries NBD_SET_SOCK on each device in order and keeps the first that takes the socket: the
 * kernel arbitrates between processes, `claims` between attaches in this one. Synchronous, so no
 * other attach in this thread can interleave.
 */
export function claimNbdDevice(indexes: readonly number[], kernelFd: number, forced: boolean): NbdClaim {
  for (const index of indexes) {
    const path = nbdPath(index);
    if (claims.has(index)) {
      if (forced) throw new KernelError({ syscall: 'NBD_SET_SOCK', errno: Errno.EBUSY, errnoName: 'EBUSY', device: path }, 'this process already uses it');
      continue;
    }
    let fd: number;
    try {
      fd = openNbdDevice(path);
    } catch (err) {
      if (!forced && err instanceof KernelError && err.errno === Errno.EBUSY) continue;
      throw err;
    }
    try {
      ioctl(fd, NBD_SET_SOCK, kernelFd, 'NBD_SET_SOCK', path);
    } catch (err) {
      close(fd, path);
      const inUse = err instanceof KernelError && (err.errno === Errno.EBUSY || err.errno === Errno.EINVAL);
      if (inUse && !forced) continue;
      if (err instanceof KernelError) throw withHint(err, path, inUse ? 'the device is in use (set up by another process, or through netlink)' : hintFor(err.errno));
      throw err;
    }
    claims.set(index, undefined);
    return { index, path, fd };
  }
  const range = indexes.length === 1 ? nbdPath(indexes[0]!) : `${nbdPath(indexes[0]!)}..${indexes[indexes.length - 1]}`;
  throw new KernelError(
    { syscall: 'NBD_SET_SOCK', errno: Errno.EBUSY, errnoName: 'EBUSY', device: range },
    `all ${indexes.length} NBD devices are busy: free one with r3map-mount --disconnect /dev/nbdN, or modprobe nbd nbds_max=N`,
  );
}

export function openNbdDevice(path: string): number {
  try {
    return open(path, O_RDWR | O_CLOEXEC);
  } catch (err) {
    if (err instanceof KernelError) throw withHint(err, path, hintFor(err.errno));
    throw err;
  }
}

function hintFor(errno: number): string | undefined {
  if (errno === Errno.EACCES || errno === Errno.EPERM) return 'NBD devices need root (CAP_SYS_ADMIN)';
  return undefined;
}

function withHint(err: KernelError, path: string, hint: string | undefined): KernelError {
  if (hint === undefined) return err;
  return new KernelError({ syscall: err.syscall, errno: err.errno, errnoName: errnoName(err.errno), device: path }, hint);
}

/** An ioctl whose failure changes nothing (cleanup paths). */
export function tryIoctl(fd: number, request: number, path: string): void {
  try {
    ioctl(fd, request, 0, nbdIoctlName(request), path);
  } catch {
    // best effort: the device is being released anyway
  }
}
