/**
 * Protobuf wire primitives for the hand-written codec (codec.ts): varints without BigInt and a
 * reader with a cursor. Varints carry int64 semantics on decode (bit 63 set → a negative number;
 * above 2^53 → an unsafe one, left for the caller to judge); encoders take safe integers >= 0.
 * Every read is bounded by `end`: truncated or malformed input throws, never reads past it.
 */

const TWO_32 = 2 ** 32;

export function malformed(what: string): Error {
  return new Error(`malformed protobuf message: ${what}`);
}

/** Bytes a varint of `value` (a safe integer >= 0) takes. */
export function varintLength(value: number): number {
  let n = 1;
  while (value > 0x7f) {
    value = Math.floor(value / 128);
    n++;
  }
  return n;
}

/** Writes `value` (a safe integer >= 0) at `pos`; returns the position after it. */
export function writeVarint(buf: Buffer, pos: number, value: number): number {
  while (value > 0x7f) {
    buf[pos++] = (value & 0x7f) | 0x80; // & works on the low 32 bits, which hold the low 7
    value = Math.floor(value / 128);
  }
  buf[pos++] = value;
  return pos;
}

/** A cursor over one message; decoding is synchronous, so one reader serves every call. */
export class ProtoReader {
  buf: Buffer = Buffer.alloc(0);
  pos = 0;
  end = 0;

  begin(buf: Buffer, end = buf.length): void {
    this.buf = buf;
    this.pos = 0;
    this.end = end;
  }

  /** The next tag, or -1 at the end. */
  tag(): number {
    if (this.pos >= this.end) return -1;
    const t = this.varint();
    if (t <= 0 || t > 0xffffffff) throw malformed(`bad tag ${t}`);
    return t;
  }

  /** A varint as a number: int64 semantics (bit 63 set → negative; above 2^53 → unsafe). */
  varint(): number {
    let lo = 0;
    let b: number;
    for (let shift = 0; shift < 28; shift += 7) {
      b = this.#byte();
      lo |= (b & 0x7f) << shift;
      if (b < 0x80) return lo;
    }
    b = this.#byte();
    lo |= (b & 0x0f) << 28;
    let hi = (b & 0x7f) >> 4;
    if (b < 0x80) return hi * TWO_32 + (lo >>> 0);
    for (let shift = 3; shift < 38; shift += 7) {
      b = this.#byte();
      hi |= (b & 0x7f) << shift;
      if (b < 0x80) {
        if ((hi & 0x80000000) === 0) return hi * TWO_32 + (lo >>> 0);
        // two's complement of a negative int64
        const nlo = (~lo + 1) >>> 0;
        const nhi = (~hi + (nlo === 0 ? 1 : 0)) >>> 0;
        return -(nhi * TWO_32 + nlo);
      }
    }
    throw malformed('varint longer than 10 bytes');
  }

  /** True when a whole varint starts at the cursor (or an over-long one, for varint() to refuse). */
  varintComplete(): boolean {
    for (let i = this.pos; i < this.end && i < this.pos + 10; i++) if (this.buf[i]! < 0x80) return true;
    return this.end - this.pos >= 10;
  }

  /** A length-delimited field's bytes as a view into the message. */
  bytes(): Buffer {
    const length = this.varint();
    if (length < 0 || length > this.end - this.pos) throw malformed('length-delimited field runs past the end');
    const view = this.buf.subarray(this.pos, this.pos + length);
    this.pos += length;
    return view;
  }

  /** Skips a field of an unknown number. */
  skip(wireType: number): void {
    switch (wireType) {
      case 0:
        this.varint();
        return;
      case 1:
        this.pos += 8;
        break;
      case 2:
        this.bytes();
        return;
      case 5:
        this.pos += 4;
        break;
      default:
        throw malformed(`unsupported wire type ${wireType}`);
    }
    if (this.pos > this.end) throw malformed('fixed-size field runs past the end');
  }

  #byte(): number {
    if (this.pos >= this.end) throw malformed('truncated varint');
    return this.buf[this.pos++]!;
  }
}
