// nbdsh (python3-libnbd) drives option negotiation and transmission edge cases against r3map-serve.
// libnbd 1.14 cannot send an arbitrary option, so the "unknown option, then a good one" case is a
// raw Node socket test at the end of this file (libnbd's own NBD_OPT_STRUCTURED_REPLY, which we do
// not support, is the nbdsh-side version of it).
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { once } from 'node:events';
import { nbdsh as runNbdsh } from '../support/nbdsh.js';
import { requireTool, serveFixture, type ServeFixture } from '../support/tools.js';

/** nbdsh against one of the fixture's listeners, its script in the fixture's directory. */
function nbdsh(fixture: ServeFixture, uri: string, name: string, body: string): Promise<Record<string, unknown>> {
  return runNbdsh(fixture.dir(), uri, name, body);
}

const SIZE = 64 * 1024 * 1024;

const OPTION_MODE = `
h = nbd.NBD()
h.set_opt_mode(True)
h.connect_uri(uri)
# libnbd asked for NBD_OPT_STRUCTURED_REPLY first, and the server agreed.
out['structured'] = h.get_structured_replies_negotiated()
names = []
out['listed'] = h.opt_list(lambda name, desc: names.append([name, desc]) or 0)
out['names'] = sorted(n for n, d in names)
h.set_export_name('extra')
h.opt_info()
out['info'] = [h.get_size(), h.is_read_only(), h.can_flush(), h.can_trim()]
h.set_export_name('missing')
out['info_missing'] = err(h.opt_info)
out['go_missing'] = err(h.opt_go)
out['still_negotiating'] = h.aio_is_negotiating()
h.set_export_name('default')
h.opt_go()
out['size'] = h.get_size()
out['block'] = [h.get_block_size(nbd.SIZE_MINIMUM), h.get_block_size(nbd.SIZE_PREFERRED), h.get_block_size(nbd.SIZE_MAXIMUM)]
h.shutdown()
a = nbd.NBD()
a.set_opt_mode(True)
a.connect_uri(uri)
a.opt_abort()
out['aborted'] = a.aio_is_closed()
`;

const TRANSMISSION = `
h = nbd.NBD()
h.connect_uri(uri)
size = h.get_size()
h.pwrite(b'\\xab' * 65536, 0)
h.set_strict_mode(0)
out['past_end'] = err(lambda: h.pread(4096, size - 512))
out['usable_after_past_end'] = h.pread(65536, 0) == b'\\xab' * 65536
out['oversized_write'] = err(lambda: h.pwrite(bytes(33 * 1024 * 1024), 0))
out['usable_after_oversized'] = h.pread(65536, 0) == b'\\xab' * 65536
h.pwrite(b'\\xcd' * 4096, 8192, nbd.CMD_FLAG_FUA)
h.flush()
h.trim(65536, 1048576)
out['trimmed_zero'] = h.pread(65536, 1048576) == bytes(65536)
h.pwrite(b'\\x11' * 8192, 2097152)
h.zero(4096, 2097152, nbd.CMD_FLAG_NO_HOLE)
got = h.pread(8192, 2097152)
out['zeroed'] = got[:4096] == bytes(4096) and got[4096:] == b'\\x11' * 4096
# CACHE (advertised on every export) and FAST_ZERO (the memory backend zeroes natively).
out['can_cache'] = h.can_cache()
h.cache(1048576, 0)
out['cache_past_end'] = err(lambda: h.cache(4096, size - 512))
out['can_fast_zero'] = h.can_fast_zero()
h.pwrite(b'\\x22' * 4096, 4194304)
h.zero(4096, 4194304, nbd.CMD_FLAG_FAST_ZERO)
out['fast_zeroed'] = h.pread(4096, 4194304) == bytes(4096)
# CAN_MULTI_CONN: a flushed write on one connection is seen by another.
g = nbd.NBD()
g.connect_uri(uri)
out['multi_conn'] = g.can_multi_conn()
g.pwrite(b'\\x77' * 4096, 3145728)
g.flush()
out['seen_by_other'] = h.pread(4096, 3145728) == b'\\x77' * 4096
# Many requests in flight at once on one connection.
bufs = [nbd.Buffer(4096) for _ in range(64)]
cookies = [h.aio_pread(b, 8192) for b in bufs]
while h.aio_in_flight() > 0:
    h.poll(-1)
out['pipelined'] = all(h.aio_command_completed(c) for c in cookies) and all(bytes(b.to_bytearray()) == b'\\xcd' * 4096 for b in bufs)
g.shutdown()
h.shutdown()
`;

const READ_ONLY = `
h = nbd.NBD()
h.connect_uri(uri)
out['ro'] = h.is_read_only()
out['cache'] = [h.can_cache(), h.can_fast_zero()]
h.cache(4096, 0)
h.set_strict_mode(0)
out['write'] = err(lambda: h.pwrite(b'x' * 512, 0))
out['usable'] = h.pread(512, 0) == bytes(512)
h.shutdown()
`;

describe('nbdsh option mode and transmission against r3map-serve', { timeout: 120_000 }, () => {
  const serve = serveFixture(['--backend', 'memory', '--size', '64MiB', '--export', 'extra=memory']);

  for (const kind of ['tcp', 'unix'] as const) {
    test(`over ${kind}, list, info, a failed go, another go and abort behave as the spec says`, async (t) => {
      if (!requireTool(t, 'nbdsh')) return;
      const out = await nbdsh(serve, serve.targets().find((x) => x.kind === kind)!.uri, `opt-${kind}`, OPTION_MODE);
      assert.deepEqual(out, {
        structured: true,
        listed: 2,
        names: ['default', 'extra'],
        info: [SIZE, false, true, true],
        info_missing: 'ENOENT',
        go_missing: 'ENOENT',
        still_negotiating: true,
        size: SIZE,
        block: [1, 4096, 32 * 1024 * 1024],
        aborted: true,
      });
    });

    test(`over ${kind}, bad requests get an errno on a live connection and the data path holds`, async (t) => {
      if (!requireTool(t, 'nbdsh')) return;
      const out = await nbdsh(serve, serve.targets().find((x) => x.kind === kind)!.uri, `tx-${kind}`, TRANSMISSION);
      assert.equal(out.past_end, 'EINVAL');
      assert.ok(out.oversized_write === 'EOVERFLOW' || out.oversized_write === 'EINVAL', `oversized write: ${String(out.oversized_write)}`);
      assert.deepEqual(out, {
        ...out,
        usable_after_past_end: true,
        usable_after_oversized: true,
        trimmed_zero: true,
        zeroed: true,
        can_cache: true,
        cache_past_end: 'EINVAL',
        can_fast_zero: true,
        fast_zeroed: true,
        multi_conn: true,
        seen_by_other: true,
        pipelined: true,
      });
    });
  }
});

describe('nbdsh against a --read-only export', { timeout: 60_000 }, () => {
  const serve = serveFixture(['--backend', 'memory', '--size', '1MiB', '--read-only'], { listen: ['unix'] });

  test('a write (sent with strict mode off) is refused with EPERM and the connection stays usable', async (t) => {
    if (!requireTool(t, 'nbdsh')) return;
    const out = await nbdsh(serve, serve.targets()[0]!.uri, 'ro', READ_ONLY);
    assert.deepEqual(out, { ro: true, cache: [true, false], write: 'EPERM', usable: true });
  });
});

/** A minimal raw fixed-newstyle client step: send one option, read one reply header + data. */
class RawOptions {
  readonly #socket: net.Socket;
  constructor(socket: net.Socket) {
    this.#socket = socket;
  }

  async read(n: number): Promise<Buffer> {
    for (;;) {
      const chunk = this.#socket.read(n) as Buffer | null;
      if (chunk !== null) return chunk;
      if (this.#socket.destroyed || this.#socket.readableEnded) throw new Error(`socket closed while waiting for ${n} bytes`);
      await Promise.race([once(this.#socket, 'readable'), once(this.#socket, 'close')]);
    }
  }

  send(option: number, data: Buffer = Buffer.alloc(0)): void {
    const h = Buffer.alloc(16);
    h.write('IHAVEOPT', 'latin1');
    h.writeUInt32BE(option, 8);
    h.writeUInt32BE(data.length, 12);
    this.#socket.write(Buffer.concat([h, data]));
  }

  async reply(): Promise<{ option: number; type: number; data: Buffer }> {
    const h = await this.read(20);
    assert.equal(h.readUInt32BE(0), 0x0003e889);
    assert.equal(h.readUInt32BE(4), 0x045565a9);
    const length = h.readUInt32BE(16);
    return { option: h.readUInt32BE(8), type: h.readUInt32BE(12), data: length ? await this.read(length) : Buffer.alloc(0) };
  }
}

describe('raw options (libnbd 1.14 cannot send arbitrary ones)', { timeout: 30_000 }, () => {
  const serve = serveFixture(['--backend', 'memory', '--size', '1MiB']);

  for (const kind of ['tcp', 'unix'] as const) {
    test(`over ${kind}, unknown options get NBD_REP_ERR_UNSUP and a following NBD_OPT_GO succeeds`, async () => {
      const target = serve.targets().find((x) => x.kind === kind)!;
      const socket = 'path' in target.address ? net.connect(target.address.path) : net.connect(target.address.port, target.address.host);
      socket.on('error', () => {});
      try {
        await once(socket, 'connect');
        const raw = new RawOptions(socket);
        const greeting = await raw.read(18);
        assert.equal(greeting.subarray(0, 16).toString('latin1'), 'NBDMAGICIHAVEOPT');
        const flags = greeting.readUInt16BE(16);
        assert.equal(flags & 3, 3, 'FIXED_NEWSTYLE and NO_ZEROES are offered');
        socket.write(Buffer.from([0, 0, 0, 3]));
        const replies: [number, number][] = [];
        for (const option of [0x4242, 5 /* STARTTLS */, 8 /* STRUCTURED_REPLY, with data */, 10 /* SET_META_CONTEXT, malformed */, 11 /* EXTENDED_HEADERS */]) {
          raw.send(option, Buffer.from('ignored payload'));
          const r = await raw.reply();
          replies.push([r.option, r.type]);
        }
        const unsup = 2 ** 31 + 1;
        const invalid = 2 ** 31 + 3;
        assert.deepEqual(replies, [[0x4242, unsup], [5, unsup], [8, invalid], [10, invalid], [11, unsup]]);
        const name = Buffer.from('default');
        const go = Buffer.alloc(4 + name.length + 2);
        go.writeUInt32BE(name.length, 0);
        name.copy(go, 4);
        raw.send(7, go);
        const types: number[] = [];
        let size = -1;
        for (let i = 0; i < 16; i++) {
          const r = await raw.reply();
          assert.equal(r.option, 7);
          types.push(r.type);
          if (r.type === 3 && r.data.readUInt16BE(0) === 0) size = r.data.readUInt32BE(6);
          if (r.type === 1 || r.type >= 2 ** 31) break;
        }
        assert.equal(types[types.length - 1], 1, `NBD_OPT_GO ends with NBD_REP_ACK (got ${types.join(',')})`);
        assert.equal(size, 1024 * 1024);
      } finally {
        socket.destroy();
      }
    });
  }
});
