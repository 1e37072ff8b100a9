/**
 * Running r3map's commands (r3map-mount, r3map-serve) as child processes in tests: start one, wait
 * (bounded) for its first stdout line (the device path, or the URI a server listens on), and stop
 * it with a signal (bounded, SIGKILL after the timeout). Every child still running when the test
 * process exits is killed.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { PROJECT_ROOT } from './tools.js';

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
