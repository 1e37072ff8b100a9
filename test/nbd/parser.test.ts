import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { describe, test } from 'node:test';
import { NbdProtocolError } from '../../src/errors.js';
import { encodeRequest } from '../../src/nbd/codec.js';
import { NBD_CMD_DISC, NBD_CMD_FLUSH, NBD_CMD_READ, NBD_CMD_TRIM, NBD_CMD_WRITE, NBD_EINVAL } from '../../src/nbd/constants.js';
import { NbdRequest, RequestParser, type RequestSink } from '../../src/nbd/parser.js';

interface Spec {
  readonly type: number;
  readonly handle: number;
  readonly offset?: number;
  readonly length?: number;
  readonly payload?: Buffer;
}

function pattern(length: number, seed: number): Buffer {
  const buf = Buffer.allocUnsafe(length);
  for (let i = 0; i < length; i++) buf[i] = (i * 31 + seed) & 0xff;
  return buf;
}

/** A PRNG with a seed, so a failing split can be replayed. */
function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Handle 5 is refused by the sink, so its payload must be skipped. */
const REFUSED_HANDLE = 5;
const FIXTURE: readonly Spec[] = [
  { type: NBD_CMD_READ, handle: 1, offset: 0, length: 4096 },
  { type: NBD_CMD_WRITE, handle: 2, offset: 4096, payload: pattern(100, 2) },
  { type: NBD_CMD_FLUSH, handle: 3 },
  { type: NBD_CMD_WRITE, handle: 4, offset: 2 ** 40, payload: pattern(70000, 4) },
  { type: NBD_CMD_WRITE, handle: REFUSED_HANDLE, offset: 0, payload: pattern(3000, 5) },
  { type: NBD_CMD_TRIM, handle: 6, offset: 8192, length: 4096 },
  { type: NBD_CMD_WRITE, handle: 7, offset: 0, payload: Buffer.alloc(0) },
  { type: NBD_CMD_READ, handle: 8, offset: 512, length: 512 },
  { type: NBD_CMD_DISC, handle: 9 },
];

function encodeStream(specs: readonly Spec[]): Buffer {
  return Buffer.concat(
    specs.flatMap((s) => {
      const length = s.length ?? s.payload?.length ?? 0;
      const header = encodeRequest({ flags: 0, type: s.type, handleHi: 0, handleLo: s.handle, offset: s.offset ?? 0, length });
      return s.payload === undefined ? [header] : [header, s.payload];
    }),
  );
}

const digest = (buf: Buffer | undefined): string | undefined => (buf === undefined ? undefined : createHash('sha1').update(buf).digest('hex'));

const EXPECTED = FIXTURE.map((s) => ({
  type: s.type,
  handle: s.handle,
  offset: s.offset ?? 0,
  length: s.length ?? s.payload?.length ?? 0,
  errno: s.handle === REFUSED_HANDLE ? NBD_EINVAL : 0,
  payload: s.type === NBD_CMD_WRITE && s.handle !== REFUSED_HANDLE && s.payload!.length > 0 ? digest(s.payload) : undefined,
}));

class RecordingSink implements RequestSink {
  readonly seen: NbdRequest[] = [];
  allocs = 0;
  stopAt = -1;
  validate(req: NbdRequest): number {
    return req.handleLo === REFUSED_HANDLE ? NBD_EINVAL : 0;
  }
  allocPayload(length: number): Buffer {
    this.allocs++;
    return Buffer.alloc(length + 17, 0xee);
  }
  onRequest(req: NbdRequest): boolean {
    this.seen.push(req);
    return req.handleLo !== this.stopAt;
  }
  summary(): unknown[] {
    return this.seen.map((r) => ({ type: r.type, handle: r.handleLo, offset: r.offset, length: r.length, errno: r.errno, payload: digest(r.payload) }));
  }
}

function feed(chunks: readonly Buffer[]): RecordingSink {
  const sink = new RecordingSink();
  const parser = new RequestParser(sink);
  for (const chunk of chunks) parser.push(Buffer.from(chunk));
  assert.equal(parser.midFrame, false);
  return sink;
}

describe('RequestParser', () => {
  const stream = encodeStream(FIXTURE);

  test('parses a whole stream in one chunk without copying any payload', () => {
    const sink = new RecordingSink();
    new RequestParser(sink).push(stream);
    assert.deepEqual(sink.summary(), EXPECTED);
    assert.equal(sink.allocs, 0);
    const write = sink.seen.find((r) => r.handleLo === 4)!;
    assert.equal(write.payload!.buffer, stream.buffer, 'a payload inside one chunk is a view of it');
    assert.equal(write.pooled, undefined);
  });

  test('parses the same requests when fed one byte at a time', () => {
    const chunks = [...stream].map((byte) => Buffer.from([byte]));
    const sink = feed(chunks);
    assert.deepEqual(sink.summary(), EXPECTED);
    assert.equal(sink.allocs, 2, 'each accepted, non-empty WRITE payload gets one destination buffer');
    const write = sink.seen.find((r) => r.handleLo === 4)!;
    assert.equal(write.payload!.length, 70000);
    assert.equal(write.pooled!.length, 70000 + 17);
  });

  for (const seed of [1, 2, 3, 42, 1234, 99999]) {
    test(`parses the same requests when split at random (seed ${seed})`, () => {
      const random = mulberry32(seed);
      const chunks: Buffer[] = [];
      for (let pos = 0; pos < stream.length; ) {
        const max = random() < 0.3 ? 40 : 20000;
        const n = Math.min(stream.length - pos, 1 + Math.floor(random() * max));
        chunks.push(stream.subarray(pos, pos + n));
        pos += n;
      }
      assert.deepEqual(feed(chunks).summary(), EXPECTED);
    });
  }

  test('skips a refused WRITE payload and parses the next request', () => {
    const sink = new RecordingSink();
    const parser = new RequestParser(sink);
    const refused = encodeStream([FIXTURE[4]!, FIXTURE[0]!]);
    parser.push(refused.subarray(0, 30));
    assert.equal(parser.midFrame, true);
    parser.push(refused.subarray(30));
    assert.deepEqual(
      sink.seen.map((r) => [r.handleLo, r.errno, r.payload]),
      [
        [REFUSED_HANDLE, NBD_EINVAL, undefined],
        [1, 0, undefined],
      ],
    );
    assert.equal(sink.allocs, 0, 'a skipped payload is never buffered');
  });

  test('stops when onRequest returns false and goes on at resume()', () => {
    const sink = new RecordingSink();
    sink.stopAt = 3;
    const parser = new RequestParser(sink);
    parser.push(stream.subarray(0, 200));
    parser.push(stream.subarray(200));
    assert.deepEqual(sink.seen.map((r) => r.handleLo), [1, 2, 3]);
    assert.equal(parser.stopped, true);
    assert.ok(parser.queuedBytes > 0);
    parser.resume();
    assert.deepEqual(sink.summary(), EXPECTED);
    assert.equal(parser.queuedBytes, 0);
  });

  test('throws NbdProtocolError on a bad magic and ignores bytes after it', () => {
    const sink = new RecordingSink();
    const parser = new RequestParser(sink);
    const garbage = Buffer.concat([encodeStream([FIXTURE[0]!]), Buffer.from('GET / HTTP/1.1\r\nHost: example\r\n\r\n')]);
    assert.throws(() => parser.push(garbage), NbdProtocolError);
    assert.equal(sink.seen.length, 1);
    parser.push(encodeStream([FIXTURE[0]!]));
    assert.equal(sink.seen.length, 1);
  });

  test('drops everything after close()', () => {
    const sink = new RecordingSink();
    const parser = new RequestParser(sink);
    parser.close();
    parser.push(stream);
    assert.equal(sink.seen.length, 0);
  });
});
