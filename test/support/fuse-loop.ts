/**
 * Helpers for tests of the fuse-loop transport on the host: prerequisites (root, /dev/fuse,
 * nbdfuse, losetup, fusermount3), the kernel's view of loop devices and FUSE mounts, and a check
 * that nothing is left under a test's private TMPDIR (r3map puts its fuse-loop dirs there).
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { readdir, readFile, truncate, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { TestContext } from 'node:test';
import { requireTool, runOk, strictTools } from './tools.js';

/** True when fuse-loop can run here; otherwise skips (or throws under R3MAP_STRICT/CI). */
export function requireFuseLoop(t: TestContext): boolean {
  for (const tool of ['nbdfuse', 'losetup', 'fusermount3']) if (!requireTool(t, tool)) return false;
  const missing = process.getuid?.() !== 0 ? 'root' : !existsSync('/dev/fuse') ? '/dev/fuse' : !existsSync('/dev/loop-control') ? '/dev/loop-control' : undefined;
  if (missing === undefined) return true;
  if (strictTools()) throw new Error(`fuse-loop tests need ${missing}`);
  t.skip(`needs ${missing}`);
  return false;
}

export interface LoopDevice {
  readonly name: string;
  readonly backFile: string;
  readonly ro: boolean;
}

export async function loopDevices(): Promise<LoopDevice[]> {
  const r = await runOk('losetup', ['--json']);
  if (r.stdout.trim() === '') return [];
  const json = JSON.parse(r.stdout) as { loopdevices: Array<{ name: string; 'back-file': string | null; ro: boolean }> };
  return json.loopdevices.map((d) => ({ name: d.name, backFile: d['back-file'] ?? '', ro: d.ro }));
}

/** The loop device `name`, if attached. */
export async function loopDevice(name: string): Promise<LoopDevice | undefined> {
  return (await loopDevices()).find((d) => d.name === name);
}

/** Mount points (from /proc/mounts) under `dir`. */
export async function mountsUnder(dir: string): Promise<string[]> {
  const mounts = await readFile('/proc/mounts', 'utf8');
  return mounts.split('\n').map((line) => line.split(' ')[1] ?? '').filter((m) => m.startsWith(`${dir}/`));
}

/** Everything r3map could have left under `dir`: mounts, loop devices backed there, fuse-loop dirs. */
export async function leftoversUnder(dir: string): Promise<string[]> {
  const mounts = (await mountsUnder(dir)).map((m) => `mount ${m}`);
  const loops = (await loopDevices()).filter((d) => d.backFile.startsWith(`${dir}/`)).map((d) => `loop ${d.name} -> ${d.backFile}`);
  const dirs = (await readdir(dir).catch(() => [] as string[])).filter((e) => e.startsWith('r3map-fuse-loop-')).map((e) => `dir ${e}`);
  return [...mounts, ...loops, ...dirs];
}

/** Polls `check` until it returns true; false after `timeoutMs`. */
export async function waitUntil(check: () => Promise<boolean>, timeoutMs = 10_000, intervalMs = 50): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return true;
    if (Date.now() > deadline) return false;
    await sleep(intervalMs);
  }
}

/**
 * Runs `fn` with a loop device r3map did not attach (losetup of a 1 MiB file plain.img under
 * `dir`): for the checks that r3map refuses to detach it. Asserts that the device is still
 * attached to that file afterwards, then detaches it.
 */
export async function withForeignLoopDevice(dir: string, fn: (device: string) => Promise<void>): Promise<void> {
  const file = path.join(dir, 'plain.img');
  await writeFile(file, '');
  await truncate(file, 1024 * 1024);
  const device = (await runOk('losetup', ['--find', '--show', file])).stdout.trim();
  try {
    await fn(device);
    assert.equal((await loopDevice(device))?.backFile, file, `${device} is still attached to ${file}`);
  } finally {
    await runOk('losetup', ['-d', device]);
  }
}
