import assert from 'node:assert/strict';
import diagnosticsChannel from 'node:diagnostics_channel';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { connect, createServer, type AddressInfo, type Socket } from 'node:net';
import { connect as tlsConnect, createServer as createTlsServer } from 'node:tls';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { encodeRequest } from '../../src/nbd/codec.js';
import {
  NBD_CMD_DISC,
  NBD_CMD_FLAG_DF,
  NBD_CMD_FLAG_FAST_ZERO,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_EINVAL,
  NBD_ENOTSUP,
  NBD_EIO,
  NBD_ENOSPC,
  NBD_EOVERFLOW,
  NBD_EPERM,
  NBD_FLAG_CAN_MULTI_CONN,
  NBD_FLAG_READ_ONLY,
} from '../../src/nbd/constants.js';
import type { ListenAddress } from '../../src/nbd/listen-address.js';
import { NbdServer, type NbdServerOptions } from '../../src/nbd/server.js';
import { makeTestCerts } from '../support/nbd-certs.js';
import { BufferBackend, type BufferBackendOptions } from './support-backend.js';
import { RawClient, openSession, readAt, readReply, sendRequest, type Session } from './support-client.js';

const dir = mkdtempSync(join(tmpdir(), 'r3map-nbd-transmission-'));
const servers: NbdServer[] = [];
after(async () => {
  await Promise.allSettled(servers.map((s) => s.close()));
  rmSync(dir, { recursive: true, force: true });
});

const TCP: ListenAddress = { host: '127.0.0.1', port: 0 };

async function serve(backendOptions: Partial<BufferBackendOptions> = {}, serverOptions: Partial<NbdServerOptions> = {}, at: ListenAddress = TCP) {
  const backend = new BufferBackend({ size: 8 * 1024 * 1024, ...backendOptions });
  const server = new NbdServer({ exports: [{ name: 'disk', backend }], ...serverOptions });
  servers.push(server);
  const bound = await server.listen(at);
  const address: ListenAddress = 'path' in at ? at : { host: '127.0.0.1', port: Number(bound.split(':').at(-1)) };
  return { backend, server, address, bound };
}

function pattern(length: number, seed: number): Buffer {
  const buf = Buffer.allocUnsafe(length);
  for (let i = 0; i < length; i++) buf[i] = (i * 7 + seed) & 0xff;
  return buf;
}

/** A READ of 512 bytes that must succeed: proves the connection is alive and in sync. */
async function assertAlive(session: Session, handle = 999): Promise<void> {
  const reply = await readAt(session.client, handle, 0, 512);
  assert.deepEqual([reply.errno, reply.handle, reply.data?.length], [0, handle, 512]);
}

/** Sends `data` to a fresh server socket of the given kind and returns every 'data' chunk it got, kept as delivered. */
async function collectChunks(kind: 'tcp' | 'unix' | 'tls', data: Buffer): Promise<Buffer[]> {
  const chunks: Buffer[] = [];
  const certs = kind === 'tls' ? await makeTestCerts(mkdtempSync(join(dir, 'certs-'))) : undefined;
  const onSocket = (socket: Socket): void => {
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.on('end', () => socket.end());
  };
  const server = certs === undefined ? createServer(onSocket) : createTlsServer({ key: readFileSync(certs.serverKey), cert: readFileSync(certs.serverCert) }, onSocket);
  const path = join(dir, 'chunks.sock');
  await new Promise<void>((resolve) => server.listen(kind === 'unix' ? { path } : { host: '127.0.0.1', port: 0 }, resolve));
  try {
    const port = kind === 'unix' ? 0 : (server.address() as AddressInfo).port;
    const client =
      kind === 'unix' ? connect({ path }) : kind === 'tcp' ? connect({ host: '127.0.0.1', port }) : tlsConnect({ host: '127.0.0.1', port, ca: readFileSync(certs!.ca) });
    client.resume();
    for (let at = 0; at < data.length; at += 100_000) client.write(data.subarray(at, at + 100_000));
    client.end();
    await new Promise<void>((resolve, reject) => {
      client.once('close', () => resolve());
      client.once('error', reject);
    });
    return chunks;
  } finally {
    await new Promise((resolve) => server.close(resolve));
  }
}

describe('Transmission over real sockets', () => {
  for (const kind of ['tcp', 'unix'] as const) {
    for (const withWritev of [false, true]) {
      const how = withWritev ? 'as pieces to backend.writev' : 'copied for backend.writeAt';
      test(`a 3 MiB write spanning many chunks reads back over ${kind} (${how})`, async () => {
        const at = kind === 'tcp' ? TCP : { path: join(dir, `rw-${withWritev}.sock`) };
        const { address, backend } = await serve({ withWritev }, { userBuffers: false }, at);
        const session = await openSession(address, 'disk');
        const data = pattern(3 * 1024 * 1024, 5);
        sendRequest(session.client, { type: NBD_CMD_WRITE, handle: 1, offset: 4096, payload: data });
        assert.deepEqual(await readReply(session.client), { errno: 0, handle: 1 });
        assert.deepEqual(backend.data.subarray(4096, 4096 + data.length), data);
        assert.deepEqual(backend.calls.map((c) => [c.op, c.off, c.length]), [[withWritev ? 'writev' : 'write', 4096, data.length]]);
        if (withWritev) assert.ok(backend.writevPieces[0]! > 1, 'the payload came in several chunks');
        const reply = await readAt(session.client, 2, 4096, data.length);
        assert.ok(reply.data!.equals(data));
        session.client.destroy();
      });
    }
  }

  for (const kind of ['tcp', 'unix'] as const) {
    test(`on a re-opened socket a large payload is read into one pooled buffer and written once (${kind})`, async () => {
      const at = kind === 'tcp' ? TCP : { path: join(dir, 'staged.sock') };
      const { address, backend } = await serve({ withWritev: true }, {}, at);
      const session = await openSession(address, 'disk');
      const data = pattern(3 * 1024 * 1024, 6);
      sendRequest(session.client, { type: NBD_CMD_WRITE, handle: 1, offset: 4096, payload: data });
      sendRequest(session.client, { type: NBD_CMD_WRITE, handle: 2, offset: 0, payload: pattern(100, 1) });
      assert.deepEqual([await readReply(session.client), await readReply(session.client)].map((r) => r.errno), [0, 0]);
      assert.deepEqual(backend.data.subarray(4096, 4096 + data.length), data);
      assert.deepEqual(backend.calls.map((c) => [c.op, c.off, c.length]).sort(), [['write', 0, 100], ['write', 4096, data.length]]);
      session.client.destroy();
    });
  }

  const chunkTransports = ['tcp', 'unix', 'tls'] as const;
  for (const kind of chunkTransports) {
    test(`socket 'data' chunks are never reused, so views of them stay valid (${kind})`, async () => {
      const data = pattern(8 * 1024 * 1024, 9);
      const chunks = await collectChunks(kind, data);
      assert.ok(chunks.length > 8, `only ${chunks.length} chunks`);
      assert.ok(Buffer.concat(chunks).equals(data), 'every chunk still holds what it was delivered with');
      const byBuffer = new Map<ArrayBufferLike, [number, number][]>();
      for (const c of chunks) {
        const ranges = byBuffer.get(c.buffer) ?? [];
        for (const [start, end] of ranges) assert.ok(c.byteOffset >= end || c.byteOffset + c.length <= start, 'two chunks share memory');
        ranges.push([c.byteOffset, c.byteOffset + c.length]);
        byBuffer.set(c.buffer, ranges);
      }
    });
  }

  for (const kind of ['tcp', 'unix'] as const) {
    test(`pipelined writes of random sizes, held by a slow backend.writev, all land intact (${kind})`, async () => {
      const at = kind === 'tcp' ? TCP : { path: join(dir, 'pipelined.sock') };
      // Each call waits, so pieces are held while many later chunks arrive.
      const { address, backend } = await serve({ withWritev: true, delayMs: (op) => (op === 'writev' ? 20 : 0) }, { userBuffers: false }, at);
      const session = await openSession(address, 'disk');
      const model = Buffer.alloc(backend.size);
      let seed = 17;
      const random = (): number => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32);
      const count = 40;
      for (let i = 0, off = 0; i < count; i++) {
        const length = 1 + Math.floor(random() * (random() < 0.3 ? 100 : 300 * 1024));
        const payload = pattern(length, i);
        payload.copy(model, off);
        sendRequest(session.client, { type: NBD_CMD_WRITE, handle: i + 1, offset: off, payload });
        off += length + Math.floor(random() * 5000);
      }
      const handles: number[] = [];
      for (let i = 0; i < count; i++) {
        const reply = await readReply(session.client);
        assert.equal(reply.errno, 0);
        handles.push(reply.handle);
      }
      assert.deepEqual(handles.sort((a, b) => a - b), Array.from({ length: count }, (_, i) => i + 1));
      assert.ok(backend.data.equals(model), 'the backend holds exactly what was written');
      assert.ok(backend.writevPieces.some((n) => n > 1), 'some payloads came in several chunks');
      session.client.destroy();
    });
  }

  test('a writev the backend fails is answered with EIO and the connection goes on', async () => {
    const { address } = await serve({ withWritev: true, fail: (op) => (op === 'writev' ? new Error('disk on fire') : undefined) }, { userBuffers: false });
    const session = await openSession(address);
    sendRequest(session.client, { type: NBD_CMD_WRITE, handle: 7, offset: 0, payload: pattern(1024 * 1024, 2) });
    assert.deepEqual(await readReply(session.client), { errno: NBD_EIO, handle: 7 });
    await assertAlive(session);
    session.client.destroy();
  });

  test('a FUA write through writev is synced before its reply', async () => {
    const { address, backend } = await serve({ withWritev: true }, { userBuffers: false });
    const session = await openSession(address);
    sendRequest(session.client, { type: NBD_CMD_WRITE, flags: NBD_CMD_FLAG_FUA, handle: 1, offset: 0, payload: pattern(1024 * 1024, 3) });
    assert.equal((await readReply(session.client)).errno, 0);
    assert.deepEqual(backend.calls.map((c) => c.op), ['writev', 'sync']);
    session.client.destroy();
  });

  test('replies go out as requests complete, not in request order', async () => {
    const { address } = await serve({ delayMs: (op, off) => (op === 'read' && off === 0 ? 150 : 0) });
    const session = await openSession(address);
    sendRequest(session.client, { type: NBD_CMD_READ, handle: 1, offset: 0, length: 512 });
    sendRequest(session.client, { type: NBD_CMD_READ, handle: 2, offset: 4096, length: 512 });
    const lengths = new Map([
      [1, 512],
      [2, 512],
    ]);
    const first = await readReply(session.client, lengths);
    const second = await readReply(session.client, lengths);
    assert.deepEqual([first.handle, second.handle], [2, 1]);
    session.client.destroy();
  });

  const bad: { name: string; header: { type: number; flags?: number; offset?: number; length: number }; payload?: number; errno: number; backend?: Partial<BufferBackendOptions>; server?: Partial<NbdServerOptions> }[] = [
    { name: 'a READ past the end', header: { type: NBD_CMD_READ, offset: 8 * 1024 * 1024 - 512, length: 1024 }, errno: NBD_EINVAL },
    { name: 'a TRIM past the end', header: { type: NBD_CMD_TRIM, offset: 8 * 1024 * 1024, length: 1 }, errno: NBD_EINVAL },
    { name: 'a READ above maxPayload', header: { type: NBD_CMD_READ, length: 128 * 1024 }, errno: NBD_EOVERFLOW, server: { maxPayload: 64 * 1024 } },
    { name: 'a WRITE above maxPayload (payload skipped)', header: { type: NBD_CMD_WRITE, length: 200 * 1024 }, payload: 200 * 1024, errno: NBD_EOVERFLOW, server: { maxPayload: 64 * 1024 } },
    { name: 'a WRITE to a read-only backend (payload skipped)', header: { type: NBD_CMD_WRITE, length: 5000 }, payload: 5000, errno: NBD_EPERM, backend: { readOnly: true } },
    { name: 'a TRIM on a read-only backend', header: { type: NBD_CMD_TRIM, length: 512 }, errno: NBD_EPERM, backend: { readOnly: true } },
    { name: 'an unknown command (its length is not drained)', header: { type: 99, length: 4096 }, errno: NBD_EINVAL },
    { name: 'an NBD_CMD_CACHE past the end', header: { type: 5, offset: 8 * 1024 * 1024 - 512, length: 4096 }, errno: NBD_EINVAL },
    { name: 'an NBD_CMD_CACHE with a flag', header: { type: 5, flags: NBD_CMD_FLAG_FUA, length: 4096 }, errno: NBD_EINVAL },
    { name: 'an unknown command flag', header: { type: NBD_CMD_READ, flags: 1 << 9, length: 512 }, errno: NBD_EINVAL },
    { name: 'NBD_CMD_FLAG_DF without structured replies', header: { type: NBD_CMD_READ, flags: NBD_CMD_FLAG_DF, length: 512 }, errno: NBD_EINVAL },
    { name: 'NBD_CMD_FLAG_FAST_ZERO on a backend without a native zero', header: { type: NBD_CMD_WRITE_ZEROES, flags: NBD_CMD_FLAG_FAST_ZERO, length: 512 }, errno: NBD_ENOTSUP },
    { name: 'NBD_CMD_FLAG_FAST_ZERO on a read-only export (not advertised there)', header: { type: NBD_CMD_WRITE_ZEROES, flags: NBD_CMD_FLAG_FAST_ZERO, length: 512 }, errno: NBD_EINVAL, backend: { readOnly: true } },
    { name: 'FUA on a read-only export (not advertised there)', header: { type: NBD_CMD_READ, flags: NBD_CMD_FLAG_FUA, length: 512 }, errno: NBD_EINVAL, backend: { readOnly: true } },
    { name: 'a FLUSH with a non-zero length', header: { type: NBD_CMD_FLUSH, length: 512 }, errno: NBD_EINVAL },
    { name: 'a misaligned READ when minBlockSize is 512', header: { type: NBD_CMD_READ, offset: 100, length: 512 }, errno: NBD_EINVAL, server: { minBlockSize: 512 } },
    { name: 'a READ the backend fails', header: { type: NBD_CMD_READ, offset: 4096, length: 512 }, errno: NBD_EIO, backend: { fail: (op, off) => (op === 'read' && off === 4096 ? new Error('disk on fire') : undefined) } },
    {
      name: 'a WRITE the backend fails with ENOSPC',
      header: { type: NBD_CMD_WRITE, offset: 4096, length: 512 },
      payload: 512,
      errno: NBD_ENOSPC,
      backend: { fail: (op) => (op === 'write' ? Object.assign(new Error('full'), { code: 'ENOSPC' }) : undefined) },
    },
  ];
  for (const c of bad) {
    test(`answers ${c.name} with errno ${c.errno} and keeps the connection`, async () => {
      const { address } = await serve(c.backend, c.server);
      const session = await openSession(address);
      sendRequest(session.client, { ...c.header, handle: 7, ...(c.payload === undefined ? {} : { payload: pattern(c.payload, 1) }) });
      assert.deepEqual(await readReply(session.client, new Map([[7, c.header.length]])), { errno: c.errno, handle: 7 });
      await assertAlive(session);
      session.client.destroy();
    });
  }

  test('an offset above 2^53 is EINVAL, not a dropped connection', async () => {
    const { address } = await serve();
    const session = await openSession(address);
    const header = encodeRequest({ flags: 0, type: NBD_CMD_READ, handleHi: 0, handleLo: 3, offset: 0, length: 512 });
    header.writeUInt32BE(0xffffffff, 16);
    session.client.write(header);
    assert.deepEqual(await readReply(session.client), { errno: NBD_EINVAL, handle: 3 });
    await assertAlive(session);
    session.client.destroy();
  });

  test('zero-length READ and WRITE succeed without data', async () => {
    const { address } = await serve();
    const session = await openSession(address);
    sendRequest(session.client, { type: NBD_CMD_READ, handle: 1, offset: 0, length: 0 });
    sendRequest(session.client, { type: NBD_CMD_WRITE, handle: 2, offset: 0, payload: Buffer.alloc(0) });
    const lengths = new Map([[1, 0]]);
    const replies = [await readReply(session.client, lengths), await readReply(session.client, lengths)];
    assert.deepEqual(replies.map((r) => [r.handle, r.errno, r.data?.length ?? 0]).sort(), [
      [1, 0, 0],
      [2, 0, 0],
    ]);
    await assertAlive(session);
    session.client.destroy();
  });

  test('a FUA write is synced before its reply, and FLUSH syncs', async () => {
    const { address, backend } = await serve();
    const session = await openSession(address);
    sendRequest(session.client, { type: NBD_CMD_WRITE, flags: NBD_CMD_FLAG_FUA, handle: 1, offset: 0, payload: pattern(4096, 3) });
    assert.equal((await readReply(session.client)).errno, 0);
    assert.deepEqual(backend.calls.map((c) => c.op), ['write', 'sync']);
    sendRequest(session.client, { type: NBD_CMD_FLUSH, handle: 2 });
    assert.equal((await readReply(session.client)).errno, 0);
    assert.equal(backend.syncs, 2);
    session.client.destroy();
  });

  const zeroCases: { name: string; options: Partial<BufferBackendOptions>; type: number; flags: number; ops: string[] }[] = [
    { name: 'TRIM without backend.trim is a successful no-op', options: {}, type: NBD_CMD_TRIM, flags: 0, ops: [] },
    { name: 'TRIM calls backend.trim', options: { withTrim: true }, type: NBD_CMD_TRIM, flags: 0, ops: ['trim'] },
    { name: 'WRITE_ZEROES calls backend.zero', options: { withZero: true }, type: NBD_CMD_WRITE_ZEROES, flags: NBD_CMD_FLAG_NO_HOLE, ops: ['zero'] },
    { name: 'WRITE_ZEROES is emulated with 1 MiB writes', options: {}, type: NBD_CMD_WRITE_ZEROES, flags: 0, ops: ['write', 'write', 'write'] },
    { name: 'WRITE_ZEROES with FUA syncs after zeroing', options: {}, type: NBD_CMD_WRITE_ZEROES, flags: NBD_CMD_FLAG_FUA, ops: ['write', 'write', 'write', 'sync'] },
  ];
  for (const c of zeroCases) {
    test(c.name, async () => {
      const { address, backend } = await serve(c.options);
      backend.data.fill(0xaa);
      const session = await openSession(address);
      sendRequest(session.client, { type: c.type, flags: c.flags, handle: 1, offset: 512, length: 2.5 * 1024 * 1024 });
      assert.deepEqual(await readReply(session.client), { errno: 0, handle: 1 });
      assert.deepEqual(backend.calls.map((x) => x.op), c.ops);
      const zeroed = c.ops.length > 0 && c.ops[0] !== 'sync';
      assert.equal(backend.data.subarray(512, 512 + 2.5 * 1024 * 1024).every((b) => b === 0), zeroed);
      assert.equal(backend.data[511], 0xaa);
      session.client.destroy();
    });
  }

  test('NBD_CMD_DISC waits for in-flight requests, closes without a reply, then syncs (the server waits for it)', async () => {
    const { address, backend, server } = await serve({ delayMs: (op) => (op === 'write' ? 100 : op === 'sync' ? 1500 : 0) });
    const session = await openSession(address);
    sendRequest(session.client, { type: NBD_CMD_WRITE, handle: 1, offset: 0, payload: pattern(512, 9) });
    sendRequest(session.client, { type: NBD_CMD_DISC, handle: 2 });
    assert.deepEqual(await readReply(session.client), { errno: 0, handle: 1 });
    assert.equal(await session.client.waitClosed(), true);
    assert.equal(session.client.buffered, 0, 'DISC has no reply');
    assert.equal(backend.syncs, 0, 'the client was not kept waiting for the sync (it takes 1.5 s)');
    for (const deadline = Date.now() + 5000; backend.syncs === 0 && Date.now() < deadline; ) await new Promise((r) => setTimeout(r, 10));
    assert.equal(backend.syncs, 1, 'the sync at disconnect ran after the close');
    await server.close();
  });

  test('caps the requests in flight per connection and still answers all of them', async () => {
    const { address, backend } = await serve({ delayMs: (op) => (op === 'read' ? 20 : 0) }, { maxInFlight: 2 });
    const session = await openSession(address);
    const lengths = new Map<number, number>();
    for (let h = 1; h <= 12; h++) {
      lengths.set(h, 4096);
      sendRequest(session.client, { type: NBD_CMD_READ, handle: h, offset: h * 4096, length: 4096 });
    }
    const handles: number[] = [];
    for (let i = 0; i < 12; i++) handles.push((await readReply(session.client, lengths)).handle);
    assert.deepEqual(handles.sort((a, b) => a - b), Array.from({ length: 12 }, (_, i) => i + 1));
    assert.equal(backend.maxInFlightSeen, 2);
    session.client.destroy();
  });

  test('caps the payload bytes in flight per connection', async () => {
    const { address, backend } = await serve({ delayMs: (op) => (op === 'read' ? 20 : 0) }, { maxInFlightBytes: 8192 });
    const session = await openSession(address);
    const lengths = new Map<number, number>();
    for (let h = 1; h <= 8; h++) {
      lengths.set(h, 4096);
      sendRequest(session.client, { type: NBD_CMD_READ, handle: h, offset: 0, length: 4096 });
    }
    for (let i = 0; i < 8; i++) assert.equal((await readReply(session.client, lengths)).errno, 0);
    assert.equal(backend.maxInFlightSeen, 2);
    session.client.destroy();
  });

  test('stops reading new requests while replies pile up unread, and resumes once they drain', async () => {
    const { address, backend } = await serve({ size: 64 * 1024 * 1024 }, { maxPayload: 1024 * 1024 });
    const session = await openSession(address);
    const lengths = new Map<number, number>();
    const batch = (first: number): void => {
      for (let h = first; h < first + 32; h++) {
        lengths.set(h, 1024 * 1024);
        sendRequest(session.client, { type: NBD_CMD_READ, handle: h, offset: (h % 64) * 1024 * 1024, length: 1024 * 1024 });
      }
    };
    session.client.socket.pause();
    batch(1);
    await new Promise((resolve) => setTimeout(resolve, 300));
    batch(33);
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.equal(backend.calls.length, 32, 'the second batch waits while 32 MiB of replies are unread');
    session.client.socket.resume();
    for (let i = 0; i < 64; i++) assert.equal((await readReply(session.client, lengths)).errno, 0);
    assert.equal(backend.calls.length, 64);
    session.client.destroy();
  });

  test('a client that half-closes after its requests still gets every reply', async () => {
    const { address } = await serve();
    const session = await openSession(address);
    sendRequest(session.client, { type: NBD_CMD_WRITE, handle: 1, offset: 0, payload: pattern(70000, 1) });
    sendRequest(session.client, { type: NBD_CMD_READ, handle: 2, offset: 0, length: 70000 });
    session.client.socket.end();
    const lengths = new Map([[2, 70000]]);
    const replies = [await readReply(session.client, lengths), await readReply(session.client, lengths)];
    assert.deepEqual(replies.map((r) => r.errno), [0, 0]);
    assert.equal(await session.client.waitClosed(), true);
  });

  test('garbage on one connection closes it while another keeps working', async () => {
    const { address } = await serve();
    const good = await openSession(address);
    const bad = await openSession(address);
    bad.client.write(Buffer.from('this is not an NBD request header at all'));
    assert.equal(await bad.client.waitClosed(), true);
    await assertAlive(good);
    good.client.destroy();
  });

  test('advertises CAN_MULTI_CONN and READ_ONLY from the backend', async () => {
    const multi = await serve({ canMultiConn: true });
    const a = await openSession(multi.address);
    assert.equal(a.flags & NBD_FLAG_CAN_MULTI_CONN, NBD_FLAG_CAN_MULTI_CONN);
    assert.equal(a.flags & NBD_FLAG_READ_ONLY, 0);
    const ro = await serve({ readOnly: true });
    const b = await openSession(ro.address);
    assert.equal(b.flags & (NBD_FLAG_READ_ONLY | NBD_FLAG_CAN_MULTI_CONN), NBD_FLAG_READ_ONLY);
    a.client.destroy();
    b.client.destroy();
  });

  test('publishes one diagnostics event per request when someone listens', async () => {
    const { address } = await serve();
    const events: unknown[] = [];
    const onEvent = (message: unknown): void => void events.push(message);
    diagnosticsChannel.subscribe('r3map:nbd:request', onEvent);
    try {
      const session = await openSession(address);
      await readAt(session.client, 1, 0, 512);
      assert.deepEqual(events, [{ conn: 1, cmd: NBD_CMD_READ, offset: 0, length: 512, errno: 0 }]);
      session.client.destroy();
    } finally {
      diagnosticsChannel.unsubscribe('r3map:nbd:request', onEvent);
    }
  });
});

describe('NbdServer', () => {
  test('serves a socket handed to handle()', async () => {
    const backend = new BufferBackend({ size: 65536 });
    const nbd = new NbdServer({ exports: [{ name: 'disk', backend }] });
    servers.push(nbd);
    const path = join(dir, 'handle.sock');
    const plain = createServer((socket) => nbd.handle(socket));
    await new Promise<void>((resolve) => plain.listen(path, resolve));
    try {
      const session = await openSession({ path });
      await assertAlive(session);
      session.client.destroy();
    } finally {
      plain.close();
    }
  });

  test('close() lets an in-flight write finish, syncs, closes connections and is idempotent', async () => {
    const { address, backend, server } = await serve({ delayMs: (op) => (op === 'write' ? 150 : 0) });
    const session = await openSession(address);
    sendRequest(session.client, { type: NBD_CMD_WRITE, handle: 1, offset: 0, payload: pattern(512, 4) });
    await new Promise((resolve) => setTimeout(resolve, 20));
    const closing = server.close();
    assert.equal(server.close(), closing);
    assert.deepEqual(await readReply(session.client), { errno: 0, handle: 1 });
    await closing;
    assert.equal(await session.client.waitClosed(), true);
    assert.ok(backend.syncs >= 1);
    assert.deepEqual(backend.data.subarray(0, 512), pattern(512, 4));
    await assert.rejects(server.listen(TCP), { code: 'ERR_CLOSED' });
  });

  test('listen() reports the bound address for IPv4, IPv6 and Unix sockets', async (t) => {
    const server = new NbdServer({ exports: [{ name: 'disk', backend: new BufferBackend({ size: 4096 }) }] });
    servers.push(server);
    assert.match(await server.listen(TCP), /^127\.0\.0\.1:\d+$/);
    const path = join(dir, 'listen.sock');
    assert.equal(await server.listen({ path }), `unix:${path}`);
    try {
      const v6 = await server.listen({ host: '::1', port: 0 });
      assert.match(v6, /^\[::1\]:\d+$/);
      const session = await openSession({ host: '::1', port: Number(v6.split(':').at(-1)) });
      await assertAlive(session);
      session.client.destroy();
    } catch (err) {
      if ((err as { code?: string }).code !== 'ERR_USAGE') throw err;
      t.diagnostic('IPv6 loopback is not available here');
    }
  });

  test('listen() replaces a stale Unix socket file but not a live one', async () => {
    const path = join(dir, 'stale.sock');
    const first = new NbdServer({ exports: [{ name: 'disk', backend: new BufferBackend({ size: 4096 }) }] });
    await first.listen({ path });
    const second = new NbdServer({ exports: [{ name: 'disk', backend: new BufferBackend({ size: 4096 }) }] });
    servers.push(second);
    await assert.rejects(second.listen({ path }), { code: 'ERR_USAGE' });
    await first.close();
    const stale = createServer();
    await new Promise<void>((resolve) => stale.listen(path, resolve));
    // Leave a socket file nobody accepts on: close the handle without unlinking (simulates a crash).
    (stale as unknown as { _handle: { close(): void } | null })._handle?.close();
    assert.equal(await second.listen({ path }), `unix:${path}`);
    const session = await openSession({ path });
    await assertAlive(session);
    session.client.destroy();
  });

  test('rejects options that break the spec', () => {
    const backend = new BufferBackend({ size: 4096 });
    const cases: Partial<NbdServerOptions>[] = [
      { exports: [] },
      { minBlockSize: 3 },
      { minBlockSize: 131072 },
      { preferredBlockSize: 256 },
      { maxPayload: 1000 },
      { maxInFlight: 0 },
      { exports: [{ name: 'a', backend }, { name: 'a', backend }] },
      { exports: [{ name: 'x'.repeat(4097), backend }] },
    ];
    for (const c of cases) {
      assert.throws(() => new NbdServer({ exports: [{ name: 'disk', backend }], ...c }), { code: 'ERR_USAGE' }, JSON.stringify(c).slice(0, 80));
    }
  });

  test('a raw client that connects and hangs up mid-greeting does not disturb the server', async () => {
    const { address } = await serve();
    const quitter = await RawClient.connect(address);
    quitter.destroy();
    const session = await openSession(address);
    await assertAlive(session);
    session.client.destroy();
  });
});
