/**
 * FrameParser: turns a TCP byte stream into CQL frames, whatever the chunking.
 *
 * A frame that arrives inside one chunk is handed out as a `subarray` of it; bytes are copied
 * only when a header or body spans chunks (the pieces are kept in a list and joined once, when
 * the frame is complete). The body length is checked against `maxBodyLength` before anything is
 * buffered, and a header whose direction bit does not match raises CqlProtocolError. Versions
 * 1 and 2 (8-byte headers) are refused; any other version is returned as is, so the connection
 * can answer a client that probes for v5 with the "unsupported protocol version" error drivers
 * look for.
 */
import { CQL_HEADER_LENGTH, CQL_MAX_BODY_LENGTH, CQL_RESPONSE } from './constants.js';
import { CqlProtocolError, decodeHeader, type Frame, type FrameHeader } from './codec.js';

export interface FrameParserOptions {
  /** 'request' on the server side (direction bit 0), 'response' on a client. */
  readonly direction: 'request' | 'response';
  /** Default 256 MiB (section 2.5). */
  readonly maxBodyLength?: number;
}

export class FrameParser {
  readonly #response: boolean;
  readonly #maxBodyLength: number;
  #pieces: Buffer[] = [];
  /** Index of the first live piece in #pieces. */
  #head = 0;
  #buffered = 0;
  #header: FrameHeader | undefined;

  constructor(options: FrameParserOptions) {
    this.#response = options.direction === 'response';
    this.#maxBodyLength = options.maxBodyLength ?? CQL_MAX_BODY_LENGTH;
  }

  /** Bytes held for a frame that is not complete yet. */
  get buffered(): number {
    return this.#buffered;
  }

  /** Feeds one chunk; returns the frames it completed, in order. Throws CqlProtocolError. */
  push(chunk: Buffer): Frame[] {
    const frames: Frame[] = [];
    if (chunk.length === 0) return frames;
    this.#pieces.push(chunk);
    this.#buffered += chunk.length;
    for (;;) {
      if (this.#header === undefined) {
        if (this.#buffered < CQL_HEADER_LENGTH) break;
        this.#header = this.#checked(decodeHeader(this.#take(CQL_HEADER_LENGTH)));
      }
      const h = this.#header;
      if (this.#buffered < h.length) break;
      const body = this.#take(h.length);
      this.#header = undefined;
      frames.push({ version: h.version, flags: h.flags, stream: h.stream, opcode: h.opcode, body });
    }
    return frames;
  }

  #checked(h: FrameHeader): FrameHeader {
    const isResponse = (h.version & CQL_RESPONSE) !== 0;
    const version = h.version & ~CQL_RESPONSE;
    if (isResponse !== this.#response) {
      throw new CqlProtocolError(`got a ${isResponse ? 'response' : 'request'} frame (version byte 0x${h.version.toString(16)}) where a ${this.#response ? 'response' : 'request'} was expected`);
    }
    if (version < 3) throw new CqlProtocolError(`protocol version ${version} is not supported (its header is not 9 bytes)`);
    if (h.length < 0 || h.length > this.#maxBodyLength) {
      throw new CqlProtocolError(`frame body length ${h.length} is out of range (0..${this.#maxBodyLength})`);
    }
    return h;
  }

  /** Removes exactly n buffered bytes: a view when they sit in one piece, else one copy. */
  #take(n: number): Buffer {
    const first = this.#pieces[this.#head];
    let out: Buffer;
    if (n === 0) {
      out = Buffer.alloc(0);
    } else if (first !== undefined && first.length >= n) {
      out = first.subarray(0, n);
      this.#consume(first, n);
    } else {
      out = Buffer.allocUnsafe(n);
      let filled = 0;
      while (filled < n) {
        const piece = this.#pieces[this.#head]!;
        const m = Math.min(piece.length, n - filled);
        piece.copy(out, filled, 0, m);
        filled += m;
        this.#consume(piece, m);
      }
    }
    this.#buffered -= n;
    return out;
  }

  /** Drops m bytes from the front of the head piece (an index, so byte-by-byte input stays linear). */
  #consume(piece: Buffer, m: number): void {
    if (m < piece.length) {
      this.#pieces[this.#head] = piece.subarray(m);
      return;
    }
    this.#head++;
    if (this.#head === this.#pieces.length) {
      this.#pieces = [];
      this.#head = 0;
    } else if (this.#head >= 1024) {
      this.#pieces = this.#pieces.slice(this.#head);
      this.#head = 0;
    }
  }
}
