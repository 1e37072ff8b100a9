/**
 * The cases every chunk-store backend (Redis, S3, …) shares, run against a real server: the key
 * layout `<prefix>-<offset>`, reading what other clients stored, trim deleting whole chunks,
 * refusing values of the wrong length, read-only, close, and the bare store (whole chunks only)
 * rejecting an unaligned call. Any-range calls go through mount/compose.ts, as every caller's do.
 * Call it inside a describe whose before() has started the server `fixture()` reaches.
 */
import { it } from 'node:test';
import assert from 'node:assert/strict';
import type { ChunkStoreBackend } from '../../src/backends/chunk-store.js';
import { BackendError, MisalignedError } from '../../src/errors.js';
import { composeBackend } from '../../src/mount/compose.js';
import { pattern } from './rwat-suite.js';

export interface ChunkStoreFixture {
  /** Bytes in the opened backends (not a multiple of chunkSize, at least 4 chunks). */
  readonly size: number;
  readonly chunkSize: number;
  /** A bare backend over a fresh prefix. */
  open(options?: { readonly readOnly?: boolean }): Promise<ChunkStoreBackend & { readonly prefix: string }>;
  /** The keys stored under `prefix`, sorted. */
  keys(prefix: string): Promise<string[]>;
  /** The value stored under `key`, or undefined. */
  get(key: string): Promise<Buffer | undefined>;
  /** Stores `value` under `key`, as another client would. */
  put(key: string, value: Buffer): Promise<void>;
}

export function chunkStoreCases(store: string, fixture: () => ChunkStoreFixture): void {
  it(`stores one ${store} value per written chunk, named <prefix>-<offset>, each holding the whole chunk`, async () => {
    const f = fixture();
    const c = f.chunkSize;
    const bare = await f.open();
    const backend = composeBackend(bare);
    const last = Math.floor(f.size / c) * c;
    await backend.writeAt(pattern(10, 1), c - 5); // chunks 0 and 1
    await backend.writeAt(pattern(3, 2), f.size - 3); // the short last chunk
    const p = bare.prefix;
    assert.deepEqual(await f.keys(`${p}-`), [`${p}-0`, `${p}-${c}`, `${p}-${last}`].sort());
    assert.equal((await f.get(`${p}-${c}`))!.length, c);
    assert.equal((await f.get(`${p}-${last}`))!.length, f.size - last);
    await backend.close();
  });

  it(`reads a ${store} value another client stored under the same prefix, and zeros where there is none`, async () => {
    const f = fixture();
    const c = f.chunkSize;
    const bare = await f.open();
    const backend = composeBackend(bare);
    await f.put(`${bare.prefix}-${c}`, pattern(c, 3));
    const buf = Buffer.alloc(3 * c, 0xff);
    await backend.readAt(buf, 0);
    assert.deepEqual(buf.subarray(c, 2 * c), pattern(c, 3));
    assert.ok(buf.subarray(0, c).every((b) => b === 0) && buf.subarray(2 * c).every((b) => b === 0));
    await backend.close();
  });

  it(`deletes the ${store} values of whole trimmed chunks and zeroes partial ones`, async () => {
    const f = fixture();
    const c = f.chunkSize;
    const bare = await f.open();
    const backend = composeBackend(bare);
    await backend.writeAt(pattern(f.size, 4), 0);
    await backend.trim!(c / 2, 3 * c);
    const p = bare.prefix;
    const keys = await f.keys(`${p}-`);
    assert.ok(!keys.includes(`${p}-${c}`) && !keys.includes(`${p}-${2 * c}`), keys.join(' '));
    assert.ok(keys.includes(`${p}-0`) && keys.includes(`${p}-${3 * c}`), keys.join(' '));
    const buf = Buffer.alloc(f.size, 0xff);
    await backend.readAt(buf, 0);
    assert.deepEqual(buf, pattern(f.size, 4).fill(0, c / 2, c / 2 + 3 * c));
    await backend.close();
  });

  for (const { name, length } of [{ name: 'shorter', length: 5 }, { name: 'longer', length: 5000 }]) {
    it(`rejects a ${store} value ${name} than its chunk instead of returning it`, async () => {
      const f = fixture();
      const bare = await f.open();
      const backend = composeBackend(bare);
      await f.put(`${bare.prefix}-0`, Buffer.alloc(length, 1));
      await assert.rejects(backend.readAt(Buffer.alloc(10), 0), (err) => err instanceof BackendError && err.op === 'read');
      await backend.close();
    });
  }

  it('refuses writes and trims when read-only', async () => {
    const backend = composeBackend(await fixture().open({ readOnly: true }));
    await assert.rejects(backend.writeAt(Buffer.alloc(1), 0), { code: 'ERR_READ_ONLY' });
    await assert.rejects(backend.trim!(0, 1), { code: 'ERR_READ_ONLY' });
    await backend.close();
  });

  it('closes idempotently and rejects calls after close with ERR_CLOSED', async () => {
    const backend = composeBackend(await fixture().open());
    await Promise.all([backend.close(), backend.close()]);
    await assert.rejects(backend.readAt(Buffer.alloc(1), 0), { code: 'ERR_CLOSED' });
  });

  it(`the bare ${store} backend takes whole chunks and rejects an unaligned call before the store sees it`, async () => {
    const f = fixture();
    const bare = await f.open();
    assert.equal(bare.blockSize, f.chunkSize);
    await assert.rejects(bare.writeAt(Buffer.alloc(10), 3), MisalignedError);
    await assert.rejects(bare.readAt(Buffer.alloc(10), 0), { code: 'ERR_BAD_LENGTH' });
    await assert.rejects(bare.trim(1, f.chunkSize), MisalignedError);
    assert.deepEqual(await f.keys(`${bare.prefix}-`), []);
    await bare.writeAt(pattern(f.chunkSize, 5), f.chunkSize);
    const buf = Buffer.alloc(f.chunkSize);
    await bare.readAt(buf, f.chunkSize);
    assert.deepEqual(buf, pattern(f.chunkSize, 5));
    await bare.close();
  });
}
