/**
 * Pure encode/decode of NBD headers on Buffers (big-endian, as on the wire). No I/O, no state.
 * u64 values are `hi * 2 ** 32 + lo`; anything above Number.MAX_SAFE_INTEGER is rejected, except a
 * request offset, which decodes as Infinity so the request fails range validation while the stream
 * stays in sync. Handles (cookies) are opaque and kept as two u32 halves.
 */
import { NbdProtocolError } from '../errors.js';
import {
  NBD_CLIENT_FLAGS_SIZE,
  NBD_EXPORT_NAME_ZEROES,
  NBD_GREETING_SIZE,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_EXPORT,
  NBD_INIT_PASSWD_HI,
  NBD_INIT_PASSWD_LO,
  NBD_MAX_STRING,
  NBD_OPTION_HEADER_SIZE,
  NBD_OPTION_REPLY_HEADER_SIZE,
  NBD_OPTS_MAGIC_HI,
  NBD_OPTS_MAGIC_LO,
  NBD_REP_MAGIC_HI,
  NBD_REP_MAGIC_LO,
  NBD_REQUEST_MAGIC,
  NBD_REQUEST_SIZE,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_STRUCTURED_REPLY_MAGIC,
} from './constants.js';

const TWO_32 = 2 ** 32;
/** hi half above this makes hi * 2^32 + lo exceed Number.MAX_SAFE_INTEGER. */
const MAX_SAFE_HI = 0x1fffff;

export function readU64(buf: Buffer, off: number, what = 'u64'): number {
  const hi = buf.readUInt32BE(off);
  if (hi > MAX_SAFE_HI) throw new NbdProtocolError(`${what} is above 2^53-1: hi=0x${hi.toString(16)}`);
  return hi * TWO_32 + buf.readUInt32BE(off + 4);
}

export function writeU64(buf: Buffer, off: number, value: number): void {
  if (!Number.isSafeInteger(value) || value < 0) throw new RangeError(`u64 value ${value} is not a safe unsigned integer`);
  const hi = Math.floor(value / TWO_32);
  buf.writeUInt32BE(hi, off);
  buf.writeUInt32BE(value - hi * TWO_32, off + 4);
}

/** One transmission request header; mutable so a parser can reuse or fill instances. */
export interface NbdRequestHeader {
  flags: number;
  type: number;
  handleHi: number;
  handleLo: number;
  /** Bytes; Infinity when the wire value exceeds 2^53-1. */
  offset: number;
  length: number;
}

/** Decodes 28 bytes at `off` into `out`; throws NbdProtocolError on a bad magic. */
export function decodeRequestHeader(buf: Buffer, off: number, out: NbdRequestHeader): void {
  const magic = buf.readUInt32BE(off);
  if (magic !== NBD_REQUEST_MAGIC) {
    throw new NbdProtocolError(`bad request magic 0x${magic.toString(16)} (want 0x${NBD_REQUEST_MAGIC.toString(16)})`);
  }
  out.flags = buf.readUInt16BE(off + 4);
  out.type = buf.readUInt16BE(off + 6);
  out.handleHi = buf.readUInt32BE(off + 8);
  out.handleLo = buf.readUInt32BE(off + 12);
  const hi = buf.readUInt32BE(off + 16);
  out.offset = hi > MAX_SAFE_HI ? Number.POSITIVE_INFINITY : hi * TWO_32 + buf.readUInt32BE(off + 20);
  out.length = buf.readUInt32BE(off + 24);
}

export function encodeRequestHeader(buf: Buffer, off: number, req: Readonly<NbdRequestHeader>): void {
  buf.writeUInt32BE(NBD_REQUEST_MAGIC, off);
  buf.writeUInt16BE(req.flags, off + 4);
  buf.writeUInt16BE(req.type, off + 6);
  buf.writeUInt32BE(req.handleHi >>> 0, off + 8);
  buf.writeUInt32BE(req.handleLo >>> 0, off + 12);
  writeU64(buf, off + 16, req.offset);
  buf.writeUInt32BE(req.length, off + 24);
}

export function encodeRequest(req: Readonly<NbdRequestHeader>): Buffer {
  const buf = Buffer.allocUnsafe(NBD_REQUEST_SIZE);
  encodeRequestHeader(buf, 0, req);
  return buf;
}

export function encodeSimpleReply(buf: Buffer, off: number, errno: number, handleHi: number, handleLo: number): void {
  buf.writeUInt32BE(NBD_SIMPLE_REPLY_MAGIC, off);
  buf.writeUInt32BE(errno, off + 4);
  buf.writeUInt32BE(handleHi, off + 8);
  buf.writeUInt32BE(handleLo, off + 12);
}

export interface NbdSimpleReply {
  errno: number;
  handleHi: number;
  handleLo: number;
}

/** Decodes 16 bytes at `off`; throws NbdProtocolError on a bad magic. */
export function decodeSimpleReply(buf: Buffer, off: number, out: NbdSimpleReply): void {
  const magic = buf.readUInt32BE(off);
  if (magic !== NBD_SIMPLE_REPLY_MAGIC) throw new NbdProtocolError(`bad reply magic 0x${magic.toString(16)}`);
  out.errno = buf.readUInt32BE(off + 4);
  out.handleHi = buf.readUInt32BE(off + 8);
  out.handleLo = buf.readUInt32BE(off + 12);
}

/** The server's first 18 bytes: NBDMAGIC, IHAVEOPT, handshake flags. */
export function encodeGreeting(handshakeFlags: number): Buffer {
  const buf = Buffer.allocUnsafe(NBD_GREETING_SIZE);
  buf.writeUInt32BE(NBD_INIT_PASSWD_HI, 0);
  buf.writeUInt32BE(NBD_INIT_PASSWD_LO, 4);
  buf.writeUInt32BE(NBD_OPTS_MAGIC_HI, 8);
  buf.writeUInt32BE(NBD_OPTS_MAGIC_LO, 12);
  buf.writeUInt16BE(handshakeFlags, 16);
  return buf;
}

/** Returns the handshake flags of a newstyle greeting; throws NbdProtocolError otherwise. */
export function decodeGreeting(buf: Buffer, off = 0): number {
  if (buf.readUInt32BE(off) !== NBD_INIT_PASSWD_HI || buf.readUInt32BE(off + 4) !== NBD_INIT_PASSWD_LO) {
    throw new NbdProtocolError('server greeting does not start with NBDMAGIC');
  }
  if (buf.readUInt32BE(off + 8) !== NBD_OPTS_MAGIC_HI || buf.readUInt32BE(off + 12) !== NBD_OPTS_MAGIC_LO) {
    throw new NbdProtocolError('server is not newstyle (no IHAVEOPT after NBDMAGIC)');
  }
  return buf.readUInt16BE(off + 16);
}

export function encodeClientFlags(flags: number): Buffer {
  const buf = Buffer.allocUnsafe(NBD_CLIENT_FLAGS_SIZE);
  buf.writeUInt32BE(flags >>> 0, 0);
  return buf;
}

export interface NbdOptionHeader {
  option: number;
  length: number;
}

/** Decodes 16 bytes (IHAVEOPT, option, length); throws NbdProtocolError on a bad magic. */
export function decodeOptionHeader(buf: Buffer, off: number, out: NbdOptionHeader): void {
  if (buf.readUInt32BE(off) !== NBD_OPTS_MAGIC_HI || buf.readUInt32BE(off + 4) !== NBD_OPTS_MAGIC_LO) {
    throw new NbdProtocolError('option does not start with IHAVEOPT');
  }
  out.option = buf.readUInt32BE(off + 8);
  out.length = buf.readUInt32BE(off + 12);
}

/** A whole client option: header plus data. */
export function encodeOption(option: number, data?: Buffer): Buffer {
  const length = data?.length ?? 0;
  const buf = Buffer.allocUnsafe(NBD_OPTION_HEADER_SIZE + length);
  buf.writeUInt32BE(NBD_OPTS_MAGIC_HI, 0);
  buf.writeUInt32BE(NBD_OPTS_MAGIC_LO, 4);
  buf.writeUInt32BE(option >>> 0, 8);
  buf.writeUInt32BE(length, 12);
  if (data !== undefined) data.copy(buf, NBD_OPTION_HEADER_SIZE);
  return buf;
}

/** A whole option reply: magic, option, reply type, length, data. */
export function encodeOptionReply(option: number, type: number, data?: Buffer): Buffer {
  const length = data?.length ?? 0;
  const buf = Buffer.allocUnsafe(NBD_OPTION_REPLY_HEADER_SIZE + length);
  buf.writeUInt32BE(NBD_REP_MAGIC_HI, 0);
  buf.writeUInt32BE(NBD_REP_MAGIC_LO, 4);
  buf.writeUInt32BE(option >>> 0, 8);
  buf.writeUInt32BE(type >>> 0, 12);
  buf.writeUInt32BE(length, 16);
  if (data !== undefined) data.copy(buf, NBD_OPTION_REPLY_HEADER_SIZE);
  return buf;
}

export interface NbdOptionReplyHeader {
  option: number;
  type: number;
  length: number;
}

export function decodeOptionReplyHeader(buf: Buffer, off: number, out: NbdOptionReplyHeader): void {
  if (buf.readUInt32BE(off) !== NBD_REP_MAGIC_HI || buf.readUInt32BE(off + 4) !== NBD_REP_MAGIC_LO) {
    throw new NbdProtocolError('option reply has a bad magic');
  }
  out.option = buf.readUInt32BE(off + 8);
  out.type = buf.readUInt32BE(off + 12);
  out.length = buf.readUInt32BE(off + 16);
}

/** NBD_INFO_EXPORT payload (12 bytes): type, size, transmission flags. */
export function encodeInfoExport(size: number, transmissionFlags: number): Buffer {
  const buf = Buffer.allocUnsafe(12);
  buf.writeUInt16BE(NBD_INFO_EXPORT, 0);
  writeU64(buf, 2, size);
  buf.writeUInt16BE(transmissionFlags, 10);
  return buf;
}

/** NBD_INFO_BLOCK_SIZE payload (14 bytes): type, minimum, preferred, maximum. */
export function encodeInfoBlockSize(minimum: number, preferred: number, maximum: number): Buffer {
  const buf = Buffer.allocUnsafe(14);
  buf.writeUInt16BE(NBD_INFO_BLOCK_SIZE, 0);
  buf.writeUInt32BE(minimum, 2);
  buf.writeUInt32BE(preferred, 6);
  buf.writeUInt32BE(maximum, 10);
  return buf;
}

/** NBD_INFO_NAME or NBD_INFO_DESCRIPTION payload: type then the UTF-8 string. */
export function encodeInfoString(type: number, text: string): Buffer {
  const str = Buffer.from(text, 'utf8');
  const buf = Buffer.allocUnsafe(2 + str.length);
  buf.writeUInt16BE(type, 0);
  str.copy(buf, 2);
  return buf;
}

/** NBD_REP_SERVER data: name length, name, then an optional human-readable description. */
export function encodeRepServer(name: string, description = ''): Buffer {
  const nameBuf = Buffer.from(name, 'utf8');
  const descBuf = Buffer.from(description, 'utf8');
  const buf = Buffer.allocUnsafe(4 + nameBuf.length + descBuf.length);
  buf.writeUInt32BE(nameBuf.length, 0);
  nameBuf.copy(buf, 4);
  descBuf.copy(buf, 4 + nameBuf.length);
  return buf;
}

/** The reply that ends NBD_OPT_EXPORT_NAME: size, flags, and 124 zeroes unless the client opted out. */
export function encodeExportNameReply(size: number, transmissionFlags: number, withZeroes: boolean): Buffer {
  const buf = Buffer.alloc(8 + 2 + (withZeroes ? NBD_EXPORT_NAME_ZEROES : 0));
  writeU64(buf, 0, size);
  buf.writeUInt16BE(transmissionFlags, 8);
  return buf;
}

/** NBD_OPT_INFO / NBD_OPT_GO data: name length, name, number of info requests, the requests. */
export function encodeInfoRequest(name: string, infos: readonly number[] = []): Buffer {
  const nameBuf = Buffer.from(name, 'utf8');
  const buf = Buffer.allocUnsafe(4 + nameBuf.length + 2 + 2 * infos.length);
  buf.writeUInt32BE(nameBuf.length, 0);
  nameBuf.copy(buf, 4);
  buf.writeUInt16BE(infos.length, 4 + nameBuf.length);
  infos.forEach((info, i) => buf.writeUInt16BE(info, 6 + nameBuf.length + 2 * i));
  return buf;
}

export type InfoRequest =
  | { readonly ok: true; readonly name: string; readonly infos: readonly number[] }
  | { readonly ok: false; readonly reason: string };

/** Parses NBD_OPT_INFO / NBD_OPT_GO data; a malformed one yields a reason for NBD_REP_ERR_INVALID. */
export function decodeInfoRequest(data: Buffer): InfoRequest {
  if (data.length < 6) return { ok: false, reason: `option data of ${data.length} bytes is shorter than 6` };
  const nameLength = data.readUInt32BE(0);
  if (nameLength > data.length - 6) {
    return { ok: false, reason: `name length ${nameLength} exceeds option data length ${data.length} - 6` };
  }
  const count = data.readUInt16BE(4 + nameLength);
  if (data.length !== 6 + nameLength + 2 * count) {
    return { ok: false, reason: `option length ${data.length} does not match ${count} info requests` };
  }
  const name = decodeString(data, 4, nameLength);
  if (name === undefined) return { ok: false, reason: `export name is not a valid string (${nameLength} bytes)` };
  const infos: number[] = [];
  for (let i = 0; i < count; i++) infos.push(data.readUInt16BE(6 + nameLength + 2 * i));
  return { ok: true, name, infos };
}

/** A spec string (UTF-8, no NUL, at most NBD_MAX_STRING bytes), or undefined when it breaks a rule. */
export function decodeString(buf: Buffer, off: number, length: number): string | undefined {
  if (length > NBD_MAX_STRING || off + length > buf.length) return undefined;
  const bytes = buf.subarray(off, off + length);
  if (bytes.includes(0)) return undefined;
  return bytes.toString('utf8');
}

/** Structured reply chunk types (the spec's NBD_REPLY_TYPE_*) and flags this server sends. */
export const NBD_REPLY_FLAG_DONE = 1;
export const NBD_REPLY_TYPE_NONE = 0;
export const NBD_REPLY_TYPE_OFFSET_DATA = 1;
export const NBD_REPLY_TYPE_OFFSET_HOLE = 2;
export const NBD_REPLY_TYPE_BLOCK_STATUS = 5;
export const NBD_REPLY_TYPE_ERROR = 2 ** 15 + 1;
/** magic u32, flags u16, type u16, cookie u64, length u32. */
export const NBD_STRUCTURED_REPLY_HEADER_SIZE = 20;
/** base:allocation extent flags. */
export const NBD_STATE_HOLE = 1;
export const NBD_STATE_ZERO = 2;

/** One structured reply chunk header at `off`; `length` is the payload's byte count. */
export function encodeStructuredReplyHeader(buf: Buffer, off: number, flags: number, type: number, handleHi: number, handleLo: number, length: number): void {
  buf.writeUInt32BE(NBD_STRUCTURED_REPLY_MAGIC, off);
  buf.writeUInt16BE(flags, off + 4);
  buf.writeUInt16BE(type, off + 6);
  buf.writeUInt32BE(handleHi, off + 8);
  buf.writeUInt32BE(handleLo, off + 12);
  buf.writeUInt32BE(length, off + 16);
}

/** An NBD_REPLY_TYPE_ERROR chunk (DONE) without a message. */
export function encodeStructuredError(errno: number, handleHi: number, handleLo: number): Buffer {
  const buf = Buffer.allocUnsafe(NBD_STRUCTURED_REPLY_HEADER_SIZE + 6);
  encodeStructuredReplyHeader(buf, 0, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, handleHi, handleLo, 6);
  buf.writeUInt32BE(errno, 20);
  buf.writeUInt16BE(0, 24);
  return buf;
}

/** One extent of a BLOCK_STATUS reply: `length` bytes with the base:allocation `flags`. */
export interface NbdExtent {
  readonly length: number;
  readonly flags: number;
}

/** An NBD_REPLY_TYPE_BLOCK_STATUS chunk (DONE) for one meta context. */
export function encodeBlockStatusReply(contextId: number, extents: readonly NbdExtent[], handleHi: number, handleLo: number): Buffer {
  const length = 4 + 8 * extents.length;
  const buf = Buffer.allocUnsafe(NBD_STRUCTURED_REPLY_HEADER_SIZE + length);
  encodeStructuredReplyHeader(buf, 0, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_BLOCK_STATUS, handleHi, handleLo, length);
  buf.writeUInt32BE(contextId, 20);
  let at = 24;
  for (const e of extents) {
    buf.writeUInt32BE(e.length, at);
    buf.writeUInt32BE(e.flags, at + 4);
    at += 8;
  }
  return buf;
}

/** NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT data: the export and the queries. */
export type MetaContextRequest = { readonly ok: true; readonly name: string; readonly queries: readonly string[] } | { readonly ok: false; readonly reason: string };

/** NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT data for an export and its queries (the client's side). */
export function encodeMetaContextRequest(name: string, queries: readonly string[]): Buffer {
  const parts = [u32(Buffer.byteLength(name, 'utf8')), Buffer.from(name, 'utf8'), u32(queries.length)];
  for (const q of queries) parts.push(u32(Buffer.byteLength(q, 'utf8')), Buffer.from(q, 'utf8'));
  return Buffer.concat(parts);
}

function u32(n: number): Buffer {
  const buf = Buffer.allocUnsafe(4);
  buf.writeUInt32BE(n, 0);
  return buf;
}

export function decodeMetaContextRequest(data: Buffer): MetaContextRequest {
  if (data.length < 8) return { ok: false, reason: `option data of ${data.length} bytes is shorter than 8` };
  const nameLength = data.readUInt32BE(0);
  if (nameLength > data.length - 8) return { ok: false, reason: `export name length ${nameLength} overruns the option data` };
  const name = decodeString(data, 4, nameLength);
  if (name === undefined) return { ok: false, reason: `export name is not a valid string (${nameLength} bytes)` };
  const count = data.readUInt32BE(4 + nameLength);
  const queries: string[] = [];
  let at = 8 + nameLength;
  for (let i = 0; i < count; i++) {
    if (at + 4 > data.length) return { ok: false, reason: `query ${i} of ${count} overruns the option data` };
    const length = data.readUInt32BE(at);
    const query = decodeString(data, at + 4, length);
    if (query === undefined) return { ok: false, reason: `query ${i} is not a valid string (${length} bytes)` };
    queries.push(query);
    at += 4 + length;
  }
  if (at !== data.length) return { ok: false, reason: `${data.length - at} bytes after the last query` };
  return { ok: true, name, queries };
}

/** NBD_REP_META_CONTEXT data: the context id and its name. */
export function encodeRepMetaContext(id: number, name: string): Buffer {
  const text = Buffer.from(name, 'utf8');
  const buf = Buffer.allocUnsafe(4 + text.length);
  buf.writeUInt32BE(id, 0);
  text.copy(buf, 4);
  return buf;
}
