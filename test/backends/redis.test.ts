import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { Redis } from 'ioredis';
import { RedisBackend, redactRedisUrl } from '../../src/backends/redis.js';
import { BackendError, TimeoutError } from '../../src/errors.js';
import { composeBackend } from '../../src/mount/compose.js';
import type { Backend } from '../../src/pipeline/types.js';
import { chunkStoreCases } from '../support/chunk-store-cases.js';
import { pattern, readWriterAtSuite } from '../support/rwat-suite.js';
import { haveRedisServer, startRedisCluster, startRedisServer, type RedisClusterHandle, type RedisServerHandle } from '../support/redis-server.js';
import { freePort } from '../support/tools.js';

const KiB = 1024;
const skip = haveRedisServer() ? false : 'needs redis-server';
const SIZE = 10 * 4 * KiB + 123; // not a multiple of the chunk size
let prefixNo = 0;
const nextPrefix = (): string => `t${process.pid}-${prefixNo++}`;

describe('RedisBackend against redis-server', { skip }, () => {
  let server: RedisServerHandle;
  let raw: Redis;
  before(async () => {
    server = await startRedisServer();
    raw = new Redis(server.url, { lazyConnect: true });
    await raw.connect();
  });
  after(async () => {
    raw?.disconnect();
    await server?.cleanup();
  });
  const open = (options: Partial<Parameters<typeof RedisBackend.open>[0]> = {}): Promise<RedisBackend> =>
    RedisBackend.open({ url: server.url, prefix: nextPrefix(), size: SIZE, chunkSize: 4 * KiB, ...options });

  for (const maxInFlight of [16, 1]) {
    readWriterAtSuite(`the shared suite with 4 KiB chunks, ${SIZE} bytes and maxInFlight ${maxInFlight}`, async () => {
      const backend = composeBackend(await open({ maxInFlight }));
      return { rw: backend, size: backend.size, chunkSize: 4 * KiB, close: () => backend.close() };
    });
  }

  chunkStoreCases('Redis', () => ({
    size: SIZE,
    chunkSize: 4 * KiB,
    open: (options = {}) => open(options),
    keys: async (prefix) => (await raw.keys(`${prefix}*`)).sort(),
    get: async (key) => (await raw.getBuffer(key)) ?? undefined,
    put: async (key, value) => void (await raw.set(key, value)),
  }));

  it('round-trips multi-chunk calls with ioredis auto-pipelining turned on', async () => {
    const backend = composeBackend(await open({ autoPipelining: true }));
    await backend.writeAt(pattern(SIZE - 7, 10), 3);
    const buf = Buffer.alloc(SIZE - 7, 0xff);
    await backend.readAt(buf, 3);
    assert.deepEqual(buf, pattern(SIZE - 7, 10));
    await backend.close();
  });

  it('reports keys that exist as data and missing ones as holes (block status), after a trim too', async () => {
    const backend = composeBackend(await open());
    await backend.writeAt(Buffer.alloc(5 * KiB, 1), 4 * KiB);
    const H = 3;
    assert.deepEqual(await backend.extents!(0, 16 * KiB), [{ length: 4 * KiB, flags: H }, { length: 8 * KiB, flags: 0 }, { length: 4 * KiB, flags: H }]);
    await backend.trim!(4 * KiB, 4 * KiB);
    assert.deepEqual(await backend.extents!(0, 16 * KiB), [{ length: 8 * KiB, flags: H }, { length: 4 * KiB, flags: 0 }, { length: 4 * KiB, flags: H }]);
    await backend.close();
  });

  it('uses bare offsets as keys when the prefix is empty, as r3map does', async () => {
    const db3 = `${server.url}/3`;
    const backend = composeBackend(await RedisBackend.open({ url: db3, prefix: '', size: SIZE, chunkSize: 4 * KiB }));
    await backend.writeAt(Buffer.alloc(1, 1), 8 * KiB);
    const other = new Redis(db3, { lazyConnect: true });
    await other.connect();
    assert.deepEqual(await other.keys('*'), ['8192']);
    other.disconnect();
    await backend.close();
  });
});

describe('RedisBackend.open', { skip }, () => {
  let server: RedisServerHandle;
  before(async () => {
    server = await startRedisServer({ password: 'pa55-word' });
  });
  after(async () => {
    await server?.cleanup();
  });

  const urls = [
    { name: 'a wrong password', url: () => `redis://:wrong-pw@127.0.0.1:${server.port}` },
    { name: 'a wrong user and password', url: () => `redis://nobody:wrong-pw@127.0.0.1:${server.port}/0` },
    { name: 'no password', url: () => `redis://127.0.0.1:${server.port}` },
  ];
  for (const { name, url } of urls) {
    it(`fails with ERR_BACKEND naming the URL, without its password, for ${name}`, async () => {
      await assert.rejects(RedisBackend.open({ url: url(), prefix: 'p', size: SIZE }), (err) => {
        assert.ok(err instanceof BackendError, String(err));
        assert.equal(err.op, 'open');
        assert.ok(err.message.includes(`127.0.0.1:${server.port}`), err.message);
        assert.ok(!err.message.includes('wrong-pw'), err.message);
        return true;
      });
    });
  }

  it('opens with the right password', async () => {
    const backend = await RedisBackend.open({ url: server.url, prefix: 'p', size: SIZE });
    await backend.close();
  });

  it('fails with ERR_BACKEND when nothing listens on the port', async () => {
    const port = await freePort();
    await assert.rejects(RedisBackend.open({ url: `redis://127.0.0.1:${port}`, prefix: 'p', size: SIZE }), (err) =>
      err instanceof BackendError && err.message.includes(`127.0.0.1:${port}`));
  });

  it('fails with ERR_BACKEND (a timeout) when the server accepts but never answers', async () => {
    const sockets = new Set<net.Socket>();
    const silent = net.createServer((s) => void sockets.add(s));
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    const { port } = silent.address() as net.AddressInfo;
    try {
      await assert.rejects(RedisBackend.open({ url: `redis://127.0.0.1:${port}`, prefix: 'p', size: SIZE, connectTimeoutMs: 300 }), (err) =>
        err instanceof BackendError && err.cause instanceof TimeoutError);
    } finally {
      for (const s of sockets) s.destroy();
      silent.close();
    }
  });

  const badUrls = ['not a url', 'http://127.0.0.1:6379', 'memory:?size=1'];
  for (const url of badUrls) {
    it(`rejects ${JSON.stringify(url)} with ERR_USAGE`, async () => {
      await assert.rejects(RedisBackend.open({ url, prefix: 'p', size: SIZE }), { code: 'ERR_USAGE' });
    });
  }

  it('redacts only the password from a URL', () => {
    assert.equal(redactRedisUrl('redis://user:secret@h:1/2'), 'redis://user@h:1/2');
    assert.equal(redactRedisUrl('rediss://:secret@h:1'), 'rediss://h:1');
  });
});

describe('RedisBackend when redis-server fails', { skip }, () => {
  let server: RedisServerHandle;
  let backend: Backend;
  const data = pattern(SIZE, 7);
  before(async () => {
    server = await startRedisServer({ appendOnly: true }); // the data survives a restart
    // Generous retries: the restart below must never use them all up on a busy machine.
    backend = composeBackend(await RedisBackend.open({ url: server.url, prefix: 'fault', size: SIZE, chunkSize: 4 * KiB, retries: 10 }));
    await backend.writeAt(data, 0);
  });
  after(async () => {
    await backend?.close();
    await server?.cleanup();
  });

  it('retries through a restart: calls made while the server is down complete, and the data is intact', { timeout: 20_000 }, async () => {
    await server.stop();
    const head = Buffer.alloc(4 * KiB, 0xff);
    const tail = Buffer.alloc(SIZE - 8 * KiB, 0xff);
    const pending = [backend.readAt(head, 0), backend.readAt(tail, 8 * KiB), backend.writeAt(pattern(100, 8), 5000)];
    await new Promise((resolve) => setTimeout(resolve, 200));
    await server.start();
    await Promise.all(pending);
    assert.deepEqual(head, data.subarray(0, 4 * KiB));
    assert.deepEqual(tail, data.subarray(8 * KiB));
    pattern(100, 8).copy(data, 5000);
    const all = Buffer.alloc(SIZE, 0xff);
    await backend.readAt(all, 0);
    assert.deepEqual(all, data);
  });

  it('waits out a stalled server (SIGSTOP, then SIGCONT) and completes the call', { timeout: 20_000 }, async () => {
    server.pause();
    const read = Buffer.alloc(SIZE, 0xff);
    const pending = backend.readAt(read, 0);
    await new Promise((resolve) => setTimeout(resolve, 300));
    server.resume();
    await pending;
    assert.deepEqual(read, data);
  });

  it('fails with ERR_BACKEND naming the server, no hang, once the server is gone for good', { timeout: 20_000 }, async () => {
    const fragile = composeBackend(await RedisBackend.open({ url: server.url, prefix: 'fault', size: SIZE, chunkSize: 4 * KiB, retries: 3 }));
    try {
      await server.kill();
      for (const call of [() => fragile.readAt(Buffer.alloc(10), 0), () => fragile.writeAt(Buffer.alloc(10), 0)]) {
        await assert.rejects(call(), (err) => err instanceof BackendError && err.message.includes(`127.0.0.1:${server.port}`));
      }
    } finally {
      await fragile.close();
    }
  });
});

describe('RedisBackend against a 3-node Redis Cluster', { skip }, () => {
  let cluster: RedisClusterHandle;
  before(async () => {
    cluster = await startRedisCluster(3);
  });
  after(async () => {
    await cluster?.cleanup();
  });

  readWriterAtSuite(`the shared suite with 4 KiB chunks and ${SIZE} bytes`, async () => {
    const backend = composeBackend(await RedisBackend.open({ url: cluster.url, cluster: true, prefix: nextPrefix(), size: SIZE, chunkSize: 4 * KiB }));
    return { rw: backend, size: backend.size, chunkSize: 4 * KiB, close: () => backend.close() };
  });

  it('spreads the chunk keys over the nodes', async () => {
    const backend = await RedisBackend.open({ url: cluster.url, cluster: true, prefix: nextPrefix(), size: SIZE, chunkSize: 4 * KiB });
    await composeBackend(backend).writeAt(pattern(SIZE, 9), 0);
    await backend.close();
    let nodesWithKeys = 0;
    for (const node of cluster.nodes) {
      const client = new Redis(node.url, { lazyConnect: true });
      await client.connect();
      if ((await client.keys(`${backend.prefix}-*`)).length > 0) nodesWithKeys++;
      client.disconnect();
    }
    assert.ok(nodesWithKeys >= 2, `keys on ${nodesWithKeys} node(s)`);
  });
});
