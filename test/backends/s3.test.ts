import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { DeleteBucketCommand, GetObjectCommand, ListObjectsV2Command, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { S3Backend, type S3BackendOptions } from '../../src/backends/s3.js';
import { BackendError } from '../../src/errors.js';
import { composeBackend } from '../../src/mount/compose.js';
import { chunkStoreCases } from '../support/chunk-store-cases.js';
import { pattern, readWriterAtSuite } from '../support/rwat-suite.js';
import { s3rverBin, s3rverEnv, startS3rver, type S3rverHandle } from '../support/s3rver.js';
import { freePort, strictTools } from '../support/tools.js';

const KiB = 1024;
const SIZE = 10 * 4 * KiB + 123; // not a multiple of the chunk size
const SUITE_SIZE = 4 * 4 * KiB + 123;
const BUCKET = 'r3map-test';
const haveS3rver = s3rverBin() !== undefined;
if (!haveS3rver && strictTools()) throw new Error('s3rver is not installed (R3MAP_STRICT/CI)');
const skip = haveS3rver ? false : 'needs s3rver (dev dependency)';
s3rverEnv(); // credentials and region for the SDK's default chain
let prefixNo = 0;
const nextPrefix = (): string => `t${process.pid}-${prefixNo++}`;

function rawClient(endpoint: string): S3Client {
  return new S3Client({ endpoint, forcePathStyle: true, region: 'us-east-1' });
}

async function keysUnder(client: S3Client, bucket: string, prefix: string): Promise<string[]> {
  const out = await client.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix }));
  return (out.Contents ?? []).map((c) => c.Key!).sort();
}

describe('S3Backend against s3rver', { skip }, () => {
  let server: S3rverHandle;
  let raw: S3Client;
  before(async () => {
    server = await startS3rver({ buckets: [BUCKET, 'r3map-bare', 'r3map-gone'] });
    raw = rawClient(server.endpoint);
  });
  after(async () => {
    raw?.destroy();
    await server?.cleanup();
  });
  const open = (options: Partial<S3BackendOptions> = {}): Promise<S3Backend> =>
    S3Backend.open({ bucket: BUCKET, prefix: nextPrefix(), endpoint: server.endpoint, size: SIZE, chunkSize: 4 * KiB, ...options });

  // s3rver is slow (a few ms per request, files on disk): the suite gets 4 chunks and a short fifth.
  readWriterAtSuite(`the shared suite with 4 KiB chunks and ${SUITE_SIZE} bytes`, async () => {
    const backend = composeBackend(await open({ size: SUITE_SIZE }));
    return { rw: backend, size: backend.size, chunkSize: 4 * KiB, close: () => backend.close() };
  });

  chunkStoreCases('S3', () => ({
    size: SIZE,
    chunkSize: 4 * KiB,
    open: (options = {}) => open(options),
    keys: (prefix) => keysUnder(raw, BUCKET, prefix),
    get: async (key) => {
      try {
        const out = await raw.send(new GetObjectCommand({ Bucket: BUCKET, Key: key }));
        return Buffer.from(await out.Body!.transformToByteArray());
      } catch (err) {
        if ((err as Error).name === 'NoSuchKey') return undefined;
        throw err;
      }
    },
    put: async (key, value) => void (await raw.send(new PutObjectCommand({ Bucket: BUCKET, Key: key, Body: value }))),
  }));

  it('uses bare offsets as keys when the prefix is empty', async () => {
    const backend = composeBackend(await open({ bucket: 'r3map-bare', prefix: '' }));
    await backend.writeAt(Buffer.alloc(1, 1), 8 * KiB);
    assert.deepEqual(await keysUnder(raw, 'r3map-bare', ''), ['8192']);
    await backend.close();
  });

  it('fails a read with ERR_BACKEND when the bucket disappears, instead of reading zeros', async () => {
    const backend = composeBackend(await open({ bucket: 'r3map-gone', prefix: 'gone' }));
    await raw.send(new DeleteBucketCommand({ Bucket: 'r3map-gone' }));
    await assert.rejects(backend.readAt(Buffer.alloc(10), 0), (err) => err instanceof BackendError && /NoSuchBucket/.test(String((err.cause as Error).name)));
    await backend.close();
  });

  describe('open()', () => {
    const base = { prefix: 'p', size: SIZE };

    it('fails with ERR_BACKEND naming the endpoint and bucket when the bucket does not exist', async () => {
      await assert.rejects(S3Backend.open({ ...base, bucket: 'no-such-bucket', endpoint: server.endpoint }), (err) =>
        err instanceof BackendError && err.op === 'open' && err.message.includes(server.endpoint) && err.message.includes('no-such-bucket'));
    });

    it('fails with ERR_BACKEND when the access key is refused', async () => {
      const saved = process.env.AWS_ACCESS_KEY_ID;
      process.env.AWS_ACCESS_KEY_ID = 'NOT-S3RVER';
      try {
        await assert.rejects(S3Backend.open({ ...base, bucket: BUCKET, endpoint: server.endpoint }), (err) =>
          err instanceof BackendError && (err.cause as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode === 403);
      } finally {
        process.env.AWS_ACCESS_KEY_ID = saved;
      }
    });

    it('fails with ERR_BACKEND when nothing listens on the endpoint', async () => {
      const endpoint = `http://127.0.0.1:${await freePort()}`;
      await assert.rejects(S3Backend.open({ ...base, bucket: BUCKET, endpoint }), (err) => err instanceof BackendError && err.message.includes(endpoint));
    });

    it('fails with ERR_BACKEND within its timeouts when the endpoint accepts but never answers', { timeout: 15_000 }, async () => {
      const sockets = new Set<net.Socket>();
      const silent = net.createServer((s) => void sockets.add(s));
      await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
      const endpoint = `http://127.0.0.1:${(silent.address() as net.AddressInfo).port}`;
      try {
        await assert.rejects(S3Backend.open({ ...base, bucket: BUCKET, endpoint, connectTimeoutMs: 300, requestTimeoutMs: 300 }), (err) =>
          err instanceof BackendError && err.op === 'open');
      } finally {
        for (const s of sockets) s.destroy();
        silent.close();
      }
    });

    const usage: Array<{ name: string; options: Partial<S3BackendOptions> }> = [
      { name: 'an empty bucket name', options: { bucket: '' } },
      { name: 'an endpoint that is not a URL', options: { endpoint: 'localhost 9000' } },
      { name: 'an endpoint that is not http(s)', options: { endpoint: 'ftp://127.0.0.1:21' } },
    ];
    for (const { name, options } of usage) {
      it(`rejects ${name} with ERR_USAGE`, async () => {
        await assert.rejects(S3Backend.open({ ...base, bucket: BUCKET, ...options }), { code: 'ERR_USAGE' });
      });
    }
  });
});

describe('S3Backend when s3rver fails', { skip }, () => {
  let server: S3rverHandle;
  before(async () => {
    server = await startS3rver();
  });
  after(async () => {
    await server?.cleanup();
  });

  it('fails with ERR_BACKEND within its request timeout while s3rver is stalled, and works once it resumes', { timeout: 15_000 }, async () => {
    const backend = composeBackend(await S3Backend.open({ bucket: BUCKET, prefix: 'stall', endpoint: server.endpoint, size: SIZE, chunkSize: 4 * KiB, requestTimeoutMs: 300, retries: 1 }));
    try {
      await backend.writeAt(pattern(4 * KiB, 5), 0);
      server.pause();
      await assert.rejects(backend.readAt(Buffer.alloc(10), 0), (err) => err instanceof BackendError && err.message.includes(server.endpoint));
      server.resume();
      const buf = Buffer.alloc(4 * KiB);
      await backend.readAt(buf, 0);
      assert.deepEqual(buf, pattern(4 * KiB, 5));
    } finally {
      server.resume();
      await backend.close();
    }
  });

  it('fails with ERR_BACKEND naming the endpoint, no hang, once s3rver is killed', { timeout: 15_000 }, async () => {
    const backend = composeBackend(await S3Backend.open({ bucket: BUCKET, prefix: 'kill', endpoint: server.endpoint, size: SIZE, chunkSize: 4 * KiB, retries: 2 }));
    try {
      await backend.writeAt(pattern(4 * KiB, 6), 0);
      await server.kill();
      for (const call of [() => backend.readAt(Buffer.alloc(10), 0), () => backend.writeAt(Buffer.alloc(10), 0), () => backend.trim!(0, 4 * KiB)]) {
        await assert.rejects(call(), (err) => err instanceof BackendError && err.message.includes(server.endpoint));
      }
    } finally {
      await backend.close();
    }
  });
});
