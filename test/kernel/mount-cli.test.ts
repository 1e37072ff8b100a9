/**
 * r3map-mount through the kernel NBD client (`--transport nbd`), run as a child process the way a
 * user runs it: the test reads the device path it prints and drives the device with the system's
 * tools (mkfs.ext4, mount, fsck.ext4, mkswap, dd, blockdev). Runs in the kernel VM (one boot for
 * the whole file); every wait is bounded generously because the VM is emulated (node takes seconds
 * to start there). The fuse-loop version of these tests is test/cli/mount.test.ts.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, open, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test, type TestContext } from 'node:test';
import { listNbdDevices } from '../../src/kernel/nbd-device.js';
import { nbdIndexOf, readNbdState, threadAlive } from '../../src/kernel/sysfs.js';
import { makeTempDir, runOk, runTool, type RunResult } from '../support/tools.js';
import { nbdUnavailable, requireNbd } from './support.js';
import { assertNbdFree, cleanUpMountDir, mountEnv, runMount as runMountIn, startMount as startMountIn, stopAndAssertNbdFree, type Mounted } from '../support/mount-cli.js';

const MIB = 1024 * 1024;
const SIZE = '64MiB';
/** Under emulation node takes 3-10 s to start, and r3map-mount 25-50 s on a loaded host; five start at once. */
const START_TIMEOUT_MS = 300_000;
const STEP_TIMEOUT_MS = 120_000;
const SUITE_TIMEOUT_MS = 900_000;

let dir: string;

before(async () => {
  dir = await makeTempDir('r3map-kernel-mount-');
});
after(() => cleanUpMountDir(dir));

const step = { timeoutMs: STEP_TIMEOUT_MS };

/** Starts `r3map-mount --transport nbd ARGS` and waits (bounded) for the device path on stdout. */
const startMount = (args: readonly string[]): Promise<Mounted> =>
  startMountIn(['--transport', 'nbd', ...args], { env: mountEnv(), startTimeoutMs: START_TIMEOUT_MS, stopTimeoutMs: STEP_TIMEOUT_MS });
const runMount = (args: readonly string[]): Promise<RunResult> => runMountIn(args, { env: mountEnv(), timeoutMs: START_TIMEOUT_MS });

/** The paths of the NBD devices that have a connection. */
async function connectedDevices(): Promise<string[]> {
  return (await listNbdDevices()).filter((d) => d.connected).map((d) => d.path);
}

/** mkfs.ext4, mount, write, sync, umount, fsck -n clean, remount, read back, umount. */
async function ext4Cycle(device: string, name: string): Promise<void> {
  const mnt = path.join(dir, name);
  await mkdir(mnt, { recursive: true });
  const big = randomBytes(MIB + 333);
  try {
    await runOk('mkfs.ext4', ['-q', '-F', device], step);
    await runOk('mount', [device, mnt], step);
    await writeFile(path.join(mnt, 'hello.txt'), `hello from ${name}\n`);
    await writeFile(path.join(mnt, 'big.bin'), big);
    await runOk('sync', [], step);
    await runOk('umount', [mnt], step);
    await runOk('fsck.ext4', ['-n', '-f', device], step);
    await runOk('mount', [device, mnt], step);
    assert.equal(await readFile(path.join(mnt, 'hello.txt'), 'utf8'), `hello from ${name}\n`);
    assert.deepEqual(await readFile(path.join(mnt, 'big.bin')), big);
    await runOk('umount', [mnt], step);
  } finally {
    await runTool('umount', [mnt]);
  }
}

async function sha256(file: string): Promise<string> {
  return createHash('sha256').update(await readFile(file)).digest('hex');
}

/** What the suite runs at once from the start (node needs tens of seconds to start in the VM). */
interface Mounts {
  readonly memory: Mounted;
  readonly file: Mounted;
  readonly readOnly: Mounted;
  /** Killed with SIGKILL by the --disconnect test: one left alone, one held open. */
  readonly victims: readonly [Mounted, Mounted];
}

describe('r3map-mount --transport nbd', { timeout: SUITE_TIMEOUT_MS }, () => {
  let m: Mounts | undefined;
  const file = (): string => path.join(dir, 'disk.img');
  const snapshot = (): string => path.join(dir, 'snapshot.bin');
  const pattern = randomBytes(3 * MIB);

  before(async () => {
    if (nbdUnavailable() !== undefined) return;
    const all = await Promise.allSettled([
      startMount(['--backend', 'memory', '--size', SIZE]),
      startMount(['--backend', `file://${file()}`, '--size', SIZE]),
      startMount(['--backend', 'memory', '--size', SIZE, '--read-only']),
      startMount(['--backend', 'memory', '--size', SIZE]),
      startMount(['--backend', 'memory', '--size', SIZE]),
    ]);
    const failed = all.filter((r) => r.status === 'rejected');
    if (failed.length > 0) {
      for (const r of all) if (r.status === 'fulfilled') await r.value.stop('SIGKILL');
      throw new AggregateError(failed.map((r) => r.reason), `${failed.length} of ${all.length} r3map-mount processes did not start`);
    }
    const [memory, fileMount, readOnly, victim1, victim2] = all.map((r) => (r as PromiseFulfilledResult<Mounted>).value) as [Mounted, Mounted, Mounted, Mounted, Mounted];
    m = { memory, file: fileMount, readOnly, victims: [victim1, victim2] };
  }, { timeout: SUITE_TIMEOUT_MS });

  test('five mounts started at once get five different devices, each with its size', async (t: TestContext) => {
    if (!requireNbd(t)) return;
    const devices = [m!.memory, m!.file, m!.readOnly, ...m!.victims].map((x) => x.device);
    for (const device of devices) assert.match(device, /^\/dev\/nbd\d+$/);
    assert.equal(new Set(devices).size, devices.length, devices.join(' '));
    assert.deepEqual((await connectedDevices()).sort(), [...devices].sort());
    for (const device of devices) assert.equal((await readNbdState(nbdIndexOf(device)!)).sizeBytes, 64 * MIB, device);
  });

  test('a memory device takes ext4 and keeps its files across a remount', async (t: TestContext) => {
    if (!requireNbd(t)) return;
    await ext4Cycle(m!.memory.device, 'memory');
  });

  test('a file device takes ext4, and direct writes land in it', async (t: TestContext) => {
    if (!requireNbd(t)) return;
    const device = m!.file.device;
    await ext4Cycle(device, 'file');
    const patternFile = path.join(dir, 'pattern.bin');
    await writeFile(patternFile, pattern);
    await runOk('dd', [`if=${patternFile}`, `of=${device}`, 'bs=1M', 'seek=5', 'oflag=direct', 'conv=notrunc', 'status=none'], step);
    // What the device holds, for the comparison with the backing file after SIGTERM.
    await runOk('dd', [`if=${device}`, `of=${snapshot()}`, 'bs=1M', 'iflag=direct', 'status=none'], step);
  });

  test('the device works as swap: mkswap, swapon, swapoff', async (t: TestContext) => {
    if (!requireNbd(t)) return;
    const device = m!.memory.device;
    try {
      await runOk('mkswap', [device], step);
      await runOk('swapon', [device], step);
      assert.match(await readFile('/proc/swaps', 'utf8'), new RegExp(`^${device}\\s`, 'm'));
      await runOk('swapoff', [device], step);
    } finally {
      await runTool('swapoff', [device]);
    }
  });

  test('--read-only gives a read-only device that refuses writes and serves reads', async (t: TestContext) => {
    if (!requireNbd(t)) return;
    const device = m!.readOnly.device;
    assert.equal((await runOk('blockdev', ['--getro', device], step)).stdout.trim(), '1');
    const write = await runTool('dd', ['if=/dev/zero', `of=${device}`, 'bs=4096', 'count=1', 'oflag=direct', 'conv=notrunc', 'status=none'], step);
    assert.notEqual(write.code, 0, 'a write to a read-only device fails');
    const read = await runOk('dd', [`if=${device}`, 'bs=4096', 'count=1', 'iflag=direct', 'status=none'], step);
    assert.equal(read.stdout, '\0'.repeat(4096));
  });

  test('bad input gives a clear message and a non-zero exit, and attaches nothing', { concurrency: true }, async (t: TestContext) => {
    if (!requireNbd(t)) return;
    const busy = m!.memory.device;
    const cases: readonly { name: string; args: string[]; code: number; message: RegExp }[] = [
      { name: 'a busy --device', args: ['--backend', 'memory', '--size', SIZE, '--device', busy], code: 1, message: new RegExp(`NBD_SET_SOCK ${busy}: EBUSY`) },
      { name: 'a size that is not a multiple of the block size', args: ['--backend', 'memory', '--size', '5000'], code: 2, message: /multiple of the block size 4096/ },
      { name: 'an unreadable backing file', args: ['--backend', `file://${dir}/no-such-dir/disk.img`], code: 1, message: /no-such-dir\/disk\.img/ },
      { name: 'a device the kernel does not have', args: ['--backend', 'memory', '--size', SIZE, '--device', '/dev/nbd999'], code: 1, message: /\/dev\/nbd999.*nbds_max/ },
    ];
    const before = (await connectedDevices()).sort();
    await Promise.all(cases.map((c) => t.test(`${c.name}: exit ${c.code}`, async () => {
      const r = await runMount(['--transport', 'nbd', ...c.args]);
      assert.equal(r.code, c.code, r.stderr);
      assert.match(r.stderr, c.message);
      assert.equal(r.stdout, '');
    })));
    assert.deepEqual((await connectedDevices()).sort(), before);
    assert.equal((await readNbdState(nbdIndexOf(busy)!)).sizeBytes, 64 * MIB, 'the busy device still belongs to its owner');
  });

  test('SIGTERM flushes and detaches: exit 0, size 0, no pid file, and the backing file matches the device', async (t: TestContext) => {
    if (!requireNbd(t)) return;
    await Promise.all([stopAndAssertNbdFree(m!.memory), stopAndAssertNbdFree(m!.file), stopAndAssertNbdFree(m!.readOnly)]);
    const image = await readFile(file());
    assert.equal(image.length, 64 * MIB);
    assert.ok(image.subarray(5 * MIB, 8 * MIB).equals(pattern), 'the dd pattern is in the backing file');
    assert.equal(createHash('sha256').update(image).digest('hex'), await sha256(snapshot()), 'the backing file matches the device byte for byte');
  });

  test('after kill -9, --disconnect frees the device, also while something still holds it open', async (t: TestContext) => {
    if (!requireNbd(t)) return;
    const [plain, held] = m!.victims;
    const holder = await open(held.device, 'r');
    try {
      assert.deepEqual(await Promise.all([plain.stop('SIGKILL'), held.stop('SIGKILL')]), ['SIGKILL', 'SIGKILL']);
      const stale = await readNbdState(nbdIndexOf(held.device)!);
      assert.ok(stale.sizeBytes > 0 && stale.pid !== undefined, 'the held device still looks connected');
      assert.equal(await threadAlive(stale.pid), false, 'its NBD_DO_IT thread is gone');
      // Nothing holds `plain`: the kernel may have freed it already, and --disconnect says so.
      const [p, h] = await Promise.all([runMount(['--disconnect', plain.device]), runMount(['--disconnect', held.device])]);
      assert.equal(p.code, 0, p.stderr);
      assert.match(p.stdout, /^(disconnected|not-connected)\n$/);
      assert.equal(h.code, 0, h.stderr);
      assert.equal(h.stdout, 'disconnected\n');
      await assertNbdFree(plain.device);
    } finally {
      await holder.close();
    }
    await assertNbdFree(held.device);
  });

  test('nothing is left attached or mounted', async (t: TestContext) => {
    if (!requireNbd(t)) return;
    assert.deepEqual(await connectedDevices(), []);
    const mounts = await readFile('/proc/mounts', 'utf8');
    assert.equal(mounts.includes(`${dir}/`), false, mounts);
  });
});
