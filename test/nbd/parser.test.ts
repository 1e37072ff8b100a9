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

/** A sink that takes multi-chunk WRITE payloads as chunk views (for Backend.writev). */
class ScatterSink extends RecordingSink {
  readonly scatterWrites = true;
  override summary(): unknown[] {
    return this.seen.map((r) => ({
      type: r.type,
      handle: r.handleLo,
      offset: r.offset,
      length: r.length,
      errno: r.errno,
      payload: digest(r.pieces !== undefined ? Buffer.concat(r.pieces) : r.payload),
    }));
  }
}

function feedScatter(chunks: readonly Buffer[]): ScatterSink {
  const sink = new ScatterSink();
  const parser = new RequestParser(sink);
  for (const chunk of chunks) parser.push(chunk);
  assert.equal(parser.midFrame, false);
  return sink;
}

/** Every piece must be a view of one of the chunks fed, never a copy. */
function assertViewsOf(req: NbdRequest, chunks: readonly Buffer[]): void {
  const buffers = new Set(chunks.map((c) => c.buffer));
  for (const piece of req.pieces!) assert.ok(buffers.has(piece.buffer), 'a piece is a view of a fed chunk');
}

describe('RequestParser with a scatter sink', () => {
  const stream = encodeStream(FIXTURE);

  test('hands out a payload inside one chunk as a single view, not as pieces', () => {
    const sink = new ScatterSink();
    new RequestParser(sink).push(stream);
    assert.deepEqual(sink.summary(), EXPECTED);
    assert.ok(sink.seen.every((r) => r.pieces === undefined));
    assert.equal(sink.allocs, 0);
  });

  test('hands out a payload spanning three chunks as views of those chunks, in order', () => {
    const small = encodeStream([FIXTURE[3]!, FIXTURE[0]!]); // a 70000-byte WRITE, then a READ
    const chunks = [small.subarray(0, 10000), small.subarray(10000, 40000), small.subarray(40000)].map((c) => Buffer.from(c));
    const sink = feedScatter(chunks);
    const write = sink.seen[0]!;
    assert.equal(write.payload, undefined);
    assert.deepEqual(write.pieces!.map((p) => p.length), [10000 - 28, 30000, 70000 - (40000 - 28)]);
    assertViewsOf(write, chunks);
    assert.equal(sink.allocs, 0);
    assert.deepEqual(sink.summary(), [EXPECTED[3], EXPECTED[0]]);
  });

  // A short stream, so that it can be split at every position.
  const SHORT: readonly Spec[] = [
    { type: NBD_CMD_WRITE, handle: 1, offset: 0, payload: pattern(5000, 1) },
    { type: NBD_CMD_WRITE, handle: 2, offset: 9, payload: pattern(1, 2) },
    { type: NBD_CMD_READ, handle: 3, offset: 0, length: 512 },
    { type: NBD_CMD_WRITE, handle: REFUSED_HANDLE, offset: 0, payload: pattern(300, 5) },
    { type: NBD_CMD_WRITE, handle: 6, offset: 4096, payload: pattern(4097, 6) },
  ];
  const short = encodeStream(SHORT);
  const shortExpected = SHORT.map((s) => ({
    type: s.type,
    handle: s.handle,
    offset: s.offset ?? 0,
    length: s.length ?? s.payload?.length ?? 0,
    errno: s.handle === REFUSED_HANDLE ? NBD_EINVAL : 0,
    payload: s.type === NBD_CMD_WRITE && s.handle !== REFUSED_HANDLE ? digest(s.payload) : undefined,
  }));

  test('parses the same requests when split into two chunks at every position', () => {
    for (let cut = 0; cut <= short.length; cut++) {
      const chunks = [Buffer.from(short.subarray(0, cut)), Buffer.from(short.subarray(cut))];
      const sink = feedScatter(chunks);
      assert.deepEqual(sink.summary(), shortExpected, `cut at ${cut}`);
      for (const req of sink.seen) if (req.pieces !== undefined) assertViewsOf(req, chunks);
      assert.equal(sink.allocs, 0, `cut at ${cut}: two pieces are never gathered`);
    }
  });

  test('parses the same requests when split into three chunks around every payload boundary', () => {
    // Cuts near where each payload starts and ends, combined pairwise.
    const marks: number[] = [];
    let at = 0;
    for (const s of SHORT) {
      at += 28;
      marks.push(at);
      at += s.type === NBD_CMD_WRITE ? s.payload!.length : 0;
      marks.push(at);
    }
    const cuts = [...new Set(marks.flatMap((m) => [m - 2, m - 1, m, m + 1, m + 2]))].filter((c) => c > 0 && c < short.length);
    for (const a of cuts) {
      for (const b of cuts) {
        if (b <= a) continue;
        const chunks = [short.subarray(0, a), short.subarray(a, b), short.subarray(b)];
        assert.deepEqual(feedScatter(chunks).summary(), shortExpected, `cuts at ${a}, ${b}`);
      }
    }
  });

  test('gathers pieces into one buffer when fed one byte at a time', () => {
    const chunks = [...stream].map((byte) => Buffer.from([byte]));
    const sink = feedScatter(chunks);
    assert.deepEqual(sink.summary(), EXPECTED);
    assert.equal(sink.allocs, 2, 'each accepted, non-empty WRITE payload is gathered once');
    assert.ok(sink.seen.every((r) => r.pieces === undefined));
  });

  test('switches from pieces to one buffer mid-payload when pieces get small', () => {
    const spec: Spec = { type: NBD_CMD_WRITE, handle: 1, offset: 0, payload: pattern(8192, 3) };
    const bytes = encodeStream([spec]);
    // 2 + 8192 / 4096 = 4 pieces are allowed; the fifth one gathers.
    const chunks = [bytes.subarray(0, 28 + 4000), bytes.subarray(28 + 4000, 28 + 4100), ...[...bytes.subarray(28 + 4100, 28 + 4110)].map((b) => Buffer.from([b])), bytes.subarray(28 + 4110)];
    const sink = feedScatter(chunks);
    assert.equal(sink.allocs, 1);
    assert.equal(sink.seen[0]!.pieces, undefined);
    assert.equal(digest(sink.seen[0]!.payload), digest(spec.payload));
  });

  for (const seed of [1, 2, 3, 42, 1234, 99999]) {
    test(`parses the same requests from random splits, with large chunks as pieces (seed ${seed})`, () => {
      const random = mulberry32(seed);
      const chunks: Buffer[] = [];
      for (let pos = 0; pos < stream.length; ) {
        const max = random() < 0.2 ? 40 : 20000;
        const n = Math.min(stream.length - pos, 1 + Math.floor(random() * max));
        chunks.push(Buffer.from(stream.subarray(pos, pos + n)));
        pos += n;
      }
      const sink = feedScatter(chunks);
      assert.deepEqual(sink.summary(), EXPECTED);
      for (const req of sink.seen) if (req.pieces !== undefined) assertViewsOf(req, chunks);
    });
  }

  test('skips a refused WRITE payload without keeping pieces', () => {
    const refused = encodeStream([FIXTURE[4]!, FIXTURE[0]!]);
    const sink = feedScatter([refused.subarray(0, 30), refused.subarray(30, 2000), refused.subarray(2000)]);
    assert.deepEqual(sink.seen.map((r) => [r.handleLo, r.errno, r.payload, r.pieces]), [
      [REFUSED_HANDLE, NBD_EINVAL, undefined, undefined],
      [1, 0, undefined, undefined],
    ]);
  });

  test('keeps pieces intact across a stop and resume', () => {
    const sink = new ScatterSink();
    sink.stopAt = 3;
    const parser = new RequestParser(sink);
    for (let pos = 0; pos < stream.length; pos += 9000) parser.push(Buffer.from(stream.subarray(pos, pos + 9000)));
    assert.equal(parser.stopped, true);
    parser.resume();
    assert.deepEqual(sink.summary(), EXPECTED);
  });
});


/** A sink whose WRITE payloads go into its own views (as Backend.views gives), two per payload. */
class TargetSink extends RecordingSink {
  readonly targets = new Map<number, Buffer>();
  refuseTargetOf = -1;
  writeTarget(req: NbdRequest): readonly Buffer[] | undefined {
    if (req.handleLo === this.refuseTargetOf) {
      req.errno = NBD_EINVAL;
      return undefined;
    }
    const store = Buffer.alloc(req.length, 0xcc);
    this.targets.set(req.handleLo, store);
    req.direct = true;
    const cut = Math.min(1000, req.length);
    return [store.subarray(0, cut), store.subarray(cut)];
  }
  override summary(): unknown[] {
    return this.seen.map((r) => ({
      type: r.type, handle: r.handleLo, offset: r.offset, length: r.length, errno: r.errno,
      payload: r.direct ? digest(this.targets.get(r.handleLo)) : digest(r.payload),
    }));
  }
}

/**
 * Feeds `stream` as a socket with `onread` would: each read of a random size goes where
 * `directBuffer()` says, else into one reused buffer that is scribbled over after every push.
 */
function readLikeASocket(parser: RequestParser, stream: Buffer, seed: number): { direct: number; reads: number } {
  const random = mulberry32(seed);
  const scratch = Buffer.alloc(64 * 1024);
  let pos = 0;
  let direct = 0;
  let reads = 0;
  while (pos < stream.length) {
    const into = parser.directBuffer() ?? scratch;
    const n = Math.min(into.length, stream.length - pos, 1 + Math.floor(random() * 20000));
    stream.copy(into, 0, pos, pos + n);
    pos += n;
    reads++;
    if (into === scratch) {
      parser.push(scratch.subarray(0, n));
      scratch.fill(0x5a);
    } else {
      direct++;
      parser.pushDirect(n);
    }
  }
  return { direct, reads };
}

describe('RequestParser with write targets and transient chunks', () => {
  const stream = encodeStream(FIXTURE);

  test('copies a payload into the targets and reads the rest straight into them', () => {
    for (let seed = 1; seed <= 20; seed++) {
      const sink = new TargetSink();
      const parser = new RequestParser(sink, { transient: true });
      const { direct } = readLikeASocket(parser, stream, seed);
      assert.deepEqual(sink.summary(), EXPECTED, `seed ${seed}`);
      assert.equal(sink.allocs, 0, 'nothing is gathered into a buffer of its own');
      assert.ok(direct > 0, 'the 70000-byte payload is read straight into its views at least once');
      assert.equal(parser.midFrame, false);
    }
  });

  test('offers no direct buffer while bytes are queued, and keeps queued bytes across a stop', () => {
    const sink = new TargetSink();
    sink.stopAt = 2;
    const parser = new RequestParser(sink, { transient: true });
    const scratch = Buffer.from(stream);
    parser.push(scratch);
    assert.equal(parser.stopped, true);
    scratch.fill(0x5a); // the caller reuses its buffer: what the parser queued must be its own copy
    assert.equal(parser.directBuffer(), undefined);
    parser.resume();
    assert.deepEqual(sink.summary(), EXPECTED);
  });

  test('skips the payload of a WRITE whose target the sink refuses', () => {
    const sink = new TargetSink();
    sink.refuseTargetOf = 4;
    const parser = new RequestParser(sink, { transient: true });
    readLikeASocket(parser, stream, 7);
    const refused = sink.seen.find((r) => r.handleLo === 4)!;
    assert.equal(refused.errno, NBD_EINVAL);
    assert.equal(refused.direct, false);
    assert.equal(sink.seen.length, FIXTURE.length, 'the stream stays in sync after the skipped payload');
  });

  test('a transient chunk is never handed out: a payload inside one is copied', () => {
    const sink = new RecordingSink();
    const parser = new RequestParser(sink, { transient: true });
    readLikeASocket(parser, stream, 3);
    assert.deepEqual(sink.summary(), EXPECTED);
    for (const req of sink.seen) if (req.payload !== undefined) assert.notEqual(req.pooled, undefined, 'every payload is in a buffer of the sink');
  });
});
