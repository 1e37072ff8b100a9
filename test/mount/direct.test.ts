import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { open, readFile, writeFile, truncate } from 'node:fs/promises';
import path from 'node:path';
import { MemoryBackend } from '../../src/backends/memory.js';
import { MAP_ANONYMOUS, MAP_PRIVATE, mmap, munmap, PROT_READ, PROT_WRITE, viewOf } from '../../src/kernel/ffi.js';
import { DirectFileMount } from '../../src/mount/direct-file.js';
import { DirectPathMount } from '../../src/mount/direct-path.js';
import { DirectSliceMount } from '../../src/mount/direct-slice.js';
import { resolveDirectMountOptions } from '../../src/mount/direct.js';
import { DEFAULT_CHUNK_SIZE } from '../../src/util/chunks.js';
import { leftoversUnder, requireFuseLoop } from '../support/fuse-loop.js';
import { makeTempDir, removeDir } from '../support/tools.js';

const MIB = 1024 * 1024;
const SIZE = 64 * MIB;

describe('direct mount options', () => {
  const cases: Array<[string, () => unknown]> = [
    ['a size that is not a multiple of 4096', () => new DirectPathMount({ backendUri: 'memory', size: 5000 })],
    ['both a backend URI and a backend', () => new DirectPathMount({ backendUri: 'memory', backend: new MemoryBackend({ size: SIZE }) })],
    ['neither a backend URI nor a backend', () => new DirectPathMount({})],
    ['a negative chunk size', () => new DirectPathMount({ backendUri: 'memory', size: SIZE, chunkSize: -1 })],
    ['a chunk size of 0 (no chunking is spelled none)', () => new DirectPathMount({ backendUri: 'memory', size: SIZE, chunkSize: 0 })],
    ['a chunk size above 1 GiB', () => new DirectPathMount({ backendUri: 'memory', size: SIZE, chunkSize: 2 * 1024 ** 3 })],
    ['a negative latency', () => new DirectPathMount({ backendUri: 'memory', size: SIZE, latencyMs: -1 })],
    ['an unknown transport', () => new DirectPathMount({ backendUri: 'memory', size: SIZE, transport: 'pigeon' as never })],
    ['a slice mount given a backend object', () => new DirectSliceMount({ backend: new MemoryBackend({ size: SIZE }) } as never)],
  ];
  for (const [name, make] of cases) {
    test(`${name} is a usage error at construction`, () => assert.throws(make, { code: 'ERR_USAGE' }));
  }
  test("the chunk size is 'none' (no chunking layer) unless one is given, and the latency 0", () => {
    const plain = resolveDirectMountOptions({ backendUri: 'memory' });
    assert.equal(plain.chunkSize, 'none');
    assert.equal(plain.latencyMs, 0);
    assert.equal(plain.transport, 'auto');
    const chunked = resolveDirectMountOptions({ backendUri: 'memory', chunkSize: DEFAULT_CHUNK_SIZE, latencyMs: 5 });
    assert.equal(chunked.chunkSize, DEFAULT_CHUNK_SIZE);
    assert.equal(chunked.latencyMs, 5);
  });
  test('a chunk size of 0 names the spelling of no chunking', () => {
    assert.throws(() => resolveDirectMountOptions({ backendUri: 'memory', chunkSize: 0 }), /say 'none' \(--chunk-size none\)/);
  });
});

describe('direct mounts through fuse-loop', () => {
  let dir: string;
  const savedTmp = process.env.TMPDIR;
  before(async () => {
    dir = await makeTempDir('r3map-direct-test-');
    process.env.TMPDIR = dir;
  });
  after(async () => {
    if (savedTmp === undefined) delete process.env.TMPDIR;
    else process.env.TMPDIR = savedTmp;
    await removeDir(dir);
  });

  test('a path mount with a chunking layer writes unaligned ranges through to a file backend', async (t) => {
    if (!requireFuseLoop(t)) return;
    const file = path.join(dir, 'path.img');
    const mount = new DirectPathMount({ backendUri: `file://${file}`, size: SIZE, chunkSize: 64 * 1024, transport: 'fuse-loop' });
    const device = await mount.open();
    assert.equal(await mount.open(), device);
    assert.equal(mount.transport, 'fuse-loop');
    const written = randomBytes(100_000);
    const fh = await open(device, 'r+');
    try {
      await fh.write(written, 0, written.length, 70_001);
    } finally {
      await fh.close();
    }
    await mount.sync();
    assert.deepEqual((await readFile(file)).subarray(70_001, 70_001 + written.length), written);
    await mount.close();
    await mount.close();
    assert.deepEqual(await leftoversUnder(dir), []);
  });

  test('a file mount closes the backend it was given, and O_DIRECT I/O with aligned memory round-trips', async (t) => {
    if (!requireFuseLoop(t)) return;
    const backend = new MemoryBackend({ size: SIZE });
    const mount = new DirectFileMount({ backend, oDirect: true, transport: 'fuse-loop' });
    const fh = await mount.open();
    const length = 64 * 1024;
    const addr = mmap(length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
    try {
      const aligned = viewOf(addr, length);
      const pattern = randomBytes(length);
      pattern.copy(aligned);
      await fh.write(aligned, 0, length, 3 * MIB);
      await mount.sync();
      const seen = Buffer.alloc(length);
      await backend.readAt(seen, 3 * MIB);
      assert.deepEqual(seen, pattern);
      aligned.fill(0);
      await fh.read(aligned, 0, length, 3 * MIB);
      assert.deepEqual(Buffer.from(aligned), pattern);
    } finally {
      munmap(addr, length);
      await mount.close();
    }
    await assert.rejects(backend.readAt(Buffer.alloc(1), 0), { code: 'ERR_CLOSED' });
    assert.deepEqual(await leftoversUnder(dir), []);
  });

  test('a slice mount maps the backend as locked memory whose writes reach the backing file after sync', async (t) => {
    if (!requireFuseLoop(t)) return;
    const file = path.join(dir, 'slice.img');
    await writeFile(file, '');
    await truncate(file, SIZE);
    const before = randomBytes(4096);
    const fh = await open(file, 'r+');
    await fh.write(before, 0, before.length, 10 * MIB);
    await fh.close();

    const mount = new DirectSliceMount({ backendUri: `file://${file}`, transport: 'fuse-loop' });
    const memory = await mount.open();
    try {
      assert.equal(memory.length, SIZE);
      assert.equal(mount.locked, true);
      assert.deepEqual(memory.subarray(10 * MIB, 10 * MIB + before.length), before);
      const written = randomBytes(12_345);
      written.copy(memory, 5 * MIB + 123);
      await mount.sync();
      assert.deepEqual((await readFile(file)).subarray(5 * MIB + 123, 5 * MIB + 123 + written.length), written);
    } finally {
      await mount.close();
    }
    await mount.close();
    assert.equal(await mount.closed, undefined);
    assert.deepEqual(await leftoversUnder(dir), []);
  });
});
