import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { open, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it, type TestContext } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { KernelError, UsageError } from '../../src/errors.js';
import { Errno } from '../../src/kernel/errno.js';
import { attachNbdDevice, disconnectNbdDevice, listNbdDevices, type NbdAttachOptions, type NbdDevice } from '../../src/kernel/nbd-device.js';
import { NbdKernelFlag } from '../../src/kernel/nbd-ioctl.js';
import { readNbdState, threadAlive } from '../../src/kernel/sysfs.js';
import { makeTempDir, removeDir, runOk, runTool } from '../support/tools.js';
import { CountingBackend, queueAttribute, requireNbd, serveBackend, spawnAttachChild, waitExit, type ServedBackend } from './support.js';

const MIB = 1024 * 1024;
/** Under emulation a node child takes many seconds to start. */
const CHILD_TIMEOUT_MS = 120_000;
const DD = '/usr/bin/dd';
const SETTLE_MS = 5000;
/** Generous for emulation; on hardware a device is ready in milliseconds. */
const READY_TIMEOUT_MS = 60_000;

let dir: string | undefined;
const attached = new Set<NbdDevice>();
const servers = new Set<ServedBackend>();

before(async () => {
  dir = await makeTempDir('r3map-kernel-');
});

after(async () => {
  for (const device of attached) await device.detach().catch(() => undefined);
  for (const served of servers) await served.close().catch(() => undefined);
  await removeDir(dir);
});

interface Attached {
  readonly device: NbdDevice;
  readonly backend: CountingBackend;
  readonly served: ServedBackend;
}

async function attachMemory(size: number, options: Partial<NbdAttachOptions> & { readOnly?: boolean; dropFlags?: number } = {}): Promise<Attached> {
  const backend = new CountingBackend(size, options.readOnly ?? false);
  const served = serveBackend(backend, options.readOnly ?? false);
  servers.add(served);
  const { readOnly: _readOnly, dropFlags = 0, ...rest } = options;
  const device = await attachNbdDevice(served.serve, { size, transmissionFlags: served.transmissionFlags & ~dropFlags, readyTimeoutMs: READY_TIMEOUT_MS, ...rest });
  attached.add(device);
  return { device, backend, served };
}

async function detach(device: NbdDevice): Promise<void> {
  await device.detach();
  attached.delete(device);
}

/** The device is released: no size, no pid file. Polls a little: a dead owner's teardown runs in the kernel. */
async function assertFree(devicePath: string, settleMs = 0): Promise<void> {
  const index = Number(devicePath.replace('/dev/nbd', ''));
  const until = performance.now() + settleMs;
  let state = await readNbdState(index);
  while ((state.sizeBytes !== 0 || state.pid !== undefined) && performance.now() < until) {
    await sleep(10);
    state = await readNbdState(index);
  }
  assert.equal(state.sizeBytes, 0, `${devicePath} still has a size`);
  assert.equal(state.pid, undefined, `${devicePath} still has a pid file`);
}

function patternOf(length: number, seed: number): Buffer {
  const buf = Buffer.alloc(length);
  for (let i = 0; i < length; i++) buf[i] = (i * 31 + seed * 7 + (i >> 9)) & 0xff;
  return buf;
}

describe('attachNbdDevice', () => {
  it('serves writes into the backend and reads what the backend holds, then detaches without a trace', async (t: TestContext) => {
    if (!requireNbd(t)) return;
    const { device, backend } = await attachMemory(8 * MIB);
    const state = await readNbdState(device.index);
    assert.equal(state.sizeBytes, 8 * MIB);
    assert.ok(state.pid !== undefined && existsSync(`/proc/${process.pid}/task/${state.pid}`), 'the NBD_DO_IT thread is one of ours');

    const written = patternOf(64 * 1024, 1);
    const file = path.join(dir!, 'written.bin');
    await writeFile(file, written);
    await runOk(DD, [`if=${file}`, `of=${device.path}`, 'bs=64k', 'seek=3', 'oflag=direct', 'status=none']);
    const inBackend = Buffer.alloc(written.length);
    await backend.readAt(inBackend, 3 * 64 * 1024);
    assert.deepEqual(inBackend, written);

    const stored = patternOf(8192, 2);
    await backend.writeAt(stored, 5 * MIB);
    const out = path.join(dir!, 'read.bin');
    await runOk(DD, [`if=${device.path}`, `of=${out}`, 'bs=4096', 'count=2', `skip=${(5 * MIB) / 4096}`, 'iflag=direct', 'status=none']);
    assert.deepEqual(await readFile(out), stored);

    await detach(device);
    assert.equal(await device.closed, undefined);
    await device.detach(); // idempotent
    await assertFree(device.path);
  });

  const cases: readonly {
    readonly name: string;
    readonly options: Partial<NbdAttachOptions> & { readOnly?: boolean; dropFlags?: number };
    readonly ro: string;
    readonly flushes: boolean;
    readonly logicalBlockSize: string;
    readonly ioTimeoutMs: string;
  }[] = [
    { name: 'a writable export with SEND_FLUSH gets a writable device whose fsync reaches the backend', options: {}, ro: '0', flushes: true, logicalBlockSize: '4096', ioTimeoutMs: '30000' },
    { name: 'an export without SEND_FLUSH never sees a FLUSH', options: { dropFlags: NbdKernelFlag.NBD_FLAG_SEND_FLUSH | NbdKernelFlag.NBD_FLAG_SEND_FUA }, ro: '0', flushes: false, logicalBlockSize: '4096', ioTimeoutMs: '30000' },
    { name: 'a read-only export makes the device read-only', options: { readOnly: true }, ro: '1', flushes: false, logicalBlockSize: '4096', ioTimeoutMs: '30000' },
    { name: 'blockSize and timeoutSec reach the block queue', options: { blockSize: 512, timeoutSec: 7 }, ro: '0', flushes: true, logicalBlockSize: '512', ioTimeoutMs: '7000' },
  ];
  for (const c of cases) {
    it(c.name, async (t: TestContext) => {
      if (!requireNbd(t)) return;
      const { device, backend } = await attachMemory(4 * MIB, c.options);
      const ro = await runOk('blockdev', ['--getro', device.path]);
      assert.equal(ro.stdout.trim(), c.ro);
      assert.equal(await queueAttribute(device.index, 'logical_block_size'), c.logicalBlockSize);
      assert.equal(await queueAttribute(device.index, 'io_timeout'), c.ioTimeoutMs);
      const write = await runTool(DD, ['if=/dev/zero', `of=${device.path}`, 'bs=4096', 'count=4', 'oflag=direct', 'conv=fsync,notrunc', 'status=none']);
      assert.equal(write.code === 0, c.ro === '0', `dd: ${write.stderr}`);
      assert.equal(backend.syncs > 0, c.flushes, `backend.sync() calls: ${backend.syncs}`);
      await detach(device);
      await assertFree(device.path);
    });
  }

  it('gives two attaches at once two different devices', async (t: TestContext) => {
    if (!requireNbd(t)) return;
    const [a, b] = await Promise.all([attachMemory(2 * MIB), attachMemory(2 * MIB)]);
    assert.notEqual(a.device.path, b.device.path);
    const connected = (await listNbdDevices()).filter((d) => d.connected).map((d) => d.path);
    assert.ok(connected.includes(a.device.path) && connected.includes(b.device.path), connected.join(' '));
    await Promise.all([detach(a.device), detach(b.device)]);
    await assertFree(a.device.path);
    await assertFree(b.device.path);
  });

  it('refuses a forced device this process already uses with EBUSY and leaves it attached', async (t: TestContext) => {
    if (!requireNbd(t)) return;
    const { device } = await attachMemory(2 * MIB);
    await assert.rejects(attachMemory(2 * MIB, { device: device.path }), (err: unknown) => err instanceof KernelError && err.errno === Errno.EBUSY && err.device === device.path);
    assert.equal((await readNbdState(device.index)).sizeBytes, 2 * MIB);
    await detach(device);
  });

  it('rejects bad options with a UsageError before attaching anything', async () => {
    const before = (await listNbdDevices()).filter((d) => d.connected).length;
    const bad: readonly Partial<NbdAttachOptions>[] = [
      { size: 4096 * 10 + 512 },
      { size: 1000, blockSize: 512 },
      { size: 8192, blockSize: 8192 },
      { size: 8192, blockSize: 1000 },
      { size: 0 },
      { size: 8192, device: '/dev/sda' },
      { size: 8192, timeoutSec: -1 },
    ];
    for (const options of bad) {
      await assert.rejects(attachNbdDevice(() => assert.fail('serve must not be called'), { transmissionFlags: 1, size: 8192, ...options }), UsageError, JSON.stringify(options));
    }
    assert.equal((await listNbdDevices()).filter((d) => d.connected).length, before);
  });

  it('reports a server that closes the connection through closed() and frees the device', async (t: TestContext) => {
    if (!requireNbd(t)) return;
    const { device, served } = await attachMemory(2 * MIB);
    await served.close();
    const err = await device.closed;
    assert.ok(err instanceof KernelError && err.syscall === 'NBD_DO_IT', String(err));
    attached.delete(device);
    await device.detach(); // already released: a no-op
    await assertFree(device.path);
  });
});

describe('a device whose owner died', () => {
  it('is freed by the kernel when nothing else holds it, and held open it stays until disconnectNbdDevice and the last close', { timeout: 3 * CHILD_TIMEOUT_MS }, async (t: TestContext) => {
    if (!requireNbd(t)) return;
    const { child, paths } = await spawnAttachChild(2, 'wait', CHILD_TIMEOUT_MS);
    const [held, unheld] = paths as [string, string];
    const holder = await open(held, 'r');
    try {
      child.kill('SIGKILL');
      assert.equal(await waitExit(child, CHILD_TIMEOUT_MS), 'SIGKILL');
      await assertFree(unheld, SETTLE_MS);
      assert.equal(await disconnectNbdDevice(unheld), 'not-connected');

      const stale = await readNbdState(Number(held.replace('/dev/nbd', '')));
      assert.ok(stale.sizeBytes > 0 && stale.pid !== undefined, 'the held device still looks connected');
      assert.equal(await threadAlive(stale.pid), false, 'its NBD_DO_IT thread is gone');
      // Far from block 0, which opening the device may already have cached.
      await assert.rejects(holder.read(Buffer.alloc(4096), 0, 4096, 3 * MIB), (err: NodeJS.ErrnoException) => err.code === 'EIO');
      await assert.rejects(attachMemory(2 * MIB, { device: held }), (err: unknown) => err instanceof KernelError && err.errno === Errno.EBUSY);
      assert.equal(await disconnectNbdDevice(held), 'disconnected');
    } finally {
      await holder.close();
    }
    await assertFree(held, SETTLE_MS);
    const again = await attachMemory(2 * MIB, { device: held });
    await detach(again.device);
  });

  it('is detached by the exit hook when its process calls process.exit without detaching', { timeout: 3 * CHILD_TIMEOUT_MS }, async (t: TestContext) => {
    if (!requireNbd(t)) return;
    const { child, paths } = await spawnAttachChild(1, 'exit', CHILD_TIMEOUT_MS);
    assert.equal(await waitExit(child, CHILD_TIMEOUT_MS), 0);
    await assertFree(paths[0]!, SETTLE_MS);
  });
});
