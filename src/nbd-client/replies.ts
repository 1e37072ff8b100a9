/**
 * The client's reply reader: simple replies, and structured reply chunks once they were
 * negotiated, from any chunking of the stream.
 *
 * - READ data goes straight into the caller's buffer: after a simple reply, or per OFFSET_DATA
 *   chunk at its offset; an OFFSET_HOLE chunk zero-fills its range. A chunk outside its request's
 *   range is a protocol error (it would write outside the caller's buffer).
 * - BLOCK_STATUS chunks for the selected context append their extents to the request's list.
 * - ERROR chunks record the first errno; the reply ends at the chunk with NBD_REPLY_FLAG_DONE (or
 *   at a simple reply) and the request completes with that errno (0 when none came).
 * - Anything that would desynchronise the stream (bad magic, a handle with no request, a chunk
 *   too short for its type) fails the whole connection through `fail`.
 */
import { NbdProtocolError } from '../errors.js';
import {
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_READ,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_SIMPLE_REPLY_SIZE,
  NBD_STRUCTURED_REPLY_MAGIC,
} from '../nbd/constants.js';
import {
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE_BLOCK_STATUS,
  NBD_REPLY_TYPE_NONE,
  NBD_REPLY_TYPE_OFFSET_DATA,
  NBD_REPLY_TYPE_OFFSET_HOLE,
  NBD_STRUCTURED_REPLY_HEADER_SIZE,
} from '../nbd/codec.js';

/** One extent of a BLOCK_STATUS reply: `length` bytes with NBD_STATE_* flags. */
export interface NbdClientExtent {
  length: number;
  flags: number;
}

/** One request slot; reused, so a request costs a header buffer and a promise. */
export class Pending {
  readonly index: number;
  seq = 0;
  type = 0;
  off = 0;
  length = 0;
  buf: Buffer | undefined;
  /** BLOCK_STATUS: where the extents go. */
  extents: NbdClientExtent[] | undefined;
  /** The first errno an ERROR chunk of this reply carried. */
  errno = 0;
  resolve: (() => void) | undefined;
  reject: ((err: Error) => void) | undefined;
  constructor(index: number) {
    this.index = index;
  }
}

export interface ReplySink {
  /** The request in flight with this handle, or undefined. */
  pending(seq: number, index: number): Pending | undefined;
  complete(p: Pending, errno: number): void;
  fail(err: Error): void;
}

/** Error chunk types have bit 15 set (NBD_REPLY_TYPE_ERROR, NBD_REPLY_TYPE_ERROR_OFFSET, …). */
const ERROR_BIT = 0x8000;
/** Largest non-data chunk accepted (a BLOCK_STATUS reply with many extents, an error message). */
const MAX_CHUNK = 16 * 1024 * 1024;
const TWO_32 = 2 ** 32;

const STATE_HEADER = 0;
/** Simple READ reply data, or an OFFSET_DATA chunk's data, into the caller's buffer. */
const STATE_DATA = 1;
/** The 8-byte offset at the start of an OFFSET_DATA chunk. */
const STATE_DATA_OFFSET = 2;
/** The whole body of any other chunk, gathered. */
const STATE_BODY = 3;

export class ReplyReader {
  readonly #sink: ReplySink;
  readonly #structured: boolean;
  readonly #context: number | undefined;
  readonly #hdr = Buffer.allocUnsafe(NBD_STRUCTURED_REPLY_HEADER_SIZE);
  #hdrFill = 0;
  #state = STATE_HEADER;
  /** The request whose reply is being read. */
  #p: Pending | undefined;
  /** Structured: the current chunk's flags, type and length. */
  #chunkFlags = 0;
  #chunkType = 0;
  #chunkLength = 0;
  /** STATE_DATA: where in `#p.buf` the next byte goes and how many are left. */
  #dataAt = 0;
  #dataLeft = 0;
  /** STATE_DATA_OFFSET / STATE_BODY: the bytes gathered. */
  #body: Buffer = Buffer.allocUnsafe(8);
  #bodyFill = 0;
  #bodyLength = 0;
  #dead = false;

  /** `context`: the id of base:allocation when it was selected. */
  constructor(sink: ReplySink, structured: boolean, context: number | undefined) {
    this.#sink = sink;
    this.#structured = structured;
    this.#context = context;
  }

  push(chunk: Buffer): void {
    const n = chunk.length;
    let pos = 0;
    while (pos < n && !this.#dead) {
      switch (this.#state) {
        case STATE_HEADER: {
          if (this.#hdrFill === 0) {
            const need = this.#headerLength(chunk, pos, n - pos);
            if (need !== 0 && n - pos >= need) {
              this.#onHeader(chunk, pos);
              pos += need;
              break;
            }
          }
          const target = this.#hdrFill < 4 ? 4 : this.#headerLength(this.#hdr, 0, this.#hdrFill);
          const take = Math.min(target - this.#hdrFill, n - pos);
          chunk.copy(this.#hdr, this.#hdrFill, pos, pos + take);
          pos += take;
          this.#hdrFill += take;
          if (this.#hdrFill >= 4 && this.#hdrFill === this.#headerLength(this.#hdr, 0, this.#hdrFill)) {
            this.#hdrFill = 0;
            this.#onHeader(this.#hdr, 0);
          }
          break;
        }
        case STATE_DATA: {
          const take = Math.min(this.#dataLeft, n - pos);
          chunk.copy(this.#p!.buf!, this.#dataAt, pos, pos + take);
          pos += take;
          this.#dataAt += take;
          this.#dataLeft -= take;
          if (this.#dataLeft === 0) this.#endChunk();
          break;
        }
        default: {
          const take = Math.min(this.#bodyLength - this.#bodyFill, n - pos);
          chunk.copy(this.#body, this.#bodyFill, pos, pos + take);
          pos += take;
          this.#bodyFill += take;
          if (this.#bodyFill === this.#bodyLength) {
            if (this.#state === STATE_DATA_OFFSET) this.#onDataOffset();
            else this.#onBody(this.#body.subarray(0, this.#bodyLength));
          }
        }
      }
    }
  }

  /**
   * The header's length from its magic: 16 (simple), 20 (structured), or 0 while fewer than 4
   * bytes are there. `have` is how many bytes of it `buf` holds from `at`.
   */
  #headerLength(buf: Buffer, at: number, have: number): number {
    if (have < 4) return 0;
    const magic = buf.readUInt32BE(at);
    if (magic === NBD_SIMPLE_REPLY_MAGIC) return NBD_SIMPLE_REPLY_SIZE;
    if (magic === NBD_STRUCTURED_REPLY_MAGIC && this.#structured) return NBD_STRUCTURED_REPLY_HEADER_SIZE;
    // Let #onHeader name the problem once the fixed part is in.
    return NBD_SIMPLE_REPLY_SIZE;
  }

  #onHeader(buf: Buffer, at: number): void {
    const magic = buf.readUInt32BE(at);
    if (magic === NBD_SIMPLE_REPLY_MAGIC) {
      const errno = buf.readUInt32BE(at + 4);
      const p = this.#find(buf.readUInt32BE(at + 8), buf.readUInt32BE(at + 12));
      if (p === undefined) return;
      if (errno === 0 && p.type === NBD_CMD_READ && p.length > 0) {
        this.#p = p;
        this.#chunkFlags = NBD_REPLY_FLAG_DONE;
        this.#dataAt = 0;
        this.#dataLeft = p.length;
        this.#state = STATE_DATA;
        return;
      }
      this.#sink.complete(p, errno);
      return;
    }
    if (magic !== NBD_STRUCTURED_REPLY_MAGIC || !this.#structured) {
      this.#fail(magic === NBD_STRUCTURED_REPLY_MAGIC
        ? 'structured reply although none was negotiated'
        : `bad reply magic 0x${magic.toString(16)} (want 0x${NBD_SIMPLE_REPLY_MAGIC.toString(16)})`);
      return;
    }
    const flags = buf.readUInt16BE(at + 4);
    const type = buf.readUInt16BE(at + 6);
    const p = this.#find(buf.readUInt32BE(at + 8), buf.readUInt32BE(at + 12));
    if (p === undefined) return;
    const length = buf.readUInt32BE(at + 16);
    this.#p = p;
    this.#chunkFlags = flags;
    this.#chunkType = type;
    this.#chunkLength = length;
    if (type === NBD_REPLY_TYPE_OFFSET_DATA) {
      if (p.type !== NBD_CMD_READ || length < 8) return this.#fail(`OFFSET_DATA chunk of ${length} bytes for ${p.type === NBD_CMD_READ ? 'a READ' : `command ${p.type}`}`);
      this.#gather(8, STATE_DATA_OFFSET);
    } else if (type === NBD_REPLY_TYPE_NONE) {
      if (length !== 0) return this.#fail(`NONE chunk with ${length} bytes`);
      this.#endChunk();
    } else {
      if (length > MAX_CHUNK) return this.#fail(`reply chunk of type ${type} has ${length} bytes (at most ${MAX_CHUNK})`);
      if (length === 0) this.#onBody(Buffer.alloc(0));
      else this.#gather(length, STATE_BODY);
    }
  }

  #gather(length: number, state: number): void {
    if (this.#body.length < length) this.#body = Buffer.allocUnsafe(Math.max(length, 8));
    this.#bodyFill = 0;
    this.#bodyLength = length;
    this.#state = state;
  }

  #onDataOffset(): void {
    const p = this.#p!;
    const offset = readU64(this.#body, 0);
    const dataLength = this.#chunkLength - 8;
    if (offset < p.off || offset + dataLength > p.off + p.length) {
      return this.#fail(`OFFSET_DATA chunk [${offset}, +${dataLength}) outside its READ [${p.off}, +${p.length})`);
    }
    this.#dataAt = offset - p.off;
    this.#dataLeft = dataLength;
    if (dataLength === 0) this.#endChunk();
    else this.#state = STATE_DATA;
  }

  #onBody(body: Buffer): void {
    const p = this.#p!;
    const type = this.#chunkType;
    if ((type & ERROR_BIT) !== 0) {
      if (body.length < 6) return this.#fail(`error chunk of ${body.length} bytes`);
      const errno = body.readUInt32BE(0);
      if (errno === 0) return this.#fail('error chunk with errno 0');
      if (p.errno === 0) p.errno = errno;
    } else if (type === NBD_REPLY_TYPE_OFFSET_HOLE) {
      if (p.type !== NBD_CMD_READ || body.length !== 12) return this.#fail(`OFFSET_HOLE chunk of ${body.length} bytes`);
      const offset = readU64(body, 0);
      const length = body.readUInt32BE(8);
      if (length === 0 || offset < p.off || offset + length > p.off + p.length) {
        return this.#fail(`OFFSET_HOLE chunk [${offset}, +${length}) outside its READ [${p.off}, +${p.length})`);
      }
      p.buf!.fill(0, offset - p.off, offset - p.off + length);
    } else if (type === NBD_REPLY_TYPE_BLOCK_STATUS) {
      if (p.type !== NBD_CMD_BLOCK_STATUS || body.length < 12 || (body.length - 4) % 8 !== 0) return this.#fail(`BLOCK_STATUS chunk of ${body.length} bytes`);
      if (body.readUInt32BE(0) === this.#context && p.extents !== undefined) {
        for (let at = 4; at < body.length; at += 8) p.extents.push({ length: body.readUInt32BE(at), flags: body.readUInt32BE(at + 4) });
      }
    }
    // Other non-error types are ignored, as the spec asks of clients.
    this.#endChunk();
  }

  #endChunk(): void {
    this.#state = STATE_HEADER;
    const p = this.#p!;
    this.#p = undefined;
    if ((this.#chunkFlags & NBD_REPLY_FLAG_DONE) !== 0) this.#sink.complete(p, p.errno);
  }

  #find(seq: number, index: number): Pending | undefined {
    const p = this.#sink.pending(seq, index);
    if (p === undefined) this.#fail(`reply for a handle with no request in flight: ${seq}:${index}`);
    return p;
  }

  #fail(message: string): void {
    this.#dead = true;
    this.#sink.fail(new NbdProtocolError(message));
  }
}

function readU64(buf: Buffer, at: number): number {
  return buf.readUInt32BE(at) * TWO_32 + buf.readUInt32BE(at + 4);
}
