import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { NbdProtocolError } from '../../src/errors.js';
import { silentLogger } from '../../src/log.js';
import { decodeOptionReplyHeader, encodeClientFlags, encodeInfoRequest, encodeMetaContextRequest, encodeOption, readU64 } from '../../src/nbd/codec.js';
import {
  NBD_FLAG_CAN_MULTI_CONN,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_HAS_FLAGS,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_CACHE,
  NBD_FLAG_SEND_DF,
  NBD_FLAG_SEND_FAST_ZERO,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_WRITE_ZEROES,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_EXPORT,
  NBD_INFO_NAME,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_INFO,
  NBD_OPT_LIST,
  NBD_OPT_LIST_META_CONTEXT,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STARTTLS,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ACK,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REP_INFO,
  NBD_REP_META_CONTEXT,
  NBD_REP_SERVER,
} from '../../src/nbd/constants.js';
import { BASE_ALLOCATION, Handshake, transmissionFlagsFor, type HandshakeOptions, type HandshakeStatus } from '../../src/nbd/handshake.js';
import type { NbdExport } from '../../src/nbd/server.js';
import { BufferBackend } from './support-backend.js';

const DISK: NbdExport = { name: 'disk', description: 'scratch disk', backend: new BufferBackend({ size: 1 << 20, canMultiConn: true }) };
const RO: NbdExport = { name: 'ro', backend: new BufferBackend({ size: 4096 }), readOnly: true };

function options(overrides: Partial<HandshakeOptions> = {}): HandshakeOptions {
  return {
    exports: [DISK, RO],
    minBlockSize: 1,
    preferredBlockSize: 4096,
    maxPayload: 32 * 1024 * 1024,
    maxOptions: 16,
    maxOptionLength: 1024,
    log: silentLogger,
    ...overrides,
  };
}

interface Reply {
  option: number;
  type: number;
  data: Buffer;
}

/** Runs a handshake over `input` (fed in `chunkSize` pieces) and parses what the server sent. */
function run(input: Buffer, chunkSize = input.length, opts = options()): { status: HandshakeStatus; out: Buffer; handshake: Handshake } {
  const written: Buffer[] = [];
  const handshake = new Handshake(opts, { write: (buf: Buffer) => written.push(buf) });
  handshake.start();
  let status: HandshakeStatus = 'more';
  for (let pos = 0; pos < input.length && status === 'more'; pos += chunkSize) {
    status = handshake.push(input.subarray(pos, Math.min(input.length, pos + chunkSize)));
  }
  return { status, out: Buffer.concat(written), handshake };
}

/** Splits server output after the 18-byte greeting into option replies. */
function replies(out: Buffer): Reply[] {
  const result: Reply[] = [];
  for (let pos = 18; pos < out.length; ) {
    const header = { option: 0, type: 0, length: 0 };
    decodeOptionReplyHeader(out, pos, header);
    result.push({ option: header.option, type: header.type, data: out.subarray(pos + 20, pos + 20 + header.length) });
    pos += 20 + header.length;
  }
  return result;
}

const FLAGS = encodeClientFlags(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
const go = (name: string, infos: number[] = []): Buffer => encodeOption(NBD_OPT_GO, encodeInfoRequest(name, infos));

describe('Handshake', () => {
  test('greets with NBDMAGIC, IHAVEOPT, FIXED_NEWSTYLE and NO_ZEROES', () => {
    const { out } = run(Buffer.alloc(0));
    assert.equal(out.subarray(0, 16).toString('latin1'), 'NBDMAGICIHAVEOPT');
    assert.equal(out.readUInt16BE(16), 0b11);
  });

  test('closes on unknown client flags', () => {
    assert.throws(() => run(encodeClientFlags(1 << 5)), NbdProtocolError);
  });

  test('NBD_OPT_GO answers NBD_INFO_EXPORT and NBD_INFO_BLOCK_SIZE, then ACK, and enters transmission', () => {
    const { status, out, handshake } = run(Buffer.concat([FLAGS, go('disk')]));
    assert.equal(status, 'transmission');
    const r = replies(out);
    assert.deepEqual(r.slice(0, 2).map((x) => [x.option, x.type, x.data.readUInt16BE(0)]), [
      [NBD_OPT_GO, NBD_REP_INFO, NBD_INFO_EXPORT],
      [NBD_OPT_GO, NBD_REP_INFO, NBD_INFO_BLOCK_SIZE],
    ]);
    assert.equal(r.at(-1)!.type, NBD_REP_ACK);
    assert.equal(readU64(r[0]!.data, 2), 1 << 20);
    assert.equal(r[0]!.data.readUInt16BE(10), handshake.result!.transmissionFlags);
    assert.deepEqual([r[1]!.data.readUInt32BE(2), r[1]!.data.readUInt32BE(6), r[1]!.data.readUInt32BE(10)], [1, 4096, 32 * 1024 * 1024]);
    assert.equal(handshake.result!.export, DISK);
  });

  test('sends NBD_INFO_NAME and NBD_INFO_DESCRIPTION only when asked', () => {
    const { out } = run(Buffer.concat([FLAGS, encodeOption(NBD_OPT_INFO, encodeInfoRequest('', [NBD_INFO_NAME, NBD_INFO_DESCRIPTION]))]));
    const infos = replies(out).filter((x) => x.type === NBD_REP_INFO);
    const byType = new Map(infos.map((x) => [x.data.readUInt16BE(0), x.data.subarray(2).toString()]));
    assert.equal(byType.get(NBD_INFO_NAME), 'disk', 'the empty name is the first export');
    assert.equal(byType.get(NBD_INFO_DESCRIPTION), 'scratch disk');
  });

  test('NBD_OPT_INFO keeps negotiating and a following NBD_OPT_GO succeeds', () => {
    const { status, out } = run(Buffer.concat([FLAGS, encodeOption(NBD_OPT_INFO, encodeInfoRequest('ro')), go('ro')]));
    assert.equal(status, 'transmission');
    assert.equal(replies(out).filter((x) => x.type === NBD_REP_ACK).length, 2);
  });

  test('an unknown export on NBD_OPT_GO gets NBD_REP_ERR_UNKNOWN and haggling goes on', () => {
    const { status, out } = run(Buffer.concat([FLAGS, go('missing'), go('disk')]));
    assert.equal(status, 'transmission');
    const r = replies(out);
    assert.equal(r[0]!.type, NBD_REP_ERR_UNKNOWN);
    assert.match(r[0]!.data.toString(), /missing/);
    assert.equal(r.at(-1)!.type, NBD_REP_ACK);
  });

  test('NBD_OPT_STRUCTURED_REPLY is acknowledged (with data: INVALID), and GO then carries it with DF', () => {
    const { status, out, handshake } = run(Buffer.concat([FLAGS, encodeOption(NBD_OPT_STRUCTURED_REPLY, Buffer.from('x')), encodeOption(NBD_OPT_STRUCTURED_REPLY), go('disk')]));
    assert.equal(status, 'transmission');
    const r = replies(out);
    assert.deepEqual([r[0]!.type, r[1]!.type], [NBD_REP_ERR_INVALID, NBD_REP_ACK]);
    assert.equal(handshake.result!.structured, true);
    assert.equal(handshake.result!.transmissionFlags & NBD_FLAG_SEND_DF, NBD_FLAG_SEND_DF);
    assert.equal(handshake.result!.allocationContext, undefined, 'no meta context was set');
  });

  test('meta contexts: LIST offers base:allocation, SET needs structured replies and selects it for its export', () => {
    const ctx = (opt: number, name: string, queries: string[]): Buffer => encodeOption(opt, encodeMetaContextRequest(name, queries));
    const { status, out, handshake } = run(Buffer.concat([
      FLAGS,
      ctx(NBD_OPT_LIST_META_CONTEXT, 'disk', []),
      ctx(NBD_OPT_SET_META_CONTEXT, 'disk', [BASE_ALLOCATION]),
      encodeOption(NBD_OPT_STRUCTURED_REPLY),
      ctx(NBD_OPT_SET_META_CONTEXT, 'missing', [BASE_ALLOCATION]),
      ctx(NBD_OPT_SET_META_CONTEXT, 'disk', ['qemu:dirty-bitmap:x', BASE_ALLOCATION]),
      go('disk'),
    ]));
    assert.equal(status, 'transmission');
    const types = replies(out).map((x) => x.type);
    assert.deepEqual(types.slice(0, 7), [NBD_REP_META_CONTEXT, NBD_REP_ACK, NBD_REP_ERR_INVALID, NBD_REP_ACK, NBD_REP_ERR_UNKNOWN, NBD_REP_META_CONTEXT, NBD_REP_ACK]);
    const meta = replies(out)[0]!.data;
    assert.equal(meta.subarray(4).toString(), BASE_ALLOCATION);
    assert.equal(handshake.result!.allocationContext, meta.readUInt32BE(0));
  });

  test('a meta context set for another export does not carry over to GO', () => {
    const name = Buffer.from('ro');
    const q = Buffer.from(BASE_ALLOCATION);
    const data = Buffer.alloc(4 + name.length + 4 + 4 + q.length);
    data.writeUInt32BE(name.length, 0);
    name.copy(data, 4);
    data.writeUInt32BE(1, 4 + name.length);
    data.writeUInt32BE(q.length, 8 + name.length);
    q.copy(data, 12 + name.length);
    const { handshake } = run(Buffer.concat([FLAGS, encodeOption(NBD_OPT_STRUCTURED_REPLY), encodeOption(NBD_OPT_SET_META_CONTEXT, data), go('disk')]));
    assert.equal(handshake.result!.structured, true);
    assert.equal(handshake.result!.allocationContext, undefined);
  });

  for (const option of [NBD_OPT_STARTTLS, 4, 11, 999]) {
    test(`option ${option} gets NBD_REP_ERR_UNSUP and a following GO works`, () => {
      const { status, out } = run(Buffer.concat([FLAGS, encodeOption(option, Buffer.from('xyz')), go('disk')]));
      assert.equal(status, 'transmission');
      const r = replies(out);
      assert.deepEqual([r[0]!.option, r[0]!.type], [option, NBD_REP_ERR_UNSUP]);
    });
  }

  test('a malformed NBD_OPT_GO gets NBD_REP_ERR_INVALID and the stream stays in sync', () => {
    const { status, out } = run(Buffer.concat([FLAGS, encodeOption(NBD_OPT_GO, Buffer.from('0000ffff0000', 'hex')), go('disk')]));
    assert.equal(status, 'transmission');
    assert.equal(replies(out)[0]!.type, NBD_REP_ERR_INVALID);
  });

  test('NBD_OPT_LIST sends one NBD_REP_SERVER per export, then ACK', () => {
    const { status, out } = run(Buffer.concat([FLAGS, encodeOption(NBD_OPT_LIST)]));
    assert.equal(status, 'more');
    const r = replies(out);
    assert.deepEqual(r.map((x) => x.type), [NBD_REP_SERVER, NBD_REP_SERVER, NBD_REP_ACK]);
    const name = (d: Buffer): string => d.subarray(4, 4 + d.readUInt32BE(0)).toString();
    assert.deepEqual(r.slice(0, 2).map((x) => name(x.data)), ['disk', 'ro']);
    assert.equal(r[0]!.data.subarray(4 + 4).toString(), 'scratch disk');
  });

  test('NBD_OPT_LIST with data gets NBD_REP_ERR_INVALID', () => {
    const { out } = run(Buffer.concat([FLAGS, encodeOption(NBD_OPT_LIST, Buffer.from('x'))]));
    assert.equal(replies(out)[0]!.type, NBD_REP_ERR_INVALID);
  });

  test('NBD_OPT_ABORT is acknowledged and ends the handshake', () => {
    const { status, out } = run(Buffer.concat([FLAGS, encodeOption(NBD_OPT_ABORT)]));
    assert.equal(status, 'abort');
    assert.deepEqual(replies(out).map((x) => [x.option, x.type]), [[NBD_OPT_ABORT, NBD_REP_ACK]]);
  });

  const exportNameCases = [
    { name: 'without NO_ZEROES sends 124 zero bytes', flags: NBD_FLAG_C_FIXED_NEWSTYLE, length: 134 },
    { name: 'with NO_ZEROES sends none', flags: NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES, length: 10 },
    { name: 'from a non-fixed newstyle client still works', flags: 0, length: 134 },
  ];
  for (const { name, flags, length } of exportNameCases) {
    test(`NBD_OPT_EXPORT_NAME ${name}`, () => {
      const { status, out, handshake } = run(Buffer.concat([encodeClientFlags(flags), encodeOption(NBD_OPT_EXPORT_NAME, Buffer.from('ro'))]));
      assert.equal(status, 'transmission');
      assert.equal(out.length - 18, length);
      assert.equal(readU64(out, 18), 4096);
      assert.equal(out.readUInt16BE(26), handshake.result!.transmissionFlags);
      assert.ok(out.subarray(28).every((b) => b === 0));
    });
  }

  test('NBD_OPT_EXPORT_NAME with an unknown name closes (there is no error reply)', () => {
    assert.throws(() => run(Buffer.concat([FLAGS, encodeOption(NBD_OPT_EXPORT_NAME, Buffer.from('nope'))])), NbdProtocolError);
  });

  test('caps the number of options', () => {
    const many = Array.from({ length: 17 }, () => encodeOption(NBD_OPT_LIST));
    assert.throws(() => run(Buffer.concat([FLAGS, ...many])), /more than 16 options/);
  });

  test('caps the option length before buffering it', () => {
    const header = encodeOption(NBD_OPT_GO).subarray(0, 16);
    header.writeUInt32BE(0xffffffff, 12);
    assert.throws(() => run(Buffer.concat([FLAGS, header])), NbdProtocolError);
  });

  test('closes on a bad option magic', () => {
    assert.throws(() => run(Buffer.concat([FLAGS, Buffer.alloc(16, 0x41)])), NbdProtocolError);
  });

  test('hands over bytes that follow NBD_OPT_GO in the same chunk', () => {
    const { handshake } = run(Buffer.concat([FLAGS, go('disk'), Buffer.from('tail')]));
    assert.equal(handshake.result!.remainder?.toString(), 'tail');
  });

  test('gives the same replies when fed one byte at a time', () => {
    const input = Buffer.concat([FLAGS, encodeOption(NBD_OPT_LIST), encodeOption(77, Buffer.from('abc')), go('missing'), go('ro', [NBD_INFO_NAME])]);
    const whole = run(input);
    const bytewise = run(input, 1);
    assert.equal(bytewise.status, 'transmission');
    assert.deepEqual(bytewise.out, whole.out);
  });

  test('advertises flags honest to the export', () => {
    assert.equal(
      transmissionFlagsFor(DISK),
      NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_FAST_ZERO |
        NBD_FLAG_SEND_CACHE | NBD_FLAG_CAN_MULTI_CONN,
    );
    assert.equal(transmissionFlagsFor(RO), NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_READ_ONLY | NBD_FLAG_SEND_CACHE);
    assert.equal(transmissionFlagsFor(RO, true), NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_READ_ONLY | NBD_FLAG_SEND_CACHE | NBD_FLAG_SEND_DF);
    const roBackend: NbdExport = { name: 'x', backend: new BufferBackend({ size: 512, readOnly: true }) };
    assert.equal(transmissionFlagsFor(roBackend) & NBD_FLAG_READ_ONLY, NBD_FLAG_READ_ONLY);
  });
});
