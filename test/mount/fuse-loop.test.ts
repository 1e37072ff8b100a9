import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { open, readFile } from 'node:fs/promises';
import path from 'node:path';
import { MemoryBackend } from '../../src/backends/memory.js';
import { NbdServer } from '../../src/nbd/server.js';
import { silentLogger } from '../../src/log.js';
import { attachFuseLoop, disconnectFuseLoop, isFuseLoopBackFile } from '../../src/mount/fuse-loop.js';
import { chooseTransport, hasNbdDriver } from '../../src/mount/transport.js';
import { leftoversUnder, loopDevice, requireFuseLoop, withForeignLoopDevice } from '../support/fuse-loop.js';
import { makeTempDir, removeDir } from '../support/tools.js';

const MIB = 1024 * 1024;
const SIZE = 64 * MIB;

describe('isFuseLoopBackFile', () => {
  const cases: Array<[string, boolean]> = [
    ['/tmp/r3map-fuse-loop-AbC123/mnt/r3map', true],
    ['/var/tmp/x/r3map-fuse-loop-q1w2e3/mnt/r3map (deleted)', true],
    ['/tmp/r3map-fuse-loop-AbC123/mnt/other', false],
    ['/tmp/r3map-fuse-loop-AbC123/r3map', false],
    ['/home/me/disk.img', false],
    ['', false],
  ];
  for (const [backFile, ours] of cases) {
    test(`'${backFile}' is ${ours ? '' : 'not '}one of our FUSE files`, () => assert.equal(isFuseLoopBackFile(backFile), ours));
  }
});

describe('chooseTransport', () => {
  test('auto picks fuse-loop on a kernel without nbd and nbd on one with it', () => {
    assert.equal(chooseTransport('auto', silentLogger), hasNbdDriver() ? 'nbd' : 'fuse-loop');
  });
  test('an explicit fuse-loop is kept, and a /dev/loopN device implies it under auto', () => {
    assert.equal(chooseTransport('fuse-loop', silentLogger), 'fuse-loop');
    assert.equal(chooseTransport('auto', silentLogger, '/dev/loop7'), 'fuse-loop');
  });
  test('a device that does not fit the transport is a usage error', () => {
    assert.throws(() => chooseTransport('fuse-loop', silentLogger, '/dev/nbd0'), { code: 'ERR_USAGE' });
    assert.throws(() => chooseTransport('auto', silentLogger, '/dev/sda'), { code: 'ERR_USAGE' });
  });
  test('nbd on a kernel without the driver fails with the modprobe hint', (t) => {
    if (hasNbdDriver()) return t.skip('this kernel has nbd');
    assert.throws(() => chooseTransport('nbd', silentLogger), (err: Error & { code?: string }) => err.code === 'ERR_KERNEL' && /modprobe nbd/.test(err.message));
  });
});

describe('attachFuseLoop', () => {
  let dir: string;
  const savedTmp = process.env.TMPDIR;
  before(async () => {
    dir = await makeTempDir('r3map-fuse-loop-test-');
    process.env.TMPDIR = dir; // our fuse-loop dirs land here, so leftovers are this file's alone
  });
  after(async () => {
    if (savedTmp === undefined) delete process.env.TMPDIR;
    else process.env.TMPDIR = savedTmp;
    await removeDir(dir);
  });

  const serve = (readOnly = false): { backend: MemoryBackend; server: NbdServer } => {
    const backend = new MemoryBackend({ size: SIZE });
    return { backend, server: new NbdServer({ exports: [{ name: 'disk', backend, readOnly }] }) };
  };

  test('an export becomes a loop device of its size whose reads and writes reach the backend', async (t) => {
    if (!requireFuseLoop(t)) return;
    const { backend, server } = serve();
    const dev = await attachFuseLoop(server, { size: SIZE, exportName: 'disk' });
    try {
      assert.match(dev.path, /^\/dev\/loop\d+$/);
      const sectors = Number(await readFile(`/sys/block/${path.basename(dev.path)}/size`, 'utf8'));
      assert.equal(sectors * 512, SIZE);
      assert.ok(isFuseLoopBackFile((await loopDevice(dev.path))!.backFile));

      const written = randomBytes(64 * 1024);
      const fh = await open(dev.path, 'r+');
      try {
        await fh.write(written, 0, written.length, MIB + 512);
        await fh.sync();
        const seen = Buffer.alloc(written.length);
        await backend.readAt(seen, MIB + 512);
        assert.deepEqual(seen, written);

        const stored = randomBytes(8192);
        await backend.writeAt(stored, 8 * MIB);
        const read = Buffer.alloc(stored.length);
        await fh.read(read, 0, read.length, 8 * MIB);
        assert.deepEqual(read, stored);
      } finally {
        await fh.close();
      }
    } finally {
      await dev.detach();
      await server.close();
    }
    await dev.detach();
    assert.equal(await dev.closed, undefined);
    assert.deepEqual(await leftoversUnder(dir), []);
  });

  test('a read-only attach gives a read-only loop device', async (t) => {
    if (!requireFuseLoop(t)) return;
    const { server } = serve(true);
    const dev = await attachFuseLoop(server, { size: SIZE, exportName: 'disk', readOnly: true });
    try {
      assert.equal((await loopDevice(dev.path))!.ro, true);
      // Opening for writing may succeed; the write itself is refused.
      const refused = (err: NodeJS.ErrnoException): boolean => ['EROFS', 'EACCES', 'EPERM'].includes(err.code ?? '');
      const fh = await open(dev.path, 'r+').catch((err: NodeJS.ErrnoException) => (assert.ok(refused(err), err.message), undefined));
      if (fh !== undefined) {
        try {
          await assert.rejects(fh.write(Buffer.alloc(4096, 1), 0, 4096, 0), refused);
        } finally {
          await fh.close();
        }
      }
    } finally {
      await dev.detach();
      await server.close();
    }
    assert.deepEqual(await leftoversUnder(dir), []);
  });

  test('an attach to a busy loop device fails with EBUSY and undoes its own steps', async (t) => {
    if (!requireFuseLoop(t)) return;
    const first = serve();
    const second = serve();
    const dev = await attachFuseLoop(first.server, { size: SIZE, exportName: 'disk' });
    try {
      await assert.rejects(attachFuseLoop(second.server, { size: SIZE, exportName: 'disk', device: dev.path }), (err: Error & { code?: string }) => {
        assert.equal(err.code, 'ERR_KERNEL');
        assert.match(err.message, /EBUSY|busy/);
        return true;
      });
      const left = await leftoversUnder(dir);
      assert.equal(left.filter((l) => l.startsWith('mount')).length, 1, left.join('\n'));
    } finally {
      await dev.detach();
      await Promise.all([first.server.close(), second.server.close()]);
    }
    assert.deepEqual(await leftoversUnder(dir), []);
  });

  test('nbdfuse showing a size other than the one expected fails and leaves nothing behind', async (t) => {
    if (!requireFuseLoop(t)) return;
    const { server } = serve();
    await assert.rejects(attachFuseLoop(server, { size: SIZE * 2, exportName: 'disk' }), { code: 'ERR_USAGE' });
    await server.close();
    assert.deepEqual(await leftoversUnder(dir), []);
  });

  test('disconnectFuseLoop refuses a loop device that r3map did not attach', async (t) => {
    if (!requireFuseLoop(t)) return;
    await withForeignLoopDevice(dir, (device) => assert.rejects(disconnectFuseLoop(device), { code: 'ERR_USAGE' }));
  });

  test('disconnectFuseLoop says not-connected for a detached device and refuses a non-loop path', async (t) => {
    if (!requireFuseLoop(t)) return;
    const { server } = serve();
    const dev = await attachFuseLoop(server, { size: SIZE, exportName: 'disk' });
    await dev.detach();
    await server.close();
    // Another test process (tests run in parallel) may grab the freed device at once: then it is
    // theirs, and disconnecting it would break their test, so the check is skipped.
    if ((await loopDevice(dev.path)) === undefined) {
      const status = await disconnectFuseLoop(dev.path).catch((err: Error & { code?: string }) => err.code);
      assert.ok(status === 'not-connected' || status === 'ERR_USAGE', String(status));
    } else {
      t.diagnostic(`${dev.path} was taken by another test at once; not touching it`);
    }
    await assert.rejects(disconnectFuseLoop('/dev/sda'), { code: 'ERR_USAGE' });
  });
});
