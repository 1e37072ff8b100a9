/**
 * Child processes for benchmark scenarios: run a tool to completion (timed), and start long-lived
 * servers (r3map-serve, nbdkit) that are always stopped again. Every child started here is killed
 * if the bench process exits without stopping it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import net from 'node:net';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { TimeoutError } from '../errors.js';

/** bin/r3map-serve.js, from dist/src/bench/ or src/bench/. */
export const SERVE_BIN = fileURLToPath(new URL('../../../bin/r3map-serve.js', import.meta.url));
/** Outside tools live in /usr/bin and /usr/sbin on Debian; keep the caller's PATH after them. */
export const TOOL_PATH = ['/usr/bin', ...(process.env.PATH ?? '').split(':'), '/usr/sbin', '/sbin'].filter(Boolean).join(':');

const running = new Set<ChildProcess>();
process.on('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

/** Registers `child` to be SIGKILLed if this process exits while it still runs (bench and test helpers share it). */
export function trackChild(child: ChildProcess): ChildProcess {
  running.add(child);
  child.once('exit', () => running.delete(child));
  return child;
}

const track = trackChild;

/** A port that was free a moment ago on 127.0.0.1. */
export async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

export interface ProcessResult {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
  readonly elapsedMs: number;
}

/** Runs a tool to completion; rejects with its output unless it exits 0. */
export function runProcess(cmd: string, args: readonly string[], options: { readonly timeoutMs?: number; readonly signal?: AbortSignal } = {}): Promise<ProcessResult> {
  return new Promise((resolve, reject) => {
    const started = process.hrtime.bigint();
    const child = track(spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, PATH: TOOL_PATH } }));
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout!.on('data', (d: Buffer) => out.push(d));
    child.stderr!.on('data', (d: Buffer) => err.push(d));
    const kill = (): void => void child.kill('SIGKILL');
    const timer = setTimeout(kill, options.timeoutMs ?? 600_000);
    options.signal?.addEventListener('abort', kill, { once: true });
    child.once('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.once('close', (code) => {
      clearTimeout(timer);
      options.signal?.removeEventListener('abort', kill);
      const elapsedMs = Number(process.hrtime.bigint() - started) / 1e6;
      const result = { code, stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString(), elapsedMs };
      if (code === 0) resolve(result);
      else reject(new Error(`${cmd} ${args.join(' ')} exited with ${code}: ${result.stderr.slice(-2000) || result.stdout.slice(-2000)}`));
    });
  });
}

/** `cmd --version`'s first line, or 'missing'. */
export async function toolVersion(cmd: string): Promise<string> {
  try {
    const r = await runProcess(cmd, ['--version'], { timeoutMs: 10_000 });
    return (r.stdout || r.stderr).split('\n')[0]!.trim();
  } catch {
    return 'missing';
  }
}

export interface Server {
  readonly uri: string;
  /** SIGTERM and wait (then SIGKILL after 15 s); resolves with the exit code. */
  stop(): Promise<number | null>;
}

/** A stop() for `child`: SIGTERM (unless it already ended), SIGKILL after 15 s; resolves with the exit code. */
export function stopper(child: ChildProcess): () => Promise<number | null> {
  const ended = child.exitCode !== null || child.signalCode !== null;
  const exited = ended ? Promise.resolve(child.exitCode) : new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    const kill = setTimeout(() => child.kill('SIGKILL'), 15_000);
    try {
      return await exited;
    } finally {
      clearTimeout(kill);
    }
  };
}

/** Starts r3map-serve; resolves with the first URI it prints. `nodeArgs` go before the script. */
export async function startR3mapServe(args: readonly string[], nodeArgs: readonly string[] = [], timeoutMs = 30_000): Promise<Server> {
  const child = track(spawn(process.execPath, [...nodeArgs, SERVE_BIN, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, R3MAP_LOG_LEVEL: process.env.R3MAP_LOG_LEVEL ?? 'warn' },
  }));
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => void (stderr = (stderr + d.toString()).slice(-8000)));
  const stop = stopper(child);
  const uri = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new TimeoutError(`r3map-serve did not print a URI within ${timeoutMs} ms: ${stderr}`)), timeoutMs);
    createInterface({ input: child.stdout! }).once('line', (line) => {
      clearTimeout(timer);
      resolve(line.trim());
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`r3map-serve exited with ${code} before it was ready: ${stderr}`));
    });
  }).catch(async (err: unknown) => {
    await stop();
    throw err;
  });
  return { uri, stop };
}

/** Starts `nbdkit -U socket <plugin args>`; ready when its pidfile exists. */
export async function startNbdkit(socket: string, pluginArgs: readonly string[], timeoutMs = 30_000): Promise<Server> {
  const pidfile = `${socket}.pid`;
  const child = track(spawn('nbdkit', ['--exit-with-parent', '-f', '-U', socket, '-P', pidfile, ...pluginArgs], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, PATH: TOOL_PATH },
  }));
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => void (stderr = (stderr + d.toString()).slice(-8000)));
  const stop = stopper(child);
  const deadline = Date.now() + timeoutMs;
  while (!existsSync(pidfile)) {
    if (child.exitCode !== null || Date.now() > deadline) {
      await stop();
      throw new Error(`nbdkit ${pluginArgs.join(' ')} did not start: ${stderr}`);
    }
    await sleep(20);
  }
  return { uri: `nbd+unix:///?socket=${socket}`, stop };
}
