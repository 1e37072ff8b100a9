import assert from 'node:assert/strict';
import net from 'node:net';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { MemoryBackend } from '../../src/backends/memory.js';
import { NbdRemoteBackend } from '../../src/backends/nbd.js';
import { openBackend } from '../../src/backends/open.js';
import { BackendError, ClosedError, OutOfRangeError, ReadOnlyError } from '../../src/errors.js';
import { NbdServer, type NbdServerOptions } from '../../src/nbd/server.js';
import { readServerTlsFiles } from '../../src/nbd/tls.js';
import type { Backend } from '../../src/pipeline/types.js';
import { makeTestCerts } from '../support/nbd-certs.js';
import { pattern, readWriterAtSuite } from '../support/rwat-suite.js';
import { findTool, makeTempDir, removeDir, requireTool, startNbdkit, type NbdkitHandle } from '../support/tools.js';
import { BufferBackend } from '../nbd/support-backend.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const SUITE_SIZE = 10 * 4 * KiB + 1234;

let dir = '';
let seq = 0;
const servers: NbdServer[] = [];
const nbdkits: NbdkitHandle[] = [];

before(async () => {
  dir = await makeTempDir('r3map-nbd-backend-');
});
after(async () => {
  await Promise.allSettled(servers.map((s) => s.close()));
  await Promise.allSettled(nbdkits.map((n) => n.stop()));
  await removeDir(dir);
});

/** An in-process NbdServer on a fresh Unix socket; returns the socket path. */
async function serve(backend: Backend, options: Partial<NbdServerOptions> = {}, socket = path.join(dir, `s-${++seq}.sock`)): Promise<{ server: NbdServer; socket: string }> {
  const server = new NbdServer({ exports: [{ name: 'disk', backend }], ...options });
  servers.push(server);
  await server.listen({ path: socket });
  return { server, socket };
}

readWriterAtSuite('NbdRemoteBackend against our NbdServer', async () => {
  const { socket } = await serve(new MemoryBackend({ size: SUITE_SIZE }));
  const backend = await NbdRemoteBackend.open({ address: { path: socket }, exportName: 'disk' });
  return { rw: backend, size: backend.size, chunkSize: 4 * KiB, close: () => backend.close() };
});

readWriterAtSuite('NbdRemoteBackend against nbdkit memory', async () => {
  if (findTool('nbdkit') === undefined) throw new Error('nbdkit is not installed (run scripts/install-test-tools.sh)');
  const nbdkit = await startNbdkit(['memory', `size=${SUITE_SIZE}`], dir);
  nbdkits.push(nbdkit);
  const backend = await NbdRemoteBackend.open({ address: nbdkit.address });
  return {
    rw: backend, size: backend.size, chunkSize: 4 * KiB,
    close: async () => {
      await backend.close();
      await nbdkit.stop();
    },
  };
});

describe('NbdRemoteBackend', () => {
  test('passes the server block status through as extents, over structured replies', async () => {
    const memory = new MemoryBackend({ size: 8 * MiB, pageSize: MiB });
    await memory.writeAt(Buffer.alloc(10, 1), 3 * MiB + 5);
    const { socket } = await serve(memory);
    const backend = await NbdRemoteBackend.open({ address: { path: socket }, exportName: 'disk' });
    assert.notEqual(backend.extents, undefined);
    assert.deepEqual(await backend.extents!(MiB, 4 * MiB), [{ length: 2 * MiB, flags: 3 }, { length: MiB, flags: 0 }, { length: MiB, flags: 3 }]);
    await assert.rejects(backend.extents!(7 * MiB, 2 * MiB), OutOfRangeError);
    const zeros = Buffer.alloc(2 * MiB, 0xee);
    await backend.readAt(zeros, 0); // holes come back as OFFSET_HOLE chunks
    assert.ok(zeros.equals(Buffer.alloc(2 * MiB)));
    await backend.close();
  });

  test('takes size and read-only from the handshake and refuses writes to a read-only export', async () => {
    const { socket } = await serve(new MemoryBackend({ size: 3 * MiB + 5, readOnly: true }));
    const backend = await NbdRemoteBackend.open({ address: { path: socket }, exportName: 'disk' });
    assert.equal(backend.size, 3 * MiB + 5);
    assert.equal(backend.readOnly, true);
    await assert.rejects(backend.writeAt(Buffer.alloc(1), 0), ReadOnlyError);
    await assert.rejects(backend.readAt(Buffer.alloc(2), 3 * MiB + 4), OutOfRangeError);
    await backend.close();
  });

  test('splits requests larger than the server maximum block size and keeps the data intact', async () => {
    const store = new BufferBackend({ size: 4 * MiB });
    const { socket } = await serve(store, { maxPayload: 64 * KiB });
    const backend = await NbdRemoteBackend.open({ address: { path: socket } });
    const data = pattern(MiB + 5, 3);
    await backend.writeAt(data, 77);
    const back = Buffer.alloc(data.length, 0xff);
    await backend.readAt(back, 77);
    assert.deepEqual(back, data);
    assert.ok(store.calls.length >= 2 * 17, `${store.calls.length} calls`);
    assert.ok(store.calls.every((c) => c.length <= 64 * KiB), 'no call above the server maximum');
    await backend.close();
  });

  test('keeps many requests in flight, but no more than maxInFlight', async () => {
    const store = new BufferBackend({ size: 4 * MiB, delayMs: () => 5 });
    const { socket } = await serve(store);
    const backend = await NbdRemoteBackend.open({ address: { path: socket }, maxInFlight: 8 });
    await Promise.all(Array.from({ length: 100 }, (_, i) => backend.readAt(Buffer.alloc(4 * KiB), i * 4 * KiB)));
    assert.ok(store.maxInFlightSeen > 1, `saw ${store.maxInFlightSeen} in flight`);
    assert.ok(store.maxInFlightSeen <= 8, `saw ${store.maxInFlightSeen} in flight`);
    await backend.close();
  });

  const multi = [
    { name: 'opens several connections when the server advertises multi-conn', canMultiConn: true, expect: 3 },
    { name: 'falls back to one connection when the server does not advertise multi-conn', canMultiConn: false, expect: 1 },
  ];
  for (const c of multi) {
    test(c.name, async () => {
      const { socket } = await serve(new BufferBackend({ size: MiB, canMultiConn: c.canMultiConn }));
      const backend = await NbdRemoteBackend.open({ address: { path: socket }, connections: 3, maxInFlight: 4 });
      assert.equal(backend.maxInFlight, 4 * c.expect);
      assert.equal(backend.canMultiConn, c.canMultiConn);
      const data = pattern(200 * KiB, 9);
      await backend.writeAt(data, 100);
      const back = Buffer.alloc(data.length);
      await backend.readAt(back, 100);
      assert.deepEqual(back, data);
      await backend.close();
    });
  }

  test('sync flushes, and zero and trim leave zeros behind', async () => {
    const store = new BufferBackend({ size: MiB });
    const { socket } = await serve(store);
    const backend = await NbdRemoteBackend.open({ address: { path: socket } });
    await backend.writeAt(Buffer.alloc(MiB, 0xab), 0);
    await backend.sync();
    assert.ok(store.syncs >= 1);
    await backend.zero(10, 1000);
    await backend.trim(5000, 3000);
    const back = Buffer.alloc(MiB);
    await backend.readAt(back, 0);
    const expected = Buffer.alloc(MiB, 0xab);
    expected.fill(0, 10, 1010);
    expected.fill(0, 5000, 8000);
    assert.deepEqual(back, expected);
    await backend.close();
  });

  test('reconnects after the server restarts (sync and reads retry) and the data is intact', async () => {
    const store = new MemoryBackend({ size: MiB });
    const socket = path.join(dir, `restart-${++seq}.sock`);
    const first = await serve(store, {}, socket);
    const backend = await NbdRemoteBackend.open({ address: { path: socket }, retries: 8 });
    const data = pattern(100 * KiB, 5);
    await backend.writeAt(data, 0);
    await first.server.close();
    await serve(store, {}, socket);
    await backend.sync();
    const back = Buffer.alloc(data.length);
    await backend.readAt(back, 0);
    assert.deepEqual(back, data);
    await backend.writeAt(data, 200 * KiB);
    await backend.close();
  });

  test('gives up with a BackendError once the retries are used up', async () => {
    const socket = path.join(dir, `gone-${++seq}.sock`);
    const { server } = await serve(new MemoryBackend({ size: MiB }), {}, socket);
    const backend = await NbdRemoteBackend.open({ address: { path: socket }, retries: 2, connectTimeoutMs: 500 });
    await server.close();
    await assert.rejects(backend.readAt(Buffer.alloc(10), 0), BackendError);
    await backend.close();
  });

  const unreachable = [
    { name: 'nobody listens on the socket', address: () => ({ path: path.join(dir, 'nobody.sock') }), exportName: '' },
    { name: 'the port refuses connections', address: async () => ({ host: '127.0.0.1', port: await closedPort() }), exportName: '' },
    { name: 'the server never greets', address: silentServer, exportName: '' },
    { name: 'the export does not exist', address: async () => ({ path: (await serve(new MemoryBackend({ size: MiB }))).socket }), exportName: 'nope' },
  ];
  for (const c of unreachable) {
    test(`open fails with a BackendError naming the address when ${c.name}`, async () => {
      const address = await c.address();
      await assert.rejects(NbdRemoteBackend.open({ address, exportName: c.exportName, connectTimeoutMs: 500 }), (err: Error) => {
        assert.ok(err instanceof BackendError, String(err));
        assert.ok(err.message.includes('path' in address ? address.path : `${address.host}:${address.port}`), err.message);
        return true;
      });
    });
  }

  test('talks nbds:// to a server that requires TLS, given the CA by path', async (t) => {
    if (!requireTool(t, 'openssl')) return;
    const certs = await makeTestCerts(await makeTempDir('r3map-nbd-backend-tls-'));
    try {
      const tls = await readServerTlsFiles({ cert: certs.serverCert, key: certs.serverKey, clientCa: certs.ca });
      const { socket } = await serve(new MemoryBackend({ size: MiB }), { tls });
      await assert.rejects(NbdRemoteBackend.open({ address: { path: socket }, connectTimeoutMs: 2000 }), BackendError);
      const backend = await NbdRemoteBackend.open({ address: { path: socket }, tls: { ca: certs.ca, cert: certs.clientCert, key: certs.clientKey } });
      assert.ok(backend.target.startsWith('nbds+unix:'));
      const data = pattern(300 * KiB, 1);
      await backend.writeAt(data, 3);
      const back = Buffer.alloc(data.length);
      await backend.readAt(back, 3);
      assert.deepEqual(back, data);
      await backend.close();
    } finally {
      await removeDir(certs.dir);
    }
  });

  test('openBackend opens nbd+unix:// URIs, and a --size that disagrees with the export is a usage error', async () => {
    const { socket } = await serve(new MemoryBackend({ size: 2 * MiB }));
    const backend = await openBackend(`nbd+unix:///disk?socket=${socket}&connections=2`);
    assert.ok(backend instanceof NbdRemoteBackend);
    assert.equal(backend.size, 2 * MiB);
    assert.equal(backend.maxInFlight, 2 * 64);
    await backend.close();
    await assert.rejects(openBackend(`nbd+unix:///disk?socket=${socket}`, { size: MiB }), (err: Error & { code?: string }) => err.code === 'ERR_USAGE');
  });

  test('rejects calls after close with ClosedError, and close is idempotent', async () => {
    const { socket } = await serve(new MemoryBackend({ size: MiB }));
    const backend = await NbdRemoteBackend.open({ address: { path: socket } });
    const pending = backend.readAt(Buffer.alloc(10), 0);
    await Promise.all([backend.close(), backend.close()]);
    await pending;
    await assert.rejects(backend.readAt(Buffer.alloc(10), 0), ClosedError);
    await assert.rejects(backend.sync(), ClosedError);
  });
});

async function closedPort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
  const { port } = s.address() as net.AddressInfo;
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return port;
}

/** A server that accepts and then says nothing (closed by after()). */
async function silentServer(): Promise<{ host: string; port: number }> {
  const sockets: net.Socket[] = [];
  const s = net.createServer((c) => sockets.push(c));
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
  after(() => {
    for (const c of sockets) c.destroy();
    s.close();
  });
  return { host: '127.0.0.1', port: (s.address() as net.AddressInfo).port };
}
