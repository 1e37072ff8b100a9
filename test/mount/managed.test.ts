/**
 * The managed stack (managed.ts) without a kernel: a test device hands the composed Backend (what
 * the NBD server would serve) to the test, which reads, writes and flushes it as the kernel would.
 * The remote is a MemoryStore that logs every call, so pulls and pushes can be counted.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { UsageError } from '../../src/errors.js';
import type { AttachDevice, ManagedDevice } from '../../src/mount/managed.js';
import type { ManagedMountOptions } from '../../src/mount/managed-options.js';
import { ManagedFileMount } from '../../src/mount/managed-file.js';
import { ManagedPathMount } from '../../src/mount/managed-path.js';
import type { Backend } from '../../src/pipeline/types.js';
import { MemoryBackend } from '../../src/backends/memory.js';
import { MemoryStore } from '../support/memory-store.js';
import { makeTempDir, removeDir } from '../support/tools.js';

const chunkSize = 4096;
const chunks = 64;
const size = chunks * chunkSize;
let dir: string;
let n = 0;
/** A fresh cache path in the test directory. */
const cacheFile = (): string => path.join(dir, `cache-${++n}.img`);

before(async () => {
  dir = await makeTempDir('r3map-managed-');
});
after(async () => {
  await removeDir(dir);
});

/** A remote with known content; close() is a no-op so a test can reopen it (a crash leaves it open). */
function remoteWith(content: Buffer): MemoryStore {
  const remote = new MemoryStore(content.length);
  remote.fill(0, content);
  remote.close = async () => undefined;
  return remote;
}

/** Chunk offsets the remote saw `op` for, in call order. */
function offsetsOf(remote: MemoryStore, op: 'read' | 'write'): number[] {
  return remote.calls.filter((c) => c.startsWith(`${op} `)).map((c) => Number(c.split(' ')[1]!.split('+')[0]));
}

interface Rig {
  mount: ManagedPathMount;
  /** The Backend the NBD server would serve. */
  device: Backend;
}

/** A device that only hands the composed backend over; flush/close FLUSH it as the kernel and NBD server would. */
function testDevice(ready?: () => Promise<void>): { attach: AttachDevice; backend: () => Backend } {
  let served: Backend | undefined;
  const attach: AttachDevice = async (backend) => {
    served = backend;
    await ready?.();
    const device: ManagedDevice = {
      path: '/dev/test', transport: 'nbd', closed: new Promise(() => {}),
      flush: () => backend.sync(), close: () => backend.sync(),
    };
    return device;
  };
  return { attach, backend: () => served! };
}

async function open(options: ManagedMountOptions, ready?: () => Promise<void>): Promise<Rig> {
  const device = testDevice(ready);
  const mount = new ManagedPathMount({ chunkSize, pushIntervalMs: 0, stateIntervalMs: 0, ...options }, device.attach);
  await mount.open();
  return { mount, device: device.backend() };
}

/** Polls until `check()` holds; fails after `ms`. */
async function until(check: () => boolean, what: string, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

async function read(device: Backend, off: number, length: number): Promise<Buffer> {
  const buf = Buffer.alloc(length, 0xee);
  await device.readAt(buf, off);
  return buf;
}

describe('managed stack: reads and writes', () => {
  it('reads are correct before, during and after the background pull, and each chunk is fetched once', async () => {
    const content = randomBytes(size);
    const remote = remoteWith(content);
    const { mount, device } = await open({ remote, pullWorkers: 2, latencyMs: 1 });
    assert.deepEqual(await read(device, size - 5000, 5000), content.subarray(size - 5000), 'before: the last chunks, not pulled yet');
    await until(() => mount.stats().localChunks >= chunks / 4, 'a quarter of the pull');
    const release = remote.hold('read'); // the pull stalls here, well before its end
    assert.equal(mount.stats().pullDone, false);
    const during = [read(device, 1000, 3 * chunkSize), read(device, 40 * chunkSize - 10, 2 * chunkSize)];
    release();
    assert.deepEqual(await during[0], content.subarray(1000, 1000 + 3 * chunkSize), 'during, pulled chunks');
    assert.deepEqual(await during[1], content.subarray(40 * chunkSize - 10, 42 * chunkSize - 10), 'during, chunks not pulled yet');
    await until(() => mount.stats().pullDone, 'the end of the pull');
    assert.deepEqual(await read(device, 0, size), content, 'after');
    const reads = offsetsOf(remote, 'read');
    assert.equal(reads.length, chunks);
    assert.equal(new Set(reads).size, chunks);
    assert.equal(mount.stats().pulledBytes, size);
    await mount.close();
  });

  it('writes made during the pull survive it, unaligned and across chunks', async () => {
    const content = randomBytes(size);
    const model = Buffer.from(content);
    const remote = remoteWith(content);
    const { mount, device } = await open({ remote, pullWorkers: 2, latencyMs: 1 });
    await until(() => mount.stats().localChunks >= 4, 'the pull to start');
    const release = remote.hold('read'); // the pull stalls here, well before its end
    assert.equal(mount.stats().pullDone, false);
    const writes: Array<Promise<void>> = [];
    for (const [off, length] of [[10, 100], [chunkSize - 7, 20], [5 * chunkSize, chunkSize], [size - 3 * chunkSize - 1, 2 * chunkSize + 1], [40 * chunkSize + 3, 9000]] as const) {
      const data = randomBytes(length);
      data.copy(model, off);
      writes.push(device.writeAt(data, off));
    }
    release();
    await Promise.all(writes);
    await until(() => mount.stats().pullDone, 'the end of the pull');
    assert.deepEqual(await read(device, 0, size), model);
    await mount.sync();
    assert.deepEqual(remote.peek(0, size), model, 'sync pushed them');
    await mount.close();
  });

  it('sync() pushes exactly the dirty chunks, once each, then the remote holds them', async () => {
    const content = randomBytes(size);
    const model = Buffer.from(content);
    const remote = remoteWith(content);
    const { mount, device } = await open({ remote, pullFirst: true, latencyMs: 1 });
    for (const [off, length] of [[3 * chunkSize, chunkSize], [7 * chunkSize + 10, 10], [7 * chunkSize + 100, 10], [20 * chunkSize - 1, 2]] as const) {
      const data = randomBytes(length);
      data.copy(model, off);
      await device.writeAt(data, off);
    }
    assert.equal(mount.stats().dirtyChunks, 4);
    assert.deepEqual(offsetsOf(remote, 'write'), []);
    await mount.sync();
    assert.deepEqual(offsetsOf(remote, 'write').sort((a, b) => a - b), [3, 7, 19, 20].map((i) => i * chunkSize));
    assert.deepEqual(remote.peek(0, size), model);
    assert.equal(mount.stats().dirtyChunks, 0);
    await mount.sync();
    assert.equal(offsetsOf(remote, 'write').length, 4, 'a second sync pushes nothing');
    await mount.close();
  });

  it('a whole-chunk write to a chunk that was never pulled is pushed too', async () => {
    const remote = remoteWith(Buffer.alloc(size));
    const { mount, device } = await open({ remote, pullWorkers: 0 });
    const data = randomBytes(2 * chunkSize);
    await device.writeAt(data, 10 * chunkSize);
    assert.deepEqual(offsetsOf(remote, 'read'), [], 'no fetch for a whole-chunk write');
    await mount.sync();
    assert.deepEqual(remote.peek(10 * chunkSize, 2 * chunkSize), data);
    await mount.close();
  });

  it('a chunk written again while it is being pushed is pushed again', async () => {
    const remote = remoteWith(Buffer.alloc(size));
    const { mount, device } = await open({ remote, pullFirst: true });
    await device.writeAt(Buffer.alloc(chunkSize, 1), 0);
    const release = remote.hold('write');
    const first = mount.sync();
    await until(() => offsetsOf(remote, 'write').length === 1, 'the push to start');
    await device.writeAt(Buffer.alloc(chunkSize, 2), 0);
    release();
    await first;
    await mount.sync();
    assert.deepEqual(remote.peek(0, chunkSize), Buffer.alloc(chunkSize, 2));
    await mount.close();
  });

  for (const cache of ['memory', 'file'] as const) {
    it(`writev (a WRITE in socket-sized pieces) lands, unaligned and across chunks, and is pushed (${cache} cache)`, async () => {
      const content = randomBytes(size);
      const model = Buffer.from(content);
      const remote = remoteWith(content);
      const { mount, device } = await open({ remote, pullWorkers: 0, ...(cache === 'file' ? { cache: cacheFile() } : {}) });
      assert.equal(typeof device.writev, 'function', 'the managed backend offers the scatter path');
      const data = randomBytes(3 * chunkSize + 100);
      const pieces = [data.subarray(0, 1000), data.subarray(1000, 1000), data.subarray(1000, 9000), data.subarray(9000)];
      data.copy(model, chunkSize - 50);
      await device.writev!(pieces, chunkSize - 50);
      await device.writev!([data.subarray(0, chunkSize / 2), data.subarray(chunkSize / 2, chunkSize)], 20 * chunkSize); // whole chunk, 2 pieces
      data.copy(model, 20 * chunkSize, 0, chunkSize);
      assert.deepEqual(await read(device, 0, size), model);
      assert.equal(mount.stats().dirtyChunks, 6, 'chunks 0-4 and 20');
      await mount.sync();
      assert.deepEqual(remote.peek(0, size), model);
      await mount.close();
    });
  }

  it('with a memory cache, a FLUSH pushes (nothing else would survive a crash)', async () => {
    const remote = remoteWith(Buffer.alloc(size));
    const { mount, device } = await open({ remote, pullWorkers: 0 });
    await device.writeAt(Buffer.alloc(100, 9), 50);
    await device.sync();
    assert.deepEqual(remote.peek(50, 100), Buffer.alloc(100, 9));
    await mount.close();
  });

  it('close() pushes what is dirty, then closes the remote', async () => {
    const remote = new MemoryStore(size);
    const { mount, device } = await open({ remote, pullWorkers: 4 });
    await device.writeAt(Buffer.alloc(chunkSize, 5), 2 * chunkSize);
    await mount.close();
    assert.deepEqual(remote.peek(2 * chunkSize, chunkSize), Buffer.alloc(chunkSize, 5));
    await assert.rejects(remote.sync(), /closed/);
  });
});

describe('managed stack: a sparse remote with block status', () => {
  it('the pull skips the chunks the remote reports as holes: only written chunks cross the wire', async () => {
    const remote = new MemoryBackend({ size, pageSize: chunkSize });
    const content = Buffer.alloc(size);
    for (const c of [3, 4, 40]) {
      const data = randomBytes(chunkSize);
      data.copy(content, c * chunkSize);
      await remote.writeAt(data, c * chunkSize);
    }
    remote.close = async () => undefined;
    const { mount, device } = await open({ remote, pullWorkers: 4, cache: cacheFile() });
    await until(() => mount.stats().pullDone, 'the end of the pull');
    assert.equal(mount.stats().pulledBytes, 3 * chunkSize, 'holes were made local without a fetch');
    assert.deepEqual(await read(device, 0, size), content);
    await mount.close();
  });
});

describe('managed stack: options', () => {
  it('onChunkIsLocal fires for every chunk made local, with push off, and nothing reaches the remote', async () => {
    const remote = remoteWith(randomBytes(size));
    const local: number[] = [];
    const { mount, device } = await open({ remote, pullWorkers: 0, pushWorkers: 0, onChunkIsLocal: (off) => void local.push(off) });
    await read(device, 2 * chunkSize + 5, 10);
    await device.writeAt(Buffer.alloc(chunkSize, 1), 5 * chunkSize);
    await device.writeAt(Buffer.alloc(10, 1), 9 * chunkSize + 1);
    assert.deepEqual(local, [2, 5, 9].map((i) => i * chunkSize));
    await mount.sync();
    await mount.close();
    assert.deepEqual(offsetsOf(remote, 'write'), []);
  });

  it('pullFirst: open() resolves only when every chunk is local', async () => {
    const remote = remoteWith(randomBytes(size));
    const { mount } = await open({ remote, pullFirst: true, pullWorkers: 3, latencyMs: 1 });
    const stats = mount.stats();
    assert.equal(stats.localChunks, chunks);
    assert.equal(stats.pulledBeforeReadyBytes, size);
    assert.equal(stats.pullDone, true);
    await mount.close();
  });

  it('0 pull workers: nothing is pulled in the background; reads fetch their chunks', async () => {
    const content = randomBytes(size);
    const remote = remoteWith(content);
    const { mount, device } = await open({ remote, pullWorkers: 0 });
    await sleep(50);
    assert.deepEqual(remote.calls, []);
    assert.deepEqual(await read(device, chunkSize, 10), content.subarray(chunkSize, chunkSize + 10));
    assert.deepEqual(offsetsOf(remote, 'read'), [chunkSize]);
    assert.equal(mount.stats().pullDone, false);
    await mount.close();
  });

  it('the puller starts before the device is ready, and the bytes it pulled by then are reported', async () => {
    const remote = remoteWith(randomBytes(size));
    const ready = (): Promise<void> => until(() => remote.readCalls >= 4, 'pulls before the device is ready');
    const { mount } = await open({ remote, pullWorkers: 1 }, ready);
    assert.ok(mount.stats().pulledBeforeReadyBytes >= 4 * chunkSize, String(mount.stats().pulledBeforeReadyBytes));
    await mount.close();
  });

  const pullOrders: Array<{ name: string; pullPriority: ManagedMountOptions['pullPriority']; first: number[] }> = [
    { name: 'ascending', pullPriority: 'ascending', first: [0, 1, 2] },
    { name: 'descending', pullPriority: 'descending', first: [63, 62, 61] },
    { name: 'first-and-last', pullPriority: 'first-and-last', first: [0, 63, 1] },
    { name: 'a function', pullPriority: (i: number) => (i === 30 ? 1 : 0), first: [30, 0, 1] },
  ];
  for (const c of pullOrders) {
    it(`pull priority ${c.name} decides the order of the pulls`, async () => {
      const remote = remoteWith(randomBytes(size));
      const { mount } = await open({ remote, pullWorkers: 1, pullPriority: c.pullPriority, pullFirst: true });
      assert.deepEqual(offsetsOf(remote, 'read').slice(0, 3), c.first.map((i) => i * chunkSize));
      await mount.close();
    });
  }

  it('pull priority { hotRangesFile } pulls the listed ranges first, in the listed order', async () => {
    const { writeFile } = await import('node:fs/promises');
    const file = path.join(dir, 'hot.txt');
    await writeFile(file, `# hot\n${50 * chunkSize} ${2 * chunkSize}\n${10 * chunkSize + 1} 1\n`);
    const remote = remoteWith(randomBytes(size));
    const { mount } = await open({ remote, pullWorkers: 1, pullPriority: { hotRangesFile: file }, pullFirst: true });
    assert.deepEqual(offsetsOf(remote, 'read').slice(0, 4), [50, 51, 10, 0].map((i) => i * chunkSize));
    await mount.close();
  });

  const bad: Array<{ name: string; options: ManagedMountOptions }> = [
    { name: 'pullFirst without pull workers', options: { remote: new MemoryStore(size), pullFirst: true, pullWorkers: 0 } },
    { name: 'a negative worker count', options: { remote: new MemoryStore(size), pushWorkers: -1 } },
    { name: 'a chunk size of 0', options: { remote: new MemoryStore(size), chunkSize: 0 } },
    { name: 'both remote and remoteUri', options: { remote: new MemoryStore(size), remoteUri: 'memory' } },
    { name: 'an unknown pull priority', options: { remote: new MemoryStore(size), pullPriority: 'random' as 'ascending' } },
  ];
  for (const c of bad) {
    it(`${c.name} is a UsageError`, () => {
      assert.throws(() => new ManagedPathMount(c.options), UsageError);
    });
  }

  it('a remote whose size is not a multiple of 4096 is a UsageError at open, and the remote is closed', async () => {
    const remote = new MemoryStore(5000);
    const mount = new ManagedPathMount({ remote }, testDevice().attach);
    await assert.rejects(mount.open(), UsageError);
    await assert.rejects(remote.sync(), /closed/);
  });
});

describe('ManagedFileMount', () => {
  it('opens the device as a handle; sync runs the caller\'s hook before the push, close closes the handle before the detach', async () => {
    const { writeFile } = await import('node:fs/promises');
    const stand = path.join(dir, 'device-stand-in');
    await writeFile(stand, Buffer.alloc(4096));
    const calls: string[] = [];
    const remote = remoteWith(Buffer.alloc(size));
    const attach: AttachDevice = async (backend) => ({
      path: stand, transport: 'nbd', closed: new Promise(() => {}),
      flush: async () => void calls.push('device flush'),
      close: async () => {
        calls.push('detach');
        await backend.sync();
      },
    });
    const mount = new ManagedFileMount({
      remote, chunkSize, pullWorkers: 0, pushIntervalMs: 0,
      onBeforeSync: () => void calls.push('onBeforeSync'), onBeforeClose: () => void calls.push('onBeforeClose'),
    }, attach);
    const handle = await mount.open();
    await handle.write(Buffer.from('x'), 0, 1, 0);
    await mount.sync();
    assert.deepEqual(calls, ['onBeforeSync', 'device flush']);
    await mount.close();
    assert.deepEqual(calls.slice(2), ['onBeforeSync', 'device flush', 'onBeforeClose', 'detach']);
    await assert.rejects(handle.stat(), /closed|EBADF/);
  });
});

describe('managed stack: crash safety with a file cache', () => {

  it('after a crash that followed a flush, no chunk is pulled again and every flushed write reaches the remote', async () => {
    const cache = cacheFile();
    const content = randomBytes(size);
    const model = Buffer.from(content);
    const remote = remoteWith(content);
    const first = await open({ remote, cache, pullWorkers: 4 });
    await until(() => first.mount.stats().pullDone, 'the pull');
    for (const [off, length] of [[0, 10], [9 * chunkSize, 3 * chunkSize], [size - 100, 100]] as const) {
      const data = randomBytes(length);
      data.copy(model, off);
      await first.device.writeAt(data, off);
    }
    await first.device.sync(); // the kernel's FLUSH: acknowledged from here on
    assert.equal(offsetsOf(remote, 'write').length, 0, 'nothing was pushed before the crash');
    assert.ok(existsSync(`${cache}.r3map-state`));
    // crash: the first mount is dropped without close()
    remote.calls.length = 0;
    const second = await open({ remote, cache, pullWorkers: 4 });
    await until(() => second.mount.stats().pullDone, 'the second pull');
    assert.deepEqual(offsetsOf(remote, 'read'), [], 'every chunk was restored from the cache');
    assert.equal(second.mount.stats().restoredChunks, chunks);
    assert.equal(second.mount.stats().dirtyChunks, 5);
    assert.deepEqual(await read(second.device, 0, size), model);
    await second.mount.sync();
    assert.deepEqual(remote.peek(0, size), model);
    assert.equal(new Set(offsetsOf(remote, 'write')).size, 5);
    await second.mount.close();
    await first.mount.close().catch(() => undefined); // only to release its file handles
  });

  it('an unflushed write to a saved clean chunk cannot make the remote and the cache disagree after a crash', async () => {
    const cache = cacheFile();
    const content = randomBytes(size);
    const remote = remoteWith(content);
    const first = await open({ remote, cache, pullFirst: true });
    await first.device.sync(); // every chunk is saved local and clean
    await first.device.writeAt(Buffer.alloc(chunkSize, 0x77), 4 * chunkSize); // never flushed
    const second = await open({ remote, cache, pullWorkers: 0 });
    const shown = await read(second.device, 0, size);
    await second.mount.sync();
    assert.deepEqual(remote.peek(0, size), shown, 'what the device shows is what the remote holds');
    await second.mount.close();
    await first.mount.close().catch(() => undefined); // only to release its file handles
  });

  it('writes made with push off are kept dirty across restarts and pushed by a later mount with push on', async () => {
    const cache = cacheFile();
    const remote = remoteWith(Buffer.alloc(size));
    const first = await open({ remote, cache, pullWorkers: 0, pushWorkers: 0 });
    await first.device.writeAt(Buffer.alloc(3 * chunkSize, 3), 6 * chunkSize);
    await first.mount.close();
    assert.deepEqual(offsetsOf(remote, 'write'), []);
    const second = await open({ remote, cache, pullWorkers: 0 });
    assert.equal(second.mount.stats().dirtyChunks, 3);
    await second.mount.close();
    assert.deepEqual(remote.peek(6 * chunkSize, 3 * chunkSize), Buffer.alloc(3 * chunkSize, 3));
  });

  it('a clean close leaves a state that restores every chunk and nothing dirty', async () => {
    const cache = cacheFile();
    const remote = remoteWith(randomBytes(size));
    const first = await open({ remote, cache, pullFirst: true });
    await first.device.writeAt(Buffer.alloc(10, 1), 0);
    await first.mount.close();
    remote.calls.length = 0;
    const second = await open({ remote, cache, pullFirst: true });
    assert.deepEqual(remote.calls, []);
    assert.equal(second.mount.stats().dirtyChunks, 0);
    await second.mount.close();
  });

  const mismatches: Array<{ name: string; options: ManagedMountOptions; message: RegExp }> = [
    { name: 'another chunk size', options: { chunkSize: 8192 }, message: /chunk size 4096, not 8192/ },
    { name: 'another remote id', options: { remoteId: 'elsewhere' }, message: /another remote/ },
  ];
  for (const c of mismatches) {
    it(`a cache state for ${c.name} is refused with a clear UsageError; resetCache starts over`, async () => {
      const cache = cacheFile();
      const remote = remoteWith(randomBytes(size));
      const first = await open({ remote, cache, pullFirst: true });
      await first.mount.close();
      const mount = new ManagedPathMount({ remote, cache, stateIntervalMs: 0, chunkSize, ...c.options }, testDevice().attach);
      await assert.rejects(mount.open(), (err: Error) => err instanceof UsageError && c.message.test(err.message) && /reset-cache/.test(err.message));
      remote.calls.length = 0;
      const reset = await open({ remote, cache, pullFirst: true, resetCache: true, ...c.options });
      assert.equal(reset.mount.stats().restoredChunks, 0);
      assert.ok(offsetsOf(remote, 'read').length > 0, 'everything is pulled again');
      await reset.mount.close();
    });
  }

  it('a remote of another size is refused', async () => {
    const cache = cacheFile();
    const first = await open({ remote: remoteWith(Buffer.alloc(size)), cache, pullWorkers: 0 });
    await first.mount.close();
    const mount = new ManagedPathMount({ remote: remoteWith(Buffer.alloc(2 * size)), cache, chunkSize }, testDevice().attach);
    await assert.rejects(mount.open(), /remote of 262144 bytes, but this remote has 524288/);
  });
});
