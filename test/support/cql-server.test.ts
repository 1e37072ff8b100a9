/**
 * The CQL v4 test server's frame codec and parser, byte by byte: the server is itself test
 * equipment, so its framing is proven here against the spec's layouts before anything trusts it.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { BodyReader, BodyWriter, CqlProtocolError, decodeHeader, encodeHeader, encodeRequest, encodeResponse, type Frame } from './cql-server/codec.js';
import { CQL_MAX_BODY_LENGTH, Opcode, opcodeName } from './cql-server/constants.js';
import { FrameParser } from './cql-server/parser.js';

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');

/** A small deterministic PRNG so random splits are reproducible. */
function prng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 2 ** 32;
  };
}

const startupBody = new BodyWriter().stringMap(new Map([['CQL_VERSION', '3.0.0']])).finish();
const queryBody = new BodyWriter().longString("SELECT * FROM system.local WHERE key='local'").short(0x0001).byte(0).finish();
/** OPTIONS, STARTUP and QUERY back to back, as a driver sends them on stream ids 0, 1, 2. */
const stream3 = Buffer.concat([
  encodeRequest(0, Opcode.OPTIONS),
  encodeRequest(1, Opcode.STARTUP, Buffer.from(startupBody)),
  encodeRequest(2, Opcode.QUERY, Buffer.from(queryBody)),
]);

function simplify(frames: readonly Frame[]): unknown[] {
  return frames.map((f) => ({ version: f.version, flags: f.flags, stream: f.stream, opcode: opcodeName(f.opcode), body: f.body.toString('hex') }));
}

const expected3 = simplify([
  { version: 4, flags: 0, stream: 0, opcode: Opcode.OPTIONS, body: Buffer.alloc(0) },
  { version: 4, flags: 0, stream: 1, opcode: Opcode.STARTUP, body: Buffer.from(startupBody) },
  { version: 4, flags: 0, stream: 2, opcode: Opcode.QUERY, body: Buffer.from(queryBody) },
]);

describe('CQL v4 frame header', () => {
  const cases = [
    { name: 'an OPTIONS request on stream 0', bytes: '04 00 0000 05 00000000', header: { version: 0x04, flags: 0, stream: 0, opcode: Opcode.OPTIONS, length: 0 } },
    { name: 'a READY response on stream 1', bytes: '84 00 0001 02 00000000', header: { version: 0x84, flags: 0, stream: 1, opcode: Opcode.READY, length: 0 } },
    { name: 'an EVENT on the server stream -1', bytes: '84 00 ffff 0c 0000002a', header: { version: 0x84, flags: 0, stream: -1, opcode: Opcode.EVENT, length: 42 } },
    { name: 'a traced EXECUTE on the highest stream id', bytes: '04 02 7fff 0a 00010000', header: { version: 0x04, flags: 0x02, stream: 32767, opcode: Opcode.EXECUTE, length: 65536 } },
  ];
  for (const c of cases) {
    it(`decodes and re-encodes ${c.name} as the spec's nine bytes`, () => {
      assert.deepEqual(decodeHeader(hex(c.bytes)), c.header);
      assert.deepEqual(encodeHeader(c.header), hex(c.bytes));
    });
  }

  it('puts the response bit and the body after the header', () => {
    assert.deepEqual(encodeResponse(7, Opcode.RESULT, hex('00000001')), hex('84 00 0007 08 00000004 00000001'));
  });

  it('refuses a header shorter than nine bytes', () => {
    assert.throws(() => decodeHeader(hex('04 00 0000 05 0000')), CqlProtocolError);
  });
});

describe('CQL v4 body notations', () => {
  it('round-trips every notation the server uses, growing the writer far past its first size', () => {
    const big = Buffer.alloc(5000, 0xab);
    const w = new BodyWriter(1)
      .byte(0xfe).short(0xbeef).int(-2)
      .string('héllo').longString('SELECT 1').bytes(null).bytes(big).shortBytes(hex('0102'))
      .stringList(['a', 'bc']).stringMap(new Map([['K', 'V']])).stringMultimap(new Map([['CQL_VERSION', ['3.4.5']], ['COMPRESSION', []]]));
    const r = new BodyReader(w.finish());
    assert.equal(r.byte(), 0xfe);
    assert.equal(r.short(), 0xbeef);
    assert.equal(r.int(), -2);
    assert.equal(r.string(), 'héllo');
    assert.equal(r.longString(), 'SELECT 1');
    assert.equal(r.bytes(), null);
    assert.deepEqual(r.bytes(), big);
    assert.deepEqual(r.shortBytes(), hex('0102'));
    assert.deepEqual(r.stringList(), ['a', 'bc']);
    assert.deepEqual(r.stringMap(), new Map([['K', 'V']]));
    // a multimap is a [short] n then n × (<string> <string list>)
    assert.equal(r.short(), 2);
    assert.deepEqual([r.string(), r.stringList(), r.string(), r.stringList()], ['CQL_VERSION', ['3.4.5'], 'COMPRESSION', []]);
    assert.equal(r.remaining, 0);
  });

  it('reads a [value] of length -1 as null, -2 as not set, and refuses anything lower', () => {
    const r = new BodyReader(hex('ffffffff fffffffe 00000001 2a fffffffd'));
    assert.equal(r.value(), null);
    assert.equal(r.value(), 'unset');
    assert.deepEqual(r.value(), hex('2a'));
    assert.throws(() => r.value(), CqlProtocolError);
  });

  const truncated = [
    { name: '[short]', bytes: '00', read: (r: BodyReader) => r.short() },
    { name: '[int]', bytes: '000000', read: (r: BodyReader) => r.int() },
    { name: '[string] longer than the body', bytes: '0005 6162', read: (r: BodyReader) => r.string() },
    { name: '[long string] longer than the body', bytes: '00000010 6162', read: (r: BodyReader) => r.longString() },
    { name: '[long string] with a negative length', bytes: 'ffffffff', read: (r: BodyReader) => r.longString() },
    { name: '[bytes] longer than the body', bytes: '00000003 01', read: (r: BodyReader) => r.bytes() },
    { name: '[string map] cut in a value', bytes: '0001 0001 61 0004 62', read: (r: BodyReader) => r.stringMap() },
  ];
  for (const c of truncated) {
    it(`raises CqlProtocolError for a truncated ${c.name}, never reading past the body`, () => {
      assert.throws(() => c.read(new BodyReader(hex(c.bytes))), CqlProtocolError);
    });
  }
});

describe('CQL v4 frame parser', () => {
  it('returns three frames sent back to back in one chunk, as views of that chunk', () => {
    const chunk = Buffer.from(stream3);
    const frames = new FrameParser({ direction: 'request' }).push(chunk);
    assert.deepEqual(simplify(frames), expected3);
    assert.equal(frames[2]!.body.buffer, chunk.buffer, 'a frame inside one chunk is not copied');
  });

  it('returns the same frames when they arrive one byte at a time', () => {
    const parser = new FrameParser({ direction: 'request' });
    const frames: Frame[] = [];
    for (let i = 0; i < stream3.length; i++) {
      frames.push(...parser.push(stream3.subarray(i, i + 1)));
      if (i < stream3.length - 1) assert.ok(frames.length < 3, `all frames done before the last byte (${i})`);
    }
    assert.deepEqual(simplify(frames), expected3);
    assert.equal(parser.buffered, 0);
  });

  it('returns the same frames for 200 random splits of the stream', () => {
    const rand = prng(5);
    for (let round = 0; round < 200; round++) {
      const parser = new FrameParser({ direction: 'request' });
      const frames: Frame[] = [];
      let at = 0;
      while (at < stream3.length) {
        const n = 1 + Math.floor(rand() * 24);
        frames.push(...parser.push(stream3.subarray(at, at + n)));
        at += n;
      }
      assert.deepEqual(simplify(frames), expected3, `round ${round}`);
    }
  });

  it('handles a 1 MiB body split into 4 KiB pieces and keeps each byte in place', () => {
    const body = Buffer.alloc(1024 * 1024);
    for (let i = 0; i < body.length; i++) body[i] = (i * 7) & 0xff;
    const frame = encodeRequest(9, Opcode.EXECUTE, body);
    const parser = new FrameParser({ direction: 'request' });
    const frames: Frame[] = [];
    for (let at = 0; at < frame.length; at += 4096) frames.push(...parser.push(frame.subarray(at, at + 4096)));
    assert.equal(frames.length, 1);
    assert.ok(frames[0]!.body.equals(body));
  });

  const bad = [
    { name: 'a body length above the cap (checked before buffering it)', bytes: encodeHeader({ version: 4, flags: 0, stream: 0, opcode: Opcode.QUERY, length: CQL_MAX_BODY_LENGTH + 1 }) },
    { name: 'a negative body length', bytes: hex('04 00 0000 07 ffffffff') },
    { name: 'a response frame sent to the server', bytes: hex('84 00 0000 02 00000000') },
    { name: 'protocol version 2 (an 8-byte header)', bytes: hex('02 00 00 05 00000000 00') },
  ];
  for (const c of bad) {
    it(`raises CqlProtocolError for ${c.name}`, () => {
      assert.throws(() => new FrameParser({ direction: 'request' }).push(c.bytes), CqlProtocolError);
    });
  }

  it('honours a smaller maxBodyLength', () => {
    const parser = new FrameParser({ direction: 'request', maxBodyLength: 16 });
    assert.equal(parser.push(encodeRequest(0, Opcode.QUERY, Buffer.alloc(16))).length, 1);
    assert.throws(() => parser.push(encodeRequest(0, Opcode.QUERY, Buffer.alloc(17))), CqlProtocolError);
  });

  it('parses responses on a client-side parser and passes other versions through for the server to refuse', () => {
    assert.equal(new FrameParser({ direction: 'response' }).push(hex('84 00 0000 02 00000000'))[0]!.opcode, Opcode.READY);
    assert.equal(new FrameParser({ direction: 'request' }).push(hex('05 00 0000 01 00000000'))[0]!.version, 5);
  });
});
