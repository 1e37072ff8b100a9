/**
 * The fuse-loop transport, for kernels without the nbd driver: our NBD server listens on a Unix
 * socket in a private temp dir (mode 0700), `nbdfuse` exposes the export as the file
 * `<dir>/mnt/r3map`, and `losetup` turns that file into `/dev/loopN`.
 *
 * Guarantees: `attachFuseLoop()` resolves only when the loop device exists with the expected
 * size; when any step fails, the steps already done are undone (nothing stays mounted or
 * attached). `detach()` is idempotent and reports every failed step in one AggregateError. A
 * detached watchdog (fuse-loop-watchdog.ts) cleans up if this process dies without detaching.
 * A loop device is only ever detached when its back-file is one of our FUSE files
 * (`isFuseLoopBackFile`), so a device that is not ours is never touched.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { TimeoutError, UsageError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import { FuseLoopWatchdog } from './fuse-loop-watchdog.js';
import { runTool, TOOL_ENV_PATH, toolError } from './run-tool.js';
import type { AttachedDevice } from './transport.js';

/** Our temp dirs start with this; a loop back-file inside one is ours. */
export const FUSE_LOOP_DIR_PREFIX = 'r3map-fuse-loop-';
const FILE_NAME = 'r3map';
const BACK_FILE = new RegExp(`/${FUSE_LOOP_DIR_PREFIX}[A-Za-z0-9]+/mnt/${FILE_NAME}(?: \\(deleted\\))?$`);
const POLL_MS = 20;
const UNMOUNT_TRIES = 30;
const NBDFUSE_EXIT_MS = 5000;

/** Something our NBD server can be told to listen with (an NbdServer). */
export interface FuseLoopListener {
  listen(address: { readonly path: string }): Promise<string>;
}

export interface FuseLoopOptions {
  /** Expected size in bytes; the FUSE file must show it. */
  readonly size: number;
  /** nbdfuse -r and losetup --read-only. */
  readonly readOnly?: boolean;
  /** Export to ask for; default '' (the server's default export). */
  readonly exportName?: string;
  /** Ask for loop direct I/O (no double page cache); default true. Whether it took is `directIo`. */
  readonly directIo?: boolean;
  /** A specific /dev/loopN instead of the first free one. */
  readonly device?: string;
  /** Bound on nbdfuse becoming ready; default 10000. */
  readonly readyTimeoutMs?: number;
  readonly log?: Logger;
}

/** A /dev/loopN; `closed` resolves with an Error if nbdfuse dies before `detach()`. */
export interface FuseLoopDevice extends AttachedDevice {
  /** The private temp dir (socket, FUSE mount point). */
  readonly dir: string;
  /** Whether the loop device does direct I/O on the FUSE file. */
  readonly directIo: boolean;
}

/** True when a loop back-file is one of our nbdfuse files. */
export function isFuseLoopBackFile(backFile: string): boolean {
  return BACK_FILE.test(backFile.trim());
}

/**
 * Attaches `target` (our NBD server, told to listen on a private socket, or the path of a Unix
 * socket something already serves) as a loop device.
 */
export async function attachFuseLoop(target: FuseLoopListener | string, options: FuseLoopOptions): Promise<FuseLoopDevice> {
  const log = (options.log ?? silentLogger).child({ component: 'fuse-loop' });
  if (options.device !== undefined && !/^\/dev\/loop\d+$/.test(options.device)) {
    throw new UsageError(`--device ${options.device}: the fuse-loop transport needs /dev/loopN`);
  }
  const dir = await mkdtemp(path.join(tmpdir(), FUSE_LOOP_DIR_PREFIX));
  const attachment = new FuseLoopAttachment(dir, log);
  try {
    await attachment.attach(target, options);
    return attachment;
  } catch (err) {
    const undo = await attachment.teardown();
    if (undo.length === 0) throw err;
    throw new AggregateError([err, ...undo], `${(err as Error).message} (and ${undo.length} cleanup step(s) failed)`, { cause: err });
  }
}

class FuseLoopAttachment implements FuseLoopDevice {
  readonly dir: string;
  readonly closed: Promise<Error | undefined>;
  readonly #log: Logger;
  readonly #mnt: string;
  readonly #file: string;
  #resolveClosed!: (err: Error | undefined) => void;
  #watchdog: FuseLoopWatchdog | undefined;
  #nbdfuse: ChildProcess | undefined;
  #nbdfuseExited: Promise<void> = Promise.resolve();
  #nbdfuseStderr = '';
  #loop: string | undefined;
  #directIo = false;
  #detaching: Promise<void> | undefined;

  constructor(dir: string, log: Logger) {
    this.dir = dir;
    this.#log = log;
    this.#mnt = path.join(dir, 'mnt');
    this.#file = path.join(this.#mnt, FILE_NAME);
    this.closed = new Promise((resolve) => (this.#resolveClosed = resolve));
  }

  get path(): string {
    return this.#loop ?? '';
  }

  get directIo(): boolean {
    return this.#directIo;
  }

  /** The stages, in order; each one's undo is in teardown(). */
  async attach(target: FuseLoopListener | string, options: FuseLoopOptions): Promise<void> {
    await mkdir(this.#mnt, { mode: 0o700 });
    this.#watchdog = FuseLoopWatchdog.start(this.dir, this.#file, this.#log);
    const socket = typeof target === 'string' ? target : path.join(this.dir, 'nbd.sock');
    if (typeof target !== 'string') await target.listen({ path: socket });
    await this.#startNbdfuse(socket, options);
    await this.#losetup(options);
    this.#watchdog.watchLoop(this.#loop!);
    this.#log.info({ device: this.#loop, file: this.#file, directIo: this.#directIo }, `fuse-loop device ${this.#loop} ready`);
  }

  async #startNbdfuse(socket: string, options: FuseLoopOptions): Promise<void> {
    const pidfile = path.join(this.dir, 'nbdfuse.pid');
    const uri = `nbd+unix:///${encodeURIComponent(options.exportName ?? '')}?socket=${socket}`;
    const args = [...(options.readOnly ? ['-r'] : []), '-P', pidfile, this.#file, uri];
    const child = spawn('nbdfuse', args, { detached: true, stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, PATH: TOOL_ENV_PATH } });
    this.#nbdfuse = child;
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (this.#nbdfuseStderr = (this.#nbdfuseStderr + d).slice(-4096)));
    const spawnFailed = new Promise<Error>((resolve) => child.once('error', resolve));
    this.#nbdfuseExited = new Promise<void>((resolve) => child.once('close', () => resolve())).then(() => this.#onNbdfuseExit());
    const exitedEarly = Promise.race([spawnFailed, this.#nbdfuseExited.then(() => undefined)]);
    this.#log.debug({ args }, 'nbdfuse started');
    const deadline = Date.now() + (options.readyTimeoutMs ?? 10_000);
    for (;;) {
      const size = await stat(pidfile).then(() => stat(this.#file)).then((s) => s.size, () => undefined);
      if (size !== undefined) {
        if (size !== options.size) throw new UsageError(`nbdfuse shows ${size} bytes, expected ${options.size}`);
        return;
      }
      const early = await Promise.race([exitedEarly, sleep(POLL_MS, 'wait')]);
      if (early !== 'wait') {
        const why = early instanceof Error ? early.message : this.#nbdfuseStderr.trim() || `exit ${child.exitCode}`;
        throw toolError('nbdfuse', { code: child.exitCode, stdout: '', stderr: why }, undefined, 'is libnbd-bin installed and /dev/fuse available?');
      }
      if (Date.now() > deadline) throw new TimeoutError(`nbdfuse did not show ${this.#file} within ${options.readyTimeoutMs ?? 10_000} ms`);
    }
  }

  async #losetup(options: FuseLoopOptions): Promise<void> {
    const args = [
      '--show',
      ...(options.readOnly ? ['--read-only'] : []),
      `--direct-io=${options.directIo === false ? 'off' : 'on'}`,
      ...(options.device === undefined ? ['--find'] : [options.device]),
      this.#file,
    ];
    const result = await runTool('losetup', args);
    const device = result.stdout.trim().split('\n').pop() ?? '';
    if (result.code !== 0 || !/^\/dev\/loop\d+$/.test(device)) {
      const hint = options.device === undefined ? 'no free loop device?' : 'the device is in use; pick another or leave out --device';
      throw toolError('losetup', result, options.device, hint);
    }
    this.#loop = device;
    const dio = await readFile(`/sys/block/${path.basename(device)}/loop/dio`, 'utf8').catch(() => '0');
    this.#directIo = dio.trim() === '1';
    if (options.directIo !== false && !this.#directIo) this.#log.warn({ device }, 'loop direct I/O was refused; the page cache is doubled');
  }

  #onNbdfuseExit(): void {
    if (this.#detaching !== undefined) return;
    const err = new Error(`nbdfuse exited unexpectedly (code ${this.#nbdfuse?.exitCode}): ${this.#nbdfuseStderr.trim()}`);
    this.#log.error({ err }, err.message);
    this.#resolveClosed(err);
  }

  detach(): Promise<void> {
    this.#detaching ??= this.teardown().then((errors) => {
      this.#resolveClosed(undefined);
      if (errors.length > 0) throw new AggregateError(errors, `detaching ${this.path || this.dir} failed: ${errors.map((e) => (e as Error).message).join('; ')}`);
      this.#log.info({ device: this.#loop }, 'fuse-loop device detached');
    });
    return this.#detaching;
  }

  /** Undoes whatever attach() did, in reverse; returns every failure. */
  async teardown(): Promise<unknown[]> {
    this.#detaching ??= Promise.resolve();
    const errors: unknown[] = [];
    const step = async (fn: () => Promise<void>): Promise<void> => {
      try {
        await fn();
      } catch (err) {
        this.#log.error({ err }, `fuse-loop teardown: ${(err as Error).message}`);
        errors.push(err);
      }
    };
    if (this.#loop !== undefined) await step(() => detachLoop(this.#loop!, this.#log));
    await step(() => unmountFuse(this.#mnt, this.#log));
    await step(() => this.#waitNbdfuse());
    // A mount that appeared after the first unmount (nbdfuse was slow to start) goes too.
    await step(() => unmountFuse(this.#mnt, this.#log));
    if (this.#watchdog !== undefined) await step(() => this.#watchdog!.disarm());
    await step(async () => {
      if (!(await isMounted(this.#mnt))) await rm(this.dir, { recursive: true, force: true });
    });
    return errors;
  }

  async #waitNbdfuse(): Promise<void> {
    const child = this.#nbdfuse;
    if (child === undefined || child.exitCode !== null || child.signalCode !== null) return;
    // Unmounted (or never mounted) but still running: FUSE's handler unmounts and exits on SIGTERM.
    if (!(await isMounted(this.#mnt))) child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), NBDFUSE_EXIT_MS);
    try {
      await this.#nbdfuseExited;
    } finally {
      clearTimeout(timer);
    }
  }
}

async function isMounted(mnt: string): Promise<boolean> {
  const mounts = await readFile('/proc/mounts', 'utf8');
  return mounts.split('\n').some((line) => line.split(' ')[1] === mnt);
}

/** The back-file of a loop device ('' when it is not attached). */
export async function loopBackFile(device: string): Promise<string> {
  const result = await runTool('losetup', ['--noheadings', '--output', 'BACK-FILE', device]);
  if (result.code !== 0) throw toolError('losetup', result, device);
  return result.stdout.trim();
}

/** Detaches `device` if (and only if) it is backed by one of our FUSE files. */
async function detachLoop(device: string, log: Logger): Promise<void> {
  const backFile = await loopBackFile(device);
  if (!isFuseLoopBackFile(backFile)) {
    log.warn({ device, backFile }, `${device} is no longer backed by our file; leaving it alone`);
    return;
  }
  const result = await runTool('losetup', ['-d', device]);
  if (result.code !== 0) throw toolError('losetup -d', result, device);
}

/** Unmounts the FUSE mount point; retries while the loop device lets go, then unmounts lazily and says so. */
async function unmountFuse(mnt: string, log: Logger): Promise<void> {
  for (let i = 0; i < UNMOUNT_TRIES && (await isMounted(mnt)); i++) {
    const result = await runTool('fusermount3', ['-u', mnt]);
    if (result.code === 0) return;
    log.debug({ mnt, stderr: result.stderr.trim() }, 'fusermount3 -u failed; retrying');
    await sleep(100);
  }
  if (!(await isMounted(mnt))) return;
  const lazy = await runTool('fusermount3', ['-u', '-z', mnt]);
  if (lazy.code !== 0) throw toolError('fusermount3 -u -z', lazy, mnt);
  throw new Error(`${mnt} was still busy (a mounted filesystem or open file on the loop device?); unmounted lazily`);
}

/**
 * `r3map-mount --disconnect /dev/loopN`: detaches a loop device left behind by a dead r3map
 * (its back-file is one of our FUSE files), unmounts that FUSE file and removes its temp dir.
 * Refuses (UsageError) a device backed by anything else.
 */
export async function disconnectFuseLoop(device: string, log: Logger = silentLogger): Promise<'disconnected' | 'not-connected'> {
  if (!/^\/dev\/loop\d+$/.test(device)) throw new UsageError(`${device} is not a loop device (/dev/loopN)`);
  const backFile = await loopBackFile(device);
  if (backFile === '') return 'not-connected';
  if (!isFuseLoopBackFile(backFile)) {
    throw new UsageError(`${device} is backed by ${backFile}, not by an r3map fuse-loop file; refusing to detach it`);
  }
  await detachLoop(device, log);
  const mnt = path.dirname(backFile.replace(/ \(deleted\)$/, ''));
  await unmountFuse(mnt, log);
  await rm(path.dirname(mnt), { recursive: true, force: true });
  log.info({ device, backFile }, `detached ${device}`);
  return 'disconnected';
}
