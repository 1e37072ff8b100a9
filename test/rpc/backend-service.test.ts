import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { MemoryBackend } from '../../src/backends/memory.js';
import { BackendService, DEFAULT_MAX_CHUNK_SIZE } from '../../src/rpc/backend-service.js';
import { SeederService, type SeederSource } from '../../src/rpc/seeder-service.js';
import { encodeReadAtReply } from '../../src/rpc/codec.js';
import { OutOfRangeError, ReadOnlyError, UsageError } from '../../src/errors.js';
import { pattern } from '../support/rwat-suite.js';

const SIZE = 10_000;
const MAX = 1024;

async function fresh(options: { readOnly?: boolean; backendReadOnly?: boolean } = {}): Promise<{ backend: MemoryBackend; service: BackendService }> {
  const backend = new MemoryBackend({ size: SIZE, chunkSize: 256, readOnly: options.backendReadOnly ?? false });
  const service = new BackendService(backend, { maxChunkSize: MAX, ...(options.readOnly !== undefined ? { readOnly: options.readOnly } : {}) });
  return { backend, service };
}

describe('BackendService', () => {
  it('reads into a reply that is already encoded, with N equal to the length', async () => {
    const { backend, service } = await fresh();
    const data = pattern(300, 1);
    await backend.writeAt(data, 5000);
    const reply = await service.readAt(300, 5000);
    assert.equal(reply.n, 300);
    assert.deepEqual(reply.p, data);
    assert.equal(encodeReadAtReply(reply), reply.frame);
  });

  it('writes what it is given and answers with the length', async () => {
    const { backend, service } = await fresh();
    const data = pattern(MAX, 2);
    assert.deepEqual(await service.writeAt(data, SIZE - MAX), { length: MAX });
    const back = Buffer.alloc(MAX);
    await backend.readAt(back, SIZE - MAX);
    assert.deepEqual(back, data);
  });

  it('answers Size and passes Sync to the backend', async () => {
    const { backend, service } = await fresh();
    assert.deepEqual(await service.size(), { size: SIZE });
    await service.sync();
    await backend.close();
    await assert.rejects(service.sync(), { code: 'ERR_CLOSED' });
  });

  it('reads and writes empty ranges, even at the end', async () => {
    const { service } = await fresh();
    assert.equal((await service.readAt(0, SIZE)).p.length, 0);
    assert.deepEqual(await service.writeAt(Buffer.alloc(0), SIZE), { length: 0 });
  });

  const refusals = [
    { name: 'a read longer than the cap', run: (s: BackendService) => s.readAt(MAX + 1, 0), cls: UsageError, text: /above this server's limit of 1024 bytes/ },
    { name: 'a write longer than the cap', run: (s: BackendService) => s.writeAt(Buffer.alloc(MAX + 1), 0), cls: UsageError, text: /WriteAt: length 1025/ },
    { name: 'a negative length', run: (s: BackendService) => s.readAt(-1, 0), cls: UsageError, text: /negative/ },
    { name: 'a read past the end', run: (s: BackendService) => s.readAt(2, SIZE - 1), cls: OutOfRangeError, text: /off=9999 length=2 size=10000/ },
    { name: 'a write past the end', run: (s: BackendService) => s.writeAt(Buffer.alloc(1), SIZE), cls: OutOfRangeError, text: /off=10000/ },
    { name: 'a negative offset', run: (s: BackendService) => s.readAt(1, -1), cls: OutOfRangeError, text: /off=-1/ },
    { name: 'an offset above 2^53', run: (s: BackendService) => s.readAt(1, 2 ** 54), cls: OutOfRangeError, text: /out of range/ },
  ];
  for (const c of refusals) {
    it(`refuses ${c.name} before the backend sees it`, async () => {
      const { service } = await fresh();
      await assert.rejects(c.run(service), (err: Error) => err instanceof c.cls && c.text.test(err.message));
    });
  }

  it('serves exactly the cap', async () => {
    const { service } = await fresh();
    assert.equal((await service.readAt(MAX, 0)).p.length, MAX);
  });

  const readOnly = [
    { name: 'when told to', options: { readOnly: true } },
    { name: 'when the backend is read-only', options: { backendReadOnly: true } },
  ];
  for (const c of readOnly) {
    it(`refuses writes ${c.name} but still reads`, async () => {
      const { service } = await fresh(c.options);
      assert.equal(service.options.readOnly, true);
      await assert.rejects(service.writeAt(Buffer.alloc(1), 0), ReadOnlyError);
      assert.equal((await service.readAt(10, 0)).n, 10);
    });
  }

  it('defaults to a 32 MiB cap and refuses a cap it cannot serve', async () => {
    const backend = new MemoryBackend({ size: SIZE });
    assert.equal(new BackendService(backend).options.maxChunkSize, DEFAULT_MAX_CHUNK_SIZE);
    assert.equal(DEFAULT_MAX_CHUNK_SIZE, 32 * 1024 * 1024);
    assert.ok(Object.isFrozen(new BackendService(backend).options));
    for (const maxChunkSize of [0, -1, 2 ** 31, 1.5]) assert.throws(() => new BackendService(backend, { maxChunkSize }), UsageError);
  });

  it('serves concurrent unaligned reads and writes', async () => {
    const { service } = await fresh();
    const writes = Array.from({ length: 20 }, (_, i) => service.writeAt(pattern(333, i + 10), i * 450 + 7));
    await Promise.all(writes);
    const reads = await Promise.all(Array.from({ length: 20 }, (_, i) => service.readAt(333, i * 450 + 7)));
    reads.forEach((r, i) => assert.deepEqual(r.p, pattern(333, i + 10), `range ${i}`));
  });
});

describe('SeederService', () => {
  function source(): SeederSource & { calls: string[] } {
    const backend = new MemoryBackend({ size: SIZE });
    const calls: string[] = [];
    return {
      calls,
      size: SIZE,
      readAt: (buf, off) => backend.readAt(buf, off),
      track: async () => (calls.push('track'), 77),
      session: async () => (calls.push('session'), 77),
      dirty: async (since) => (calls.push(`dirty ${since}`), { offsets: [4096], epoch: since + 1 }),
      sync: async (since) => (calls.push(`sync ${since}`), { offsets: [0, 4096, 2 ** 40], epoch: since + 1 }),
      close: async () => void calls.push('close'),
    };
  }

  it('passes Track, Session, Dirty, Sync and Close to its source and returns the dirty offsets and epochs', async () => {
    const src = source();
    const service = new SeederService(src);
    assert.deepEqual(await service.track(), { session: 77 });
    assert.deepEqual(await service.dirty(0), { dirtyOffsets: [4096], epoch: 1 });
    assert.deepEqual(await service.sync(1), { dirtyOffsets: [0, 4096, 2 ** 40], epoch: 2 });
    assert.deepEqual(await service.session(), { session: 77 });
    await service.close();
    assert.deepEqual(src.calls, ['track', 'dirty 0', 'sync 1', 'session', 'close']);
    assert.deepEqual(await service.size(), { size: SIZE });
  });

  it('refuses a Since that is not an epoch', async () => {
    const service = new SeederService(source());
    for (const bad of [-1, 2 ** 60]) {
      await assert.rejects(service.dirty(bad), UsageError);
      await assert.rejects(service.sync(bad), UsageError);
    }
  });

  it('caps and range-checks ReadAt like the Backend service', async () => {
    const service = new SeederService(source(), { maxChunkSize: MAX });
    assert.equal((await service.readAt(MAX, SIZE - MAX)).n, MAX);
    await assert.rejects(service.readAt(MAX + 1, 0), UsageError);
    await assert.rejects(service.readAt(1, SIZE), OutOfRangeError);
  });
});
