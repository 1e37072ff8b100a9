import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, stat, truncate, writeFile, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FileBackend, dropFront } from '../../src/backends/file.js';
import { BackendError } from '../../src/errors.js';
import { readWriterAtSuite, pattern } from '../support/rwat-suite.js';
import { ScatterWriter, mulberry32, splitAtRandom } from './scatter-writer.js';

const KiB = 1024;
const MiB = 1024 * KiB;
let dir = '';
let fileNo = 0;
const nextPath = (): string => join(dir, `disk-${fileNo++}.img`);

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'r3map-file-backend-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

readWriterAtSuite('FileBackend on a new sparse file', async () => {
  const chunkSize = 4 * KiB;
  const backend = await FileBackend.open(nextPath(), { size: 10 * chunkSize + 1234, create: true });
  return { rw: backend, size: backend.size, chunkSize, close: () => backend.close() };
});

readWriterAtSuite('FileBackend.writev on a new sparse file (writes cut into random pieces)', async () => {
  const chunkSize = 4 * KiB;
  const backend = await FileBackend.open(nextPath(), { size: 10 * chunkSize + 1234, create: true });
  return { rw: new ScatterWriter(backend, 11), size: backend.size, chunkSize, close: () => backend.close() };
});

describe('FileBackend', () => {
  it('creates a new file sparse, and a reopen finds its size and contents intact', async () => {
    const path = nextPath();
    const size = 256 * MiB + 7;
    const backend = await FileBackend.open(path, { size });
    const data = pattern(5000, 1);
    await backend.writeAt(data, size - 5000);
    await backend.writeAt(data, 3);
    await backend.sync();
    await backend.close();
    const st = await stat(path);
    assert.equal(st.size, size);
    assert.ok(st.blocks * 512 < 4 * MiB, `allocated ${st.blocks * 512} bytes: not sparse`);

    const again = await FileBackend.open(path);
    assert.equal(again.size, size);
    const back = Buffer.alloc(5000, 0xff);
    await again.readAt(back, size - 5000);
    assert.deepEqual(back, data);
    await again.readAt(back, 3);
    assert.deepEqual(back, data);
    await again.readAt(back, 128 * MiB);
    assert.ok(back.every((b) => b === 0));
    await again.close();
  });

  it('extends an existing smaller file to the size given and keeps its contents', async () => {
    const path = nextPath();
    const data = pattern(300, 2);
    await writeFile(path, data);
    const backend = await FileBackend.open(path, { size: 1000 });
    assert.equal(backend.size, 1000);
    assert.equal((await stat(path)).size, 1000);
    const back = Buffer.alloc(1000, 0xff);
    await backend.readAt(back, 0);
    assert.deepEqual(back.subarray(0, 300), data);
    assert.ok(back.subarray(300).every((b) => b === 0));
    await backend.close();
  });

  it('exposes only the first bytes of a larger file when a smaller size is given, without truncating it', async () => {
    const path = nextPath();
    await writeFile(path, pattern(1000, 3));
    const backend = await FileBackend.open(path, { size: 100 });
    await assert.rejects(backend.readAt(Buffer.alloc(1), 100), { code: 'ERR_OUT_OF_RANGE' });
    await backend.close();
    assert.equal((await stat(path)).size, 1000);
  });

  it('reads zeros past the end of a file that shrank underneath it', async () => {
    const path = nextPath();
    const backend = await FileBackend.open(path, { size: 10 * KiB });
    await backend.writeAt(pattern(10 * KiB, 4), 0);
    await truncate(path, 6 * KiB);
    const back = Buffer.alloc(8 * KiB, 0xff);
    await backend.readAt(back, 2 * KiB);
    assert.deepEqual(back.subarray(0, 4 * KiB), pattern(10 * KiB, 4).subarray(2 * KiB, 6 * KiB));
    assert.ok(back.subarray(4 * KiB).every((b) => b === 0));
    await backend.close();
  });

  it('opens read-only: reads work, writes, trims and zeroes reject with ERR_READ_ONLY', async () => {
    const path = nextPath();
    const data = pattern(2000, 5);
    await writeFile(path, data);
    const backend = await FileBackend.open(path, { readOnly: true });
    assert.equal(backend.readOnly, true);
    assert.equal(backend.size, 2000);
    const back = Buffer.alloc(2000);
    await backend.readAt(back, 0);
    assert.deepEqual(back, data);
    await assert.rejects(backend.writeAt(Buffer.alloc(1), 0), { code: 'ERR_READ_ONLY' });
    await assert.rejects(backend.trim(0, 1), { code: 'ERR_READ_ONLY' });
    await assert.rejects(backend.zero(0, 1), { code: 'ERR_READ_ONLY' });
    await backend.sync();
    await backend.close();
    assert.deepEqual(await readFile(path), data);
  });

  const openErrors = [
    { name: 'a size larger than a read-only file', setup: true, options: { size: 5000, readOnly: true }, code: 'ERR_USAGE' },
    { name: 'a missing file without size or create', setup: false, options: {}, code: 'ERR_BACKEND' },
    { name: 'a missing file opened read-only', setup: false, options: { size: 10, readOnly: true }, code: 'ERR_BACKEND' },
    { name: 'a missing file with a size but create: false', setup: false, options: { size: 10, create: false }, code: 'ERR_BACKEND' },
    { name: 'a file to create without a size', setup: false, options: { create: true }, code: 'ERR_USAGE' },
    { name: 'a negative size', setup: false, options: { size: -1 }, code: 'ERR_USAGE' },
  ];
  for (const c of openErrors) {
    it(`refuses to open ${c.name} with ${c.code} and creates nothing`, async () => {
      const path = nextPath();
      if (c.setup) await writeFile(path, Buffer.alloc(100));
      await assert.rejects(FileBackend.open(path, c.options), { code: c.code });
      if (!c.setup) await assert.rejects(stat(path), { code: 'ENOENT' }, 'no file is left behind');
    });
  }

  it('wraps the driver error as the cause of a BackendError', async () => {
    const err = await FileBackend.open(join(dir, 'missing', 'x.img')).catch((e: unknown) => e);
    assert.ok(err instanceof BackendError);
    assert.equal(err.backend, 'file');
    assert.equal(err.op, 'open');
    assert.equal((err.cause as NodeJS.ErrnoException).code, 'ENOENT');
  });

  it('refuses a path that is neither a regular file nor a block device with ERR_USAGE', async () => {
    await assert.rejects(FileBackend.open('/dev/null', { readOnly: true }), { code: 'ERR_USAGE' });
  });

  for (const op of ['trim', 'zero'] as const) {
    it(`${op} makes a range across the shared zero buffer's size read as zeros and nothing else`, async () => {
      const size = 1 * MiB + 333;
      const backend = await FileBackend.open(nextPath(), { size });
      const model = pattern(size, 6);
      await backend.writeAt(model, 0);
      await backend[op](1000, 700 * KiB); // more than the 256 KiB zero buffer
      model.fill(0, 1000, 1000 + 700 * KiB);
      const back = Buffer.alloc(size, 0xff);
      await backend.readAt(back, 0);
      assert.deepEqual(back, model);
      await backend.close();
    });
  }

  it('lets calls in flight finish on close, then rejects calls with ERR_CLOSED; close is idempotent', async () => {
    const backend = await FileBackend.open(nextPath(), { size: 64 * KiB });
    const data = pattern(4 * KiB, 7);
    const writes = Array.from({ length: 16 }, (_, i) => backend.writeAt(data, i * 4 * KiB));
    const closing = backend.close();
    await Promise.all(writes);
    await closing;
    await backend.close();
    await assert.rejects(backend.readAt(Buffer.alloc(1), 0), { code: 'ERR_CLOSED' });
    await assert.rejects(backend.writeAt(Buffer.alloc(1), 0), { code: 'ERR_CLOSED' });
    await assert.rejects(backend.sync(), { code: 'ERR_CLOSED' });
  });

  it('reads concurrently at many offsets and returns each range', async () => {
    const size = 2 * MiB;
    const backend = await FileBackend.open(nextPath(), { size });
    const model = pattern(size, 8);
    await backend.writeAt(model, 0);
    const reads = Array.from({ length: 32 }, async (_, i) => {
      const off = i * 61 * KiB + i;
      const buf = Buffer.alloc(7 * KiB, 0xff);
      await backend.readAt(buf, off);
      assert.deepEqual(buf, model.subarray(off, off + 7 * KiB));
    });
    await Promise.all(reads);
    await backend.close();
  });

  describe('writev', () => {
    it('writes more pieces than IOV_MAX (1500 random pieces) as one write', async () => {
      const size = 3 * MiB + 5;
      const backend = await FileBackend.open(nextPath(), { size });
      const data = pattern(2 * MiB + 333, 12);
      const pieces = splitAtRandom(data, mulberry32(5), 3000);
      assert.ok(pieces.length > 1024, `only ${pieces.length} pieces`);
      await backend.writev(pieces, 777);
      const back = Buffer.alloc(size, 0xff);
      await backend.readAt(back, 0);
      const model = Buffer.alloc(size);
      data.copy(model, 777);
      assert.ok(back.equals(model));
      await backend.close();
    });

    it('writes concurrent writevs to disjoint ranges, each intact', async () => {
      const backend = await FileBackend.open(nextPath(), { size: 4 * MiB });
      const model = pattern(4 * MiB, 13);
      const random = mulberry32(9);
      await Promise.all(
        Array.from({ length: 16 }, (_, i) => backend.writev(splitAtRandom(model.subarray(i * 256 * KiB, (i + 1) * 256 * KiB), random, 20), i * 256 * KiB)),
      );
      const back = Buffer.alloc(4 * MiB, 0xff);
      await backend.readAt(back, 0);
      assert.ok(back.equals(model));
      await backend.close();
    });

    it('rejects out-of-range, read-only and closed writev calls', async () => {
      const path = nextPath();
      const backend = await FileBackend.open(path, { size: 1000 });
      await assert.rejects(backend.writev([Buffer.alloc(600), Buffer.alloc(401)], 0), { code: 'ERR_OUT_OF_RANGE' });
      await backend.close();
      await assert.rejects(backend.writev([Buffer.alloc(1)], 0), { code: 'ERR_CLOSED' });
      const readOnly = await FileBackend.open(path, { readOnly: true });
      await assert.rejects(readOnly.writev([Buffer.alloc(1)], 0), { code: 'ERR_READ_ONLY' });
      await readOnly.close();
    });

    const drops: { name: string; pieces: number[]; n: number; rest: number[] }[] = [
      { name: 'inside the first piece', pieces: [10, 20], n: 3, rest: [7, 20] },
      { name: 'exactly at a piece boundary', pieces: [10, 20, 5], n: 10, rest: [20, 5] },
      { name: 'past several pieces and empty ones', pieces: [1, 0, 2, 0, 30, 4], n: 5, rest: [28, 4] },
      { name: 'up to the last byte', pieces: [4, 4], n: 7, rest: [1] },
    ];
    for (const d of drops) {
      it(`after a short write, goes on ${d.name}`, () => {
        const data = pattern(d.pieces.reduce((a, b) => a + b, 0), 14);
        const pieces: Buffer[] = [];
        for (let at = 0, i = 0; i < d.pieces.length; at += d.pieces[i]!, i++) pieces.push(data.subarray(at, at + d.pieces[i]!));
        const rest = dropFront(pieces, d.n);
        assert.deepEqual(rest.map((p) => p.length), d.rest);
        assert.deepEqual(Buffer.concat(rest), data.subarray(d.n));
        assert.equal(pieces[0]!.length, d.pieces[0], 'the caller\'s array is left alone');
      });
    }
  });
});
