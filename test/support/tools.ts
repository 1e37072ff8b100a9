/**
 * Outside tools for tests: `requireTool()` (skip locally, fail under R3MAP_STRICT=1 or CI=true),
 * `runTool()` (bounded child runs), and spawners for r3map-serve, nbdkit and nbd-server. Every
 * spawned process is tracked: `stop()` ends it, and anything still running when the test process
 * exits is killed, so nothing is left behind.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants as fsConstants, existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { after, before, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { TOOL_PATH, freePort, stopper, trackChild } from '../../src/bench/processes.js';
import type { NbdAddress } from '../../src/nbd-client/client.js';

/** The project root (this file runs from dist/test/support/). */
export const PROJECT_ROOT = fileURLToPath(new URL('../../../', import.meta.url));
export const SERVE_BIN = path.join(PROJECT_ROOT, 'bin', 'r3map-serve.js');

/** PATH with the sbin directories (nbd-server lives there) and Debian's python first (nbdsh). */
export { TOOL_PATH };

export function strictTools(): boolean {
  return process.env.R3MAP_STRICT === '1' || process.env.CI === 'true';
}

/** The full path of `name` on TOOL_PATH, or undefined. */
export function findTool(name: string): string | undefined {
  for (const dir of TOOL_PATH.split(':')) {
    const full = path.join(dir, name);
    try {
      accessSync(full, fsConstants.X_OK);
      return full;
    } catch {
      // not here
    }
  }
  return undefined;
}

/**
 * True when `name` is installed. Otherwise skips the test (`t.skip('needs name')`) and returns
 * false, or throws under R3MAP_STRICT=1 / CI=true, where a missing referee is a failure.
 */
export function requireTool(t: TestContext, name: string): boolean {
  if (findTool(name) !== undefined) return true;
  if (strictTools()) throw new Error(`${name} is not installed (R3MAP_STRICT/CI: run scripts/install-test-tools.sh)`);
  t.skip(`needs ${name}`);
  return false;
}

export async function makeTempDir(prefix = 'r3map-test-'): Promise<string> {
  return mkdtemp(path.join(os.tmpdir(), prefix));
}

export async function removeDir(dir: string | undefined): Promise<void> {
  if (dir !== undefined) await rm(dir, { recursive: true, force: true });
}

/** Every child is tracked by the product's tracker: killed if the test process exits first. */
const track = trackChild;

export interface RunResult {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
  readonly timedOut: boolean;
}

export interface RunOptions {
  /** Killed (SIGKILL) after this many ms. Default 60000. */
  readonly timeoutMs?: number;
  readonly env?: NodeJS.ProcessEnv;
  readonly cwd?: string;
}

/** Runs a tool to completion with TOOL_PATH; never rejects for a non-zero exit. */
export function runTool(cmd: string, args: readonly string[], options: RunOptions = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = track(spawn(cmd, args, {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, PATH: TOOL_PATH, ...options.env },
      ...(options.cwd !== undefined ? { cwd: options.cwd } : {}),
    }));
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout!.on('data', (d: Buffer) => out.push(d));
    child.stderr!.on('data', (d: Buffer) => err.push(d));
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, options.timeoutMs ?? 60_000);
    child.once('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString(), timedOut });
    });
  });
}

/** A message for assertions: the command, its exit and its output. */
export function describeRun(cmd: string, args: readonly string[], r: RunResult): string {
  return `${cmd} ${args.join(' ')} -> exit ${r.code}${r.signal ? ` (${r.signal})` : ''}${r.timedOut ? ' (timed out)' : ''}\n` +
    `stdout: ${r.stdout.slice(-2000)}\nstderr: ${r.stderr.slice(-2000)}`;
}

/** Runs a tool and throws (with its output) unless it exits 0. */
export async function runOk(cmd: string, args: readonly string[], options: RunOptions = {}): Promise<RunResult> {
  const r = await runTool(cmd, args, options);
  if (r.code !== 0) throw new Error(describeRun(cmd, args, r));
  return r;
}

/** nbd://host:port/name and nbd+unix:///name?socket=/path, as the CLI prints them. */
export function parseNbdUri(uri: string): { address: NbdAddress; exportName: string } {
  const url = new URL(uri);
  const exportName = decodeURIComponent(url.pathname.replace(/^\//, ''));
  if (url.protocol === 'nbd+unix:' || url.protocol === 'nbds+unix:') {
    const socket = url.searchParams.get('socket');
    if (socket === null) throw new Error(`${uri}: no ?socket=`);
    return { address: { path: socket }, exportName };
  }
  if (url.protocol !== 'nbd:' && url.protocol !== 'nbds:') throw new Error(`${uri}: not an nbd(s):// or nbd(s)+unix:// URI`);
  return { address: { host: url.hostname.replace(/^\[|\]$/g, ''), port: Number(url.port || 10809) }, exportName };
}

export interface Target {
  readonly kind: 'tcp' | 'unix';
  readonly uri: string;
  readonly address: NbdAddress;
  readonly exportName: string;
}

export interface ServeHandle {
  /** One per listener, in the order asked for. */
  readonly targets: readonly Target[];
  readonly child: ChildProcess;
  /** What r3map-serve wrote on stderr so far (its log). */
  stderr(): string;
  /** SIGTERM, then waits for the exit; resolves with the exit code (0 expected). */
  stop(): Promise<number | null>;
}

export interface ServeOptions {
  /** Listeners to open, each printed as one URI. Default both. */
  readonly listen?: readonly ('tcp' | 'unix')[];
  /** Directory for Unix sockets (a temp dir the caller removes). */
  readonly dir: string;
  /** Bound on startup. Default 20000 ms. */
  readonly timeoutMs?: number;
}

let socketSeq = 0;

/** Starts `r3map-serve <args>` with the listeners asked for and waits for their URIs. */
export async function startServe(args: readonly string[], options: ServeOptions): Promise<ServeHandle> {
  if (!existsSync(path.join(PROJECT_ROOT, 'dist', 'src', 'cli', 'serve.js'))) throw new Error('dist/src/cli/serve.js is missing: build first');
  const kinds = options.listen ?? ['tcp', 'unix'];
  const listenArgs = kinds.flatMap((k) => ['--nbd-listen', k === 'tcp' ? '127.0.0.1:0' : `unix:${path.join(options.dir, `serve-${process.pid}-${++socketSeq}.sock`)}`]);
  const child = track(spawn(process.execPath, [SERVE_BIN, ...args, ...listenArgs], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, R3MAP_LOG_LEVEL: process.env.R3MAP_LOG_LEVEL ?? 'warn' },
  }));
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-20_000)));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const uris: string[] = [];
  const lines = createInterface({ input: child.stdout! });
  const ready = new Promise<void>((resolve, reject) => {
    lines.on('line', (line) => {
      if (/^nbds?(\+unix)?:\/\//.test(line.trim())) uris.push(line.trim());
      if (uris.length === kinds.length) resolve();
    });
    void exited.then((code) => reject(new Error(`r3map-serve exited with ${code} before it was ready\nstderr: ${stderr}`)));
  });
  const timeoutMs = options.timeoutMs ?? 20_000;
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  try {
    await ready;
  } catch (err) {
    child.kill('SIGKILL');
    throw err;
  } finally {
    clearTimeout(timer);
  }
  const stop = stopper(child);
  const targets = uris.map((uri, i) => ({ kind: kinds[i]!, uri, ...parseNbdUri(uri) }));
  return { targets, child, stderr: () => stderr, stop };
}

export interface NbdkitHandle {
  readonly socket: string;
  readonly uri: string;
  readonly address: NbdAddress;
  stop(): Promise<void>;
}

/** Starts `nbdkit <plugin args>` on a Unix socket in `dir`; ready when its pidfile appears. */
export async function startNbdkit(pluginArgs: readonly string[], dir: string, timeoutMs = 20_000): Promise<NbdkitHandle> {
  const n = ++socketSeq;
  const socket = path.join(dir, `nbdkit-${n}.sock`);
  const pidfile = path.join(dir, `nbdkit-${n}.pid`);
  const nbdkit = findTool('nbdkit') ?? 'nbdkit';
  const child = track(spawn(nbdkit, ['--exit-with-parent', '-f', '-U', socket, '-P', pidfile, ...pluginArgs], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, PATH: TOOL_PATH },
  }));
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-20_000)));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const deadline = Date.now() + timeoutMs;
  while (!existsSync(pidfile)) {
    if (child.exitCode !== null || Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`nbdkit ${pluginArgs.join(' ')} did not start\nstderr: ${stderr}`);
    }
    await sleep(20);
  }
  return {
    socket,
    uri: `nbd+unix:///?socket=${socket}`,
    address: { path: socket },
    stop: async () => {
      child.kill('SIGTERM');
      const kill = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(kill);
    },
  };
}

export { freePort };

export interface NbdServerExport {
  readonly name: string;
  /** The backing file; created when missing and truncated (sparse) to `size` bytes. */
  readonly file: string;
  readonly size: number;
  /** Extra `key = value` lines for the export section, e.g. { flush: 'true', trim: 'true' }. */
  readonly settings?: Readonly<Record<string, string>>;
}

export interface NbdServerHandle {
  readonly address: { readonly host: string; readonly port: number };
  /** Resolves when nbd-server exits (in -d mode it serves one connection, then exits). */
  readonly exited: Promise<void>;
  stop(): Promise<void>;
}

/**
 * Starts Debian's nbd-server in the foreground (`-C config -d`) on 127.0.0.1 and a free port.
 * In -d mode it serves exactly ONE connection and exits, so start one per connection. Readiness
 * is read from /proc/net/tcp (a probing connect would use up that one connection).
 */
export async function startNbdServer(exports: readonly NbdServerExport[], dir: string, timeoutMs = 20_000): Promise<NbdServerHandle> {
  const port = await freePort();
  const lines = ['[generic]', 'listenaddr = 127.0.0.1', `port = ${port}`, 'allowlist = true'];
  for (const e of exports) {
    // nbd-server cannot expand a file it opens read-only: create it at full size.
    if (!existsSync(e.file)) await writeFile(e.file, '');
    await truncate(e.file, e.size);
    lines.push(`[${e.name}]`, `exportname = ${e.file}`, `filesize = ${e.size}`);
    for (const [k, v] of Object.entries(e.settings ?? {})) lines.push(`${k} = ${v}`);
  }
  const config = path.join(dir, `nbd-server-${++socketSeq}.conf`);
  await writeFile(config, `${lines.join('\n')}\n`);
  const child = track(spawn(findTool('nbd-server') ?? 'nbd-server', ['-C', config, '-d'], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, PATH: TOOL_PATH },
  }));
  let output = '';
  const collect = (d: Buffer): void => void (output = (output + d.toString()).slice(-20_000));
  child.stdout!.on('data', collect);
  child.stderr!.on('data', collect);
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const deadline = Date.now() + timeoutMs;
  while (!(await isListening(port))) {
    if (child.exitCode !== null || Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`nbd-server did not listen on 127.0.0.1:${port}\noutput: ${output}`);
    }
    await sleep(20);
  }
  return {
    address: { host: '127.0.0.1', port },
    exited,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      const kill = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(kill);
    },
  };
}

/** True when /proc/net/tcp shows a socket in LISTEN on 127.0.0.1:port. */
async function isListening(port: number): Promise<boolean> {
  const table = await readFile('/proc/net/tcp', 'utf8');
  const local = `0100007F:${port.toString(16).toUpperCase().padStart(4, '0')}`;
  return table.split('\n').some((row) => {
    const cols = row.trim().split(/\s+/);
    return cols[1] === local && cols[3] === '0A';
  });
}

export interface ServeFixture {
  /** The running server's listeners (after before() ran). */
  targets(): readonly Target[];
  /** The temp dir (sockets, images); removed in after(). */
  dir(): string;
  handle(): ServeHandle;
}

/**
 * Registers before()/after() hooks in the current suite: a temp dir, `r3map-serve <args>` on
 * 127.0.0.1 and a Unix socket (or the listeners asked for), and in after() a SIGTERM whose exit
 * code must be 0. `args` may be a function of the temp dir (for file backends).
 */
export function serveFixture(args: readonly string[] | ((dir: string) => readonly string[]), options: Omit<ServeOptions, 'dir'> = {}): ServeFixture {
  let dir: string | undefined;
  let serve: ServeHandle | undefined;
  before(async () => {
    dir = await makeTempDir('r3map-conf-');
    serve = await startServe(typeof args === 'function' ? args(dir) : args, { ...options, dir });
  });
  after(async () => {
    try {
      if (serve !== undefined) {
        const code = await serve.stop();
        assert.equal(code, 0, `r3map-serve exited with ${code} after SIGTERM\nstderr: ${serve.stderr().slice(-4000)}`);
      }
    } finally {
      await removeDir(dir);
    }
  });
  const need = <T>(v: T | undefined): T => {
    if (v === undefined) throw new Error('r3map-serve fixture is not running (before() failed?)');
    return v;
  };
  return { targets: () => need(serve).targets, dir: () => need(dir), handle: () => need(serve) };
}
