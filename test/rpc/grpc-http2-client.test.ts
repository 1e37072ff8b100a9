/**
 * GrpcHttp2Client against a scripted HTTP/2 server (node:http2), so every odd reply a gRPC server
 * may send can be produced: other field orders, trailers-only errors, HTTP errors, compressed or
 * doubled messages, silence, GOAWAY. The happy paths against the real GrpcServer are in
 * grpc.test.ts.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import http2 from 'node:http2';
import type { AddressInfo } from 'node:net';
import { status as Status } from '@grpc/grpc-js';
import { GrpcHttp2Client } from '../../src/rpc/grpc-http2-client.js';
import { backendDefinition } from '../../src/rpc/definitions.js';
import { decodeReadAtArgs, decodeWriteAtArgs, EMPTY, encodeReadAtReply } from '../../src/rpc/codec.js';
import type { RpcError } from '../../src/rpc/status.js';
import { pattern } from '../support/rwat-suite.js';

/** A gRPC message: 5-byte prefix plus the bytes. */
function frame(message: Buffer, compressed = 0): Buffer {
  const prefix = Buffer.alloc(5);
  prefix[0] = compressed;
  prefix.writeUInt32BE(message.length, 1);
  return Buffer.concat([prefix, message]);
}

const OK = { 'grpc-status': '0' };
type Script = (stream: http2.ServerHttp2Stream, request: Buffer) => void;

/** Replies with `body` (written in `splits` pieces) and then `trailers`. */
function reply(body: Buffer, trailers: Record<string, string> = OK, splits = 1): Script {
  return (stream) => {
    stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
    stream.on('wantTrailers', () => stream.sendTrailers(trailers));
    const step = Math.ceil(body.length / splits);
    for (let at = 0; at < body.length; at += step) stream.write(body.subarray(at, at + step));
    stream.end();
  };
}

const data = pattern(3000, 7);
/** A ReadAtReply with its fields in a given order, built by hand. */
function readAtReply(order: 'n-p' | 'p-n' | 'x-n-p', p: Buffer = data): Buffer {
  const n = Buffer.from([0x08, 0xb8, 0x17]); // N = 3000
  const pField = Buffer.concat([Buffer.from([0x12, 0xb8, 0x17]), p.length === 3000 ? p : Buffer.alloc(0)]);
  const pBytes = p.length === 3000 ? pField : encodeReadAtReply({ n: 0, p });
  const unknown = Buffer.from([0x1a, 0x02, 0x68, 0x69]); // field 3, "hi"
  if (order === 'n-p') return Buffer.concat([n, pBytes]);
  if (order === 'p-n') return Buffer.concat([pBytes, n]);
  return Buffer.concat([unknown, n, pBytes]);
}

describe('GrpcHttp2Client', () => {
  let server: http2.Http2Server;
  let client: GrpcHttp2Client;
  let script: Script = reply(Buffer.alloc(0));
  const requests: Buffer[] = [];
  const sessions: http2.ServerHttp2Session[] = [];

  before(async () => {
    server = http2.createServer();
    server.on('session', (session) => sessions.push(session));
    server.on('stream', (stream) => {
      const chunks: Buffer[] = [];
      stream.on('data', (d: Buffer) => chunks.push(d));
      stream.on('end', () => {
        const request = Buffer.concat(chunks);
        requests.push(request);
        script(stream, request);
      });
      stream.on('error', () => undefined);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    client = new GrpcHttp2Client({ target: { host: '127.0.0.1', port: (server.address() as AddressInfo).port }, channels: 2 });
  });

  after(async () => {
    client.close();
    for (const s of sessions) s.destroy(); // a node server session that sent GOAWAY outlives its socket
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  const reads = [
    { name: 'N before P, as proto3 writes it', body: readAtReply('n-p'), splits: 1 },
    { name: 'N before P, arriving in 600 pieces', body: readAtReply('n-p'), splits: 600 },
    { name: 'P before N', body: readAtReply('p-n'), splits: 3 },
    { name: 'an unknown field first', body: readAtReply('x-n-p'), splits: 5 },
  ];
  for (const c of reads) {
    it(`reads straight into the buffer a reply with ${c.name}`, async () => {
      script = reply(frame(c.body), OK, c.splits);
      const dst = Buffer.alloc(3000, 0xff);
      await client.readAt(backendDefinition.ReadAt, dst, 2 ** 40, 5000);
      assert.deepEqual(dst, data);
      const args = decodeReadAtArgs(requests.at(-1)!.subarray(5));
      assert.deepEqual(args, { length: 3000, off: 2 ** 40 });
    });
  }

  it('sends a write in pieces as one WriteAtArgs', async () => {
    script = reply(frame(Buffer.from([0x08, 0x0a])));
    const parts = [Buffer.from('hello'), Buffer.alloc(0), Buffer.from('world')];
    assert.deepEqual(await client.writeAt(backendDefinition.WriteAt, parts, 10, 5 * 2 ** 32, 5000), { length: 10 });
    const request = requests.at(-1)!;
    assert.equal(request.readUInt32BE(1), request.length - 5);
    const args = decodeWriteAtArgs(request.subarray(5));
    assert.equal(args.off, 5 * 2 ** 32);
    assert.equal(args.p.toString(), 'helloworld');
  });

  const failures: { name: string; script: Script; code: Status; text: RegExp; read?: boolean }[] = [
    {
      name: 'a trailers-only error',
      script: (stream) => stream.respond({ ':status': 200, 'content-type': 'application/grpc', 'grpc-status': '16', 'grpc-message': 'missing%20or%20wrong%20bearer%20token' }, { endStream: true }),
      code: Status.UNAUTHENTICATED,
      text: /^missing or wrong bearer token$/,
    },
    {
      name: 'an error status with our error code',
      script: reply(Buffer.alloc(0), { 'grpc-status': '11', 'grpc-message': 'off=1 length=2', 'r3map-error-code': 'ERR_OUT_OF_RANGE' }),
      code: Status.OUT_OF_RANGE,
      text: /^off=1 length=2$/,
    },
    {
      name: 'an HTTP error without a gRPC status',
      script: (stream) => stream.respond({ ':status': 503 }, { endStream: true }),
      code: Status.UNAVAILABLE,
      text: /HTTP status 503/,
    },
    { name: 'a compressed reply', script: reply(frame(Buffer.from([0x08, 0x01]), 1)), code: Status.INTERNAL, text: /compressed/ },
    { name: 'two messages', script: reply(Buffer.concat([frame(Buffer.from([0x08, 0x01])), frame(Buffer.from([0x08, 0x01]))])), code: Status.INTERNAL, text: /not exactly one message/ },
    { name: 'no message', script: reply(Buffer.alloc(0)), code: Status.INTERNAL, text: /not exactly one message/ },
    { name: 'a short ReadAt reply', script: reply(frame(readAtReply('n-p', pattern(100, 1)))), code: Status.INTERNAL, text: /sent 100 bytes .* for 3000/, read: true },
    { name: 'a ReadAt reply cut short', script: reply(frame(readAtReply('n-p')).subarray(0, 2000)), code: Status.INTERNAL, text: /sent 1989 of 3000 bytes/, read: true },
    { name: 'a stream reset', script: (stream) => stream.close(http2.constants.NGHTTP2_INTERNAL_ERROR), code: Status.UNAVAILABLE, text: /./ },
  ];
  for (const c of failures) {
    it(`fails with ${Status[c.code]} on ${c.name}`, async () => {
      script = c.script;
      const call = c.read === true
        ? client.readAt(backendDefinition.ReadAt, Buffer.alloc(3000), 0, 5000)
        : client.call(backendDefinition.WriteAt, { off: 0, p: Buffer.from('x') }, 5000);
      await assert.rejects(call, (err: RpcError) => {
        assert.equal(err.code, c.code, `${Status[err.code ?? 2]}: ${err.details}`);
        assert.match(err.details ?? '', c.text);
        return true;
      });
    });
  }

  it('passes trailers on as metadata', async () => {
    script = reply(Buffer.alloc(0), { 'grpc-status': '11', 'r3map-error-code': 'ERR_OUT_OF_RANGE' });
    const err = await client.call(backendDefinition.Size, EMPTY, 5000).then(() => assert.fail('no error'), (e: RpcError) => e);
    assert.deepEqual(err.metadata?.get('r3map-error-code'), ['ERR_OUT_OF_RANGE']);
  });

  it('gives up at the deadline when the server stays silent, and sends the deadline along', async () => {
    let timeout: string | undefined;
    script = () => undefined;
    server.once('stream', (_stream, headers) => (timeout = headers['grpc-timeout'] as string));
    const started = Date.now();
    await assert.rejects(client.call(backendDefinition.Size, EMPTY, 300), (err: RpcError) => err.code === Status.DEADLINE_EXCEEDED);
    assert.ok(Date.now() - started < 5000);
    assert.equal(timeout, '300m');
  });

  it('reconnects after the server sends GOAWAY', async () => {
    script = reply(frame(Buffer.from([0x08, 0x80, 0x20])));
    assert.deepEqual(await client.call(backendDefinition.Size, EMPTY, 5000), { size: 4096 });
    const before = sessions.length;
    for (const s of sessions) if (!s.closed && !s.destroyed) s.goaway();
    await new Promise((resolve) => setTimeout(resolve, 100));
    for (let i = 0; i < 4; i++) assert.deepEqual(await client.call(backendDefinition.Size, EMPTY, 5000), { size: 4096 });
    assert.ok(sessions.length > before, 'new sessions were opened');
  });

  it('refuses calls after close', async () => {
    const c = new GrpcHttp2Client({ target: { host: '127.0.0.1', port: (server.address() as AddressInfo).port } });
    c.close();
    c.close();
    await assert.rejects(c.call(backendDefinition.Size, EMPTY, 1000), (err: RpcError) => err.code === Status.CANCELLED);
  });
});
