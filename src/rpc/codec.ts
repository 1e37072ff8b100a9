/**
 * Protobuf wire encode/decode for the messages of protos/mount/v1/backend.proto and
 * protos/migration/v1/seeder.proto, written by hand for the data path:
 *
 * - A decoded `bytes P` is a `subarray` of the message grpc-js hands us (zero-copy); it lives as
 *   long as that message, so a consumer copies out what it keeps.
 * - `WriteAtArgs` encodes with one allocation and one copy of `P`. A `ReadAtReply` made by
 *   `allocReadAtReply()` is already encoded: the server reads the backend straight into the
 *   frame's payload and the encoder returns the frame as it is.
 * - int64 fields decode without BigInt as `hi * 2 ** 32 + lo`. The codec does not judge values:
 *   a negative int64 decodes as a negative number and one above 2^53 as an unsafe one, and the
 *   service rejects both with a status that names the field (a codec error would only reach
 *   the peer as INTERNAL "Error deserializing request"). Encoders take safe, non-negative
 *   integers only.
 * - Decoders skip unknown fields (wire types 0, 1, 2, 5), accept packed and unpacked repeated
 *   int64, and throw on truncated or malformed input. Default values (0, empty) are not
 *   written, as proto3 does.
 * test/rpc/codec.test.ts proves wire compatibility with protobufjs loading the .proto files.
 */
import { ProtoReader, malformed, varintLength, writeVarint } from './proto-wire.js';

export interface ReadAtArgs {
  readonly length: number;
  readonly off: number;
}

export interface ReadAtReply {
  readonly n: number;
  readonly p: Buffer;
  /** The whole encoded message when `p` is a view into it (set by `allocReadAtReply`). */
  readonly frame?: Buffer;
}

export interface WriteAtArgs {
  readonly off: number;
  readonly p: Buffer;
}

/** A WriteAtArgs whose payload comes in pieces (a scatter write); encoded as one `P`, copied once. */
export interface WriteAtArgsParts {
  readonly off: number;
  readonly parts: readonly Buffer[];
}

export interface WriteAtReply {
  readonly length: number;
}

export interface SizeReply {
  readonly size: number;
}

/** The Seeder's SyncReply and DirtyReply. */
export interface DirtyOffsetsReply {
  readonly dirtyOffsets: readonly number[];
  /** The last epoch the offsets cover (r3map-seed; 0 from a seeder without epochs). */
  readonly epoch?: number;
}

/** The Seeder's SyncArgs and DirtyArgs: the epoch the caller has seen (0 = none: since Track). */
export interface SinceArgs {
  readonly since: number;
}

/** The Seeder's TrackReply: which tracking this is (0 from a seeder without sessions). */
export interface TrackReply {
  readonly session: number;
}

/** Every message without fields: SyncArgs, SyncReply (Backend), SizeArgs, TrackArgs, … */
export type Empty = Readonly<Record<string, never>>;
export const EMPTY: Empty = Object.freeze({});

const EMPTY_BUFFER = Buffer.alloc(0);

/** Field 1 and 2 tags: (field << 3) | wire type. */
const TAG_1_VARINT = (1 << 3) | 0;
const TAG_1_BYTES = (1 << 3) | 2;
const TAG_2_VARINT = (2 << 3) | 0;
const TAG_2_BYTES = (2 << 3) | 2;

// ---------------------------------------------------------------- encoding

function checkUint(value: number, field: string): void {
  if (!Number.isSafeInteger(value) || value < 0) throw new RangeError(`${field} must be a safe integer >= 0, got ${value}`);
}

/** A message of one optional varint field 1. */
function encodeVarintField1(value: number, field: string): Buffer {
  checkUint(value, field);
  if (value === 0) return EMPTY_BUFFER;
  const buf = Buffer.allocUnsafe(1 + varintLength(value));
  buf[0] = TAG_1_VARINT;
  writeVarint(buf, 1, value);
  return buf;
}

export function encodeEmpty(_message: Empty): Buffer {
  return EMPTY_BUFFER;
}

export function encodeReadAtArgs(args: ReadAtArgs): Buffer {
  checkUint(args.length, 'ReadAtArgs.Length');
  checkUint(args.off, 'ReadAtArgs.Off');
  const size = (args.length === 0 ? 0 : 1 + varintLength(args.length)) + (args.off === 0 ? 0 : 1 + varintLength(args.off));
  if (size === 0) return EMPTY_BUFFER;
  const buf = Buffer.allocUnsafe(size);
  let pos = 0;
  if (args.length !== 0) {
    buf[pos++] = TAG_1_VARINT;
    pos = writeVarint(buf, pos, args.length);
  }
  if (args.off !== 0) {
    buf[pos++] = TAG_2_VARINT;
    writeVarint(buf, pos, args.off);
  }
  return buf;
}

/** Bytes in front of a `length`-byte payload in an encoded ReadAtReply whose N is `length`. */
function readAtReplyHeaderLength(length: number): number {
  return length === 0 ? 0 : 2 + 2 * varintLength(length);
}

/**
 * A ReadAtReply of `length` bytes (N = length) already encoded: fill `p` (a view into `frame`)
 * and hand the reply to the encoder, which returns `frame` without copying.
 */
export function allocReadAtReply(length: number): ReadAtReply {
  checkUint(length, 'ReadAtReply.N');
  if (length === 0) return { n: 0, p: EMPTY_BUFFER, frame: EMPTY_BUFFER };
  const header = readAtReplyHeaderLength(length);
  const frame = Buffer.allocUnsafe(header + length);
  frame[0] = TAG_1_VARINT;
  let pos = writeVarint(frame, 1, length);
  frame[pos++] = TAG_2_BYTES;
  writeVarint(frame, pos, length);
  return { n: length, p: frame.subarray(header), frame };
}

export function encodeReadAtReply(reply: ReadAtReply): Buffer {
  if (reply.frame !== undefined) return reply.frame;
  checkUint(reply.n, 'ReadAtReply.N');
  const length = reply.p.length;
  const size = (reply.n === 0 ? 0 : 1 + varintLength(reply.n)) + (length === 0 ? 0 : 1 + varintLength(length) + length);
  if (size === 0) return EMPTY_BUFFER;
  const buf = Buffer.allocUnsafe(size);
  let pos = 0;
  if (reply.n !== 0) {
    buf[pos++] = TAG_1_VARINT;
    pos = writeVarint(buf, pos, reply.n);
  }
  if (length !== 0) {
    buf[pos++] = TAG_2_BYTES;
    pos = writeVarint(buf, pos, length);
    reply.p.copy(buf, pos);
  }
  return buf;
}

export function encodeWriteAtArgs(args: WriteAtArgs | WriteAtArgsParts): Buffer {
  checkUint(args.off, 'WriteAtArgs.Off');
  const parts = 'parts' in args ? args.parts : undefined;
  let length = 0;
  if (parts === undefined) length = (args as WriteAtArgs).p.length;
  else for (const part of parts) length += part.length;
  const size = (args.off === 0 ? 0 : 1 + varintLength(args.off)) + (length === 0 ? 0 : 1 + varintLength(length) + length);
  if (size === 0) return EMPTY_BUFFER;
  const buf = Buffer.allocUnsafe(size);
  let pos = 0;
  if (args.off !== 0) {
    buf[pos++] = TAG_1_VARINT;
    pos = writeVarint(buf, pos, args.off);
  }
  if (length !== 0) {
    buf[pos++] = TAG_2_BYTES;
    pos = writeVarint(buf, pos, length);
    if (parts === undefined) {
      (args as WriteAtArgs).p.copy(buf, pos);
    } else {
      for (const part of parts) pos += part.copy(buf, pos);
    }
  }
  return buf;
}

/**
 * The fields of a WriteAtArgs up to the first byte of its `length`-byte P: send P's bytes right
 * after it and the two together are the encoded message (a client that writes P without copying).
 */
export function encodeWriteAtArgsHead(off: number, length: number): Buffer {
  checkUint(off, 'WriteAtArgs.Off');
  checkUint(length, 'WriteAtArgs.P length');
  const size = (off === 0 ? 0 : 1 + varintLength(off)) + (length === 0 ? 0 : 1 + varintLength(length));
  const buf = Buffer.allocUnsafe(size);
  let pos = 0;
  if (off !== 0) {
    buf[pos++] = TAG_1_VARINT;
    pos = writeVarint(buf, pos, off);
  }
  if (length !== 0) {
    buf[pos++] = TAG_2_BYTES;
    writeVarint(buf, pos, length);
  }
  return buf;
}

export function encodeWriteAtReply(reply: WriteAtReply): Buffer {
  return encodeVarintField1(reply.length, 'WriteAtReply.Length');
}

export function encodeSizeReply(reply: SizeReply): Buffer {
  return encodeVarintField1(reply.size, 'SizeReply.Size');
}

export function encodeSinceArgs(args: SinceArgs): Buffer {
  return encodeVarintField1(args.since, 'SyncArgs.Since');
}

export function encodeTrackReply(reply: TrackReply): Buffer {
  return encodeVarintField1(reply.session, 'TrackReply.Session');
}

/** Offsets packed, as proto3 writes repeated scalars; then the epoch. */
export function encodeDirtyOffsetsReply(reply: DirtyOffsetsReply): Buffer {
  const offsets = reply.dirtyOffsets;
  const epoch = reply.epoch ?? 0;
  checkUint(epoch, 'SyncReply.Epoch');
  let body = 0;
  for (const off of offsets) {
    checkUint(off, 'SyncReply.DirtyOffsets');
    body += varintLength(off);
  }
  const head = offsets.length === 0 ? 0 : 1 + varintLength(body) + body;
  const buf = Buffer.allocUnsafe(head + (epoch === 0 ? 0 : 1 + varintLength(epoch)));
  let pos = 0;
  if (offsets.length > 0) {
    buf[0] = TAG_1_BYTES;
    pos = writeVarint(buf, 1, body);
    for (const off of offsets) pos = writeVarint(buf, pos, off);
  }
  if (epoch !== 0) {
    buf[pos] = TAG_2_VARINT;
    writeVarint(buf, pos + 1, epoch);
  }
  return buf;
}

// ---------------------------------------------------------------- decoding

const r = new ProtoReader();

export function decodeEmpty(buf: Buffer): Empty {
  r.begin(buf);
  for (let t = r.tag(); t !== -1; t = r.tag()) r.skip(t & 7);
  return EMPTY;
}

export function decodeReadAtArgs(buf: Buffer): ReadAtArgs {
  r.begin(buf);
  let length = 0;
  let off = 0;
  for (let t = r.tag(); t !== -1; t = r.tag()) {
    if (t === TAG_1_VARINT) length = r.varint() | 0; // int32
    else if (t === TAG_2_VARINT) off = r.varint();
    else r.skip(t & 7);
  }
  return { length, off };
}

export function decodeReadAtReply(buf: Buffer): ReadAtReply {
  r.begin(buf);
  let n = 0;
  let p: Buffer = EMPTY_BUFFER;
  for (let t = r.tag(); t !== -1; t = r.tag()) {
    if (t === TAG_1_VARINT) n = r.varint() | 0;
    else if (t === TAG_2_BYTES) p = r.bytes();
    else r.skip(t & 7);
  }
  return { n, p };
}

export function decodeWriteAtArgs(buf: Buffer): WriteAtArgs {
  r.begin(buf);
  let off = 0;
  let p: Buffer = EMPTY_BUFFER;
  for (let t = r.tag(); t !== -1; t = r.tag()) {
    if (t === TAG_1_VARINT) off = r.varint();
    else if (t === TAG_2_BYTES) p = r.bytes();
    else r.skip(t & 7);
  }
  return { off, p };
}

/** A message of one varint field 1 (int32 when `int32`, else int64). */
function decodeVarintField1(buf: Buffer, int32: boolean): number {
  r.begin(buf);
  let value = 0;
  for (let t = r.tag(); t !== -1; t = r.tag()) {
    if (t === TAG_1_VARINT) value = int32 ? r.varint() | 0 : r.varint();
    else r.skip(t & 7);
  }
  return value;
}

export function decodeWriteAtReply(buf: Buffer): WriteAtReply {
  return { length: decodeVarintField1(buf, true) };
}

export function decodeSizeReply(buf: Buffer): SizeReply {
  return { size: decodeVarintField1(buf, false) };
}

export function decodeSinceArgs(buf: Buffer): SinceArgs {
  return { since: decodeVarintField1(buf, false) };
}

export function decodeTrackReply(buf: Buffer): TrackReply {
  return { session: decodeVarintField1(buf, false) };
}

export function decodeDirtyOffsetsReply(buf: Buffer): DirtyOffsetsReply {
  r.begin(buf);
  const dirtyOffsets: number[] = [];
  let epoch = 0;
  for (let t = r.tag(); t !== -1; t = r.tag()) {
    if (t === TAG_2_VARINT) {
      epoch = r.varint();
    } else if (t === TAG_1_VARINT) {
      dirtyOffsets.push(r.varint());
    } else if (t === TAG_1_BYTES) {
      const length = r.varint();
      if (length < 0 || length > r.end - r.pos) throw malformed('packed field runs past the end');
      const stop = r.pos + length;
      const outer = r.end;
      r.end = stop; // a varint may not run past the packed field
      while (r.pos < stop) dirtyOffsets.push(r.varint());
      r.end = outer;
    } else {
      r.skip(t & 7);
    }
  }
  return { dirtyOffsets, epoch };
}

/** Where P starts in an encoded ReadAtReply, and how long it is. */
export interface ReadAtReplyHead {
  /** Offset of P's first byte. */
  readonly start: number;
  /** P's length. */
  readonly length: number;
}

/**
 * Reads the first bytes `head[0, fill)` of an encoded ReadAtReply that puts N (if any) before P,
 * as proto3 serializers do, so a client can copy P's bytes wherever they belong as they arrive:
 * 'more' when too few bytes are there to tell, 'other' when the message starts some other way
 * (decode it whole instead).
 */
export function readAtReplyHead(head: Buffer, fill: number): ReadAtReplyHead | 'more' | 'other' {
  r.begin(head, fill);
  let sawN = false;
  for (;;) {
    if (r.pos >= fill) return 'more';
    const t = head[r.pos++]!;
    if (t === TAG_1_VARINT && !sawN) {
      if (!r.varintComplete()) return 'more';
      r.varint();
      sawN = true;
    } else if (t === TAG_2_BYTES) {
      if (!r.varintComplete()) return 'more';
      const length = r.varint();
      return { start: r.pos, length };
    } else {
      return 'other';
    }
  }
}
