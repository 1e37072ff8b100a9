/**
 * Running r3map's commands (r3map-mount, r3map-serve) as child processes in tests: start one, wait
 * (bounded) for its first stdout line (the device path, or the URI a server listens on), and stop
 * it with a signal (bounded, SIGKILL after the timeout). Every child still running when the test
 * process exits is killed. Also what every r3map-mount test file does around that: the
 * environment and private temp dir of its runs, the cleanup after it, and (kernel tests) the
 * check that an NBD device was released.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { nbdIndexOf, readNbdState } from '../../src/kernel/sysfs.js';
import { mountsUnder } from './fuse-loop.js';
import { PROJECT_ROOT, removeDir, runTool, type RunResult } from './tools.js';

export const MOUNT_BIN = path.join(PROJECT_ROOT, 'bin', 'r3map-mount.js');

export interface Running {
  /** The first line printed on stdout. */
  readonly line: string;
  readonly child: ChildProcess;
  /** Everything printed on stdout so far. */
  stdout(): string;
  stderr(): string;
  /** Sends `signal` (unless the process is gone), then resolves with the exit code, or the signal that ended it. */
  stop(signal?: NodeJS.Signals): Promise<number | NodeJS.Signals>;
}

/** A running r3map-mount: its first line is the device path. */
export type Mounted = Running & { readonly device: string };

export interface StartOptions {
  readonly env?: NodeJS.ProcessEnv;
  /** How long the first line may take; default 30 s. */
  readonly startTimeoutMs?: number;
  /** How long stop() waits before SIGKILL; default 30 s. */
  readonly stopTimeoutMs?: number;
}

const running = new Set<ChildProcess>();
process.on('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

/** SIGKILLs every child started here that is still running (for an after() hook). */
export function killAll(): void {
  for (const child of running) child.kill('SIGKILL');
}

/** Starts `node BIN ARGS` and waits for its first stdout line. */
export async function start(bin: string, args: readonly string[], options: StartOptions = {}): Promise<Running> {
  const { startTimeoutMs = 30_000, stopTimeoutMs = 30_000 } = options;
  const child = spawn(process.execPath, [bin, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: options.env ?? process.env });
  running.add(child);
  let stdout = '';
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => void (stderr = (stderr + d.toString()).slice(-40_000)));
  const exited = new Promise<number | NodeJS.Signals>((resolve) => child.once('exit', (code, signal) => {
    running.delete(child);
    resolve(code ?? signal ?? 'SIGKILL');
  }));
  const name = path.basename(bin);
  const line = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${name} printed nothing within ${startTimeoutMs} ms\nstderr: ${stderr}`)), startTimeoutMs);
    createInterface({ input: child.stdout! }).on('line', (l) => {
      stdout += `${l}\n`;
      clearTimeout(timer);
      resolve(l);
    });
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`${name} exited with ${code} before it was ready\nstderr: ${stderr}`));
    });
  }).catch((err: unknown) => {
    child.kill('SIGKILL');
    throw err;
  });
  const stop = async (signal: NodeJS.Signals = 'SIGTERM'): Promise<number | NodeJS.Signals> => {
    if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    const timer = setTimeout(() => child.kill('SIGKILL'), stopTimeoutMs);
    try {
      return await exited;
    } finally {
      clearTimeout(timer);
    }
  };
  return { line, child, stdout: () => stdout, stderr: () => stderr, stop };
}

/** Starts r3map-mount and waits (bounded) for the device path, its first line on stdout. */
export async function startMount(args: readonly string[], options: StartOptions = {}): Promise<Mounted> {
  const r = await start(MOUNT_BIN, args, options);
  return Object.assign(r, { device: r.line });
}

export interface RunMountOptions {
  readonly env?: NodeJS.ProcessEnv;
  /** Default 30 s. */
  readonly timeoutMs?: number;
}

/** Runs r3map-mount to its end (bad input, --disconnect): exit code, stdout, stderr. */
export function runMount(args: readonly string[], options: RunMountOptions = {}): Promise<RunResult> {
  return runTool(process.execPath, [MOUNT_BIN, ...args], { timeoutMs: options.timeoutMs ?? 30_000, env: options.env ?? process.env });
}

/**
 * The environment of a test's r3map runs: info logs (the tests read them) and, with `tmpdir`,
 * TMPDIR there, so that the fuse-loop dirs r3map makes are that test file's alone.
 */
export function mountEnv(tmpdir?: string): NodeJS.ProcessEnv {
  return { ...process.env, R3MAP_LOG_LEVEL: 'info', ...(tmpdir !== undefined ? { TMPDIR: tmpdir } : {}) };
}

/**
 * After a test file (its after() hook): SIGKILLs the r3map commands still running, unmounts
 * (lazily) whatever is still mounted below `dir`, and removes `dir`.
 */
export async function cleanUpMountDir(dir: string | undefined): Promise<void> {
  killAll();
  if (dir === undefined) return;
  for (const m of await mountsUnder(dir)) await runTool('umount', ['-l', m]);
  await removeDir(dir);
}

/**
 * Kernel tests: `device` (/dev/nbdN) is released, size 0 and no pid file. Polls up to `settleMs`
 * (default 10 s): the kernel's teardown may lag its owner's exit.
 */
export async function assertNbdFree(device: string, settleMs = 10_000): Promise<void> {
  const index = nbdIndexOf(device)!;
  const deadline = performance.now() + settleMs;
  let state = await readNbdState(index);
  while ((state.sizeBytes !== 0 || state.pid !== undefined) && performance.now() < deadline) {
    await sleep(20);
    state = await readNbdState(index);
  }
  assert.equal(state.sizeBytes, 0, `${device} still has a size (/sys/block/nbd${index}/size)`);
  assert.equal(state.pid, undefined, `${device} still has a pid file (/sys/block/nbd${index}/pid)`);
}

/** Kernel tests: SIGTERM gives exit 0, the device was printed once on stdout, and it is released. */
export async function stopAndAssertNbdFree(m: Running): Promise<void> {
  assert.equal(await m.stop(), 0, m.stderr().slice(-4000));
  assert.equal(m.stdout(), `${m.line}\n`);
  await assertNbdFree(m.line);
}
