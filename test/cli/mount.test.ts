/**
 * r3map-mount on this host, through the fuse-loop transport (the host kernel has no nbd; the
 * kernel path is covered by test/kernel/ in the VM). Every run gets TMPDIR set to this file's
 * temp dir, so "nothing left behind" is checked on r3map's own fuse-loop dirs only.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { hasNbdDriver } from '../../src/mount/transport.js';
import { leftoversUnder, loopDevice, requireFuseLoop, waitUntil, withForeignLoopDevice } from '../support/fuse-loop.js';
import { makeTempDir, requireTool, runOk, runTool, type RunResult } from '../support/tools.js';
import { cleanUpMountDir, mountEnv, runMount as runMountIn, startMount as startMountIn, type Mounted } from '../support/mount-cli.js';

const MIB = 1024 * 1024;
let dir: string;

before(async () => {
  dir = await makeTempDir('r3map-mount-cli-');
});
after(() => cleanUpMountDir(dir));

const startMount = (args: readonly string[]): Promise<Mounted> => startMountIn(args, { env: mountEnv(dir), startTimeoutMs: 20_000, stopTimeoutMs: 20_000 });
const runMount = (args: readonly string[]): Promise<RunResult> => runMountIn(args, { env: mountEnv(dir) });

describe('r3map-mount through fuse-loop', () => {
  test('a memory device takes ext4, keeps its files across a remount, and SIGTERM detaches it with exit 0', async (t) => {
    if (!requireFuseLoop(t) || !requireTool(t, 'mkfs.ext4') || !requireTool(t, 'fsck.ext4')) return;
    const m = await startMount(['--backend', 'memory', '--size', '64MiB', '--transport', 'fuse-loop']);
    const mnt = path.join(dir, 'fs');
    await mkdir(mnt, { recursive: true });
    const big = randomBytes(MIB + 333);
    try {
      assert.match(m.device, /^\/dev\/loop\d+$/);
      await runOk('mkfs.ext4', ['-q', '-F', m.device]);
      await runOk('mount', [m.device, mnt]);
      await writeFile(path.join(mnt, 'hello.txt'), 'hello through r3map\n');
      await writeFile(path.join(mnt, 'big.bin'), big);
      await runOk('sync', []);
      await runOk('umount', [mnt]);
      await runOk('fsck.ext4', ['-n', m.device]);
      await runOk('mount', [m.device, mnt]);
      assert.equal(await readFile(path.join(mnt, 'hello.txt'), 'utf8'), 'hello through r3map\n');
      assert.deepEqual(await readFile(path.join(mnt, 'big.bin')), big);
      await runOk('umount', [mnt]);
    } finally {
      await runTool('umount', [mnt]);
      const backFile = (await loopDevice(m.device))?.backFile;
      assert.equal(await m.stop(), 0, m.stderr());
      assert.notEqual((await loopDevice(m.device))?.backFile, backFile);
    }
    assert.equal(m.stdout(), `${m.device}\n`);
    assert.deepEqual(await leftoversUnder(dir), []);
  });

  test('a file-backed device writes through to the file and announces itself in a ready file that is removed on exit', async (t) => {
    if (!requireFuseLoop(t) || !requireTool(t, 'dd')) return;
    const file = path.join(dir, 'disk.img');
    const ready = path.join(dir, 'ready');
    const pattern = path.join(dir, 'pattern.bin');
    const bytes = randomBytes(3 * MIB);
    await writeFile(pattern, bytes);
    const m = await startMount(['--backend', `file://${file}`, '--size', '64MiB', '--ready-file', ready, '--chunk-size', '64KiB']);
    try {
      assert.equal(await readFile(ready, 'utf8'), `${m.device}\n`);
      await runOk('dd', [`if=${pattern}`, `of=${m.device}`, 'bs=1M', 'seek=5', 'oflag=direct', 'conv=fsync,notrunc', 'status=none']);
    } finally {
      assert.equal(await m.stop(), 0, m.stderr());
    }
    assert.equal(existsSync(ready), false);
    assert.equal((await stat(file)).size, 64 * MIB);
    assert.deepEqual((await readFile(file)).subarray(5 * MIB, 8 * MIB), bytes);
    assert.deepEqual(await leftoversUnder(dir), []);
  });

  test('the device works as swap: mkswap, swapon, swapoff (--chunk-size none: no chunking layer)', async (t) => {
    if (!requireFuseLoop(t) || !requireTool(t, 'mkswap') || !requireTool(t, 'swapon') || !requireTool(t, 'swapoff')) return;
    const m = await startMount(['--backend', 'memory', '--size', '64MiB', '--chunk-size', 'none']);
    try {
      await runOk('mkswap', [m.device]);
      await runOk('swapon', [m.device]);
      assert.match(await readFile('/proc/swaps', 'utf8'), new RegExp(`^${m.device}\\s`, 'm'));
      await runOk('swapoff', [m.device]);
    } finally {
      await runTool('swapoff', [m.device]);
      assert.equal(await m.stop(), 0, m.stderr());
    }
    assert.deepEqual(await leftoversUnder(dir), []);
  });

  test('two mounts at once get two different devices', async (t) => {
    if (!requireFuseLoop(t)) return;
    const [a, b] = await Promise.all([startMount(['--backend', 'memory', '--size', '64MiB']), startMount(['--backend', 'memory', '--size', '64MiB'])]);
    try {
      assert.notEqual(a.device, b.device);
    } finally {
      assert.deepEqual(await Promise.all([a.stop(), b.stop()]), [0, 0]);
    }
    assert.deepEqual(await leftoversUnder(dir), []);
  });

  test('after kill -9 the watchdog detaches the device and unmounts the FUSE file', async (t) => {
    if (!requireFuseLoop(t)) return;
    const m = await startMount(['--backend', 'memory', '--size', '64MiB']);
    assert.equal(await m.stop('SIGKILL'), 'SIGKILL');
    assert.ok(await waitUntil(async () => (await leftoversUnder(dir)).length === 0, 15_000), (await leftoversUnder(dir)).join('\n'));
    // The device is free now (or already someone else's): --disconnect never detaches it.
    const r = await runMount(['--disconnect', m.device]);
    assert.ok((r.code === 0 && r.stdout === 'not-connected\n') || r.code === 2, `${r.code} ${r.stdout} ${r.stderr}`);
  });

  test('--disconnect frees a device left behind when r3map-mount and its watchdog both died', async (t) => {
    if (!requireFuseLoop(t)) return;
    const m = await startMount(['--backend', 'memory', '--size', '64MiB']);
    const backFile = (await loopDevice(m.device))!.backFile;
    const watchdog = await findWatchdog(path.dirname(path.dirname(backFile)));
    assert.ok(watchdog !== undefined, 'the watchdog is running');
    process.kill(watchdog, 'SIGKILL');
    assert.equal(await m.stop('SIGKILL'), 'SIGKILL');
    assert.equal((await loopDevice(m.device))?.backFile, backFile, 'the device is left behind');
    const r = await runMount(['--disconnect', m.device]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'disconnected\n');
    assert.ok(await waitUntil(async () => (await leftoversUnder(dir)).length === 0, 15_000), (await leftoversUnder(dir)).join('\n'));
  });

  test('--disconnect refuses a loop device that r3map did not attach', async (t) => {
    if (!requireFuseLoop(t)) return;
    await withForeignLoopDevice(dir, async (device) => {
      const r = await runMount(['--disconnect', device]);
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, /refusing/);
    });
  });

  test('a busy --device fails with a clear message, exit 1, and leaves nothing of its own behind', async (t) => {
    if (!requireFuseLoop(t)) return;
    const first = await startMount(['--backend', 'memory', '--size', '64MiB']);
    try {
      const r = await runMount(['--backend', 'memory', '--size', '64MiB', '--device', first.device]);
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stderr, /EBUSY|busy/);
      assert.equal(r.stdout, '');
      assert.equal((await leftoversUnder(dir)).filter((l) => l.startsWith('mount')).length, 1);
    } finally {
      assert.equal(await first.stop(), 0, first.stderr());
    }
    assert.deepEqual(await leftoversUnder(dir), []);
  });
});

describe('r3map-mount with bad input', { concurrency: true }, () => {
  const cases: Array<{ name: string; args: string[]; code: number; message: RegExp; skip?: () => string | undefined }> = [
    { name: 'a size that is not a multiple of the block size', args: ['--backend', 'memory', '--size', '5000'], code: 2, message: /multiple of the block size 4096/ },
    { name: 'an unreadable backing file', args: ['--backend', 'file:///nonexistent-dir/disk.img', '--transport', 'fuse-loop'], code: 1, message: /nonexistent-dir\/disk\.img/ },
    { name: 'an unknown flag', args: ['--backend', 'memory', '--size', '64MiB', '--frobnicate'], code: 2, message: /unknown option '--frobnicate'/ },
    { name: 'no --backend', args: [], code: 2, message: /--backend is required/ },
    { name: 'a chunk size of 0 (no chunking is spelled none)', args: ['--backend', 'memory', '--size', '64MiB', '--chunk-size', '0'], code: 2, message: /a chunk size of 0 is not a size: say 'none' \(--chunk-size none\)/ },
    { name: 'a chunk size above 1 GiB', args: ['--backend', 'memory', '--size', '64MiB', '--chunk-size', '2GiB'], code: 2, message: /the chunk size of a direct mount must be a whole number of bytes from 1 to 1 GiB, got 2147483648/ },
    { name: 'a chunk size that is not a size', args: ['--backend', 'memory', '--size', '64MiB', '--chunk-size', 'lots'], code: 2, message: /option '--chunk-size <bytes\|none>' argument 'lots' is invalid/ },
    { name: 'an unknown transport', args: ['--backend', 'memory', '--size', '64MiB', '--transport', 'pigeon'], code: 2, message: /pigeon/ },
    { name: 'a device that is neither /dev/nbdN nor /dev/loopN', args: ['--backend', 'memory', '--size', '64MiB', '--device', '/dev/sda'], code: 2, message: /\/dev\/nbdN|\/dev\/loopN/ },
    {
      name: '--transport nbd on a kernel without the nbd module',
      args: ['--backend', 'memory', '--size', '64MiB', '--transport', 'nbd'],
      code: 1,
      message: /modprobe nbd/,
      skip: () => (hasNbdDriver() ? 'this kernel has nbd' : undefined),
    },
  ];
  for (const c of cases) {
    test(`${c.name} gives a clear message, exit ${c.code} and nothing attached`, async (t) => {
      const why = c.skip?.();
      if (why !== undefined) return t.skip(why);
      const r = await runMount(c.args);
      assert.equal(r.code, c.code, r.stderr);
      assert.match(r.stderr, c.message);
      assert.equal(r.stdout, '');
      assert.deepEqual(await leftoversUnder(dir), []);
    });
  }
});

/** The pid of the fuse-loop watchdog watching `fuseDir` (scans /proc). */
async function findWatchdog(fuseDir: string): Promise<number | undefined> {
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const argv = (await readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '')).split('\0');
    if (argv.includes('r3map-fuse-loop-watchdog') && argv.includes(fuseDir)) return Number(entry);
  }
  return undefined;
}
