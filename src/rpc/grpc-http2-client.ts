/**
 * GrpcHttp2Client: the gRPC client of GrpcBackend's data path, written on node:http2 (gRPC over
 * HTTP/2: POST /service/method, `application/grpc`, 5-byte message prefix, status in trailers),
 * wire-compatible with any gRPC server. It exists because grpc-js's client costs 2-5x more CPU
 * per MiB (test/bench/grpc.bench.js --grpc-js): it copies every message into a new buffer on
 * the way out and reassembles every reply into one on the way in, and runs each call through
 * several layers. Here:
 *
 * - ReadAt copies P from each DATA chunk straight into the caller's buffer (no reassembly);
 *   WriteAt writes the message head, then the caller's buffers as they are (no copy at all).
 * - Each session opens a large flow-control window (`flowControlWindow`, connection and stream).
 * - `channels` sessions, round-robin; a session that fails or receives GOAWAY is replaced on
 *   the next call. A session holds the event loop only while it has calls in flight.
 * - Every call has a deadline (sent as `grpc-timeout`, enforced locally too); the bearer token
 *   goes as `authorization: Bearer …`.
 *
 * Failures reject with the shape grpc-js gives a ServiceError (`code`, `details`, `metadata`), so
 * status.ts maps both clients' errors the same way. A call settles only after its stream closed,
 * so the caller's buffers are never touched after the promise settles.
 */
import http2 from 'node:http2';
import { Metadata, status as Status, type MethodDefinition } from '@grpc/grpc-js';
import { UsageError } from '../errors.js';
import { formatGrpcUri } from './grpc-address.js';
import { encodeReadAtArgs, encodeWriteAtArgsHead } from './codec.js';
import type { GrpcClientTls, GrpcTarget } from './grpc-target.js';
import type { BearerToken } from './bearer-token.js';
import { rpcError, type RpcError } from './status.js';
import { PREFIX, ReadAtInto, WholeReply, type Reply } from './grpc-reply.js';
import { Http2Channel, describe } from './http2-channel.js';

export interface GrpcHttp2ClientOptions {
  readonly target: GrpcTarget;
  /** TLS (grpcs://); undefined = plaintext. Not for Unix sockets. */
  readonly tls?: GrpcClientTls;
  readonly token?: BearerToken;
  /** HTTP/2 connections; default 4. */
  readonly channels?: number;
  /** Receive window per connection and per stream in bytes; default 32 MiB. */
  readonly flowControlWindow?: number;
  /** Largest reply accepted (except ReadAt, which goes straight to its buffer); default 64 MiB. */
  readonly maxReceiveMessageSize?: number;
}

const MiB = 1024 * 1024;
const { NGHTTP2_CANCEL } = http2.constants;

export class GrpcHttp2Client {
  /** The server as a URI, for messages: grpc://127.0.0.1:1337, grpcs://…, grpc+unix:///path. */
  readonly uri: string;
  readonly #channels: Http2Channel[] = [];
  readonly #headers: Readonly<Record<string, string>>;
  readonly #maxReceive: number;
  #next = 0;
  #closed = false;

  constructor(options: GrpcHttp2ClientOptions) {
    const channels = options.channels ?? 4;
    if (!Number.isSafeInteger(channels) || channels < 1 || channels > 64) throw new UsageError(`channels must be 1..64, got ${channels}`);
    const t = options.tls;
    if (t !== undefined && (t.cert === undefined) !== (t.key === undefined)) {
      throw new UsageError('a client certificate needs its key and a key needs its certificate (cert= and key=)');
    }
    if (t !== undefined && 'path' in options.target) throw new UsageError('TLS over a Unix socket is not supported: use grpc+unix:// without TLS');
    this.uri = 'path' in options.target
      ? formatGrpcUri({ scheme: 'grpc+unix', path: options.target.path })
      : formatGrpcUri({ scheme: t === undefined ? 'grpc' : 'grpcs', ...options.target });
    this.#maxReceive = options.maxReceiveMessageSize ?? 64 * MiB;
    this.#headers = Object.freeze({
      ':method': 'POST',
      'content-type': 'application/grpc',
      te: 'trailers',
      'user-agent': 'r3map-grpc-http2/1',
      ...(options.token !== undefined ? { authorization: options.token.header } : {}),
    });
    const window = Math.max(options.flowControlWindow ?? 32 * MiB, 65_535);
    for (let i = 0; i < channels; i++) this.#channels.push(new Http2Channel(options.target, t, window));
  }

  /** A unary call: the request is serialized and the whole reply decoded by `method`. */
  call<Req, Res>(method: MethodDefinition<Req, Res>, request: Req, timeoutMs: number): Promise<Res> {
    return this.#start(method.path, [method.requestSerialize(request)], timeoutMs, new WholeReply(method.responseDeserialize, this.#maxReceive));
  }

  /** ReadAt of `dst.length` bytes at `off`, copied into `dst` as they arrive. */
  readAt(method: { readonly path: string }, dst: Buffer, off: number, timeoutMs: number): Promise<void> {
    return this.#start(method.path, [encodeReadAtArgs({ length: dst.length, off })], timeoutMs, new ReadAtInto(dst, this.#maxReceive));
  }

  /** WriteAt of `parts` (together `length` bytes) at `off`; the parts are sent without copying. */
  writeAt<Res>(method: Pick<MethodDefinition<unknown, Res>, 'path' | 'responseDeserialize'>, parts: readonly Buffer[], length: number, off: number, timeoutMs: number): Promise<Res> {
    return this.#start(method.path, [encodeWriteAtArgsHead(off, length), ...parts], timeoutMs, new WholeReply(method.responseDeserialize, this.#maxReceive));
  }

  /** Closes every connection: calls in flight finish first, later calls fail. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const c of this.#channels) c.close();
  }

  #start<T>(path: string, body: readonly Buffer[], timeoutMs: number, reply: Reply<T>): Promise<T> {
    if (this.#closed) return Promise.reject(rpcError(Status.CANCELLED, 'client is closed'));
    const channel = this.#channels[this.#next++ % this.#channels.length]!;
    const ms = Math.min(Math.max(Math.ceil(timeoutMs), 1), 99_999_999);
    return new Promise<T>((resolve, reject) => {
      let stream: http2.ClientHttp2Stream;
      try {
        stream = channel.request({ ...this.#headers, ':path': path, 'grpc-timeout': `${ms}m` });
      } catch (err) {
        reject(rpcError(Status.UNAVAILABLE, (err as Error).message));
        return;
      }
      new Call(channel, stream, reply, ms, resolve, reject).send(body);
    });
  }
}

/** One call on one stream; settles once the stream has closed. */
class Call<T> {
  readonly #channel: Http2Channel;
  /** Kept: a closed stream forgets its session. */
  readonly #session: http2.ClientHttp2Session;
  readonly #stream: http2.ClientHttp2Stream;
  readonly #reply: Reply<T>;
  readonly #resolve: (value: T) => void;
  readonly #reject: (err: RpcError) => void;
  readonly #timer: NodeJS.Timeout;
  #httpStatus = 0;
  #grpcStatus: string | undefined;
  #grpcMessage = '';
  #metadata: Metadata | undefined;
  #error: RpcError | undefined;

  constructor(channel: Http2Channel, stream: http2.ClientHttp2Stream, reply: Reply<T>, timeoutMs: number,
    resolve: (value: T) => void, reject: (err: RpcError) => void) {
    this.#channel = channel;
    this.#session = stream.session as http2.ClientHttp2Session;
    this.#stream = stream;
    this.#reply = reply;
    this.#resolve = resolve;
    this.#reject = reject;
    this.#timer = setTimeout(() => this.#fail(rpcError(Status.DEADLINE_EXCEEDED, `no reply within ${timeoutMs} ms`)), timeoutMs);
    stream.on('response', (headers) => this.#onHeaders(headers, true));
    stream.on('trailers', (trailers) => this.#onHeaders(trailers, false));
    stream.on('data', (chunk: Buffer) => {
      if (this.#error === undefined) {
        const err = this.#reply.push(chunk);
        if (err !== undefined) this.#fail(err);
      }
    });
    stream.on('error', (err: Error) => {
      this.#error ??= rpcError(Status.UNAVAILABLE, describe(err));
    });
    stream.on('close', () => this.#onClose());
  }

  send(body: readonly Buffer[]): void {
    let length = 0;
    for (const b of body) length += b.length;
    const prefix = Buffer.allocUnsafe(PREFIX);
    prefix[0] = 0;
    prefix.writeUInt32BE(length, 1);
    const stream = this.#stream;
    stream.cork();
    stream.write(prefix);
    for (let i = 0; i < body.length - 1; i++) if (body[i]!.length > 0) stream.write(body[i]!);
    stream.end(body[body.length - 1]);
    stream.uncork();
  }

  #onHeaders(headers: http2.IncomingHttpHeaders, initial: boolean): void {
    if (initial) this.#httpStatus = Number(headers[':status']);
    const status = headers['grpc-status'];
    if (typeof status === 'string') {
      this.#grpcStatus = status;
      const message = headers['grpc-message'];
      this.#grpcMessage = typeof message === 'string' ? decodeMessage(message) : '';
      this.#metadata = toMetadata(headers);
    }
  }

  #fail(err: RpcError): void {
    this.#error ??= err;
    if (!this.#stream.closed) this.#stream.close(NGHTTP2_CANCEL);
  }

  #onClose(): void {
    clearTimeout(this.#timer);
    this.#channel.settled(this.#session);
    const result = this.#result();
    if (result instanceof Error) this.#reject(result);
    else this.#resolve(result);
  }

  #result(): T | RpcError {
    if (this.#error !== undefined) return this.#error;
    if (this.#grpcStatus === undefined) {
      if (this.#httpStatus !== 200 && this.#httpStatus !== 0) return rpcError(httpToGrpc(this.#httpStatus), `HTTP status ${this.#httpStatus}`);
      const why = this.#channel.lastError;
      return rpcError(Status.UNAVAILABLE, why !== undefined
        ? `the connection failed: ${why}`
        : `the connection closed before the reply (HTTP/2 code ${this.#stream.rstCode}; a TLS mismatch or a refused client certificate?)`);
    }
    const code = Number(this.#grpcStatus);
    if (code !== Status.OK) return rpcError(Number.isInteger(code) ? code : Status.UNKNOWN, this.#grpcMessage, this.#metadata);
    return this.#reply.finish();
  }
}

/** Per the gRPC HTTP/2 spec, for replies without a grpc-status. */
function httpToGrpc(status: number): Status {
  switch (status) {
    case 400: return Status.INTERNAL;
    case 401: return Status.UNAUTHENTICATED;
    case 403: return Status.PERMISSION_DENIED;
    case 404: return Status.UNIMPLEMENTED;
    case 429: case 502: case 503: case 504: return Status.UNAVAILABLE;
    default: return Status.UNKNOWN;
  }
}

function decodeMessage(text: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    return text;
  }
}

function toMetadata(headers: http2.IncomingHttpHeaders): Metadata {
  const metadata = new Metadata();
  for (const [key, value] of Object.entries(headers)) {
    if (key.startsWith(':') || key.startsWith('grpc-') || key.endsWith('-bin') || value === undefined) continue;
    for (const v of Array.isArray(value) ? value : [value]) metadata.add(key, v);
  }
  return metadata;
}
