import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import protobuf from 'protobufjs';
import { PROJECT_ROOT } from '../support/tools.js';
import {
  allocReadAtReply,
  decodeDirtyOffsetsReply,
  decodeSinceArgs,
  decodeTrackReply,
  decodeEmpty,
  decodeReadAtArgs,
  decodeReadAtReply,
  decodeSizeReply,
  decodeWriteAtArgs,
  decodeWriteAtReply,
  encodeDirtyOffsetsReply,
  encodeSinceArgs,
  encodeTrackReply,
  encodeEmpty,
  encodeReadAtArgs,
  encodeReadAtReply,
  encodeSizeReply,
  encodeWriteAtArgs,
  encodeWriteAtReply,
  EMPTY,
} from '../../src/rpc/codec.js';

const PROTOS = path.join(PROJECT_ROOT, 'src', 'rpc', 'protos');
/** Loads a .proto as protoc -I src/rpc/protos would: imports are relative to that root. */
function load(file: string): protobuf.Root {
  const root = new protobuf.Root();
  root.resolvePath = (_origin, target) => (path.isAbsolute(target) ? target : path.join(PROTOS, target));
  return root.loadSync(path.join(PROTOS, file));
}
const mount = load('mount/v1/backend.proto');
const migration = load('migration/v1/seeder.proto');
const MOUNT = 'com.pojtinger.felicitas.r3map.mount.v1.';
const MIGRATION = 'com.pojtinger.felicitas.r3map.migration.v1.';
const COMMON = 'com.pojtinger.felicitas.r3map.common.v1.';

const GiB = 1024 ** 3;
const BIG = 6 * GiB + 123; // above 2^32
const MAX = Number.MAX_SAFE_INTEGER;

/** protobufjs' view of a message, int64 as numbers and bytes as Buffers. */
function theirs(type: protobuf.Type, bytes: Uint8Array): Record<string, unknown> {
  const obj = type.toObject(type.decode(bytes), { longs: Number, bytes: Buffer, defaults: true, arrays: true });
  for (const [k, v] of Object.entries(obj)) if (v instanceof Uint8Array) obj[k] = Buffer.from(v);
  return obj;
}

function encodeTheirs(type: protobuf.Type, value: Record<string, unknown>): Buffer {
  const err = type.verify(value);
  assert.equal(err, null, `protobufjs rejects ${JSON.stringify(value)}: ${err}`);
  return Buffer.from(type.encode(type.fromObject(value)).finish());
}

interface Case {
  readonly name: string;
  readonly type: protobuf.Type;
  /** Our message. */
  readonly ours: object;
  /** The same message as protobufjs fields (with defaults). */
  readonly wire: Record<string, unknown>;
  readonly encode: (m: never) => Buffer;
  readonly decode: (b: Buffer) => object;
}

const payload = Buffer.from('hello, r3map');
const mountType = (n: string): protobuf.Type => mount.lookupType(MOUNT + n);
const migrationType = (n: string): protobuf.Type => migration.lookupType(MIGRATION + n);
/** A shared message, as each service's file sees it through its import. */
const commonType = (root: protobuf.Root, n: string): protobuf.Type => root.lookupType(COMMON + n);

const cases: Case[] = [
  { name: 'an empty ReadAtArgs', type: commonType(mount, 'ReadAtArgs'), ours: { length: 0, off: 0 }, wire: { Length: 0, Off: 0 }, encode: encodeReadAtArgs, decode: decodeReadAtArgs },
  { name: 'a ReadAtArgs at an offset above 2^32', type: commonType(mount, 'ReadAtArgs'), ours: { length: 32 * 1024 * 1024, off: BIG }, wire: { Length: 32 * 1024 * 1024, Off: BIG }, encode: encodeReadAtArgs, decode: decodeReadAtArgs },
  { name: 'a ReadAtArgs at the largest safe offset', type: commonType(mount, 'ReadAtArgs'), ours: { length: 1, off: MAX }, wire: { Length: 1, Off: MAX }, encode: encodeReadAtArgs, decode: decodeReadAtArgs },
  { name: 'a ReadAtReply with a payload', type: commonType(mount, 'ReadAtReply'), ours: { n: payload.length, p: payload }, wire: { N: payload.length, P: payload }, encode: encodeReadAtReply, decode: decodeReadAtReply },
  { name: 'an empty ReadAtReply', type: commonType(mount, 'ReadAtReply'), ours: { n: 0, p: Buffer.alloc(0) }, wire: { N: 0, P: Buffer.alloc(0) }, encode: encodeReadAtReply, decode: decodeReadAtReply },
  { name: 'a WriteAtArgs above 2^32', type: mountType('WriteAtArgs'), ours: { off: BIG, p: payload }, wire: { Off: BIG, P: payload }, encode: encodeWriteAtArgs, decode: decodeWriteAtArgs },
  { name: 'a WriteAtArgs at offset 0 with no payload', type: mountType('WriteAtArgs'), ours: { off: 0, p: Buffer.alloc(0) }, wire: { Off: 0, P: Buffer.alloc(0) }, encode: encodeWriteAtArgs, decode: decodeWriteAtArgs },
  { name: 'a WriteAtReply', type: mountType('WriteAtReply'), ours: { length: 65536 }, wire: { Length: 65536 }, encode: encodeWriteAtReply, decode: decodeWriteAtReply },
  { name: 'a SizeReply above 2^32', type: commonType(mount, 'SizeReply'), ours: { size: BIG }, wire: { Size: BIG }, encode: encodeSizeReply, decode: decodeSizeReply },
  { name: 'a SizeReply of 0', type: commonType(mount, 'SizeReply'), ours: { size: 0 }, wire: { Size: 0 }, encode: encodeSizeReply, decode: decodeSizeReply },
  { name: 'the Seeder SizeReply', type: commonType(migration, 'SizeReply'), ours: { size: MAX }, wire: { Size: MAX }, encode: encodeSizeReply, decode: decodeSizeReply },
  { name: 'the Seeder ReadAtArgs', type: commonType(migration, 'ReadAtArgs'), ours: { length: 4096, off: BIG }, wire: { Length: 4096, Off: BIG }, encode: encodeReadAtArgs, decode: decodeReadAtArgs },
  { name: 'a SyncReply with dirty offsets above 2^32', type: migrationType('SyncReply'), ours: { dirtyOffsets: [0, 65536, BIG, MAX], epoch: 0 }, wire: { DirtyOffsets: [0, 65536, BIG, MAX], Epoch: 0 }, encode: encodeDirtyOffsetsReply, decode: decodeDirtyOffsetsReply },
  { name: 'a SyncReply without dirty offsets', type: migrationType('SyncReply'), ours: { dirtyOffsets: [], epoch: 0 }, wire: { DirtyOffsets: [], Epoch: 0 }, encode: encodeDirtyOffsetsReply, decode: decodeDirtyOffsetsReply },
  { name: 'a SyncReply with an epoch', type: migrationType('SyncReply'), ours: { dirtyOffsets: [4096], epoch: 300 }, wire: { DirtyOffsets: [4096], Epoch: 300 }, encode: encodeDirtyOffsetsReply, decode: decodeDirtyOffsetsReply },
  { name: 'a DirtyReply with only an epoch', type: migrationType('DirtyReply'), ours: { dirtyOffsets: [], epoch: 7 }, wire: { DirtyOffsets: [], Epoch: 7 }, encode: encodeDirtyOffsetsReply, decode: decodeDirtyOffsetsReply },
  { name: 'a SyncArgs with Since', type: migrationType('SyncArgs'), ours: { since: 5 }, wire: { Since: 5 }, encode: encodeSinceArgs, decode: decodeSinceArgs },
  { name: 'a SyncArgs of a Go leecher (no Since)', type: migrationType('SyncArgs'), ours: { since: 0 }, wire: { Since: 0 }, encode: encodeSinceArgs, decode: decodeSinceArgs },
  { name: 'a DirtyArgs', type: migrationType('DirtyArgs'), ours: { since: BIG }, wire: { Since: BIG }, encode: encodeSinceArgs, decode: decodeSinceArgs },
  { name: 'a TrackReply with a session', type: migrationType('TrackReply'), ours: { session: 2 ** 46 + 3 }, wire: { Session: 2 ** 46 + 3 }, encode: encodeTrackReply, decode: decodeTrackReply },
  ...['SyncArgs', 'SyncReply'].map((n) => ({ name: `the empty Backend ${n}`, type: mountType(n), ours: EMPTY, wire: {}, encode: encodeEmpty, decode: decodeEmpty })),
  { name: 'the empty shared SizeArgs', type: commonType(mount, 'SizeArgs'), ours: EMPTY, wire: {}, encode: encodeEmpty, decode: decodeEmpty },
  { name: 'a SessionReply', type: migrationType('SessionReply'), ours: { session: 5 }, wire: { Session: 5 }, encode: encodeTrackReply, decode: decodeTrackReply },
  ...['TrackArgs', 'SessionArgs', 'CloseArgs', 'CloseReply'].map((n) => ({ name: `the empty Seeder ${n}`, type: migrationType(n), ours: EMPTY, wire: {}, encode: encodeEmpty, decode: decodeEmpty })),
];

describe('codec against protobufjs loading the .proto files', () => {
  for (const c of cases) {
    it(`encodes ${c.name} so that protobufjs reads it`, () => {
      const bytes = c.encode(c.ours as never);
      assert.deepEqual(theirs(c.type, bytes), c.wire);
      assert.deepEqual(bytes, encodeTheirs(c.type, c.wire), 'same bytes as protobufjs');
    });
    it(`decodes ${c.name} written by protobufjs`, () => {
      const ours = c.decode(encodeTheirs(c.type, c.wire));
      assert.deepEqual(ours, c.ours);
    });
  }
});

describe('codec on the data path', () => {
  it('decodes P as a view into the message, without copying', () => {
    const msg = encodeTheirs(mountType('WriteAtArgs'), { Off: BIG, P: payload });
    const { p } = decodeWriteAtArgs(msg);
    assert.equal(p.buffer, msg.buffer);
    msg[msg.length - 1] = 0x21;
    assert.equal(p[p.length - 1], 0x21, 'p shares memory with the message');
  });

  for (const length of [0, 1, 127, 128, 65536, 1024 * 1024 + 3]) {
    it(`pre-encodes a ${length}-byte ReadAtReply that protobufjs reads and the encoder returns as is`, () => {
      const reply = allocReadAtReply(length);
      assert.equal(reply.p.length, length);
      reply.p.fill(0x5a);
      const bytes = encodeReadAtReply(reply);
      assert.equal(bytes, reply.frame, 'no copy');
      const back = theirs(commonType(mount, 'ReadAtReply'), bytes);
      assert.equal(back.N, length);
      assert.deepEqual(back.P, Buffer.alloc(length, 0x5a));
      assert.deepEqual(bytes, encodeReadAtReply({ n: length, p: Buffer.alloc(length, 0x5a) }));
    });
  }

  it('encodes a payload given in pieces exactly as the same payload in one piece', () => {
    const parts = [Buffer.from('hello'), Buffer.alloc(0), Buffer.from(', '), Buffer.from('r3map')];
    const bytes = encodeWriteAtArgs({ off: BIG, parts });
    assert.deepEqual(bytes, encodeWriteAtArgs({ off: BIG, p: Buffer.concat(parts) }));
    assert.deepEqual(theirs(mountType('WriteAtArgs'), bytes), { Off: BIG, P: Buffer.from('hello, r3map') });
    assert.equal(encodeWriteAtArgs({ off: 0, parts: [Buffer.alloc(0)] }).length, 0);
  });

  it('skips fields it does not know, of every wire type', () => {
    const root = protobuf.Root.fromJSON({
      nested: {
        Future: {
          fields: {
            Length: { type: 'int32', id: 1 },
            Off: { type: 'int64', id: 2 },
            Name: { type: 'string', id: 3 },
            Stamp: { type: 'fixed64', id: 4 },
            Flags: { type: 'fixed32', id: 5 },
            Count: { type: 'uint64', id: 6 },
          },
        },
      },
    });
    const future = root.lookupType('Future');
    const bytes = encodeTheirs(future, { Name: 'x'.repeat(300), Length: 7, Stamp: 99, Off: BIG, Flags: 3, Count: MAX });
    assert.deepEqual(decodeReadAtArgs(bytes), { length: 7, off: BIG });
    assert.deepEqual(decodeEmpty(bytes), EMPTY);
  });

  it('reads repeated offsets written unpacked as well as packed', () => {
    const unpacked = Buffer.from([0x08, 0x80, 0x80, 0x04, 0x08, 0x00, 0x08, 0x05]);
    assert.deepEqual(decodeDirtyOffsetsReply(unpacked), { dirtyOffsets: [65536, 0, 5], epoch: 0 });
  });

  const odd = [
    { name: 'a negative Off decodes as a negative number', wire: { Length: 1, Off: -1 }, expect: { length: 1, off: -1 } },
    { name: 'a negative Length decodes as a negative number', wire: { Length: -5, Off: 0 }, expect: { length: -5, off: 0 } },
    { name: 'a very negative Off stays negative', wire: { Length: 0, Off: -BIG }, expect: { length: 0, off: -BIG } },
  ];
  for (const c of odd) {
    it(`leaves judging to the service: ${c.name}`, () => {
      assert.deepEqual(decodeReadAtArgs(encodeTheirs(commonType(mount, 'ReadAtArgs'), c.wire)), c.expect);
    });
  }

  it('decodes an Off above 2^53 as an unsafe number for the service to refuse', () => {
    const varint: number[] = [];
    for (let v = 2n ** 54n + 1n; ; v >>= 7n) {
      if (v < 0x80n) {
        varint.push(Number(v));
        break;
      }
      varint.push(Number(v & 0x7fn) | 0x80);
    }
    const bytes = Buffer.from([0x08, 0x01, 0x10, ...varint]);
    const type = commonType(mount, 'ReadAtArgs');
    assert.equal(type.toObject(type.decode(bytes), { longs: String }).Off, '18014398509481985', 'protobufjs agrees on the bytes');
    const { off } = decodeReadAtArgs(bytes);
    assert.equal(Number.isSafeInteger(off), false);
    assert.ok(off > MAX);
  });

  const malformed = [
    { name: 'a payload that runs past the end', bytes: [0x12, 0x05, 1, 2] },
    { name: 'a truncated varint', bytes: [0x08, 0x80] },
    { name: 'a varint of 11 bytes', bytes: [0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01] },
    { name: 'a group (wire type 3)', bytes: [0x1b] },
    { name: 'a fixed64 that runs past the end', bytes: [0x19, 1, 2, 3] },
    { name: 'field number 0', bytes: [0x00, 0x01] },
  ];
  for (const c of malformed) {
    it(`throws on ${c.name}`, () => {
      assert.throws(() => decodeReadAtReply(Buffer.from(c.bytes)), /malformed protobuf message/);
    });
  }

  it('refuses to encode negative or unsafe numbers', () => {
    assert.throws(() => encodeReadAtArgs({ length: -1, off: 0 }), RangeError);
    assert.throws(() => encodeWriteAtArgs({ off: 2 ** 53, p: payload }), RangeError);
    assert.throws(() => encodeSizeReply({ size: 1.5 }), RangeError);
    assert.throws(() => encodeDirtyOffsetsReply({ dirtyOffsets: [1, -2] }), RangeError);
  });
});
