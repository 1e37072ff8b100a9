/**
 * What sysfs says about NBD devices. `/sys/block/nbdX/size` is in 512-byte sectors and 0 while
 * the device is not connected; `/sys/block/nbdX/pid` exists only while a connection is configured
 * and holds the kernel thread id of the thread inside NBD_DO_IT (it outlives that thread when the
 * device is still open elsewhere, e.g. by a mount, after its owner died).
 */
import { access, readFile, readdir } from 'node:fs/promises';

export const SECTOR_BYTES = 512;

const SYS_BLOCK = '/sys/block';
const NBD_NAME = /^nbd(\d+)$/;
const NBD_PATH = /^\/dev\/nbd(\d+)$/;

export interface NbdSysfsState {
  /** /sys/block/nbdX exists. */
  readonly exists: boolean;
  /** Capacity in bytes; 0 when not connected. */
  readonly sizeBytes: number;
  /** The NBD_DO_IT thread id, while a connection is configured. */
  readonly pid: number | undefined;
}

/** `/dev/nbd3` -> 3; anything else -> undefined. */
export function nbdIndexOf(path: string): number | undefined {
  const m = NBD_PATH.exec(path);
  return m === null ? undefined : Number(m[1]);
}

export function nbdPath(index: number): string {
  return `/dev/nbd${index}`;
}

/** The nbd module is loaded (built-in drivers show up here too). */
export async function nbdModuleLoaded(): Promise<boolean> {
  return exists('/sys/module/nbd');
}

/** Indexes of the NBD devices the kernel has, ascending. */
export async function listNbdIndexes(): Promise<number[]> {
  let names: string[];
  try {
    names = await readdir(SYS_BLOCK);
  } catch {
    return [];
  }
  const indexes: number[] = [];
  for (const name of names) {
    const m = NBD_NAME.exec(name);
    if (m !== null) indexes.push(Number(m[1]));
  }
  return indexes.sort((a, b) => a - b);
}

/** Capacity in bytes, or undefined when the device does not exist. */
export async function readNbdSizeBytes(index: number): Promise<number | undefined> {
  const text = await readFile(`${SYS_BLOCK}/nbd${index}/size`, 'latin1').catch(() => undefined);
  return text === undefined ? undefined : Number(text.trim()) * SECTOR_BYTES;
}

export async function readNbdState(index: number): Promise<NbdSysfsState> {
  const sizeBytes = await readNbdSizeBytes(index);
  if (sizeBytes === undefined) return { exists: false, sizeBytes: 0, pid: undefined };
  const pidText = await readFile(`${SYS_BLOCK}/nbd${index}/pid`, 'latin1').catch(() => undefined);
  const pid = pidText === undefined ? undefined : Number(pidText.trim());
  return { exists: true, sizeBytes, pid: pid !== undefined && Number.isSafeInteger(pid) && pid > 0 ? pid : undefined };
}

/** A thread id is alive (threads are reachable under /proc even when not listed). */
export async function threadAlive(tid: number): Promise<boolean> {
  return exists(`/proc/${tid}`);
}

async function exists(path: string): Promise<boolean> {
  try {
    await access(path);
    return true;
  } catch {
    return false;
  }
}
