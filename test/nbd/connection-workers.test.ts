/**
 * NbdServer with worker threads: plain connections to a shareable export (SharedMemoryBackend)
 * are served on workers, all seeing one store; other exports and TLS connections stay on the
 * main thread; close() drains the workers' connections.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { Writable } from 'node:stream';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { pino } from 'pino';
import { FileBackend } from '../../src/backends/file.js';
import { MemoryBackend } from '../../src/backends/memory.js';
import { SharedMemoryBackend } from '../../src/backends/shared-memory.js';
import type { Logger } from '../../src/log.js';
import { NbdClient } from '../../src/nbd-client/client.js';
import { NbdServer } from '../../src/nbd/server.js';
import { makeTestCerts } from '../support/nbd-certs.js';

const dir = mkdtempSync(join(tmpdir(), 'r3map-nbd-workers-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const MiB = 1024 * 1024;

function captureLog(): { log: Logger; count: (msg: string) => number } {
  const lines: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      lines.push(...chunk.toString().split('\n').filter((l) => l !== ''));
      cb();
    },
  });
  return { log: pino({ level: 'debug' }, stream) as Logger, count: (msg) => lines.filter((l) => (JSON.parse(l) as { msg: string }).msg === msg).length };
}

function pattern(length: number, seed: number): Buffer {
  const buf = Buffer.allocUnsafe(length);
  for (let i = 0; i < length; i++) buf[i] = (i * 13 + seed) & 0xff;
  return buf;
}

describe('NbdServer with worker threads', () => {
  test('four connections on two workers write and read one store; a memory export stays on the main thread', async () => {
    const shared = SharedMemoryBackend.create({ size: 64 * MiB });
    const plain = new MemoryBackend({ size: 4 * MiB });
    const { log, count } = captureLog();
    const server = new NbdServer({ exports: [{ name: 'shared', backend: shared }, { name: 'plain', backend: plain }], workers: 2, log });
    const path = join(dir, 'workers.sock');
    await server.listen({ path });
    try {
      const clients = await Promise.all([0, 1, 2, 3].map(() => NbdClient.connect({ path }, { exportName: 'shared' })));
      // Each writes its own 8 MiB in 1 MiB requests, all at once, then reads another's back.
      await Promise.all(clients.map((c, k) => Promise.all(Array.from({ length: 8 }, (_, i) => c.writeAt(pattern(MiB, k * 8 + i), (k * 8 + i) * MiB)))));
      await Promise.all(clients.map(async (c, k) => {
        const other = (k + 1) % 4;
        const back = Buffer.alloc(8 * MiB);
        await c.readAt(back, other * 8 * MiB);
        for (let i = 0; i < 8; i++) assert.ok(back.subarray(i * MiB, (i + 1) * MiB).equals(pattern(MiB, other * 8 + i)), `connection ${k} sees ${other}'s write ${i}`);
      }));
      assert.deepEqual((await clients[0]!.blockStatus(32 * MiB, 2 * MiB)), [{ length: 2 * MiB, flags: 3 }], 'block status from a worker');
      const onMain = await NbdClient.connect({ path }, { exportName: 'plain' });
      await onMain.writeAt(Buffer.alloc(4096, 1), 0);
      await onMain.close();
      await Promise.all(clients.map((c) => c.close()));
      const mine = Buffer.alloc(MiB);
      await shared.readAt(mine, 3 * MiB);
      assert.ok(mine.equals(pattern(MiB, 3)), 'the main thread sees what the workers wrote');
      assert.equal(count('served on a worker thread'), 4);
      assert.ok(count('reading into reused buffers') >= 5, 'the workers log through the server logger (and the main thread its own)');
    } finally {
      await server.close();
      await shared.close();
    }
  });

  test('a file export is served on workers too, each opening the file; FLUSH and close reach the file', async () => {
    const file = join(dir, 'disk.img');
    const backend = await FileBackend.open(file, { size: 8 * MiB });
    const { log, count } = captureLog();
    const server = new NbdServer({ exports: [{ name: 'disk', backend }], workers: 2, log });
    const path = join(dir, 'file.sock');
    await server.listen({ path });
    const a = await NbdClient.connect({ path }, { exportName: 'disk' });
    const b = await NbdClient.connect({ path }, { exportName: 'disk' });
    await a.writeAt(pattern(MiB, 1), 0);
    await a.flush();
    const back = Buffer.alloc(MiB);
    await b.readAt(back, 0);
    assert.ok(back.equals(pattern(MiB, 1)), 'one file behind both workers');
    assert.deepEqual(await b.blockStatus(4 * MiB, MiB), [{ length: MiB, flags: 3 }]);
    await b.writeAt(pattern(MiB, 2), 2 * MiB);
    await Promise.all([a.close(), b.close()]);
    await server.close();
    assert.equal(count('served on a worker thread'), 2);
    assert.ok(readFileSync(file).subarray(2 * MiB, 3 * MiB).equals(pattern(MiB, 2)));
    await backend.close();
  });

  test('close() drains connections a worker serves and resolves; TLS connections stay on the main thread', async () => {
    const certs = await makeTestCerts(mkdtempSync(join(dir, 'certs-')));
    const shared = SharedMemoryBackend.create({ size: 16 * MiB });
    const { log, count } = captureLog();
    const server = new NbdServer({
      exports: [{ name: 'disk', backend: shared }], workers: 1, log,
      tls: { cert: readFileSync(certs.serverCert), key: readFileSync(certs.serverKey), require: false },
    });
    const bound = await server.listen({ host: '127.0.0.1', port: 0 });
    const port = Number(bound.split(':').at(-1));
    const plainClient = await NbdClient.connect({ host: '127.0.0.1', port }, { exportName: 'disk' });
    const tlsClient = await NbdClient.connect({ host: '127.0.0.1', port }, { exportName: 'disk', tls: { ca: readFileSync(certs.ca) } });
    await plainClient.writeAt(Buffer.alloc(MiB, 7), 0);
    const back = Buffer.alloc(MiB);
    await tlsClient.readAt(back, 0);
    assert.ok(back.equals(Buffer.alloc(MiB, 7)));
    assert.equal(count('served on a worker thread'), 1, 'only the plain connection');
    const pending = plainClient.writeAt(Buffer.alloc(MiB, 8), MiB);
    await pending;
    await server.close(); // the clients are still connected: the server ends both
    await Promise.all([plainClient.close().catch(() => undefined), tlsClient.close().catch(() => undefined)]);
    const after = Buffer.alloc(MiB);
    await shared.readAt(after, MiB);
    assert.ok(after.equals(Buffer.alloc(MiB, 8)));
    await shared.close();
  });
});
