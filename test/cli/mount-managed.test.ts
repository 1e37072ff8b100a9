/**
 * r3map-mount --managed on this host, through the fuse-loop transport (the kernel path runs in the
 * VM, test/kernel/). The remote is r3map-serve over gRPC on a Unix socket (ext4 test) or a
 * file:// remote opened by the mount itself (kill -9 test). Every run gets TMPDIR set to this
 * file's temp dir, so "nothing left behind" is checked on r3map's own fuse-loop dirs only.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, open, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { leftoversUnder, requireFuseLoop, waitUntil } from '../support/fuse-loop.js';
import { makeTempDir, requireTool, runOk, runTool, SERVE_BIN } from '../support/tools.js';
import { cleanUpMountDir, MOUNT_BIN, mountEnv, runMount, start, type Running } from '../support/mount-cli.js';

const MIB = 1024 * 1024;
let dir: string;

before(async () => {
  dir = await makeTempDir('r3map-mount-managed-');
});
after(() => cleanUpMountDir(dir));

/** Starts a node bin and waits (bounded) for its first stdout line. */
const startBin = (bin: string, args: readonly string[]): Promise<Running> => start(bin, args, { env: mountEnv(dir) });

describe('r3map-mount --managed through fuse-loop', () => {
  test('ext4 on a managed mount of a gRPC remote: files written, synced and torn down show up in a fresh direct mount', async (t) => {
    if (!requireFuseLoop(t) || !requireTool(t, 'mkfs.ext4') || !requireTool(t, 'fsck.ext4')) return;
    const remoteFile = path.join(dir, 'remote.img');
    const socket = path.join(dir, 'serve.sock');
    const cache = path.join(dir, 'ext4-cache.img');
    const serve = await startBin(SERVE_BIN, ['--backend', `file://${remoteFile}`, '--size', '64MiB', '--listen', `grpc+unix://${socket}`]);
    const mnt = path.join(dir, 'fs');
    await mkdir(mnt, { recursive: true });
    const big = randomBytes(3 * MIB + 333);
    try {
      assert.equal(serve.line, `grpc+unix://${socket}`);
      const m = await startBin(MOUNT_BIN, ['--managed', '--backend', serve.line, '--cache', cache, '--transport', 'fuse-loop', '--pull-workers', '8', '--push-workers', '4', '--push-interval', '1s']);
      try {
        assert.match(m.line, /^\/dev\/loop\d+$/);
        await runOk('mkfs.ext4', ['-q', '-F', m.line]);
        await runOk('mount', [m.line, mnt]);
        await writeFile(path.join(mnt, 'hello.txt'), 'hello through a managed mount\n');
        await writeFile(path.join(mnt, 'big.bin'), big);
        await runOk('umount', [mnt]);
        m.child.kill('SIGUSR1');
        assert.ok(await waitUntil(async () => /status: local [\d.]+% \(\d+\/1024 chunks\), dirty \d+ chunks, pull .*\/s, push .*\/s/.test(m.stderr()), 10_000), m.stderr());
      } finally {
        await runTool('umount', [mnt]);
        assert.equal(await m.stop(), 0, m.stderr().slice(-4000));
      }
      assert.match(m.stderr(), /bytes were pulled before the device was ready/);
      assert.ok(existsSync(`${cache}.r3map-state`));
      const direct = await startBin(MOUNT_BIN, ['--backend', serve.line, '--transport', 'fuse-loop', '--read-only']);
      try {
        await runOk('fsck.ext4', ['-n', direct.line]);
        await runOk('mount', ['-o', 'ro', direct.line, mnt]);
        assert.equal(await readFile(path.join(mnt, 'hello.txt'), 'utf8'), 'hello through a managed mount\n');
        assert.deepEqual(await readFile(path.join(mnt, 'big.bin')), big);
        await runOk('umount', [mnt]);
      } finally {
        await runTool('umount', [mnt]);
        assert.equal(await direct.stop(), 0, direct.stderr().slice(-4000));
      }
    } finally {
      assert.equal(await serve.stop(), 0, serve.stderr().slice(-4000));
    }
    assert.deepEqual(await leftoversUnder(dir), []);
  });

  test('after kill -9 mid-write, a restart with the same cache pushes every byte an fsync acknowledged', async (t) => {
    if (!requireFuseLoop(t) || !requireTool(t, 'dd')) return;
    const remote = path.join(dir, 'kill-remote.img');
    const cache = path.join(dir, 'kill-cache.img');
    const pattern = path.join(dir, 'pattern.bin');
    const noise = path.join(dir, 'noise.bin');
    const bytes = randomBytes(3 * MIB);
    await writeFile(pattern, bytes);
    await writeFile(noise, randomBytes(16 * MIB));
    const args = ['--managed', '--backend', `file://${remote}`, '--size', '64MiB', '--cache', cache, '--transport', 'fuse-loop', '--push-interval', '0', '--state-interval', '0'];
    const first = await startBin(MOUNT_BIN, args);
    await runOk('dd', [`if=${pattern}`, `of=${first.line}`, 'bs=1M', 'seek=5', 'oflag=direct', 'conv=fsync,notrunc', 'status=none']);
    const midWrite = runTool('dd', [`if=${noise}`, `of=${first.line}`, 'bs=64K', 'seek=400', 'oflag=direct', 'conv=notrunc', 'status=none'], { timeoutMs: 20_000 });
    assert.equal(await first.stop('SIGKILL'), 'SIGKILL');
    await midWrite;
    assert.notDeepEqual((await readFile(remote)).subarray(5 * MIB, 8 * MIB), bytes, 'nothing was pushed before the kill');
    assert.ok(await waitUntil(async () => (await leftoversUnder(dir)).length === 0, 15_000), (await leftoversUnder(dir)).join('\n'));

    const second = await startBin(MOUNT_BIN, args);
    try {
      const handle = await open(second.line, 'r');
      try {
        const shown = Buffer.alloc(3 * MIB);
        await handle.read(shown, 0, shown.length, 5 * MIB);
        assert.deepEqual(shown, bytes, 'the device shows the fsynced bytes after the restart');
      } finally {
        await handle.close();
      }
    } finally {
      assert.equal(await second.stop(), 0, second.stderr().slice(-4000));
    }
    assert.match(second.stderr(), /cache state restored/);
    assert.deepEqual((await readFile(remote)).subarray(5 * MIB, 8 * MIB), bytes);
    assert.deepEqual(await leftoversUnder(dir), []);
  });
});

describe('r3map-mount --managed with bad input', { concurrency: true }, () => {
  const cases: Array<{ name: string; args: string[]; message: RegExp }> = [
    { name: 'a managed flag without --managed', args: ['--backend', 'memory', '--size', '64MiB', '--cache', '/tmp/x.img'], message: /--cache needs --managed/ },
    { name: '--pull-first with 0 pull workers', args: ['--managed', '--backend', 'memory', '--size', '64MiB', '--pull-first', '--pull-workers', '0'], message: /pullFirst needs pull workers/ },
    { name: 'a negative worker count', args: ['--managed', '--backend', 'memory', '--size', '64MiB', '--push-workers', '-1'], message: /not a whole number/ },
    { name: 'an unknown pull priority', args: ['--managed', '--backend', 'memory', '--size', '64MiB', '--pull-priority', 'random'], message: /random/ },
    { name: '--hot-ranges-file with --pull-priority', args: ['--managed', '--backend', 'memory', '--size', '64MiB', '--pull-priority', 'descending', '--hot-ranges-file', '/x'], message: /exclude each other/ },
    { name: '--chunk-size none (a direct-mount spelling)', args: ['--managed', '--backend', 'memory', '--size', '64MiB', '--chunk-size', 'none'], message: /--chunk-size none is for direct mounts/ },
    { name: 'a managed chunk size of 0', args: ['--managed', '--backend', 'memory', '--size', '64MiB', '--chunk-size', '0'], message: /chunk size of a managed mount must be a whole number of bytes from 1 to 32 MiB, got 0/ },
    { name: 'a managed chunk size above 32 MiB', args: ['--managed', '--backend', 'memory', '--size', '64MiB', '--chunk-size', '64MiB'], message: /chunk size of a managed mount must be a whole number of bytes from 1 to 32 MiB, got 67108864/ },
    { name: 'a missing hot-ranges file', args: ['--managed', '--backend', 'memory', '--size', '64MiB', '--hot-ranges-file', '/nonexistent/hot.txt', '--transport', 'fuse-loop'], message: /hot-ranges file \/nonexistent\/hot\.txt/ },
  ];
  for (const c of cases) {
    test(`${c.name} gives a clear message, exit 2 and nothing attached`, async () => {
      const r = await runMount(c.args, { env: mountEnv(dir) });
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, c.message);
      assert.equal(r.stdout, '');
      assert.deepEqual(await leftoversUnder(dir), []);
    });
  }
});
