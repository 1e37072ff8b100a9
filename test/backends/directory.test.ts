import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readdir, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { OutOfRangeError } from '../../src/errors.js';
import { DirectoryBackend } from '../../src/backends/directory.js';
import { readWriterAtSuite, pattern } from '../support/rwat-suite.js';

const KiB = 1024;
let root = '';
let dirNo = 0;
const nextDir = (): string => join(root, `store-${dirNo++}`);
const sorted = async (dir: string): Promise<string[]> => (await readdir(dir)).sort((a, b) => Number(a) - Number(b));

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'r3map-dir-backend-'));
});
after(async () => {
  await rm(root, { recursive: true, force: true });
});

// Sizes are not a multiple of the chunk size; the tight caps make the LRU evict all the time.
const suiteTargets = [
  { chunkSize: 4 * KiB, tail: 1234, maxOpenFiles: 512 },
  { chunkSize: 4 * KiB, tail: 1234, maxOpenFiles: 2 },
  { chunkSize: 64, tail: 37, maxOpenFiles: 1 },
];
for (const { chunkSize, tail, maxOpenFiles } of suiteTargets) {
  readWriterAtSuite(`DirectoryBackend with ${chunkSize}-byte chunks and at most ${maxOpenFiles} open files`, async () => {
    const backend = await DirectoryBackend.open(nextDir(), { size: 10 * chunkSize + tail, chunkSize, maxOpenFiles });
    return { rw: backend, size: backend.size, chunkSize, close: () => backend.close() };
  });
}

describe('DirectoryBackend', () => {
  it('extents: chunks with a file are data, the rest holes of zeros, for any range', async () => {
    const backend = await DirectoryBackend.open(nextDir(), { size: 1024 * KiB + 100, chunkSize: 64 * KiB });
    const H = 3; // EXTENT_HOLE | EXTENT_ZERO
    assert.deepEqual(await backend.extents(0, backend.size), [{ length: backend.size, flags: H }]);
    await backend.writeAt(Buffer.alloc(10, 1), 2 * 64 * KiB + 5);
    await backend.writeAt(Buffer.alloc(64 * KiB, 2), 3 * 64 * KiB);
    await backend.writeAt(Buffer.alloc(1, 3), 1024 * KiB + 50); // the short last chunk
    assert.deepEqual(await backend.extents(0, backend.size), [
      { length: 128 * KiB, flags: H }, { length: 128 * KiB, flags: 0 }, { length: 768 * KiB, flags: H }, { length: 100, flags: 0 },
    ]);
    assert.deepEqual(await backend.extents(130 * KiB, 100 * KiB), [{ length: 100 * KiB, flags: 0 }]);
    assert.deepEqual(await backend.extents(100 * KiB, 30 * KiB), [{ length: 28 * KiB, flags: H }, { length: 2 * KiB, flags: 0 }]);
    await backend.trim(2 * 64 * KiB, 64 * KiB);
    assert.deepEqual((await backend.extents(0, 256 * KiB)).map((e) => [e.length, e.flags]), [[192 * KiB, H], [64 * KiB, 0]]);
    await assert.rejects(backend.extents(1024 * KiB, 200), OutOfRangeError);
    await backend.close();
  });

  it('reads a missing chunk as zeros into a dirty buffer and creates no file on read', async () => {
    const dir = nextDir();
    const backend = await DirectoryBackend.open(dir, { size: 1000 * KiB });
    const buf = Buffer.alloc(200 * KiB, 0xff);
    await backend.readAt(buf, 100 * KiB + 3);
    assert.ok(buf.every((b) => b === 0));
    assert.deepEqual(await readdir(dir), []);
    await backend.close();
  });

  it('creates one file per written chunk, named by its offset in decimal', async () => {
    const dir = nextDir();
    const backend = await DirectoryBackend.open(dir, { size: 1000 * KiB, chunkSize: 64 * KiB });
    await backend.writeAt(Buffer.alloc(10, 1), 3 * 64 * KiB + 5);
    await backend.writeAt(Buffer.alloc(10, 2), 64 * KiB - 5); // chunks 0 and 1
    await backend.writeAt(Buffer.alloc(10, 3), 1000 * KiB - 10); // the short last chunk
    assert.deepEqual(await sorted(dir), ['0', '65536', '196608', '983040']);
    await backend.close();
  });

  const caps = [
    { maxOpenFiles: 2, expectPeakAtMost: 2 },
    { maxOpenFiles: 1, expectPeakAtMost: 1 },
    { maxOpenFiles: 0, expectPeakAtMost: 10 }, // 0 = no cap
  ];
  for (const { maxOpenFiles, expectPeakAtMost } of caps) {
    it(`keeps at most ${expectPeakAtMost} files open with maxOpenFiles ${maxOpenFiles} while 10 chunks are used concurrently`, async () => {
      const chunkSize = 4 * KiB;
      const size = 10 * chunkSize;
      const backend = await DirectoryBackend.open(nextDir(), { size, chunkSize, maxOpenFiles });
      const model = Buffer.alloc(size);
      await Promise.all(
        Array.from({ length: 30 }, (_, i) => {
          const off = (i % 10) * chunkSize + Math.floor(i / 10) * 1000;
          const data = pattern(900, i);
          data.copy(model, off);
          return backend.writeAt(data, off);
        }),
      );
      const back = Buffer.alloc(size, 0xff);
      const reads = Array.from({ length: 10 }, (_, i) => backend.readAt(back.subarray(i * chunkSize, (i + 1) * chunkSize), i * chunkSize));
      await Promise.all([...reads, backend.sync()]);
      assert.deepEqual(back, model);
      assert.ok(backend.openFiles.peak <= expectPeakAtMost, `peak ${backend.openFiles.peak} open files`);
      if (maxOpenFiles > 0) assert.ok(backend.openFiles.now <= maxOpenFiles);
      await backend.close();
      assert.equal(backend.openFiles.now, 0);
    });
  }

  it('keeps the data after close and reopen', async () => {
    const dir = nextDir();
    const size = 300 * KiB + 77;
    const model = pattern(size, 9);
    model.fill(0, 64 * KiB, 2 * 64 * KiB); // one chunk never written
    const first = await DirectoryBackend.open(dir, { size, maxOpenFiles: 2 });
    await first.writeAt(model.subarray(0, 64 * KiB), 0);
    await first.writeAt(model.subarray(2 * 64 * KiB), 2 * 64 * KiB);
    await first.sync();
    await first.close();
    const again = await DirectoryBackend.open(dir, { size, readOnly: true });
    const back = Buffer.alloc(size, 0xff);
    await again.readAt(back, 0);
    assert.deepEqual(back, model);
    await again.close();
  });

  // Chunks of 4 KiB at 0, 4096, 8192, 12288 and 16384 (1000 bytes); all written but `unwritten`.
  const discardCases = [
    { name: 'whole chunks are removed', off: 4 * KiB, length: 8 * KiB, unwritten: -1, filesAfter: ['0', '12288', '16384'] },
    { name: 'partial chunks are zeroed and kept', off: 100, length: 5 * KiB, unwritten: -1, filesAfter: ['0', '4096', '8192', '12288', '16384'] },
    { name: 'a range over chunks removes the whole ones', off: 2 * KiB, length: 12 * KiB, unwritten: -1, filesAfter: ['0', '12288', '16384'] },
    { name: 'the short last chunk is removed when covered to the end', off: 16 * KiB, length: 1000, unwritten: -1, filesAfter: ['0', '4096', '8192', '12288'] },
    { name: 'a partly covered missing chunk stays missing', off: 0, length: 100, unwritten: 0, filesAfter: ['4096', '8192', '12288', '16384'] },
  ];
  for (const op of ['trim', 'zero'] as const) {
    for (const c of discardCases) {
      it(`${op}: ${c.name}, and the range reads as zeros`, async () => {
        const dir = nextDir();
        const chunkSize = 4 * KiB;
        const size = 4 * chunkSize + 1000;
        const backend = await DirectoryBackend.open(dir, { size, chunkSize });
        const model = pattern(size, 10);
        for (let i = 0; i * chunkSize < size; i++) {
          const chunk = model.subarray(i * chunkSize, (i + 1) * chunkSize);
          if (i === c.unwritten) chunk.fill(0);
          else await backend.writeAt(chunk, i * chunkSize);
        }
        await backend[op](c.off, c.length);
        model.fill(0, c.off, c.off + c.length);
        assert.deepEqual(await sorted(dir), c.filesAfter);
        const back = Buffer.alloc(size, 0xff);
        await backend.readAt(back, 0);
        assert.deepEqual(back, model);
        await backend.sync();
        await backend.close();
      });
    }
  }

  it('writes into a chunk again after trim removed its file', async () => {
    const backend = await DirectoryBackend.open(nextDir(), { size: 16 * KiB, chunkSize: 4 * KiB, maxOpenFiles: 1 });
    await backend.writeAt(pattern(4 * KiB, 11), 0);
    await Promise.all([backend.trim(0, 4 * KiB), backend.writeAt(Buffer.from([7]), 4 * KiB)]);
    await backend.writeAt(Buffer.from([9, 9]), 10);
    const back = Buffer.alloc(16, 0xff);
    await backend.readAt(back, 0);
    assert.deepEqual([...back], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9, 9, 0, 0, 0, 0]);
    await backend.close();
  });

  it('opens read-only: the directory must exist, reads work and writes reject with ERR_READ_ONLY', async () => {
    const missing = nextDir();
    await assert.rejects(DirectoryBackend.open(missing, { size: 100, readOnly: true }), { code: 'ERR_BACKEND' });
    await assert.rejects(stat(missing), { code: 'ENOENT' });
    const dir = nextDir();
    await (await DirectoryBackend.open(dir, { size: 100 })).close();
    const backend = await DirectoryBackend.open(dir, { size: 100, readOnly: true });
    await assert.rejects(backend.writeAt(Buffer.alloc(1), 0), { code: 'ERR_READ_ONLY' });
    await assert.rejects(backend.trim(0, 1), { code: 'ERR_READ_ONLY' });
    await assert.rejects(backend.zero(0, 1), { code: 'ERR_READ_ONLY' });
    const buf = Buffer.alloc(100, 0xff);
    await backend.readAt(buf, 0);
    assert.ok(buf.every((b) => b === 0));
    await backend.close();
  });

  it('rejects bad options with ERR_USAGE', async () => {
    for (const bad of [{ size: -1 }, { size: 10, chunkSize: 0 }, { size: 10, maxOpenFiles: -1 }, { size: 10, maxOpenFiles: 1.5 }]) {
      await assert.rejects(DirectoryBackend.open(nextDir(), bad), { code: 'ERR_USAGE' }, JSON.stringify(bad));
    }
  });

  it('lets calls in flight finish on close, then rejects calls with ERR_CLOSED; close is idempotent', async () => {
    const backend = await DirectoryBackend.open(nextDir(), { size: 64 * KiB, chunkSize: 4 * KiB, maxOpenFiles: 2 });
    const writes = Array.from({ length: 16 }, (_, i) => backend.writeAt(pattern(4 * KiB + 1, i), i * 4 * KiB - (i > 0 ? 1 : 0)));
    const closing = backend.close();
    await Promise.all(writes);
    await closing;
    await backend.close();
    await assert.rejects(backend.readAt(Buffer.alloc(1), 0), { code: 'ERR_CLOSED' });
    await assert.rejects(backend.writeAt(Buffer.alloc(1), 0), { code: 'ERR_CLOSED' });
    await assert.rejects(backend.sync(), { code: 'ERR_CLOSED' });
  });
});
