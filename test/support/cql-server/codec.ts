/**
 * Pure encode/decode of CQL v4 frames and of the body notations of section 3 of
 * native_protocol_v4.spec ([short], [int], [string], [long string], [bytes], [value],
 * [short bytes], [string list], [string map], [string multimap], [option]).
 *
 * Every read is bounds-checked: a body that ends early raises CqlProtocolError (the server
 * answers with a Protocol_error), never a RangeError or a read past the frame.
 */
import { CQL_HEADER_LENGTH, CQL_RESPONSE, CQL_VERSION_4 } from './constants.js';

/** The peer broke the CQL wire format (the server answers with an ERROR Protocol_error). */
export class CqlProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CqlProtocolError';
  }
}

export interface FrameHeader {
  /** The whole version byte, direction bit included (0x04 request, 0x84 response). */
  readonly version: number;
  readonly flags: number;
  /** Signed: responses to requests reuse the request's stream; events use -1. */
  readonly stream: number;
  readonly opcode: number;
  readonly length: number;
}

export interface Frame extends Omit<FrameHeader, 'length'> {
  readonly body: Buffer;
}

export function decodeHeader(buf: Buffer, at = 0): FrameHeader {
  if (buf.length - at < CQL_HEADER_LENGTH) throw new CqlProtocolError(`frame header needs ${CQL_HEADER_LENGTH} bytes, got ${buf.length - at}`);
  return {
    version: buf[at]!,
    flags: buf[at + 1]!,
    stream: buf.readInt16BE(at + 2),
    opcode: buf[at + 4]!,
    length: buf.readInt32BE(at + 5),
  };
}

export function encodeHeader(h: FrameHeader): Buffer {
  const buf = Buffer.allocUnsafe(CQL_HEADER_LENGTH);
  buf[0] = h.version;
  buf[1] = h.flags;
  buf.writeInt16BE(h.stream, 2);
  buf[4] = h.opcode;
  buf.writeInt32BE(h.length, 5);
  return buf;
}

/** A v4 response frame as one buffer (tests and small replies). */
export function encodeResponse(stream: number, opcode: number, body: Buffer, version = CQL_VERSION_4): Buffer {
  return Buffer.concat([encodeHeader({ version: CQL_RESPONSE | version, flags: 0, stream, opcode, length: body.length }), body]);
}

/** A v4 request frame as one buffer (for raw-socket tests). */
export function encodeRequest(stream: number, opcode: number, body: Buffer = Buffer.alloc(0), flags = 0): Buffer {
  return Buffer.concat([encodeHeader({ version: CQL_VERSION_4, flags, stream, opcode, length: body.length }), body]);
}

/** A cursor over one frame body. */
export class BodyReader {
  readonly #buf: Buffer;
  #at = 0;

  constructor(body: Buffer) {
    this.#buf = body;
  }

  get remaining(): number {
    return this.#buf.length - this.#at;
  }

  #need(n: number, what: string): number {
    if (n < 0 || this.#at + n > this.#buf.length) {
      throw new CqlProtocolError(`${what} needs ${n} bytes at body offset ${this.#at}, the body has ${this.#buf.length}`);
    }
    const at = this.#at;
    this.#at += n;
    return at;
  }

  byte(): number {
    return this.#buf[this.#need(1, '[byte]')]!;
  }

  short(): number {
    return this.#buf.readUInt16BE(this.#need(2, '[short]'));
  }

  int(): number {
    return this.#buf.readInt32BE(this.#need(4, '[int]'));
  }

  /** A view of the next n bytes (valid as long as the body is). */
  raw(n: number, what = 'bytes'): Buffer {
    const at = this.#need(n, what);
    return this.#buf.subarray(at, at + n);
  }

  string(): string {
    return this.raw(this.short(), '[string]').toString('utf8');
  }

  longString(): string {
    const n = this.int();
    if (n < 0) throw new CqlProtocolError(`[long string] has a negative length ${n}`);
    return this.raw(n, '[long string]').toString('utf8');
  }

  /** [bytes]: null when the length is negative. */
  bytes(): Buffer | null {
    const n = this.int();
    return n < 0 ? null : this.raw(n, '[bytes]');
  }

  /** [value]: null for -1, 'unset' for -2; anything below -2 is invalid. */
  value(): Buffer | null | 'unset' {
    const n = this.int();
    if (n === -1) return null;
    if (n === -2) return 'unset';
    if (n < -2) throw new CqlProtocolError(`[value] has an invalid length ${n}`);
    return this.raw(n, '[value]');
  }

  shortBytes(): Buffer {
    return this.raw(this.short(), '[short bytes]');
  }

  stringList(): string[] {
    const n = this.short();
    const out: string[] = [];
    for (let i = 0; i < n; i++) out.push(this.string());
    return out;
  }

  stringMap(): Map<string, string> {
    const n = this.short();
    const out = new Map<string, string>();
    for (let i = 0; i < n; i++) out.set(this.string(), this.string());
    return out;
  }

  /** [bytes map]: read and dropped (custom payloads). */
  skipBytesMap(): void {
    const n = this.short();
    for (let i = 0; i < n; i++) {
      this.string();
      this.bytes();
    }
  }
}

/** Appends section-3 notations to a growing buffer. */
export class BodyWriter {
  #buf: Buffer;
  #at = 0;

  constructor(initial = 256) {
    this.#buf = Buffer.allocUnsafe(initial);
  }

  get length(): number {
    return this.#at;
  }

  #room(n: number): number {
    if (this.#at + n > this.#buf.length) {
      const grown = Buffer.allocUnsafe(Math.max(this.#buf.length * 2, this.#at + n));
      this.#buf.copy(grown, 0, 0, this.#at);
      this.#buf = grown;
    }
    const at = this.#at;
    this.#at += n;
    return at;
  }

  byte(v: number): this {
    const at = this.#room(1);
    this.#buf[at] = v;
    return this;
  }

  short(v: number): this {
    const at = this.#room(2);
    this.#buf.writeUInt16BE(v, at);
    return this;
  }

  int(v: number): this {
    const at = this.#room(4);
    this.#buf.writeInt32BE(v, at);
    return this;
  }

  raw(b: Buffer): this {
    const at = this.#room(b.length); // first: #room may replace #buf
    b.copy(this.#buf, at);
    return this;
  }

  string(s: string): this {
    const b = Buffer.from(s, 'utf8');
    if (b.length > 0xffff) throw new CqlProtocolError(`[string] of ${b.length} bytes does not fit a [short] length`);
    return this.short(b.length).raw(b);
  }

  longString(s: string): this {
    const b = Buffer.from(s, 'utf8');
    return this.int(b.length).raw(b);
  }

  /** [bytes]; null is written as length -1. */
  bytes(b: Buffer | null): this {
    return b === null ? this.int(-1) : this.int(b.length).raw(b);
  }

  shortBytes(b: Buffer): this {
    return this.short(b.length).raw(b);
  }

  stringList(list: readonly string[]): this {
    this.short(list.length);
    for (const s of list) this.string(s);
    return this;
  }

  stringMap(map: ReadonlyMap<string, string>): this {
    this.short(map.size);
    for (const [k, v] of map) this.string(k).string(v);
    return this;
  }

  stringMultimap(map: ReadonlyMap<string, readonly string[]>): this {
    this.short(map.size);
    for (const [k, v] of map) this.string(k).stringList(v);
    return this;
  }

  /** The bytes written so far (a view; copy it if the writer is reused). */
  finish(): Buffer {
    return this.#buf.subarray(0, this.#at);
  }
}
