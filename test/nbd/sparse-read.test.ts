import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { MemoryBackend } from '../../src/backends/memory.js';
import { readDataOnly, sparseReplyParts } from '../../src/nbd/sparse-read.js';
import { zeroView } from '../../src/pipeline/zero-views.js';

const KiB = 1024;
const req = (offset: number, length: number) => ({ offset, length, handleHi: 0, handleLo: 7 });

/** [type, flags, offset, length] of each chunk header in `parts`, and the data bytes after each. */
function chunks(parts: readonly Buffer[]): [number, number, number, number][] {
  const out: [number, number, number, number][] = [];
  for (const p of parts) {
    if (p.length >= 20 && p.readUInt32BE(0) === 0x668e33ef) {
      const type = p.readUInt16BE(6);
      const off = p.readUInt32BE(20) * 2 ** 32 + p.readUInt32BE(24);
      out.push([type, p.readUInt16BE(4), off, type === 2 ? p.readUInt32BE(28) : p.readUInt32BE(16) - 8]);
    }
  }
  return out;
}

describe('sparse READ replies', () => {
  test('runs of holes become OFFSET_HOLE chunks, runs of data OFFSET_DATA chunks, DONE on the last', () => {
    const data = Buffer.alloc(8 * KiB, 1);
    const views = [zeroView(4 * KiB), zeroView(8 * KiB), data, Buffer.alloc(KiB, 2), zeroView(100), zeroView(16 * KiB)];
    const parts = sparseReplyParts(req(1000, 4 * KiB + 8 * KiB + 8 * KiB + KiB + 100 + 16 * KiB), views)!;
    assert.deepEqual(chunks(parts), [
      [2, 0, 1000, 12 * KiB],
      [1, 0, 1000 + 12 * KiB, 9 * KiB + 100], // a hole under 4 KiB is sent as data
      [2, 1, 1000 + 21 * KiB + 100, 16 * KiB],
    ]);
    assert.equal(parts[2], data, 'data views are sent as they are');
    assert.equal(sparseReplyParts(req(0, 4 * KiB), [Buffer.alloc(4 * KiB)]), undefined, 'no hole: no sparse reply');
    assert.equal(sparseReplyParts(req(0, 100), [zeroView(100)]), undefined, 'a hole under 4 KiB is not worth a chunk');
  });

  test('readDataOnly reads only the data extents and names the holes', async () => {
    const backend = new MemoryBackend({ size: 1024 * KiB, pageSize: 64 * KiB });
    await backend.writeAt(Buffer.alloc(64 * KiB, 9), 128 * KiB);
    let reads = 0;
    const counted = Object.assign(Object.create(backend) as MemoryBackend, {
      readAt: (buf: Buffer, off: number) => { reads++; return backend.readAt(buf, off); },
      extents: (off: number, length: number) => backend.extents(off, length),
    });
    const payload = Buffer.alloc(256 * KiB, 0xee);
    const views = (await readDataOnly(counted, req(64 * KiB, 256 * KiB), payload))!;
    assert.deepEqual(views.map((v) => v.length), [64 * KiB, 64 * KiB, 128 * KiB]);
    assert.equal(reads, 1, 'only the data extent was read');
    assert.ok(views[1]!.equals(Buffer.alloc(64 * KiB, 9)));
    assert.ok(views[0]!.equals(Buffer.alloc(64 * KiB)) && views[2]!.equals(Buffer.alloc(128 * KiB)));
    await backend.writeAt(Buffer.alloc(1024 * KiB, 3), 0);
    assert.equal(await readDataOnly(counted, req(0, 256 * KiB), payload), undefined, 'no hole: nothing read');
  });
});
