/**
 * How a direct mount turns our NBD server into a block device:
 * - `nbd`: the kernel NBD client (`/dev/nbdN`, src/kernel/nbd-device.ts);
 * - `fuse-loop`: nbdfuse exposes the export as a file, losetup turns the file into `/dev/loopN`
 *   (for kernels without the nbd driver; src/mount/fuse-loop.ts);
 * - `auto`: nbd when the driver is there, fuse-loop otherwise.
 */
import { existsSync } from 'node:fs';
import { KernelError, UsageError } from '../errors.js';
import type { Logger } from '../log.js';

export const TRANSPORTS = ['nbd', 'fuse-loop', 'auto'] as const;
export type Transport = (typeof TRANSPORTS)[number];
/** A transport after `auto` has been decided. */
export type ResolvedTransport = Exclude<Transport, 'auto'>;

const NBD_DEVICE = /^\/dev\/nbd\d+$/;
const LOOP_DEVICE = /^\/dev\/loop\d+$/;
const ENOENT = 2;

export const MODPROBE_HINT = 'the nbd kernel module is not loaded: run "modprobe nbd" (or use --transport fuse-loop)';

export function isTransport(value: string): value is Transport {
  return (TRANSPORTS as readonly string[]).includes(value);
}

/** A mount option's transport, checked: default 'auto'; anything else is a UsageError. */
export function resolveTransport(value: Transport | undefined): Transport {
  const transport = value ?? 'auto';
  if (!isTransport(transport)) throw new UsageError(`transport '${String(transport)}' is not one of ${TRANSPORTS.join(', ')}`);
  return transport;
}

/**
 * What a transport hands back once the device is up: the kernel NBD client (NbdDevice) and
 * fuse-loop (FuseLoopDevice) both are one.
 */
export interface AttachedDevice {
  /** /dev/nbdN or /dev/loopN. */
  readonly path: string;
  /** Resolves with an Error when the device goes away without detach(), undefined after detach(). */
  readonly closed: Promise<Error | undefined>;
  /** Flushes and releases the device; idempotent. */
  detach(): Promise<void>;
}

/** True when the kernel has an NBD driver (the module is loaded or built in and made devices). */
export function hasNbdDriver(): boolean {
  return existsSync('/sys/module/nbd') || existsSync('/dev/nbd0');
}

/** The transport a device path implies, if any (`/dev/nbd3` → nbd, `/dev/loop2` → fuse-loop). */
export function transportOfDevice(device: string): ResolvedTransport | undefined {
  if (NBD_DEVICE.test(device)) return 'nbd';
  if (LOOP_DEVICE.test(device)) return 'fuse-loop';
  return undefined;
}

/**
 * Decides the transport and logs which one and why. `device` (a forced `/dev/nbdN` or
 * `/dev/loopN`) decides `auto` and must match an explicit choice. Asking for `nbd` where the
 * kernel has no driver fails here, before anything is attached, with the "modprobe nbd" hint.
 */
export function chooseTransport(requested: Transport, log: Logger, device?: string): ResolvedTransport {
  const implied = device === undefined ? undefined : transportOfDevice(device);
  if (device !== undefined && implied === undefined) {
    throw new UsageError(`--device ${device}: expected /dev/nbdN (transport nbd) or /dev/loopN (transport fuse-loop)`);
  }
  if (requested !== 'auto' && implied !== undefined && implied !== requested) {
    throw new UsageError(`--device ${device} needs --transport ${implied}, not ${requested}`);
  }
  const driver = hasNbdDriver();
  let chosen: ResolvedTransport;
  let reason: string;
  if (requested !== 'auto') {
    chosen = requested;
    reason = 'asked for';
  } else if (implied !== undefined) {
    chosen = implied;
    reason = `implied by --device ${device}`;
  } else if (driver) {
    chosen = 'nbd';
    reason = 'the kernel has the nbd driver (/sys/module/nbd or /dev/nbd0 exists)';
  } else {
    chosen = 'fuse-loop';
    reason = 'the kernel has no nbd driver (neither /sys/module/nbd nor /dev/nbd0 exists)';
  }
  if (chosen === 'nbd' && !driver) {
    throw new KernelError({ syscall: 'open', errno: ENOENT, errnoName: 'ENOENT', device: device ?? '/dev/nbd0' }, MODPROBE_HINT);
  }
  log.info({ transport: chosen, requested, reason }, `transport ${chosen}: ${reason}`);
  return chosen;
}
