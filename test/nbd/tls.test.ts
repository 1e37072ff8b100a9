import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { after, before, describe, test } from 'node:test';
import { NbdProtocolError } from '../../src/errors.js';
import { silentLogger } from '../../src/log.js';
import { decodeOptionReplyHeader, encodeClientFlags, encodeInfoRequest, encodeOption } from '../../src/nbd/codec.js';
import { NbdClient, type NbdClientTlsOptions } from '../../src/nbd-client/client.js';
import {
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_LIST,
  NBD_OPT_STARTTLS,
  NBD_REP_ACK,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_TLS_REQD,
} from '../../src/nbd/constants.js';
import { Handshake, type HandshakeOptions, type HandshakeStatus } from '../../src/nbd/handshake.js';
import { NbdServer, type NbdServerOptions } from '../../src/nbd/server.js';
import { readServerTlsFiles, readTlsFiles } from '../../src/nbd/tls.js';
import { makeTestCerts, type TestCerts } from '../support/nbd-certs.js';
import { describeRun, findTool, makeTempDir, removeDir, requireTool, runTool, startNbdkit } from '../support/tools.js';
import { BufferBackend } from './support-backend.js';

const MiB = 1024 * 1024;
const FLAGS = encodeClientFlags(NBD_FLAG_C_FIXED_NEWSTYLE);

describe('the handshake with TLS configured', () => {
  const exp = { name: 'disk', backend: new BufferBackend({ size: MiB }) };
  const options = (require: boolean): HandshakeOptions => ({
    exports: [exp], minBlockSize: 1, preferredBlockSize: 4096, maxPayload: MiB, maxOptions: 16, maxOptionLength: 1024,
    tls: { require }, log: silentLogger,
  });
  const run = (input: Buffer, require = true): { status: HandshakeStatus; replies: { option: number; type: number }[]; handshake: Handshake; out: Buffer[] } => {
    const out: Buffer[] = [];
    const handshake = new Handshake(options(require), { write: (b: Buffer) => out.push(b) });
    handshake.start();
    const status = handshake.push(input);
    const all = Buffer.concat(out);
    const replies = [];
    for (let pos = 18; pos < all.length;) {
      const h = { option: 0, type: 0, length: 0 };
      decodeOptionReplyHeader(all, pos, h);
      replies.push({ option: h.option, type: h.type });
      pos += 20 + h.length;
    }
    return { status, replies, handshake, out };
  };

  const refusedBeforeTls = [
    { name: 'NBD_OPT_GO', option: NBD_OPT_GO, data: encodeInfoRequest('disk', []) },
    { name: 'NBD_OPT_LIST', option: NBD_OPT_LIST, data: Buffer.alloc(0) },
    { name: 'an unknown option', option: 999, data: Buffer.alloc(0) },
  ];
  for (const c of refusedBeforeTls) {
    test(`${c.name} before STARTTLS gets NBD_REP_ERR_TLS_REQD when TLS is required`, () => {
      const { status, replies } = run(Buffer.concat([FLAGS, encodeOption(c.option, c.data)]));
      assert.equal(status, 'more');
      assert.deepEqual(replies, [{ option: c.option, type: NBD_REP_ERR_TLS_REQD }]);
    });
  }

  test('NBD_OPT_EXPORT_NAME before STARTTLS drops the connection when TLS is required', () => {
    assert.throws(() => run(Buffer.concat([FLAGS, encodeOption(NBD_OPT_EXPORT_NAME, Buffer.from('disk'))])), NbdProtocolError);
  });

  test('NBD_OPT_ABORT before STARTTLS is still acknowledged', () => {
    const { status, replies } = run(Buffer.concat([FLAGS, encodeOption(NBD_OPT_ABORT)]));
    assert.equal(status, 'abort');
    assert.deepEqual(replies, [{ option: NBD_OPT_ABORT, type: NBD_REP_ACK }]);
  });

  test('NBD_OPT_GO in plaintext works when TLS is offered but not required', () => {
    const { status } = run(Buffer.concat([FLAGS, encodeOption(NBD_OPT_GO, encodeInfoRequest('disk', []))]), false);
    assert.equal(status, 'transmission');
  });

  test('STARTTLS with data gets NBD_REP_ERR_INVALID and haggling goes on', () => {
    const { status, replies } = run(Buffer.concat([FLAGS, encodeOption(NBD_OPT_STARTTLS, Buffer.from('x'))]));
    assert.equal(status, 'more');
    assert.deepEqual(replies, [{ option: NBD_OPT_STARTTLS, type: NBD_REP_ERR_INVALID }]);
  });

  test('STARTTLS is acknowledged, bytes after it are counted, and after secured() options are served on the new output', () => {
    const { status, replies, handshake } = run(Buffer.concat([FLAGS, encodeOption(NBD_OPT_STARTTLS), Buffer.from('early')]));
    assert.equal(status, 'starttls');
    assert.deepEqual(replies, [{ option: NBD_OPT_STARTTLS, type: NBD_REP_ACK }]);
    assert.equal(handshake.earlyBytes, 5);
    const secureOut: Buffer[] = [];
    handshake.secured({ write: (b: Buffer) => secureOut.push(b) });
    assert.equal(handshake.isSecured, true);
    assert.equal(handshake.push(encodeOption(NBD_OPT_STARTTLS)), 'more');
    const h = { option: 0, type: 0, length: 0 };
    decodeOptionReplyHeader(Buffer.concat(secureOut), 0, h);
    assert.deepEqual([h.option, h.type], [NBD_OPT_STARTTLS, NBD_REP_ERR_INVALID]);
    assert.equal(handshake.push(encodeOption(NBD_OPT_GO, encodeInfoRequest('disk', []))), 'transmission');
  });
});

describe('NBD over TLS between our client and our server', () => {
  let dir = '';
  let certs: TestCerts;
  let trusted: NbdClientTlsOptions;
  let withClientCert: NbdClientTlsOptions;
  const servers: NbdServer[] = [];
  const openssl = findTool('openssl') !== undefined;

  before(async () => {
    dir = await makeTempDir('r3map-nbd-tls-');
    if (!openssl) return;
    certs = await makeTestCerts(dir);
    trusted = await readTlsFiles({ ca: certs.ca });
    withClientCert = await readTlsFiles({ ca: certs.ca, cert: certs.clientCert, key: certs.clientKey });
  });
  after(async () => {
    await Promise.allSettled(servers.map((s) => s.close()));
    await removeDir(dir);
  });

  async function serve(tls: Partial<{ clientCa: boolean; require: boolean }>, extra: Partial<NbdServerOptions> = {}): Promise<{ host: string; port: number }> {
    const server = new NbdServer({
      exports: [{ name: 'disk', backend: new BufferBackend({ size: 8 * MiB }) }],
      tls: await readServerTlsFiles({
        cert: certs.serverCert,
        key: certs.serverKey,
        ...(tls.clientCa === true ? { clientCa: certs.ca } : {}),
        ...(tls.require !== undefined ? { require: tls.require } : {}),
      }),
      ...extra,
    });
    servers.push(server);
    const bound = await server.listen({ host: '127.0.0.1', port: 0 });
    return { host: '127.0.0.1', port: Number(bound.slice(bound.lastIndexOf(':') + 1)) };
  }

  async function roundTrip(client: NbdClient): Promise<void> {
    const data = Buffer.alloc(3 * MiB + 7, 0x5a);
    data.write('over tls', 11);
    await client.writeAt(data, 1234);
    const back = Buffer.alloc(data.length);
    await client.readAt(back, 1234);
    assert.deepEqual(back, data);
  }

  const good = [
    { name: 'TLS: a client that trusts the CA', server: {}, client: () => trusted },
    { name: 'mutual TLS: a client with a certificate from the CA', server: { clientCa: true }, client: () => withClientCert },
    { name: 'optional TLS: a client that upgrades', server: { require: false }, client: () => trusted },
  ];
  for (const c of good) {
    test(`${c.name} negotiates TLS and round-trips data`, async (t) => {
      if (!requireTool(t, 'openssl')) return;
      const address = await serve(c.server);
      const client = await NbdClient.connect(address, { exportName: 'disk', tls: c.client(), timeoutMs: 10_000 });
      try {
        assert.equal(client.encrypted, true);
        assert.equal(client.info.via, 'go');
        assert.equal(client.size, 8 * MiB);
        await roundTrip(client);
      } finally {
        await client.close();
      }
    });
  }

  test('optional TLS still lets a plaintext client in', async (t) => {
    if (!requireTool(t, 'openssl')) return;
    const client = await NbdClient.connect(await serve({ require: false }), { exportName: 'disk', timeoutMs: 10_000 });
    assert.equal(client.encrypted, false);
    await roundTrip(client);
    await client.close();
  });

  const bad = [
    { name: 'a plaintext client against a server that requires TLS', server: {}, client: () => undefined },
    { name: 'a client that does not trust the server CA', server: {}, client: async () => readTlsFiles({ ca: certs.strangerCert }) },
    { name: 'a client without a certificate against mutual TLS', server: { clientCa: true }, client: () => trusted },
    {
      name: 'a client with a certificate from another CA against mutual TLS',
      server: { clientCa: true },
      client: async () => readTlsFiles({ ca: certs.ca, cert: certs.strangerCert, key: certs.strangerKey }),
    },
  ];
  for (const c of bad) {
    test(`${c.name} is refused`, async (t) => {
      if (!requireTool(t, 'openssl')) return;
      const address = await serve(c.server);
      const tls = await c.client();
      // With TLS 1.3 a refused client certificate shows only at the first read, so read once.
      await assert.rejects(async () => {
        const client = await NbdClient.connect(address, { exportName: 'disk', timeoutMs: 10_000, ...(tls !== undefined ? { tls } : {}) });
        try {
          await client.readAt(Buffer.alloc(512), 0);
        } finally {
          await client.close().catch(() => undefined);
        }
      });
    });
  }

  test('nbdinfo connects to our server with nbds:// and mutual TLS', async (t) => {
    if (!requireTool(t, 'openssl') || !requireTool(t, 'nbdinfo')) return;
    const { port } = await serve({ clientCa: true });
    const uri = `nbds://127.0.0.1:${port}/disk?tls-certificates=${certs.dir}`;
    const r = await runTool('nbdinfo', ['--json', uri], { timeoutMs: 20_000 });
    assert.equal(r.code, 0, describeRun('nbdinfo', [uri], r));
    const info = JSON.parse(r.stdout) as { exports: { 'export-size': number }[] };
    assert.equal(info.exports[0]!['export-size'], 8 * MiB);
  });

  test('nbdinfo without TLS is refused by a server that requires it', async (t) => {
    if (!requireTool(t, 'openssl') || !requireTool(t, 'nbdinfo')) return;
    const { port } = await serve({});
    const r = await runTool('nbdinfo', [`nbd://127.0.0.1:${port}/disk`], { timeoutMs: 20_000 });
    assert.notEqual(r.code, 0);
  });

  test('our nbds client works against nbdkit --tls=require', async (t) => {
    if (!requireTool(t, 'openssl') || !requireTool(t, 'nbdkit')) return;
    const nbdkit = await startNbdkit(['--tls=require', `--tls-certificates=${certs.dir}`, 'memory', '64M'], dir);
    try {
      const client = await NbdClient.connect(nbdkit.address, { tls: trusted, timeoutMs: 10_000 });
      assert.equal(client.encrypted, true);
      assert.equal(client.size, 64 * MiB);
      await roundTrip(client);
      await client.close();
      await assert.rejects(NbdClient.connect(nbdkit.address, { timeoutMs: 10_000 }), NbdProtocolError);
    } finally {
      await nbdkit.stop();
    }
  });

  test('server TLS files that cannot be read are a usage error naming the file', async () => {
    await assert.rejects(readServerTlsFiles({ cert: `${dir}/missing.pem`, key: `${dir}/missing-key.pem` }), (err: Error & { code?: string }) => {
      assert.equal(err.code, 'ERR_USAGE');
      assert.ok(err.message.includes('missing.pem'));
      return true;
    });
    assert.equal((await readFile(certs.ca)).length > 0, true);
  });
});
