import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { MemoryBackend } from '../../src/backends/memory.js';
import { readWriterAtSuite, pattern } from '../support/rwat-suite.js';

const KiB = 1024;
const GiB = 1024 * 1024 * 1024;

// Sizes are not a multiple of the page size: the last page is short.
for (const { chunkSize, tail } of [{ chunkSize: 64, tail: 37 }, { chunkSize: 4 * KiB, tail: 1234 }]) {
  readWriterAtSuite(`MemoryBackend with ${chunkSize}-byte pages`, async () => {
    const backend = new MemoryBackend({ size: 10 * chunkSize + tail, chunkSize });
    return { rw: backend, size: backend.size, chunkSize, close: () => backend.close() };
  });
}

describe('MemoryBackend', () => {
  it('allocates nothing up front and one page per first write', async () => {
    const backend = new MemoryBackend({ size: GiB });
    assert.equal(backend.chunkSize, 1024 * 1024);
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
    const backend = new MemoryBackend({ size, chunkSize: 64 * KiB });
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
        const backend = new MemoryBackend({ size, chunkSize: 64 });
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
});
