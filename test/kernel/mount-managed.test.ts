/**
 * r3map-mount --managed through the kernel NBD client (`--transport nbd`), run as child processes
 * the way a user runs them, with r3map-serve as the remote over gRPC on Unix sockets. Runs in the
 * kernel VM (one boot for the whole file). Node takes seconds to start there and r3map-mount tens
 * of seconds, so the long-lived processes start together (the serves, then both managed mounts)
 * and every wait is bounded generously. Devices are pinned (--device) so that the --disconnect of
 * a killed mount can never hit a device another mount of this file got meanwhile.
 * The fuse-loop version of these tests is test/cli/mount-managed.test.ts.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, open, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test, type TestContext } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { listNbdDevices } from '../../src/kernel/nbd-device.js';
import { makeTempDir, runOk, runTool, SERVE_BIN } from '../support/tools.js';
import { nbdUnavailable, requireNbd } from './support.js';
import { assertNbdFree, cleanUpMountDir, MOUNT_BIN, mountEnv, runMount, start, stopAndAssertNbdFree, type Running } from '../support/mount-cli.js';

const MIB = 1024 * 1024;
const SIZE = 32 * MIB;
/** Node takes 3-10 s to start in the VM, r3map-mount 25-50 s on a loaded host. */
const START_TIMEOUT_MS = 300_000;
const STEP_TIMEOUT_MS = 120_000;
const SUITE_TIMEOUT_MS = 900_000;
/** Pinned devices: ext4 mount, kill -9 victim, direct check, the victim's restart (while --disconnect runs). */
const DEVICES = Object.freeze({ ext4: '/dev/nbd4', victim: '/dev/nbd5', direct: '/dev/nbd6', restart: '/dev/nbd7' });

let dir: string;
/** Children this file spawns itself (dd); r3map's commands are tracked by support/mount-cli.ts. */
const started = new Set<ChildProcess>();

before(async () => {
  dir = await makeTempDir('r3map-kernel-managed-');
});
after(async () => {
  for (const child of started) child.kill('SIGKILL');
  await cleanUpMountDir(dir);
});

const step = { timeoutMs: STEP_TIMEOUT_MS };

/** Starts `node BIN ARGS` and waits (bounded) for its first line on stdout. */
const startBin = (bin: string, args: readonly string[]): Promise<Running> =>
  start(bin, args, { env: mountEnv(), startTimeoutMs: START_TIMEOUT_MS, stopTimeoutMs: STEP_TIMEOUT_MS });

/**
 * Starts r3map-mount (see start()). The gRPC backend gives the remote's first answer (Size) a fixed
 * 5 s at open; under emulation, with several node processes starting at once, that deadline has
 * run out while the serve was up, so a start that failed with exactly that error is tried once more.
 */
async function startMount(args: readonly string[], t?: TestContext): Promise<Running> {
  try {
    return await startBin(MOUNT_BIN, args);
  } catch (err) {
    if (!/ open: no answer within \d+ ms/.test(String(err))) throw err;
    const note = `retrying r3map-mount ${args.join(' ')}: the gRPC remote's first answer took over its deadline`;
    if (t !== undefined) t.diagnostic(note);
    else process.stderr.write(`# ${note}\n`);
    return startBin(MOUNT_BIN, args);
  }
}

/** Bytes the process has passed to write(2) so far (/proc/PID/io wchar), or undefined once it is gone. */
async function bytesWritten(pid: number): Promise<number | undefined> {
  const io = await readFile(`/proc/${pid}/io`, 'utf8').catch(() => undefined);
  const match = io === undefined ? null : /^wchar: (\d+)$/m.exec(io);
  return match === null ? undefined : Number(match[1]);
}

async function readRange(file: string, off: number, length: number): Promise<Buffer> {
  const handle = await open(file, 'r');
  try {
    const buf = Buffer.alloc(length);
    const { bytesRead } = await handle.read(buf, 0, length, off);
    return buf.subarray(0, bytesRead);
  } finally {
    await handle.close();
  }
}

describe('r3map-mount --managed --transport nbd, with r3map-serve over gRPC as the remote', { timeout: SUITE_TIMEOUT_MS }, () => {
  const remote = { ext4: (): string => path.join(dir, 'ext4-remote.img'), victim: (): string => path.join(dir, 'victim-remote.img') };
  const cache = { ext4: (): string => path.join(dir, 'ext4-cache.img'), victim: (): string => path.join(dir, 'victim-cache.img') };
  const hello = 'hello through a managed mount\n';
  const big = randomBytes(3 * MIB + 333);
  /** dd'ed with conv=fsync to [PATTERN_OFF, PATTERN_OFF + 3 MiB) of the victim before the kill. */
  const pattern = randomBytes(3 * MIB);
  const PATTERN_OFF = 5 * MIB;
  let serves: { ext4: Running; victim: Running } | undefined;
  let mounts: { ext4: Running; victim: Running } | undefined;
  /** The direct mount of the ext4 remote, started as soon as the managed one is torn down. */
  let direct: Promise<Running> | undefined;
  const victimArgs = (device: string): string[] => [
    '--managed', '--transport', 'nbd', '--device', device, '--backend', serves!.victim.line, '--cache', cache.victim(),
    '--pull-workers', '8', '--push-interval', '0', '--state-interval', '0',
  ];

  before(async () => {
    if (nbdUnavailable() !== undefined) return;
    const [ext4Serve, victimServe] = await Promise.all((['ext4', 'victim'] as const).map((name) =>
      startBin(SERVE_BIN, ['--backend', `file://${remote[name]()}`, '--size', String(SIZE), '--listen', `grpc+unix://${path.join(dir, `${name}.sock`)}`])));
    serves = { ext4: ext4Serve!, victim: victimServe! };
    const all = await Promise.allSettled([
      startMount(['--managed', '--transport', 'nbd', '--device', DEVICES.ext4, '--backend', serves.ext4.line, '--cache', cache.ext4(),
        '--pull-workers', '8', '--push-workers', '4', '--push-interval', '1s']),
      startMount(victimArgs(DEVICES.victim)),
    ]);
    const failed = all.filter((r) => r.status === 'rejected');
    if (failed.length > 0) {
      for (const r of all) if (r.status === 'fulfilled') await r.value.stop('SIGKILL');
      const why = failed.map((r) => String((r as PromiseRejectedResult).reason)).join('\n---\n');
      throw new AggregateError(failed.map((r) => (r as PromiseRejectedResult).reason), `${failed.length} of ${all.length} managed r3map-mount processes did not start:\n${why}`);
    }
    const [ext4, victim] = all.map((r) => (r as PromiseFulfilledResult<Running>).value) as [Running, Running];
    mounts = { ext4, victim };
  }, { timeout: SUITE_TIMEOUT_MS });

  test('both remotes are served over grpc+unix and both managed mounts print their pinned device', (t: TestContext) => {
    if (!requireNbd(t)) return;
    assert.equal(serves!.ext4.line, `grpc+unix://${path.join(dir, 'ext4.sock')}`);
    assert.equal(serves!.victim.line, `grpc+unix://${path.join(dir, 'victim.sock')}`);
    assert.equal(mounts!.ext4.line, DEVICES.ext4);
    assert.equal(mounts!.victim.line, DEVICES.victim);
  });

  test('ext4 on a managed mount: files written and synced, then SIGTERM pushes every dirty chunk and detaches', async (t: TestContext) => {
    if (!requireNbd(t)) return;
    const m = mounts!.ext4;
    const mnt = path.join(dir, 'managed-fs');
    await mkdir(mnt, { recursive: true });
    try {
      await runOk('mkfs.ext4', ['-q', '-F', m.line], step);
      await runOk('mount', [m.line, mnt], step);
      await writeFile(path.join(mnt, 'hello.txt'), hello);
      await writeFile(path.join(mnt, 'big.bin'), big);
      await runOk('sync', [], step);
      await runOk('umount', [mnt], step);
      await runOk('fsck.ext4', ['-n', '-f', m.line], step);
    } finally {
      await runTool('umount', [mnt]);
    }
    await stopAndAssertNbdFree(m);
    assert.match(m.stderr(), /bytes were pulled before the device was ready/);
    assert.ok(existsSync(`${cache.ext4()}.r3map-state`), 'the file cache has its state file');
    // Only now: a fresh direct mount of the same remote (its start overlaps the next test).
    direct = startMount(['--transport', 'nbd', '--device', DEVICES.direct, '--backend', serves!.ext4.line, '--read-only', '--latency', '1ms']);
    direct.catch(() => undefined);
  });

  test('kill -9 mid-write, --disconnect, restart with the same cache, SIGTERM: the remote holds every byte fsync acknowledged', async (t: TestContext) => {
    if (!requireNbd(t)) return;
    const victim = mounts!.victim;
    const patternFile = path.join(dir, 'pattern.bin');
    const noiseFile = path.join(dir, 'noise.bin');
    const noise = randomBytes(16 * MIB);
    await writeFile(patternFile, pattern);
    await writeFile(noiseFile, noise);
    await runOk('dd', [`if=${patternFile}`, `of=${victim.line}`, 'bs=1M', `seek=${PATTERN_OFF / MIB}`, 'oflag=direct', 'conv=fsync,notrunc', 'status=none'], step);

    // A second dd, 4 KiB direct writes after the pattern; r3map-mount dies under it.
    const dd = spawn('dd', [`if=${noiseFile}`, `of=${victim.line}`, 'bs=4K', `seek=${(12 * MIB) / 4096}`, 'oflag=direct', 'conv=notrunc', 'status=none'], { stdio: 'ignore' });
    started.add(dd);
    const ddExit = new Promise<number | string>((resolve) => dd.once('exit', (code, signal) => resolve(code ?? signal ?? 'unknown')));
    const deadline = performance.now() + STEP_TIMEOUT_MS;
    let written: number | undefined = 0;
    while (written === 0 && performance.now() < deadline) {
      await sleep(10);
      written = await bytesWritten(dd.pid!);
    }
    assert.ok(written !== undefined && written > 0 && written < noise.length, `dd is under way (wrote ${written} of ${noise.length} bytes)`);
    assert.equal(await victim.stop('SIGKILL'), 'SIGKILL');
    const ddTimer = setTimeout(() => dd.kill('SIGKILL'), STEP_TIMEOUT_MS);
    const ddCode = await ddExit.finally(() => clearTimeout(ddTimer));
    started.delete(dd);
    assert.notEqual(ddCode, 0, 'the second dd failed: the device went away under it');
    assert.notDeepEqual(await readRange(remote.victim(), PATTERN_OFF, pattern.length), pattern, 'nothing was pushed before the kill (--push-interval 0)');

    // The restart (same cache, another device) and the --disconnect of the dead mount's device run at once.
    const restarting = startMount(victimArgs(DEVICES.restart), t);
    restarting.catch(() => undefined);
    const r = await runMount(['--disconnect', DEVICES.victim], { timeoutMs: START_TIMEOUT_MS, env: mountEnv() });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^(disconnected|not-connected)\n$/);
    await assertNbdFree(DEVICES.victim);

    const restarted = await restarting;
    try {
      assert.equal(restarted.line, DEVICES.restart);
      assert.deepEqual(await readRange(restarted.line, PATTERN_OFF, pattern.length), pattern, 'the device shows the fsynced bytes after the restart');
    } finally {
      await stopAndAssertNbdFree(restarted);
    }
    assert.match(restarted.stderr(), /cache state restored/);
    assert.deepEqual(await readRange(remote.victim(), PATTERN_OFF, pattern.length), pattern, 'the remote holds every fsynced byte');
  });

  test('a fresh direct mount of the same remote (r3map-mount --backend grpc+unix://…) shows the files: push worked', async (t: TestContext) => {
    if (!requireNbd(t)) return;
    assert.ok(direct !== undefined, 'the ext4 test started the direct mount');
    const d = await direct;
    assert.equal(d.line, DEVICES.direct);
    assert.match(d.stderr(), /simulated backend latency: 1 ms per call/);
    const mnt = path.join(dir, 'direct-fs');
    await mkdir(mnt, { recursive: true });
    try {
      await runOk('fsck.ext4', ['-n', '-f', d.line], step);
      await runOk('mount', ['-o', 'ro', d.line, mnt], step);
      assert.equal(await readFile(path.join(mnt, 'hello.txt'), 'utf8'), hello);
      assert.deepEqual(await readFile(path.join(mnt, 'big.bin')), big);
      await runOk('umount', [mnt], step);
    } finally {
      await runTool('umount', [mnt]);
    }
    await stopAndAssertNbdFree(d);
  });

  test('nothing is left attached or mounted, and both r3map-serve processes exit 0 on SIGTERM', async (t: TestContext) => {
    if (!requireNbd(t)) return;
    assert.deepEqual((await listNbdDevices()).filter((d) => d.connected).map((d) => d.path), []);
    const mounts = await readFile('/proc/mounts', 'utf8');
    assert.equal(mounts.includes(`${dir}/`), false, mounts);
    assert.deepEqual(await Promise.all([serves!.ext4.stop(), serves!.victim.stop()]), [0, 0]);
  });
});
