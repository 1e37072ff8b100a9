import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ChunkStoreBackend, type ChunkStore } from '../../src/backends/chunk-store.js';
import { DirectoryBackend } from '../../src/backends/directory.js';
import { MemoryBackend } from '../../src/backends/memory.js';
import { ComposedBackend, composeBackend, openComposed } from '../../src/mount/compose.js';
import type { Backend } from '../../src/pipeline/types.js';
import { pattern } from '../support/rwat-suite.js';

/** Whole chunks in a Map; logs calls. */
class MapStore implements ChunkStore {
  readonly name = 'map';
  readonly chunks = new Map<number, Buffer>();
  readonly calls: string[] = [];
  closes = 0;
  async readChunk(_index: number, off: number, dst: Buffer): Promise<boolean> {
    this.calls.push(`read ${off}`);
    const data = this.chunks.get(off);
    data?.copy(dst);
    return data !== undefined;
  }
  async writeChunk(_index: number, off: number, src: Buffer): Promise<void> {
    this.calls.push(`write ${off}`);
    this.chunks.set(off, Buffer.from(src));
  }
  async close(): Promise<void> {
    this.closes++;
  }
}

describe('composeBackend / openComposed', () => {
  it('returns a backend that takes any range (no blockSize, or 1) as it is', async () => {
    const memory = new MemoryBackend({ size: 100 });
    assert.equal(composeBackend(memory), memory);
    const one: Backend = Object.assign(new MemoryBackend({ size: 100 }), { blockSize: 1 });
    assert.equal(composeBackend(one), one);
    const opened = await openComposed('memory:?size=4KiB');
    assert.ok(opened instanceof MemoryBackend);
    await opened.close();
  });

  it('opens a dir:// URI as the DirectoryBackend itself (it takes any range natively)', async () => {
    const root = await mkdtemp(join(tmpdir(), 'r3map-compose-'));
    try {
      const opened = await openComposed(`dir://${root}/d?size=10KiB&chunk-size=1KiB`);
      assert.ok(opened instanceof DirectoryBackend);
      await opened.close();
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });

  it('puts ArbitraryReadWriterAt in front of a whole-chunk backend, and closes it once through the wrapper', async () => {
    const store = new MapStore();
    const bare = new ChunkStoreBackend(store, { size: 1000, chunkSize: 100 });
    const composed = composeBackend(bare);
    assert.ok(composed instanceof ComposedBackend);
    assert.equal(composed.inner, bare);
    assert.equal(composed.innerBlockSize, 100);
    await composed.writeAt(pattern(50, 1), 75); // RMW of chunk 0, RMW of chunk 100
    assert.deepEqual(store.calls.slice().sort(), ['read 0', 'read 100', 'write 0', 'write 100']);
    const back = Buffer.alloc(50);
    await composed.readAt(back, 75);
    assert.deepEqual(back, pattern(50, 1));
    await composed.sync();
    await Promise.all([composed.close(), composed.close()]);
    assert.equal(store.closes, 1);
    await assert.rejects(composed.readAt(Buffer.alloc(1), 0), { code: 'ERR_CLOSED', message: 'map backend is closed' });
  });

  it('rejects a range outside the backend with ERR_OUT_OF_RANGE before the store is touched', async () => {
    const store = new MapStore();
    const composed = composeBackend(new ChunkStoreBackend(store, { size: 1000, chunkSize: 100 }));
    await assert.rejects(composed.readAt(Buffer.alloc(10), 995), { code: 'ERR_OUT_OF_RANGE' });
    await assert.rejects(composed.trim!(-1, 10), { code: 'ERR_OUT_OF_RANGE' });
    assert.deepEqual(store.calls, []);
  });
});
