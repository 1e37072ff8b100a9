import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ChunkedReadWriterAt } from '../../src/pipeline/chunked.js';
import type { ReadWriterAt } from '../../src/pipeline/types.js';
import { MemoryStore } from '../support/memory-store.js';

interface Case {
  readonly name: string;
  readonly chunkSize: number;
  readonly size: number;
  readonly off: number;
  readonly length: number;
  /** The error code both a read and a write reject with, or undefined when both succeed. */
  readonly code?: string;
}

const cases: readonly Case[] = [
  { name: 'writes and reads with chunks of size 4', chunkSize: 4, size: 4, off: 0, length: 4 },
  { name: 'writes and reads with chunks of size 1', chunkSize: 1, size: 4, off: 0, length: 1 },
  { name: 'writes and reads the second chunk', chunkSize: 4, size: 12, off: 4, length: 4 },
  { name: 'writes and reads the last chunk', chunkSize: 2, size: 6, off: 4, length: 2 },
  { name: 'writes and reads a short last chunk at its short length', chunkSize: 4, size: 10, off: 8, length: 2 },
  { name: 'rejects a length larger than the chunk', chunkSize: 4, size: 4, off: 0, length: 5, code: 'ERR_BAD_LENGTH' },
  { name: 'rejects a length smaller than the chunk', chunkSize: 4, size: 4, off: 0, length: 3, code: 'ERR_BAD_LENGTH' },
  { name: 'rejects a full chunk length for a short last chunk', chunkSize: 4, size: 10, off: 8, length: 4, code: 'ERR_BAD_LENGTH' },
  { name: 'rejects a misaligned offset', chunkSize: 4, size: 8, off: 2, length: 4, code: 'ERR_MISALIGNED' },
  { name: 'rejects an offset past the end', chunkSize: 4, size: 4, off: 6, length: 4, code: 'ERR_OUT_OF_RANGE' },
  { name: 'rejects a chunk just beyond the end', chunkSize: 4, size: 8, off: 8, length: 4, code: 'ERR_OUT_OF_RANGE' },
  { name: 'rejects a negative offset', chunkSize: 4, size: 8, off: -4, length: 4, code: 'ERR_OUT_OF_RANGE' },
  { name: 'rejects a fractional offset', chunkSize: 4, size: 8, off: 0.5, length: 4, code: 'ERR_OUT_OF_RANGE' },
];

describe('ChunkedReadWriterAt', () => {
  for (const c of cases) {
    it(c.name, async () => {
      const store = new MemoryStore(c.size);
      const rw = new ChunkedReadWriterAt(store, { chunkSize: c.chunkSize, size: c.size });
      const data = Buffer.alloc(c.length, 0x5a);
      const out = Buffer.alloc(c.length, 0xff);
      if (c.code === undefined) {
        await rw.writeAt(data, c.off);
        await rw.readAt(out, c.off);
        assert.deepEqual(out, data);
        assert.deepEqual(store.peek(c.off, c.length), data);
      } else {
        await assert.rejects(rw.writeAt(data, c.off), { code: c.code });
        await assert.rejects(rw.readAt(out, c.off), { code: c.code });
        assert.equal(store.calls.length, 0, 'a rejected call never reaches next');
      }
    });
  }

  it('reads a never-written chunk as zeros', async () => {
    const store = new MemoryStore(8);
    const rw = new ChunkedReadWriterAt(store, { chunkSize: 4, size: 8 });
    const out = Buffer.alloc(4, 0xff);
    await rw.readAt(out, 4);
    assert.deepEqual(out, Buffer.alloc(4));
  });

  it("returns next's promise itself, with no wrapper", () => {
    const promise = Promise.resolve();
    const next: ReadWriterAt = { readAt: () => promise, writeAt: () => promise };
    const rw = new ChunkedReadWriterAt(next, { chunkSize: 4, size: 8 });
    assert.equal(rw.readAt(Buffer.alloc(4), 0), promise);
    assert.equal(rw.writeAt(Buffer.alloc(4), 4), promise);
  });

  it('refuses a chunk size or a size that is not a whole number of bytes', () => {
    const bad = [
      { chunkSize: 0, size: 8 },
      { chunkSize: -4, size: 8 },
      { chunkSize: 1.5, size: 8 },
      { chunkSize: 4, size: -1 },
    ];
    for (const options of bad) {
      assert.throws(() => new ChunkedReadWriterAt(new MemoryStore(8), options), { code: 'ERR_USAGE' });
    }
  });
});
