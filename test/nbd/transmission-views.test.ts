/**
 * The zero-copy data path of a backend with `views` (memory): WRITE payloads go into its pages
 * (read straight from a re-opened socket where the server accepted it), READ replies are sent from
 * them. Checked against a model with pipelined requests of random sizes across page boundaries.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { Writable } from 'node:stream';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { pino } from 'pino';
import { MemoryBackend } from '../../src/backends/memory.js';
import type { Logger } from '../../src/log.js';
import { NbdClient } from '../../src/nbd-client/client.js';
import { NBD_CMD_WRITE, NBD_ENOSPC } from '../../src/nbd/constants.js';
import type { ListenAddress } from '../../src/nbd/listen-address.js';
import { NbdServer } from '../../src/nbd/server.js';
import { makeTestCerts } from '../support/nbd-certs.js';
import { openSession, readAt, readReply, sendRequest } from './support-client.js';

const dir = mkdtempSync(join(tmpdir(), 'r3map-nbd-views-'));
const servers: NbdServer[] = [];
after(async () => {
  await Promise.allSettled(servers.map((s) => s.close()));
  rmSync(dir, { recursive: true, force: true });
});

const SIZE = 16 * 1024 * 1024;
const PAGE = 64 * 1024;

function captureLog(): { log: Logger; messages: () => string[] } {
  const lines: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      lines.push(...chunk.toString().split('\n').filter((l) => l !== ''));
      cb();
    },
  });
  return { log: pino({ level: 'debug' }, stream) as Logger, messages: () => lines.map((l) => String((JSON.parse(l) as { msg: unknown }).msg)) };
}

function random(seed: number): () => number {
  let s = seed;
  return () => (s = (s * 1103515245 + 12345) >>> 0) / 2 ** 32;
}

async function serveMemory(at: ListenAddress | 'tcp', tls?: Awaited<ReturnType<typeof makeTestCerts>>) {
  const backend = new MemoryBackend({ size: SIZE, pageSize: PAGE });
  const { log, messages } = captureLog();
  const server = new NbdServer({ exports: [{ name: 'disk', backend }], log, ...(tls !== undefined ? { tls: { cert: readFileSync(tls.serverCert), key: readFileSync(tls.serverKey) } } : {}) });
  servers.push(server);
  const bound = await server.listen(at === 'tcp' ? { host: '127.0.0.1', port: 0 } : at);
  const address = at === 'tcp' ? { host: '127.0.0.1', port: Number(bound.split(':').at(-1)) } : at;
  return { backend, server, address, messages };
}

/** Pipelined writes and reads of random sizes and offsets; every read must match the model. */
async function exercise(client: NbdClient, seed: number, model = Buffer.alloc(SIZE)): Promise<Buffer> {
  const rand = random(seed);
  for (let round = 0; round < 6; round++) {
    const writes: Promise<void>[] = [];
    const ranges: [number, number][] = [];
    for (let i = 0; i < 24; i++) {
      const length = 1 + Math.floor(rand() * (rand() < 0.3 ? 3000 : 600 * 1024));
      const off = Math.floor(rand() * (SIZE - length));
      // Writes in one round do not overlap, so their order does not matter.
      if (ranges.some(([a, b]) => off < b && a < off + length)) continue;
      ranges.push([off, off + length]);
      const data = Buffer.alloc(length, (round * 31 + i) & 0xff);
      data.copy(model, off);
      writes.push(client.writeAt(data, off));
    }
    await Promise.all(writes);
    const reads = Array.from({ length: 16 }, () => {
      const length = 1 + Math.floor(rand() * 700 * 1024);
      const off = Math.floor(rand() * (SIZE - length));
      const buf = Buffer.alloc(length, 0xee);
      return client.readAt(buf, off).then(() => assert.ok(buf.equals(model.subarray(off, off + length)), `read [${off}, +${length}) in round ${round}`));
    });
    await Promise.all(reads);
  }
  return model;
}

describe('NBD data path over Backend.views', () => {
  for (const kind of ['tcp', 'unix'] as const) {
    test(`pipelined writes and reads across pages match the model, read into reused buffers (${kind})`, async () => {
      const at = kind === 'tcp' ? 'tcp' : { path: join(dir, 'views.sock') };
      const { backend, address, messages } = await serveMemory(at);
      const client = await NbdClient.connect(address, { exportName: 'disk' });
      const model = await exercise(client, kind === 'tcp' ? 11 : 12);
      await client.close();
      const all = Buffer.alloc(SIZE);
      await backend.readAt(all, 0);
      assert.ok(all.equals(model), 'the pages hold exactly what was written');
      assert.ok(messages().includes('reading into reused buffers'), 'the accepted socket was re-opened');
    });
  }

  test('over TLS (no re-open: Node decrypts into its own buffers) the same requests match', async () => {
    const certs = await makeTestCerts(mkdtempSync(join(dir, 'certs-')));
    const { address, messages } = await serveMemory('tcp', certs);
    const client = await NbdClient.connect(address, { exportName: 'disk', tls: { ca: readFileSync(certs.ca) } });
    await exercise(client, 13);
    await client.close();
    assert.ok(!messages().includes('reading into reused buffers'));
  });

  test('a socket handed to handle() is not re-opened: its owner closes it', async () => {
    const backend = new MemoryBackend({ size: SIZE, pageSize: PAGE });
    const { log, messages } = captureLog();
    const server = new NbdServer({ exports: [{ name: 'disk', backend }], log });
    servers.push(server);
    const { createServer } = await import('node:net');
    const path = join(dir, 'handed.sock');
    const plain = createServer({ allowHalfOpen: true }, (socket) => server.handle(socket));
    await new Promise<void>((resolve) => plain.listen(path, resolve));
    try {
      const client = await NbdClient.connect({ path }, { exportName: 'disk' });
      await exercise(client, 14);
      await client.close();
      assert.ok(!messages().includes('reading into reused buffers'));
    } finally {
      await new Promise((resolve) => plain.close(resolve));
    }
  });

  test('a WRITE past the end is refused and its payload skipped without touching a page', async () => {
    const { backend, address } = await serveMemory({ path: join(dir, 'end.sock') });
    const session = await openSession(address, 'disk');
    sendRequest(session.client, { type: NBD_CMD_WRITE, handle: 1, offset: SIZE - 4096, payload: Buffer.alloc(300 * 1024, 7) });
    assert.deepEqual(await readReply(session.client), { errno: NBD_ENOSPC, handle: 1 });
    const reply = await readAt(session.client, 2, SIZE - 4096, 4096);
    assert.ok(reply.data!.equals(Buffer.alloc(4096)), 'the refused payload went nowhere');
    assert.equal(backend.allocatedPages, 0);
    session.client.destroy();
  });

  test('a client that dies in the middle of a payload leaves the server serving others', async () => {
    const { address } = await serveMemory({ path: join(dir, 'dies.sock') });
    const session = await openSession(address, 'disk');
    sendRequest(session.client, { type: NBD_CMD_WRITE, handle: 1, offset: 0, length: 1024 * 1024 });
    session.client.write(Buffer.alloc(200 * 1024, 3));
    session.client.destroy();
    const client = await NbdClient.connect(address, { exportName: 'disk' });
    // What arrived of the unacknowledged write may be in the pages (as on a disk): start from them.
    const model = Buffer.alloc(SIZE);
    await client.readAt(model, 0);
    assert.ok(model.subarray(200 * 1024).equals(Buffer.alloc(SIZE - 200 * 1024)), 'nothing past what arrived');
    await exercise(client, 15, model);
    await client.close();
  });
});
