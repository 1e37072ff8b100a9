import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { NbdProtocolError } from '../../src/errors.js';
import {
  decodeMetaContextRequest,
  encodeMetaContextRequest,
  decodeGreeting,
  decodeInfoRequest,
  decodeOptionHeader,
  decodeOptionReplyHeader,
  decodeRequestHeader,
  decodeSimpleReply,
  decodeString,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoRequest,
  encodeInfoString,
  encodeOption,
  encodeOptionReply,
  encodeRepServer,
  encodeRequest,
  encodeSimpleReply,
  readU64,
  writeU64,
  type NbdRequestHeader,
} from '../../src/nbd/codec.js';
import {
  NBD_CMD_WRITE,
  NBD_CMD_FLAG_FUA,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_NO_ZEROES,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_EXPORT,
  NBD_INFO_NAME,
  NBD_OPT_GO,
  NBD_OPT_LIST,
  NBD_REP_ERR_UNSUP,
  NbdCmd,
  NbdRep,
  flagNames,
  NbdTransmissionFlag,
  nameOf,
} from '../../src/nbd/constants.js';

describe('u64 codec', () => {
  for (const value of [0, 1, 2 ** 32 - 1, 2 ** 32, 2 ** 40 + 12345, Number.MAX_SAFE_INTEGER]) {
    test(`round-trips ${value}`, () => {
      const buf = Buffer.alloc(8);
      writeU64(buf, 0, value);
      assert.equal(readU64(buf, 0), value);
    });
  }

  test('writes big-endian bytes', () => {
    const buf = Buffer.alloc(8);
    writeU64(buf, 0, 0x0102030405060);
    assert.equal(buf.toString('hex'), '0000102030405060');
  });

  test('rejects a wire value above 2^53-1 with NbdProtocolError', () => {
    const buf = Buffer.from('0020000000000000', 'hex');
    assert.throws(() => readU64(buf, 0), NbdProtocolError);
  });

  test('refuses to encode unsafe or negative numbers', () => {
    assert.throws(() => writeU64(Buffer.alloc(8), 0, 2 ** 53), RangeError);
    assert.throws(() => writeU64(Buffer.alloc(8), 0, -1), RangeError);
  });
});

describe('request header', () => {
  const request: NbdRequestHeader = { flags: NBD_CMD_FLAG_FUA, type: NBD_CMD_WRITE, handleHi: 0xdeadbeef, handleLo: 0x01020304, offset: 2 ** 33 + 512, length: 65536 };

  test('round-trips every field', () => {
    const buf = encodeRequest(request);
    assert.equal(buf.length, 28);
    assert.equal(buf.readUInt32BE(0), 0x25609513);
    const out: NbdRequestHeader = { flags: 0, type: 0, handleHi: 0, handleLo: 0, offset: 0, length: 0 };
    decodeRequestHeader(buf, 0, out);
    assert.deepEqual(out, request);
  });

  test('decodes an offset above 2^53-1 as Infinity so range checks fail', () => {
    const buf = encodeRequest(request);
    buf.writeUInt32BE(0xffffffff, 16);
    const out: NbdRequestHeader = { flags: 0, type: 0, handleHi: 0, handleLo: 0, offset: 0, length: 0 };
    decodeRequestHeader(buf, 0, out);
    assert.equal(out.offset, Number.POSITIVE_INFINITY);
  });

  test('throws NbdProtocolError on a bad magic', () => {
    const buf = encodeRequest(request);
    buf[0] = 0;
    assert.throws(() => decodeRequestHeader(buf, 0, { ...request }), NbdProtocolError);
  });
});

describe('simple reply', () => {
  test('round-trips errno and handle', () => {
    const buf = Buffer.alloc(16);
    encodeSimpleReply(buf, 0, 22, 7, 9);
    const out = { errno: 0, handleHi: 0, handleLo: 0 };
    decodeSimpleReply(buf, 0, out);
    assert.deepEqual(out, { errno: 22, handleHi: 7, handleLo: 9 });
    assert.equal(buf.readUInt32BE(0), 0x67446698);
  });
});

describe('handshake messages', () => {
  test('the greeting is NBDMAGIC, IHAVEOPT and the flags', () => {
    const buf = encodeGreeting(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
    assert.equal(buf.subarray(0, 16).toString('latin1'), 'NBDMAGICIHAVEOPT');
    assert.equal(decodeGreeting(buf), 3);
    assert.throws(() => decodeGreeting(Buffer.alloc(18)), NbdProtocolError);
  });

  test('an option round-trips through its header', () => {
    const buf = encodeOption(NBD_OPT_GO, Buffer.from('abc'));
    const out = { option: 0, length: 0 };
    decodeOptionHeader(buf, 0, out);
    assert.deepEqual(out, { option: NBD_OPT_GO, length: 3 });
    assert.equal(buf.subarray(16).toString(), 'abc');
    buf[0] = 0x20;
    assert.throws(() => decodeOptionHeader(buf, 0, out), NbdProtocolError);
  });

  test('an option reply carries magic, option, type and data', () => {
    const buf = encodeOptionReply(NBD_OPT_LIST, NBD_REP_ERR_UNSUP, Buffer.from('no'));
    assert.equal(buf.readUInt32BE(0), 0x0003e889);
    assert.equal(buf.readUInt32BE(4), 0x045565a9);
    const out = { option: 0, type: 0, length: 0 };
    decodeOptionReplyHeader(buf, 0, out);
    assert.deepEqual(out, { option: NBD_OPT_LIST, type: 2 ** 31 + 1, length: 2 });
  });

  test('the EXPORT_NAME reply has 124 zeroes only when asked', () => {
    assert.equal(encodeExportNameReply(4096, 1, true).length, 134);
    const short = encodeExportNameReply(4096, 0x0103, false);
    assert.equal(short.length, 10);
    assert.equal(readU64(short, 0), 4096);
    assert.equal(short.readUInt16BE(8), 0x0103);
  });

  test('info payloads have the lengths the spec requires', () => {
    const exp = encodeInfoExport(2 ** 40, 0x1ff);
    assert.equal(exp.length, 12);
    assert.equal(exp.readUInt16BE(0), NBD_INFO_EXPORT);
    assert.equal(readU64(exp, 2), 2 ** 40);
    const bs = encodeInfoBlockSize(1, 4096, 32 * 1024 * 1024);
    assert.equal(bs.length, 14);
    assert.deepEqual([bs.readUInt16BE(0), bs.readUInt32BE(2), bs.readUInt32BE(6), bs.readUInt32BE(10)], [NBD_INFO_BLOCK_SIZE, 1, 4096, 32 * 1024 * 1024]);
    const name = encodeInfoString(NBD_INFO_NAME, 'disk');
    assert.equal(name.length, 6);
    assert.equal(name.subarray(2).toString(), 'disk');
  });

  test('NBD_REP_SERVER data is name length, name, then description', () => {
    const buf = encodeRepServer('a', 'desc');
    assert.equal(buf.readUInt32BE(0), 1);
    assert.equal(buf.subarray(4, 5).toString(), 'a');
    assert.equal(buf.subarray(5).toString(), 'desc');
  });
});

describe('meta context requests', () => {
  test('what the client encodes, the server decodes: export name and queries, UTF-8', () => {
    for (const [name, queries] of [['disk', ['base:allocation']], ['', []], ['dïsk', ['base:', 'qemu:dirty-bitmap:x']]] as const) {
      assert.deepEqual(decodeMetaContextRequest(encodeMetaContextRequest(name, queries)), { ok: true, name, queries });
    }
  });
});

describe('NBD_OPT_INFO / NBD_OPT_GO data', () => {
  test('round-trips a name and info requests', () => {
    const decoded = decodeInfoRequest(encodeInfoRequest('disk', [NBD_INFO_NAME, NBD_INFO_DESCRIPTION]));
    assert.deepEqual(decoded, { ok: true, name: 'disk', infos: [NBD_INFO_NAME, NBD_INFO_DESCRIPTION] });
  });

  const bad: { name: string; data: Buffer }[] = [
    { name: 'shorter than 6 bytes', data: Buffer.alloc(5) },
    { name: 'a name length past the data', data: Buffer.from('000000ff0000', 'hex') },
    { name: 'an info count that does not match the length', data: Buffer.from('000000000002' + '0001', 'hex') },
    { name: 'trailing bytes after the info list', data: Buffer.from('00000000000000', 'hex') },
    { name: 'a NUL inside the name', data: Buffer.from('00000001' + '00' + '0000', 'hex') },
  ];
  for (const { name, data } of bad) {
    test(`is invalid with ${name}`, () => {
      const decoded = decodeInfoRequest(data);
      assert.equal(decoded.ok, false);
    });
  }
});

describe('strings', () => {
  test('accepts UTF-8 up to 4096 bytes and refuses NUL or longer strings', () => {
    assert.equal(decodeString(Buffer.from('día'), 0, 4), 'día');
    assert.equal(decodeString(Buffer.alloc(4096, 0x61), 0, 4096)?.length, 4096);
    assert.equal(decodeString(Buffer.alloc(4097, 0x61), 0, 4097), undefined);
    assert.equal(decodeString(Buffer.from('a\0b'), 0, 3), undefined);
  });
});

describe('names for logs', () => {
  test('nameOf and flagNames use the spec spelling', () => {
    assert.equal(nameOf(NbdCmd, 1), 'NBD_CMD_WRITE');
    assert.equal(nameOf(NbdRep, 2 ** 31 + 6), 'NBD_REP_ERR_UNKNOWN');
    assert.equal(nameOf(NbdCmd, 99), 'unknown(99)');
    assert.equal(flagNames(NbdTransmissionFlag, 0b101), 'NBD_FLAG_HAS_FLAGS|NBD_FLAG_SEND_FLUSH');
    assert.equal(flagNames(NbdTransmissionFlag, 1 << 15), '0x8000');
  });
});
