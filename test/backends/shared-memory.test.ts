import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { SharedMemoryBackend, attachShared } from '../../src/backends/shared-memory.js';
import { openBackend } from '../../src/backends/open.js';
import { readWriterAtSuite, pattern } from '../support/rwat-suite.js';
import { ScatterWriter } from './scatter-writer.js';

const KiB = 1024;
const G = 64 * KiB; // the backend's granule

// Sizes are not a multiple of the granule: the last one is short.
readWriterAtSuite('SharedMemoryBackend', async () => {
  const backend = SharedMemoryBackend.create({ size: 10 * G + 1234 });
  return { rw: backend, size: backend.size, chunkSize: 4 * KiB, close: () => backend.close() };
});

readWriterAtSuite('SharedMemoryBackend.writev', async () => {
  const backend = SharedMemoryBackend.create({ size: 3 * G + 37 });
  return { rw: new ScatterWriter(backend, 4 * KiB), size: backend.size, chunkSize: 4 * KiB, close: () => backend.close() };
});

describe('SharedMemoryBackend', () => {
  it('a second attachment (another thread would make it the same way) sees one store', async () => {
    const one = SharedMemoryBackend.create({ size: 4 * G });
    const two = attachShared(one.share().data);
    await one.writeAt(pattern(100_000, 3), 5);
    const back = Buffer.alloc(100_000);
    await two.readAt(back, 5);
    assert.deepEqual(back, pattern(100_000, 3));
    await two.trim!(0, 2 * G);
    const after = Buffer.alloc(10, 0xee);
    await one.readAt(after, 100);
    assert.deepEqual(after, Buffer.alloc(10));
    await two.close();
    await one.readAt(after, 0); // closing an attachment leaves the store to its creator
    await one.close();
    assert.equal(one.share().module.endsWith('shared-memory.js'), true);
  });

  it('extents and read views: granules never written are holes (zeros), trim and zero free whole ones', async () => {
    const backend = SharedMemoryBackend.create({ size: 8 * G });
    const H = 3;
    assert.deepEqual(await backend.extents(0, 8 * G), [{ length: 8 * G, flags: H }]);
    await backend.writeAt(Buffer.alloc(10, 1), 2 * G + 5);
    await backend.writeAt(Buffer.alloc(G + 1, 2), 4 * G);
    assert.deepEqual(await backend.extents(0, 8 * G), [{ length: 2 * G, flags: H }, { length: G, flags: 0 }, { length: G, flags: H }, { length: 2 * G, flags: 0 }, { length: 2 * G, flags: H }]);
    const views = backend.views(G, 3 * G, false);
    assert.deepEqual(views.map((v) => v.length), [G, G, G]);
    assert.ok(views[0]!.equals(Buffer.alloc(G)) && views[2]!.equals(Buffer.alloc(G)));
    await backend.zero(4 * G + 10, G + 20); // the rest of granule 4 and the part of granule 5 that was written
    const back = Buffer.alloc(G + 1, 0xee);
    await backend.readAt(back, 4 * G);
    assert.deepEqual(back, Buffer.concat([Buffer.alloc(10, 2), Buffer.alloc(G - 9)]));
    await backend.trim(2 * G, 4 * G);
    assert.deepEqual(await backend.extents(0, 8 * G), [{ length: 8 * G, flags: H }]);
    await backend.writeAt(Buffer.alloc(1, 9), 8 * G - 1);
    await backend.trim(7 * G + 3, G - 3); // reaches the end: the last granule is freed whole
    assert.deepEqual(await backend.extents(7 * G, G), [{ length: G, flags: 0 }], 'granule 7 was cut in part only');
    const last = Buffer.alloc(1, 0xee);
    await backend.readAt(last, 8 * G - 1);
    assert.deepEqual(last, Buffer.alloc(1));
    await backend.close();
  });

  it('refuses what MemoryBackend refuses, and a 1 TiB store costs nothing until written', async () => {
    const big = SharedMemoryBackend.create({ size: 2 ** 40 });
    await big.writeAt(Buffer.alloc(3, 5), 2 ** 39);
    assert.deepEqual(big.views(2 ** 39, 3, false)[0], Buffer.alloc(3, 5));
    await assert.rejects(big.readAt(Buffer.alloc(2), 2 ** 40 - 1), { code: 'ERR_OUT_OF_RANGE' });
    await big.close();
    await assert.rejects(big.readAt(Buffer.alloc(1), 0), { code: 'ERR_CLOSED' });
    const ro = SharedMemoryBackend.create({ size: G, readOnly: true });
    await assert.rejects(ro.writeAt(Buffer.alloc(1), 0), { code: 'ERR_READ_ONLY' });
    await ro.close();
    assert.throws(() => SharedMemoryBackend.create({ size: -1 }), { code: 'ERR_USAGE' });
  });

  it('openBackend gives one for memory with sharedMemory', async () => {
    const backend = await openBackend('memory', { size: G, sharedMemory: true });
    assert.ok(backend instanceof SharedMemoryBackend);
    await backend.close();
  });
});
