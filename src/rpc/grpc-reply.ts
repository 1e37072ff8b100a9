/**
 * What a GrpcHttp2Client call does with the bytes of its reply (5-byte gRPC prefix included):
 * WholeReply collects one message and decodes it; ReadAtInto copies a ReadAtReply's P into the
 * caller's buffer as it arrives, and falls back to decoding whole when P is not where proto3
 * serializers put it or has the wrong length.
 */
import { status as Status } from '@grpc/grpc-js';
import { decodeReadAtReply, readAtReplyHead, type ReadAtReply } from './codec.js';
import { rpcError, type RpcError } from './status.js';

/** The gRPC message prefix: a compressed flag and a big-endian length. */
export const PREFIX = 5;
const HEAD_MAX = PREFIX + 32;

/** What a call does with the reply's bytes. */
export interface Reply<T> {
  /** Takes the next bytes of the body (5-byte prefix included); returns an error to fail the call. */
  push(chunk: Buffer): RpcError | undefined;
  /** The result once the body is complete and the status is OK. */
  finish(): T | RpcError;
}

/** Collects one message and decodes it whole. */
export class WholeReply<T> implements Reply<T> {
  readonly #decode: (buf: Buffer) => T;
  readonly #max: number;
  readonly #chunks: Buffer[] = [];
  #length = 0;

  constructor(decode: (buf: Buffer) => T, max: number) {
    this.#decode = decode;
    this.#max = max;
  }

  push(chunk: Buffer): RpcError | undefined {
    this.#chunks.push(chunk);
    this.#length += chunk.length;
    return this.#length > this.#max + PREFIX ? rpcError(Status.RESOURCE_EXHAUSTED, `reply larger than ${this.#max} bytes`) : undefined;
  }

  finish(): T | RpcError {
    const body = this.#chunks.length === 1 ? this.#chunks[0]! : Buffer.concat(this.#chunks, this.#length);
    const err = checkPrefix(body, body.length);
    if (err !== undefined) return err;
    if (body.length < PREFIX || body.readUInt32BE(1) !== body.length - PREFIX) return rpcError(Status.INTERNAL, 'the reply is not exactly one message');
    try {
      return this.#decode(body.subarray(PREFIX));
    } catch (e) {
      return rpcError(Status.INTERNAL, `cannot decode the reply: ${(e as Error).message}`);
    }
  }
}

/** Streams a ReadAtReply's P into the caller's buffer; falls back to decoding whole for unusual encodings. */
export class ReadAtInto implements Reply<void> {
  readonly #dst: Buffer;
  readonly #max: number;
  readonly #head = Buffer.allocUnsafe(HEAD_MAX);
  #headFill = 0;
  /** Bytes of P copied so far; -1 until the head is parsed. */
  #copied = -1;
  /** Bytes of the message after P (e.g. fields a foreign server puts last). */
  #tail = 0;
  #whole: WholeReply<ReadAtReply> | undefined;

  constructor(dst: Buffer, max: number) {
    this.#dst = dst;
    this.#max = max;
  }

  push(chunk: Buffer): RpcError | undefined {
    if (this.#whole !== undefined) return this.#whole.push(chunk);
    if (this.#copied < 0) {
      const take = Math.min(chunk.length, HEAD_MAX - this.#headFill);
      chunk.copy(this.#head, this.#headFill, 0, take);
      this.#headFill += take;
      const err = checkPrefix(this.#head, this.#headFill);
      if (err !== undefined) return err;
      if (this.#headFill < PREFIX) return undefined;
      let head;
      try {
        head = readAtReplyHead(this.#head.subarray(PREFIX, this.#headFill), this.#headFill - PREFIX);
      } catch (e) {
        return rpcError(Status.INTERNAL, `cannot decode the reply: ${(e as Error).message}`);
      }
      if (head === 'more') return this.#headFill < HEAD_MAX ? undefined : this.#fallBack(chunk, take);
      if (head === 'other' || head.length !== this.#dst.length) return this.#fallBack(chunk, take);
      const messageLength = this.#head.readUInt32BE(1);
      this.#tail = messageLength - head.start - head.length;
      if (this.#tail < 0) return rpcError(Status.INTERNAL, 'reply P runs past its message');
      this.#copied = 0;
      chunk = chunk.subarray(take - (this.#headFill - PREFIX - head.start));
    }
    const room = this.#dst.length - this.#copied;
    if (chunk.length > room) {
      this.#tail -= chunk.length - room;
      if (this.#tail < 0) return rpcError(Status.INTERNAL, 'reply is longer than its message');
    }
    this.#copied += chunk.copy(this.#dst, this.#copied, 0, Math.min(chunk.length, room));
    return undefined;
  }

  finish(): void | RpcError {
    if (this.#whole !== undefined) {
      const reply = this.#whole.finish();
      if (reply instanceof Error) return reply;
      if (reply.p.length !== this.#dst.length) return rpcError(Status.INTERNAL, `the server sent ${reply.p.length} bytes (N=${reply.n}) for ${this.#dst.length}`);
      reply.p.copy(this.#dst);
      return undefined;
    }
    if (this.#copied !== this.#dst.length || this.#tail !== 0) {
      return rpcError(Status.INTERNAL, `the server sent ${Math.max(this.#copied, 0)} of ${this.#dst.length} bytes`);
    }
    return undefined;
  }

  /** Hands everything seen so far, and the rest, to a whole-message decoder. */
  #fallBack(chunk: Buffer, taken: number): RpcError | undefined {
    this.#whole = new WholeReply(decodeReadAtReply, this.#max);
    this.#whole.push(Buffer.from(this.#head.subarray(0, this.#headFill)));
    return taken < chunk.length ? this.#whole.push(chunk.subarray(taken)) : undefined;
  }
}

function checkPrefix(buf: Buffer, fill: number): RpcError | undefined {
  if (fill >= 1 && buf[0] !== 0) return rpcError(Status.INTERNAL, 'the server sent a compressed reply (none was asked for)');
  return undefined;
}
