import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { once } from 'node:events';
import path from 'node:path';
import { ClosedError, NbdProtocolError, NbdRequestError } from '../../src/errors.js';
import { NbdClient } from '../../src/nbd-client/client.js';
import {
  NBD_EINVAL,
  NBD_ENOTSUP,
  NBD_EPERM,
  NBD_FLAG_HAS_FLAGS,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_WRITE_ZEROES,
} from '../../src/nbd/constants.js';
import { findTool, makeTempDir, removeDir, requireTool, startNbdServer, startNbdkit, type NbdServerExport, type NbdkitHandle } from '../support/tools.js';

const MiB = 1024 * 1024;
const SIZE = 64 * MiB;

function pattern(length: number, seed: number): Buffer {
  const buf = Buffer.allocUnsafe(length);
  for (let i = 0; i < length; i++) buf[i] = (i * 31 + seed * 7 + (i >> 9)) & 0xff;
  return buf;
}

/** Round trips that cross 512- and 4096-byte boundaries, plus the last bytes of the export. */
const roundTrips = [
  { name: 'one byte at offset 0', off: 0, length: 1 },
  { name: 'an unaligned range across a 4 KiB boundary', off: 4095, length: 3 },
  { name: 'a 1 MiB aligned block', off: 8 * MiB, length: MiB },
  { name: 'an unaligned 100 KiB run', off: 3 * MiB + 17, length: 100 * 1024 },
  { name: 'the last 512 bytes of the export', off: SIZE - 512, length: 512 },
];

/** The shared behaviour both strict servers must show to our client. */
function clientSuite(tool: string, getClient: () => NbdClient): void {
  for (const c of roundTrips) {
    test(`a write then read of ${c.name} returns the same bytes`, async (t) => {
      if (!requireTool(t, tool)) return;
      const client = getClient();
      const data = pattern(c.length, c.off);
      await client.writeAt(data, c.off);
      const back = Buffer.alloc(c.length, 0xee);
      await client.readAt(back, c.off);
      assert.deepEqual(back, data);
    });
  }

  test('a write with FUA lands', async (t) => {
      if (!requireTool(t, tool)) return;
    const client = getClient();
    const data = pattern(64 * 1024, 99);
    await client.writeAt(data, 20 * MiB, { fua: true });
    const back = Buffer.alloc(data.length);
    await client.readAt(back, 20 * MiB);
    assert.deepEqual(back, data);
  });

  test('flush resolves', async (t) => {
      if (!requireTool(t, tool)) return;
    await getClient().flush();
  });

  test('trim then zero (with NO_HOLE) leave ranges that read as zeros', async (t) => {
      if (!requireTool(t, tool)) return;
    const client = getClient();
    await client.writeAt(Buffer.alloc(128 * 1024, 0x5a), 30 * MiB);
    await client.zero(30 * MiB, 64 * 1024, { noHole: true });
    const back = Buffer.alloc(128 * 1024, 0xee);
    await client.readAt(back, 30 * MiB);
    assert.deepEqual(back.subarray(0, 64 * 1024), Buffer.alloc(64 * 1024));
    assert.deepEqual(back.subarray(64 * 1024), Buffer.alloc(64 * 1024, 0x5a));
    await client.trim(30 * MiB + 64 * 1024, 64 * 1024); // advisory: must succeed, contents unspecified
  });

  test('an out-of-range read rejects with NbdRequestError EINVAL and the connection stays usable', async (t) => {
      if (!requireTool(t, tool)) return;
    const client = getClient();
    await assert.rejects(client.readAt(Buffer.alloc(4096), SIZE - 512), (err: unknown) => {
      assert.ok(err instanceof NbdRequestError);
      assert.equal(err.errno, NBD_EINVAL);
      return true;
    });
    const back = Buffer.alloc(512);
    await client.readAt(back, SIZE - 512);
    assert.deepEqual(back, pattern(512, SIZE - 512));
  });

  test('64 requests pipelined at once all complete with their own data', async (t) => {
      if (!requireTool(t, tool)) return;
    const client = getClient();
    const n = 64;
    const block = 4096;
    const base = 40 * MiB;
    const writes = Array.from({ length: n }, (_, i) => client.writeAt(pattern(block, 1000 + i), base + i * block));
    assert.equal(client.inFlight, n);
    await Promise.all(writes);
    const bufs = Array.from({ length: n }, () => Buffer.alloc(block));
    const reads = bufs.map((b, i) => client.readAt(b, base + i * block));
    assert.equal(client.inFlight, n);
    await Promise.all(reads);
    bufs.forEach((b, i) => assert.deepEqual(b, pattern(block, 1000 + i), `block ${i}`));
  });
}

describe('NbdClient against nbdkit memory 64M', { timeout: 60_000 }, () => {
  let dir: string | undefined;
  let nbdkit: NbdkitHandle | undefined;
  let client: NbdClient | undefined;
  const have = findTool('nbdkit') !== undefined;

  before(async () => {
    if (!have) return;
    dir = await makeTempDir('r3map-client-');
    nbdkit = await startNbdkit(['memory', '64M'], dir);
    client = await NbdClient.connect(nbdkit.address);
  });
  after(async () => {
    await client?.close();
    await nbdkit?.stop();
    await removeDir(dir);
  });

  test('structured replies and base:allocation: holes read as zeros, block status sees them', async (t) => {
    if (!requireTool(t, 'nbdkit')) return;
    const c = client!;
    assert.deepEqual([c.info.structured, c.canBlockStatus], [true, true]);
    await c.writeAt(pattern(MiB, 5), 40 * MiB);
    const back = Buffer.alloc(3 * MiB, 0xee);
    await c.readAt(back, 39 * MiB);
    assert.ok(back.equals(Buffer.concat([Buffer.alloc(MiB), pattern(MiB, 5), Buffer.alloc(MiB)])));
    const extents = await c.blockStatus(38 * MiB, 4 * MiB);
    assert.equal(extents.reduce((n, e) => n + e.length, 0) <= 4 * MiB, true);
    const data = [];
    for (let at = 38 * MiB, i = 0; i < extents.length; at += extents[i]!.length, i++) if ((extents[i]!.flags & 1) === 0) data.push([at, extents[i]!.length]);
    assert.deepEqual(data, [[40 * MiB, MiB]], JSON.stringify(extents));
    await assert.rejects(c.readAt(Buffer.alloc(512), SIZE - 256), (err: unknown) => err instanceof NbdRequestError && err.errno === NBD_EINVAL);
    const simple = await NbdClient.connect(nbdkit!.address, { structuredReplies: false });
    assert.deepEqual([simple.info.structured, simple.canBlockStatus], [false, false]);
    await assert.rejects(simple.blockStatus(0, 4096), (err: unknown) => err instanceof NbdRequestError && err.errno === NBD_ENOTSUP);
    const again = Buffer.alloc(MiB);
    await simple.readAt(again, 40 * MiB);
    assert.ok(again.equals(pattern(MiB, 5)));
    await simple.close();
  });

  test('the handshake reports size, flags and block sizes', (t) => {
    if (!requireTool(t, 'nbdkit')) return;
    assert.equal(client!.size, SIZE);
    assert.equal(client!.readOnly, false);
    assert.equal(client!.info.via, 'go');
    const want = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES;
    assert.equal(client!.transmissionFlags & want, want);
    assert.ok(client!.blockSize.min >= 1 && client!.blockSize.preferred >= client!.blockSize.min);
  });

  test('list names the default export', async (t) => {
    if (!requireTool(t, 'nbdkit')) return;
    assert.deepEqual((await NbdClient.list(nbdkit!.address)).map((e) => e.name), ['']);
  });

  clientSuite('nbdkit', () => client!);

  test('replies that come back out of order reach the right requests', async (t) => {
    if (!requireTool(t, 'nbdkit')) return;
    // The delay filter holds every read for 300 ms, so a later write is answered first.
    const slow = await startNbdkit(['--filter=delay', 'memory', '1M', 'rdelay=300ms'], dir!);
    const c = await NbdClient.connect(slow.address);
    try {
      const order: string[] = [];
      const read = c.readAt(Buffer.alloc(4096), 0).then(() => order.push('read'));
      const write = c.writeAt(Buffer.alloc(4096, 1), 8192).then(() => order.push('write'));
      await Promise.all([read, write]);
      assert.deepEqual(order, ['write', 'read']);
    } finally {
      await c.close();
      await slow.stop();
    }
  });

  test('a read-only export reports readOnly and refuses writes with EPERM', async (t) => {
    if (!requireTool(t, 'nbdkit')) return;
    const ro = await startNbdkit(['--readonly', 'memory', '1M'], dir!);
    const c = await NbdClient.connect(ro.address);
    try {
      assert.equal(c.readOnly, true);
      await assert.rejects(c.writeAt(Buffer.alloc(512), 0), (err: unknown) => err instanceof NbdRequestError && err.errno === NBD_EPERM);
    } finally {
      await c.close();
      await ro.stop();
    }
  });

  test('close waits for requests in flight, then later calls reject with ClosedError', async (t) => {
    if (!requireTool(t, 'nbdkit')) return;
    const c = await NbdClient.connect(nbdkit!.address);
    const buf = Buffer.alloc(MiB);
    const read = c.readAt(buf, 0);
    await c.close();
    await read;
    assert.equal(await c.closed(), undefined);
    await assert.rejects(c.readAt(buf, 0), ClosedError);
  });
});

describe("NbdClient against Debian's nbd-server", { timeout: 60_000 }, () => {
  let dir: string | undefined;
  let client: NbdClient | undefined;
  let stopServer: (() => Promise<void>) | undefined;
  const have = findTool('nbd-server') !== undefined;
  const exports = (d: string): NbdServerExport[] => [
    { name: 'default', file: path.join(d, 'disk.img'), size: SIZE, settings: { flush: 'true', fua: 'true', trim: 'true' } },
    { name: 'second', file: path.join(d, 'second.img'), size: MiB, settings: { readonly: 'true' } },
  ];

  before(async () => {
    if (!have) return;
    dir = await makeTempDir('r3map-client-');
    // nbd-server -d serves one connection, then exits: one server per connection.
    const server = await startNbdServer(exports(dir), dir);
    stopServer = () => server.stop();
    client = await NbdClient.connect(server.address, { exportName: 'default' });
  });
  after(async () => {
    await client?.close();
    await stopServer?.();
    await removeDir(dir);
  });

  test('the handshake reports size and the flags the config enables', (t) => {
    if (!requireTool(t, 'nbd-server')) return;
    assert.equal(client!.size, SIZE);
    assert.equal(client!.readOnly, false);
    assert.equal(client!.info.via, 'go');
    const want = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES;
    assert.equal(client!.transmissionFlags & want, want);
  });

  test('list returns one entry per configured export', async (t) => {
    if (!requireTool(t, 'nbd-server')) return;
    const server = await startNbdServer(exports(dir!), dir!);
    try {
      assert.deepEqual((await NbdClient.list(server.address)).map((e) => e.name).sort(), ['default', 'second']);
    } finally {
      await server.stop();
    }
  });

  test('a read-only export reports readOnly and refuses writes with EPERM', async (t) => {
    if (!requireTool(t, 'nbd-server')) return;
    const server = await startNbdServer(exports(dir!), dir!);
    const c = await NbdClient.connect(server.address, { exportName: 'second' });
    try {
      assert.equal(c.readOnly, true);
      await assert.rejects(c.writeAt(Buffer.alloc(512), 0), (err: unknown) => err instanceof NbdRequestError && err.errno === NBD_EPERM);
    } finally {
      await c.close();
      await server.stop();
    }
  });

  test('an unknown export fails the handshake with NbdProtocolError', async (t) => {
    if (!requireTool(t, 'nbd-server')) return;
    const server = await startNbdServer(exports(dir!), dir!);
    try {
      await assert.rejects(NbdClient.connect(server.address, { exportName: 'missing' }), NbdProtocolError);
    } finally {
      await server.stop();
    }
  });

  clientSuite('nbd-server', () => client!);
});

/** A scripted server for the paths real servers do not take. */
async function fakeServer(script: (socket: net.Socket) => Promise<void>): Promise<{ address: { host: string; port: number }; close(): Promise<void> }> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('error', () => {});
    script(socket).catch(() => socket.destroy());
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as net.AddressInfo;
  return {
    address: { host: '127.0.0.1', port },
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** Reads exactly n bytes from a socket in paused mode. */
async function readExactly(socket: net.Socket, n: number): Promise<Buffer> {
  for (;;) {
    const chunk = socket.read(n) as Buffer | null;
    if (chunk !== null) return chunk;
    if (socket.readableEnded || socket.destroyed) throw new Error('socket ended');
    await Promise.race([once(socket, 'readable'), once(socket, 'close')]);
  }
}

function greeting(flags: number): Buffer {
  const b = Buffer.alloc(18);
  b.write('NBDMAGICIHAVEOPT', 'latin1');
  b.writeUInt16BE(flags, 16);
  return b;
}

describe('NbdClient against scripted servers', { timeout: 20_000 }, () => {
  test('a server that answers NBD_OPT_GO with ERR_UNSUP is entered with NBD_OPT_EXPORT_NAME, and unadvertised commands are refused locally', async () => {
    const seen: string[] = [];
    const server = await fakeServer(async (s) => {
      s.write(greeting(3));
      assert.equal((await readExactly(s, 4)).readUInt32BE(0), 3);
      let hdr = await readExactly(s, 16);
      const goLength = hdr.readUInt32BE(12);
      const go = await readExactly(s, goLength);
      seen.push(`opt ${hdr.readUInt32BE(8)} len ${goLength} name ${go.subarray(4, 4 + go.readUInt32BE(0)).toString()}`);
      const rep = Buffer.alloc(20);
      rep.writeUInt32BE(0x0003e889, 0);
      rep.writeUInt32BE(0x045565a9, 4);
      rep.writeUInt32BE(7, 8);
      rep.writeUInt32BE(2 ** 31 + 1, 12);
      s.write(rep);
      hdr = await readExactly(s, 16);
      const name = await readExactly(s, hdr.readUInt32BE(12));
      seen.push(`opt ${hdr.readUInt32BE(8)} name ${name.toString()}`);
      const reply = Buffer.alloc(10);
      reply.writeUInt32BE(0, 0);
      reply.writeUInt32BE(MiB, 4);
      reply.writeUInt16BE(NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH, 8);
      s.write(reply);
      await readExactly(s, 28); // NBD_CMD_DISC
      s.end();
    });
    try {
      const socket = net.connect(server.address.port, server.address.host);
      await once(socket, 'connect');
      const c = await NbdClient.connectSocket(socket, { exportName: 'disk', structuredReplies: false });
      assert.equal(c.info.via, 'export-name');
      assert.equal(c.size, MiB);
      assert.equal(c.transmissionFlags, NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH);
      assert.deepEqual(c.blockSize, { min: 1, preferred: 4096, max: 32 * MiB });
      // Not advertised: refused locally, nothing is sent.
      await assert.rejects(c.trim(0, 512), (err: unknown) => err instanceof NbdRequestError && err.errno === NBD_ENOTSUP);
      await assert.rejects(c.writeAt(Buffer.alloc(512), 0, { fua: true }), (err: unknown) => err instanceof NbdRequestError && err.errno === NBD_ENOTSUP);
      await c.close();
      // NBD_OPT_GO carries name length, name, one info request (NBD_INFO_BLOCK_SIZE): 4 + 4 + 2 + 2.
      assert.deepEqual(seen, ['opt 7 len 12 name disk', 'opt 1 name disk']);
    } finally {
      await server.close();
    }
  });

  test('structured chunks in any split: holes, data at offsets, block status of the chosen context, error chunks', async () => {
    const KiB = 1024;
    const data = pattern(32 * KiB, 3);
    const server = await fakeServer(async (s) => {
      s.write(greeting(3));
      await readExactly(s, 4);
      const optionReply = (option: number, type: number, body: Buffer): Buffer => {
        const rep = Buffer.alloc(20);
        rep.writeUInt32BE(0x0003e889, 0);
        rep.writeUInt32BE(0x045565a9, 4);
        rep.writeUInt32BE(option, 8);
        rep.writeUInt32BE(type, 12);
        rep.writeUInt32BE(body.length, 16);
        return Buffer.concat([rep, body]);
      };
      for (;;) {
        const hdr = await readExactly(s, 16);
        const option = hdr.readUInt32BE(8);
        const length = hdr.readUInt32BE(12);
        if (length > 0) await readExactly(s, length);
        if (option === 8) s.write(optionReply(8, 1, Buffer.alloc(0)));
        if (option === 10) {
          const ctx = Buffer.alloc(4);
          ctx.writeUInt32BE(9, 0);
          s.write(optionReply(10, 4, Buffer.concat([ctx, Buffer.from('base:allocation')])));
          s.write(optionReply(10, 1, Buffer.alloc(0)));
        }
        if (option === 7) {
          const info = Buffer.alloc(12);
          info.writeUInt32BE(MiB, 6);
          info.writeUInt16BE(NBD_FLAG_HAS_FLAGS, 10);
          s.write(Buffer.concat([optionReply(7, 3, info), optionReply(7, 1, Buffer.alloc(0))]));
          break;
        }
      }
      const chunk = (req: Buffer, flags: number, type: number, body: Buffer): Buffer => {
        const h = Buffer.alloc(20);
        h.writeUInt32BE(0x668e33ef, 0);
        h.writeUInt16BE(flags, 4);
        h.writeUInt16BE(type, 6);
        req.copy(h, 8, 8, 16);
        h.writeUInt32BE(body.length, 16);
        return Buffer.concat([h, body]);
      };
      const u64 = (n: number, extra: Buffer = Buffer.alloc(0)): Buffer => {
        const b = Buffer.alloc(8);
        b.writeUInt32BE(Math.floor(n / 2 ** 32), 0);
        b.writeUInt32BE(n % 2 ** 32, 4);
        return Buffer.concat([b, extra]);
      };
      // 1: READ 64 KiB at 64 KiB: hole [0, 16K), data [16K, 48K) in two chunks out of order, hole [48K, 64K) with DONE.
      const read = await readExactly(s, 28);
      const holeLen = (n: number): Buffer => { const b = Buffer.alloc(4); b.writeUInt32BE(n, 0); return b; };
      const reply = Buffer.concat([
        chunk(read, 0, 1, u64(64 * KiB + 32 * KiB, data.subarray(16 * KiB))),
        chunk(read, 0, 2, u64(64 * KiB, holeLen(16 * KiB))),
        chunk(read, 0, 1, u64(64 * KiB + 16 * KiB, data.subarray(0, 16 * KiB))),
        chunk(read, 1, 2, u64(64 * KiB + 48 * KiB, holeLen(16 * KiB))),
      ]);
      for (let at = 0; at < reply.length; at += 7) s.write(reply.subarray(at, at + 7)); // every split
      // 2: BLOCK_STATUS: one chunk for another context (ignored), then ours.
      const bs = await readExactly(s, 28);
      const ext = (ctx: number, pairs: number[]): Buffer => {
        const b = Buffer.alloc(4 + 4 * pairs.length);
        b.writeUInt32BE(ctx, 0);
        pairs.forEach((v, i) => b.writeUInt32BE(v, 4 + 4 * i));
        return b;
      };
      s.write(Buffer.concat([chunk(bs, 0, 5, ext(5, [4096, 0])), chunk(bs, 1, 5, ext(9, [8192, 3, 3 * MiB, 0]))]));
      // 3: READ answered with an error chunk, then NONE with DONE.
      const bad = await readExactly(s, 28);
      const err = Buffer.alloc(6);
      err.writeUInt32BE(5, 0); // EIO
      s.write(Buffer.concat([chunk(bad, 0, 2 ** 15 + 1, err), chunk(bad, 1, 0, Buffer.alloc(0))]));
      // 4: READ answered with data outside its range: the client must drop the connection.
      const outside = await readExactly(s, 28);
      s.write(chunk(outside, 1, 1, u64(0, Buffer.alloc(512))));
    });
    try {
      const c = await NbdClient.connect(server.address);
      assert.deepEqual([c.info.structured, c.info.allocationContext], [true, 9]);
      const buf = Buffer.alloc(64 * KiB, 0xee);
      await c.readAt(buf, 64 * KiB);
      assert.ok(buf.equals(Buffer.concat([Buffer.alloc(16 * KiB), data, Buffer.alloc(16 * KiB)])));
      assert.deepEqual(await c.blockStatus(0, 16 * KiB), [{ length: 8192, flags: 3 }, { length: 8192, flags: 0 }], 'trimmed to the request');
      await assert.rejects(c.readAt(Buffer.alloc(4096), 0), (e: unknown) => e instanceof NbdRequestError && e.errno === 5);
      await assert.rejects(c.readAt(Buffer.alloc(512), 4096), NbdProtocolError);
      assert.ok((await c.closed()) instanceof NbdProtocolError);
      await c.close();
    } finally {
      await server.close();
    }
  });

  test('a reply with a bad magic fails pending requests with NbdProtocolError and resolves closed()', async () => {
    const server = await fakeServer(async (s) => {
      s.write(greeting(3));
      await readExactly(s, 4);
      const hdr = await readExactly(s, 16);
      await readExactly(s, hdr.readUInt32BE(12));
      const info = Buffer.alloc(12);
      info.writeUInt16BE(0, 0);
      info.writeUInt32BE(MiB, 6);
      info.writeUInt16BE(NBD_FLAG_HAS_FLAGS, 10);
      for (const [type, data] of [[3, info], [1, Buffer.alloc(0)]] as const) {
        const rep = Buffer.alloc(20);
        rep.writeUInt32BE(0x0003e889, 0);
        rep.writeUInt32BE(0x045565a9, 4);
        rep.writeUInt32BE(7, 8);
        rep.writeUInt32BE(type, 12);
        rep.writeUInt32BE(data.length, 16);
        s.write(Buffer.concat([rep, data]));
      }
      await readExactly(s, 28);
      s.write(Buffer.alloc(16, 0xff));
    });
    try {
      const c = await NbdClient.connect(server.address, { structuredReplies: false });
      await assert.rejects(c.readAt(Buffer.alloc(512), 0), NbdProtocolError);
      assert.ok((await c.closed()) instanceof NbdProtocolError);
      await c.close();
    } finally {
      await server.close();
    }
  });
});
