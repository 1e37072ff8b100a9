/**
 * GrpcServer + GrpcBackend over real sockets on 127.0.0.1 and Unix sockets: the shared suite,
 * TLS and mutual TLS with a throwaway CA made by openssl, bearer tokens, status mapping over the
 * wire, retries across a server restart, graceful close, and the Seeder service.
 */
import { after, before, describe, it, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { lstat, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { status as Status } from '@grpc/grpc-js';
import { MemoryBackend } from '../../src/backends/memory.js';
import { GrpcBackend, type GrpcBackendOptions } from '../../src/backends/grpc.js';
import { GrpcServer, type GrpcServerOptions } from '../../src/rpc/grpc-server.js';
import { GrpcClient } from '../support/grpc-js-client.js';
import { backendDefinition, seederDefinition } from '../../src/rpc/definitions.js';
import { BearerToken } from '../../src/rpc/bearer-token.js';
import { EMPTY, type ReadAtReply } from '../../src/rpc/codec.js';
import { ERROR_CODE_KEY, fromStatus, type RpcError } from '../../src/rpc/status.js';
import { BackendError, OutOfRangeError, ReadOnlyError, UsageError } from '../../src/errors.js';
import type { Backend } from '../../src/pipeline/types.js';
import { readWriterAtSuite, pattern } from '../support/rwat-suite.js';
import { findTool, freePort, makeTempDir, removeDir, requireTool, runTool, strictTools } from '../support/tools.js';
import { makeTestCerts, type TestCerts } from '../support/nbd-certs.js';
import { makeExpiredClientCert } from '../support/expired-cert.js';

const KiB = 1024;
const SIZE = 10 * 4 * KiB + 1234;

let dir: string | undefined;
const cleanups: (() => Promise<unknown> | unknown)[] = [];

before(async () => {
  dir = await makeTempDir('r3map-grpc-');
  await writeFile(path.join(dir, 'token'), 'right-token\n');
  await writeFile(path.join(dir, 'wrong-token'), 'wrong-token\n');
});

after(async () => {
  for (const c of cleanups.reverse()) await c();
  await removeDir(dir);
});

interface Served {
  readonly memory: MemoryBackend;
  readonly server: GrpcServer;
  readonly uri: string;
  readonly port: number;
}

/** A memory backend served on `listen` (a plaintext TCP port by default). */
async function serve(options: Partial<GrpcServerOptions> & { listen?: string; memory?: MemoryBackend } = {}): Promise<Served> {
  const memory = options.memory ?? new MemoryBackend({ size: SIZE, chunkSize: 4 * KiB });
  const server = new GrpcServer({ backend: memory, insecure: true, ...options });
  cleanups.push(() => server.close().catch(() => undefined));
  const uri = await server.listen(options.listen ?? 'grpc://127.0.0.1:0');
  return { memory, server, uri, port: uri.startsWith('grpc+unix') ? 0 : Number(uri.slice(uri.lastIndexOf(':') + 1)) };
}

async function open(options: Partial<GrpcBackendOptions> & { port?: number }): Promise<GrpcBackend> {
  const { port, ...rest } = options;
  const backend = await GrpcBackend.open({ target: { host: '127.0.0.1', port: port ?? 0 }, connectTimeoutMs: 5000, ...rest });
  cleanups.push(() => backend.close());
  return backend;
}

readWriterAtSuite('GrpcBackend over plaintext TCP, calls split at 3000 bytes', async () => {
  const { memory, server, port } = await serve();
  const backend = await GrpcBackend.open({ target: { host: '127.0.0.1', port }, chunkSize: 3000, channels: 2 });
  return {
    rw: backend,
    size: backend.size,
    chunkSize: 4 * KiB,
    close: async () => {
      await backend.close();
      await server.close();
      await memory.close();
    },
  };
});

describe('GrpcBackend and GrpcServer', () => {
  it('learns the size from the Size RPC and moves data both ways', async () => {
    const { memory, port } = await serve();
    const backend = await open({ port });
    assert.equal(backend.size, SIZE);
    const data = pattern(9000, 3);
    await backend.writeAt(data, 1000);
    const direct = Buffer.alloc(9000);
    await memory.readAt(direct, 1000);
    assert.deepEqual(direct, data);
    const back = Buffer.alloc(9000, 0xff);
    await backend.readAt(back, 1000);
    assert.deepEqual(back, data);
    await backend.sync();
  });

  const scatter = [
    { name: 'pieces that fit one call', sizes: [100, 0, 2000, 1], off: 7 },
    { name: 'pieces split across calls at odd places', sizes: [2500, 0, 1, 4000, 3000, 999], off: 4097 },
    { name: 'one piece of exactly two calls', sizes: [6000], off: 0 },
  ];
  for (const c of scatter) {
    it(`writes ${c.name} with writev`, async () => {
      const { memory, port } = await serve();
      const backend = await open({ port, chunkSize: 3000 });
      const parts = c.sizes.map((n, i) => pattern(n, 20 + i));
      await backend.writev(parts, c.off);
      const whole = Buffer.concat(parts);
      const back = Buffer.alloc(whole.length);
      await memory.readAt(back, c.off);
      assert.deepEqual(back, whole);
      await assert.rejects(backend.writev([Buffer.alloc(SIZE)], 1), OutOfRangeError);
    });
  }

  it('serves a Unix socket in plaintext without --insecure', async () => {
    const socket = path.join(dir!, 'grpc.sock');
    const { uri } = await serve({ insecure: false, listen: `grpc+unix://${socket}` });
    assert.equal(uri, `grpc+unix://${socket}`);
    const backend = await GrpcBackend.open({ target: { path: socket } });
    cleanups.push(() => backend.close());
    await backend.writeAt(pattern(100, 4), 50);
    const back = Buffer.alloc(100);
    await backend.readAt(back, 50);
    assert.deepEqual(back, pattern(100, 4));
  });

  it('replaces a stale socket file that nobody accepts on, but not a live one', async () => {
    const socket = path.join(dir!, 'stale.sock');
    // A process that dies by SIGKILL leaves its socket file behind.
    await runTool(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(socket)}, () => process.kill(process.pid, 'SIGKILL'))`]);
    assert.ok((await lstat(socket)).isSocket(), 'the stale socket file is there');
    const { uri } = await serve({ listen: `grpc+unix://${socket}` });
    const backend = await GrpcBackend.open({ target: { path: socket } });
    cleanups.push(() => backend.close());
    assert.equal(backend.uri, uri);
    const second = new GrpcServer({ backend: new MemoryBackend({ size: SIZE }) });
    await assert.rejects(second.listen(`grpc+unix://${socket}`), /another server is accepting on it/);
    await second.close();
  });

  const refusedListeners = [
    { name: 'plaintext TCP without insecure', options: { insecure: false }, listen: 'grpc://127.0.0.1:0', text: /refusing to serve plaintext gRPC on grpc:\/\/127\.0\.0\.1:0: pass --insecure/ },
    { name: 'grpcs without a certificate', options: {}, listen: 'grpcs://127.0.0.1:0', text: /needs a certificate: pass --tls-cert and --tls-key/ },
  ];
  for (const c of refusedListeners) {
    it(`refuses to listen with ${c.name}`, async () => {
      const server = new GrpcServer({ backend: new MemoryBackend({ size: SIZE }), ...c.options });
      await assert.rejects(server.listen(c.listen), (err: Error) => err instanceof UsageError && c.text.test(err.message));
      await server.close();
    });
  }

  it('maps server errors to status codes and back over the wire', async () => {
    const { port } = await serve({ maxChunkSize: 8 * KiB });
    const client = new GrpcClient({ target: { host: '127.0.0.1', port }, channels: 1 });
    cleanups.push(() => client.close());
    const call = (length: number, off: number): Promise<ReadAtReply> => client.call(backendDefinition.ReadAt, { length, off }, 5000);
    const outOfRange = await call(10, SIZE - 5).then(() => assert.fail('no error'), (err: RpcError) => err);
    assert.equal(outOfRange.code, Status.OUT_OF_RANGE);
    assert.deepEqual(outOfRange.metadata?.get(ERROR_CODE_KEY), ['ERR_OUT_OF_RANGE']);
    assert.ok(fromStatus(outOfRange, { backend: 'x', op: 'ReadAt' }) instanceof OutOfRangeError);
    const tooLong = await call(8 * KiB + 1, 0).then(() => assert.fail('no error'), (err: RpcError) => err);
    assert.equal(tooLong.code, Status.INVALID_ARGUMENT);
    assert.match(tooLong.details ?? '', /above this server's limit of 8192 bytes/);
    const write = (length: number): Promise<RpcError> =>
      client.call(backendDefinition.WriteAt, { off: 0, p: Buffer.alloc(length) }, 5000).then(() => assert.fail('no error'), (err: RpcError) => err);
    const longWrite = await write(8 * KiB + 10);
    assert.equal(longWrite.code, Status.INVALID_ARGUMENT);
    assert.match(longWrite.details ?? '', /WriteAt: length 8202 is above/);
    assert.equal((await write(64 * KiB)).code, Status.RESOURCE_EXHAUSTED, 'grpc-js refuses a message far above the cap before we see it');
    assert.equal((await call(8 * KiB, 0)).n, 8 * KiB);
  });

  it('surfaces a read-only server as ReadOnlyError on the client', async () => {
    const { port } = await serve({ readOnly: true });
    const backend = await open({ port });
    await assert.rejects(backend.writeAt(Buffer.alloc(10), 0), (err: Error) => err instanceof ReadOnlyError && /read-only/.test(err.message));
    await backend.readAt(Buffer.alloc(10), 0);
  });

  it('checks ranges locally and refuses calls after close', async () => {
    const { port } = await serve();
    const backend = await open({ port });
    await assert.rejects(backend.readAt(Buffer.alloc(2), SIZE - 1), OutOfRangeError);
    await backend.close();
    await backend.close();
    await assert.rejects(backend.readAt(Buffer.alloc(1), 0), { code: 'ERR_CLOSED' });
  });

  it('fails fast with a clear error when nothing listens', async () => {
    const port = await freePort();
    await assert.rejects(open({ port }), (err: Error) => err instanceof BackendError && /grpc:\/\/127\.0\.0\.1:\d+ open: cannot reach the server/.test(err.message));
  });

  it('retries calls across a server restart on the same port', async () => {
    const memory = new MemoryBackend({ size: SIZE });
    const first = await serve({ memory });
    const backend = await open({ port: first.port, retries: 8 });
    await backend.writeAt(pattern(500, 9), 0);
    await first.server.close();
    const restarted = sleep(300).then(() => serve({ memory, listen: `grpc://127.0.0.1:${first.port}` }));
    const back = Buffer.alloc(500);
    await backend.readAt(back, 0);
    await restarted;
    assert.deepEqual(back, pattern(500, 9));
  });

  it('finishes in-flight calls on close, then syncs the backend', async () => {
    const memory = new MemoryBackend({ size: SIZE });
    const events: string[] = [];
    const slow: Backend = {
      size: SIZE,
      readAt: async (buf, off) => {
        await sleep(300);
        await memory.readAt(buf, off);
        events.push('read done');
      },
      writeAt: (buf, off) => memory.writeAt(buf, off),
      sync: async () => void events.push('sync'),
      close: () => memory.close(),
    };
    const { server, port } = await serve({ backend: slow });
    const backend = await open({ port, retries: 0 });
    const read = backend.readAt(Buffer.alloc(100), 0);
    await sleep(100);
    await server.close();
    await read;
    assert.deepEqual(events, ['read done', 'sync']);
    await assert.rejects(backend.readAt(Buffer.alloc(1), 0), BackendError);
  });

  it('serves the Seeder service next to the Backend', async () => {
    const memory = new MemoryBackend({ size: SIZE });
    await memory.writeAt(pattern(64, 5), 4096);
    const calls: string[] = [];
    const { port } = await serve({
      memory,
      seeder: {
        size: SIZE,
        readAt: (buf, off) => memory.readAt(buf, off),
        track: async () => (calls.push('track'), 9),
        session: async () => (calls.push('session'), 9),
        dirty: async (since) => ({ offsets: [8192], epoch: since + 1 }),
        sync: async (since) => ({ offsets: [4096, 2 ** 40], epoch: since + 1 }),
        close: async () => void calls.push('close'),
      },
    });
    const client = new GrpcClient({ target: { host: '127.0.0.1', port }, channels: 1 });
    cleanups.push(() => client.close());
    assert.deepEqual(await client.call(seederDefinition.Size, EMPTY, 5000), { size: SIZE });
    assert.deepEqual(await client.call(seederDefinition.Track, EMPTY, 5000), { session: 9 });
    assert.deepEqual((await client.call(seederDefinition.ReadAt, { length: 64, off: 4096 }, 5000)).p, pattern(64, 5));
    assert.deepEqual(await client.call(seederDefinition.Dirty, { since: 0 }, 5000), { dirtyOffsets: [8192], epoch: 1 });
    assert.deepEqual(await client.call(seederDefinition.Sync, { since: 1 }, 5000), { dirtyOffsets: [4096, 2 ** 40], epoch: 2 });
    assert.deepEqual(await client.call(seederDefinition.Session, EMPTY, 5000), { session: 9 });
    await client.call(seederDefinition.Close, EMPTY, 5000);
    assert.deepEqual(calls, ['track', 'session', 'close']);
  });
});

describe('gRPC security', () => {
  let certs: TestCerts | undefined;
  let expired = { cert: '', key: '' };
  let usable = true;

  before(async () => {
    if (findTool('openssl') === undefined) {
      usable = false;
      if (strictTools()) throw new Error('openssl is not installed');
      return;
    }
    certs = await makeTestCerts(dir!);
    expired = await makeExpiredClientCert(certs);
  });

  function ready(t: TestContext): TestCerts | undefined {
    if (!usable) {
      requireTool(t, 'openssl');
      return undefined;
    }
    return certs;
  }

  async function tlsServer(c: TestCerts, mutual: boolean, token?: string): Promise<Served> {
    return serve({
      insecure: false,
      listen: 'grpcs://127.0.0.1:0',
      tls: {
        cert: await readFile(c.serverCert),
        key: await readFile(c.serverKey),
        ...(mutual ? { clientCa: await readFile(c.ca) } : {}),
      },
      ...(token !== undefined ? { token: new BearerToken(token) } : {}),
    });
  }

  it('serves TLS to a client that trusts the test CA', async (t) => {
    const c = ready(t);
    if (c === undefined) return;
    const { uri, port } = await tlsServer(c, false);
    assert.match(uri, /^grpcs:\/\/127\.0\.0\.1:\d+$/);
    const backend = await open({ port, tls: { ca: c.ca } });
    assert.equal(backend.uri, uri);
    await backend.writeAt(pattern(1000, 6), 0);
    const back = Buffer.alloc(1000);
    await backend.readAt(back, 0);
    assert.deepEqual(back, pattern(1000, 6));
  });

  it('refuses a server certificate the client does not trust', async (t) => {
    const c = ready(t);
    if (c === undefined) return;
    const { port } = await tlsServer(c, false);
    await assert.rejects(open({ port, tls: {} }), (err: Error) => err instanceof BackendError && /cannot reach the server/.test(err.message));
  });

  it('refuses a plaintext client on a TLS port within the bound', async (t) => {
    const c = ready(t);
    if (c === undefined) return;
    const { port } = await tlsServer(c, false);
    await assert.rejects(open({ port, connectTimeoutMs: 2000 }), BackendError);
  });

  const clients = [
    { name: 'a certificate from the test CA', cert: (c: TestCerts) => ({ cert: c.clientCert, key: c.clientKey }), ok: true },
    { name: 'no certificate', cert: () => ({}), ok: false },
    { name: 'a certificate from an unknown CA', cert: (c: TestCerts) => ({ cert: c.strangerCert, key: c.strangerKey }), ok: false },
    { name: 'an expired certificate', cert: () => expired, ok: false },
  ];
  for (const k of clients) {
    it(`${k.ok ? 'accepts' : 'refuses'} a mutual-TLS client with ${k.name}`, async (t) => {
      const c = ready(t);
      if (c === undefined) return;
      const { port } = await tlsServer(c, true);
      const attempt = open({ port, tls: { ca: c.ca, ...k.cert(c) }, connectTimeoutMs: 3000 });
      if (k.ok) {
        const backend = await attempt;
        await backend.readAt(Buffer.alloc(10), 0);
      } else {
        await assert.rejects(attempt, (err: Error) => err instanceof BackendError && / open: /.test(err.message));
      }
    });
  }

  const tokens = [
    { name: 'the right token', file: 'token', text: undefined },
    { name: 'a wrong token', file: 'wrong-token', text: /refused our token \(wrong token\?\)/ },
    { name: 'no token', file: undefined, text: /needs a token: add \?token-file=/ },
  ];
  for (const k of tokens) {
    it(`${k.text === undefined ? 'accepts' : 'refuses'} a call with ${k.name}, on plaintext and on TLS`, async (t) => {
      const plain = await serve({ token: new BearerToken('right-token') });
      const c = ready(t);
      const targets: Partial<GrpcBackendOptions>[] = [{}];
      const ports = [plain.port];
      if (c !== undefined) {
        ports.push((await tlsServer(c, true, 'right-token')).port);
        targets.push({ tls: { ca: c.ca, cert: c.clientCert, key: c.clientKey } });
      }
      for (let i = 0; i < ports.length; i++) {
        const attempt = open({ port: ports[i]!, ...targets[i], ...(k.file !== undefined ? { tokenFile: path.join(dir!, k.file) } : {}) });
        if (k.text === undefined) await (await attempt).readAt(Buffer.alloc(1), 0);
        else await assert.rejects(attempt, (err: Error) => err instanceof BackendError && k.text.test(err.message));
      }
    });
  }

  it('answers a wrong token with UNAUTHENTICATED on every RPC', async () => {
    const { port } = await serve({ token: new BearerToken('right-token') });
    const client = new GrpcClient({ target: { host: '127.0.0.1', port }, token: new BearerToken('wrong-token'), channels: 1 });
    cleanups.push(() => client.close());
    for (const call of [
      client.call(backendDefinition.ReadAt, { length: 1, off: 0 }, 5000),
      client.call(backendDefinition.WriteAt, { off: 0, p: Buffer.alloc(1) }, 5000),
      client.call(backendDefinition.Sync, EMPTY, 5000),
      client.call(backendDefinition.Size, EMPTY, 5000),
    ]) {
      await assert.rejects(call, (err: RpcError) => err.code === Status.UNAUTHENTICATED);
    }
  });
});
