import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { DEFAULT_MEMORY_PAGE_SIZE, MemoryBackend } from '../../src/backends/memory.js';
import type { Backend } from '../../src/pipeline/types.js';
import { readWriterAtSuite, pattern } from '../support/rwat-suite.js';
import { ScatterWriter, mulberry32, splitAtRandom } from './scatter-writer.js';

const KiB = 1024;
const GiB = 1024 * 1024 * 1024;

// Sizes are not a multiple of the page size: the last page is short.
for (const { chunkSize, tail } of [{ chunkSize: 64, tail: 37 }, { chunkSize: 4 * KiB, tail: 1234 }]) {
  readWriterAtSuite(`MemoryBackend with ${chunkSize}-byte pages`, async () => {
    const backend = new MemoryBackend({ size: 10 * chunkSize + tail, pageSize: chunkSize });
    return { rw: backend, size: backend.size, chunkSize, close: () => backend.close() };
  });
}

// The same suite with every write going through writev, cut into random pieces.
for (const { chunkSize, tail } of [{ chunkSize: 64, tail: 37 }, { chunkSize: 4 * KiB, tail: 1234 }]) {
  readWriterAtSuite(`MemoryBackend.writev with ${chunkSize}-byte pages`, async () => {
    const backend = new MemoryBackend({ size: 10 * chunkSize + tail, pageSize: chunkSize });
    return { rw: new ScatterWriter(backend, chunkSize), size: backend.size, chunkSize, close: () => backend.close() };
  });
}

describe('MemoryBackend', () => {
  it('views are its pages: filling write views is the write, read views show holes as zeros', async () => {
    const backend = new MemoryBackend({ size: 10 * 64 + 37, pageSize: 64 });
    const holes = backend.views(10, 200, false);
    assert.deepEqual(holes.map((v) => v.length), [54, 64, 64, 18]);
    assert.ok(holes.every((v) => v.equals(Buffer.alloc(v.length))));
    assert.equal(backend.allocatedPages, 0, 'a read view allocates nothing');
    const views = backend.views(100, 100, true);
    assert.deepEqual(views.map((v) => v.length), [28, 64, 8]);
    assert.equal(backend.allocatedPages, 3);
    assert.ok(views.every((v) => v.equals(Buffer.alloc(v.length))), 'new pages start as zeros');
    pattern(100, 9).copy(views[0]!, 0, 0, 28);
    pattern(100, 9).copy(views[1]!, 0, 28, 92);
    pattern(100, 9).copy(views[2]!, 0, 92, 100);
    const back = Buffer.alloc(140, 0xee);
    await backend.readAt(back, 80);
    assert.deepEqual(back, Buffer.concat([Buffer.alloc(20), pattern(100, 9), Buffer.alloc(20)]));
    const whole = backend.views(128, 64, false);
    assert.equal(whole.length, 1);
    assert.deepEqual(whole[0], pattern(100, 9).subarray(28, 92));
    const tail = backend.views(10 * 64, 37, true);
    assert.equal(tail[0]!.length, 37, 'the short last page');
    assert.throws(() => backend.views(600, 100, false), { code: 'ERR_OUT_OF_RANGE' });
    assert.throws(() => new MemoryBackend({ size: 64, readOnly: true }).views(0, 1, true), { code: 'ERR_READ_ONLY' });
    await backend.close();
    assert.throws(() => backend.views(0, 1, false), { code: 'ERR_CLOSED' });
  });

  it('takes the page size as pageSize, or under its old name chunkSize, and declares no blockSize (any range)', async () => {
    const paged = new MemoryBackend({ size: 1000, pageSize: 64 });
    const old = new MemoryBackend({ size: 1000, chunkSize: 64 });
    for (const backend of [paged, old]) {
      assert.deepEqual([backend.pageSize, backend.options.pageSize, (backend as Backend).blockSize], [64, 64, undefined]);
      await backend.writeAt(Buffer.alloc(3, 1), 63); // straddles pages 0 and 1
      assert.equal(backend.allocatedPages, 2);
    }
    assert.throws(() => new MemoryBackend({ size: 10, pageSize: 0 }), { code: 'ERR_USAGE' });
  });

  it('allocates nothing up front and one page per first write', async () => {
    const backend = new MemoryBackend({ size: GiB });
    assert.equal(backend.pageSize, DEFAULT_MEMORY_PAGE_SIZE);
    assert.equal(DEFAULT_MEMORY_PAGE_SIZE, 1024 * 1024);
    assert.equal(backend.allocatedPages, 0);
    await backend.writeAt(Buffer.from([1]), 5);
    await backend.writeAt(Buffer.from([2]), 6);
    assert.equal(backend.allocatedPages, 1);
    await backend.writeAt(Buffer.from([3, 4]), 2 * 1024 * 1024 - 1); // straddles pages 1 and 2
    assert.equal(backend.allocatedPages, 3);
    const buf = Buffer.alloc(4 * KiB, 0xff);
    await backend.readAt(buf, 500 * 1024 * 1024); // reads allocate nothing
    assert.ok(buf.every((b) => b === 0));
    assert.equal(backend.allocatedPages, 3);
    await backend.close();
  });

  it('holds data at the end of a sparse backend larger than 4 GiB', async () => {
    const size = 6 * GiB + 123;
    const backend = new MemoryBackend({ size, pageSize: 64 * KiB });
    const data = pattern(100, 7);
    await backend.writeAt(data, size - 100);
    await backend.writeAt(data, 4 * GiB - 50); // across the 2^32 boundary
    const back = Buffer.alloc(100, 0xff);
    await backend.readAt(back, size - 100);
    assert.deepEqual(back, data);
    await backend.readAt(back, 4 * GiB - 50);
    assert.deepEqual(back, data);
    const zeros = Buffer.alloc(200, 0xff);
    await backend.readAt(zeros, 4 * GiB + 1000);
    assert.ok(zeros.every((b) => b === 0));
    assert.equal(backend.allocatedPages, 3);
    await backend.close();
  });

  const discardCases = [
    { name: 'a whole page is dropped', off: 64, length: 64, pagesAfter: 3 },
    { name: 'a partial page is zeroed and kept', off: 70, length: 10, pagesAfter: 4 },
    { name: 'a range over pages drops the whole ones and zeroes the ends', off: 30, length: 170, pagesAfter: 2 },
    { name: 'the short last page is dropped when covered to the end', off: 192, length: 20, pagesAfter: 3 },
    { name: 'an empty range changes nothing', off: 100, length: 0, pagesAfter: 4 },
  ];
  for (const op of ['trim', 'zero'] as const) {
    for (const c of discardCases) {
      it(`${op}: ${c.name}, and the range reads as zeros`, async () => {
        const size = 212; // pages of 64: 0, 64, 128, 192 (20 bytes)
        const backend = new MemoryBackend({ size, pageSize: 64 });
        const model = pattern(size, 3);
        await backend.writeAt(model, 0);
        assert.equal(backend.allocatedPages, 4);
        await backend[op](c.off, c.length);
        model.fill(0, c.off, c.off + c.length);
        assert.equal(backend.allocatedPages, c.pagesAfter);
        const back = Buffer.alloc(size, 0xff);
        await backend.readAt(back, 0);
        assert.deepEqual(back, model);
        await backend.close();
      });
    }
  }

  it('rejects writes, trims and zeroes with ERR_READ_ONLY when read-only, and still reads zeros', async () => {
    const backend = new MemoryBackend({ size: 1000, readOnly: true });
    assert.equal(backend.readOnly, true);
    await assert.rejects(backend.writeAt(Buffer.alloc(1), 0), { code: 'ERR_READ_ONLY' });
    await assert.rejects(backend.trim(0, 10), { code: 'ERR_READ_ONLY' });
    await assert.rejects(backend.zero(0, 10), { code: 'ERR_READ_ONLY' });
    const buf = Buffer.alloc(10, 0xff);
    await backend.readAt(buf, 990);
    assert.ok(buf.every((b) => b === 0));
    await backend.close();
  });

  it('rejects trim and zero ranges past the end with ERR_OUT_OF_RANGE', async () => {
    const backend = new MemoryBackend({ size: 1000 });
    await assert.rejects(backend.trim(990, 11), { code: 'ERR_OUT_OF_RANGE' });
    await assert.rejects(backend.zero(-1, 1), { code: 'ERR_OUT_OF_RANGE' });
    await backend.close();
  });

  it('closes idempotently and rejects every call after close with ERR_CLOSED', async () => {
    const backend = new MemoryBackend({ size: 1000 });
    await backend.writeAt(Buffer.alloc(10, 1), 0);
    await backend.close();
    await backend.close();
    await assert.rejects(backend.readAt(Buffer.alloc(1), 0), { code: 'ERR_CLOSED' });
    await assert.rejects(backend.writeAt(Buffer.alloc(1), 0), { code: 'ERR_CLOSED' });
    await assert.rejects(backend.trim(0, 1), { code: 'ERR_CLOSED' });
    await assert.rejects(backend.sync(), { code: 'ERR_CLOSED' });
  });

  it('rejects a bad size or page size with ERR_USAGE and leaves the options object alone', () => {
    for (const bad of [{ size: -1 }, { size: 1.5 }, { size: 10, chunkSize: 0 }, { size: 10, chunkSize: 2 ** 31 }]) {
      assert.throws(() => new MemoryBackend(bad), { code: 'ERR_USAGE' }, JSON.stringify(bad));
    }
    const options = { size: 10 };
    const backend = new MemoryBackend(options);
    assert.deepEqual(options, { size: 10 });
    assert.ok(Object.isFrozen(backend.options));
  });

  describe('writev', () => {
    // Pages of 64 bytes, size 212: pages at 0, 64, 128 and a short one at 192 (20 bytes).
    const size = 212;
    const cases: { name: string; off: number; pieces: number[] }[] = [
      { name: 'pieces inside one page', off: 3, pieces: [5, 0, 7] },
      { name: 'a piece straddling a page boundary', off: 60, pieces: [2, 10, 1] },
      { name: 'pieces that end exactly on page boundaries', off: 0, pieces: [64, 64] },
      { name: 'one piece covering three pages', off: 10, pieces: [150] },
      { name: 'many small pieces across pages', off: 50, pieces: [1, 1, 30, 0, 2, 40, 3, 9] },
      { name: 'pieces into the short last page, up to the end', off: 180, pieces: [8, 0, 4, 20] },
      { name: 'the whole backend in uneven pieces', off: 0, pieces: [1, 63, 65, 70, 13] },
      { name: 'only empty pieces', off: 100, pieces: [0, 0] },
      { name: 'no pieces at all', off: 100, pieces: [] },
    ];
    for (const c of cases) {
      it(`writes ${c.name} as one write of their concatenation`, async () => {
        const backend = new MemoryBackend({ size, pageSize: 64 });
        const model = Buffer.alloc(size);
        // Something already there, so untouched bytes are checked too.
        const before = pattern(30, 9);
        await backend.writeAt(before, 100);
        before.copy(model, 100);
        const data = pattern(c.pieces.reduce((a, b) => a + b, 0), 4);
        const pieces: Buffer[] = [];
        for (let at = 0, i = 0; i < c.pieces.length; at += c.pieces[i]!, i++) pieces.push(data.subarray(at, at + c.pieces[i]!));
        await backend.writev(pieces, c.off);
        data.copy(model, c.off);
        const back = Buffer.alloc(size, 0xff);
        await backend.readAt(back, 0);
        assert.deepEqual(back, model);
        await backend.close();
      });
    }

    it('leaves the rest of a new page zero when a write covers only part of it', async () => {
      const backend = new MemoryBackend({ size, pageSize: 64 });
      // Covers page 1 whole (allocated unzeroed), pages 0 and 2 partly (allocated zeroed).
      await backend.writev([Buffer.alloc(20, 7), Buffer.alloc(70, 8), Buffer.alloc(20, 9)], 44);
      const back = Buffer.alloc(size, 0xff);
      await backend.readAt(back, 0);
      const model = Buffer.alloc(size);
      model.fill(7, 44, 64).fill(8, 64, 134).fill(9, 134, 154);
      assert.deepEqual(back, model);
      assert.equal(backend.allocatedPages, 3);
      await backend.close();
    });

    it('fills whole new pages completely even from dirty memory (random pieces, 1 MiB pages)', async () => {
      const random = mulberry32(7);
      for (let round = 0; round < 4; round++) {
        // Garbage in freed memory makes unzeroed pages likely to show it if a byte were missed.
        for (let i = 0; i < 8; i++) Buffer.allocUnsafeSlow(1024 * 1024).fill(0xa5);
        const backend = new MemoryBackend({ size: 3 * 1024 * 1024 + 100 });
        const data = pattern(backend.size, round);
        await backend.writev(splitAtRandom(data, random, 40), 0);
        const back = Buffer.alloc(backend.size, 0xff);
        await backend.readAt(back, 0);
        assert.ok(back.equals(data), `round ${round}`);
        await backend.close();
      }
    });

    it('rejects out-of-range, read-only and closed writev calls and writes nothing', async () => {
      const backend = new MemoryBackend({ size: 1000, pageSize: 64 });
      await assert.rejects(backend.writev([Buffer.alloc(500), Buffer.alloc(501)], 0), { code: 'ERR_OUT_OF_RANGE' });
      await assert.rejects(backend.writev([Buffer.alloc(1)], -1), { code: 'ERR_OUT_OF_RANGE' });
      assert.equal(backend.allocatedPages, 0);
      await backend.close();
      await assert.rejects(backend.writev([Buffer.alloc(1)], 0), { code: 'ERR_CLOSED' });
      const readOnly = new MemoryBackend({ size: 1000, readOnly: true });
      await assert.rejects(readOnly.writev([Buffer.alloc(1)], 0), { code: 'ERR_READ_ONLY' });
      await readOnly.close();
    });
  });
});
