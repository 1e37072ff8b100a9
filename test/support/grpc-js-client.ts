/**
 * A grpc-js client of the r3map gRPC protocol, for the tests and test/bench only (the product's
 * own client is src/rpc/grpc-http2-client.ts): it proves the server speaks to the reference gRPC
 * implementation, and serves as the peer the benchmarks compare against.
 *
 * GrpcClient: a pool of grpc-js channels to one r3map server, tuned for bulk transfer.
 *
 * - `channels` channels, each its own HTTP/2 connection (a local subchannel pool; grpc-js would
 *   otherwise share one connection between equal channels). Calls go round-robin, so large
 *   messages are spread over several TCP streams and flow-control windows.
 * - A large HTTP/2 flow-control window (`grpc-node.flow_control_window`, default 32 MiB): with
 *   Node's 64 KiB default a 1 MiB reply waits for ~16 WINDOW_UPDATE round trips.
 * - Message size limits above the per-call cap on both sides; keepalive pings only while calls
 *   run; grpc-js's own retries off (callers retry with util/retry.ts).
 * - Every call has a deadline; the token (if any) goes with every call as
 *   `authorization: Bearer …`. `tls` undefined means plaintext.
 * Failed calls reject with grpc-js's ServiceError; callers map it with status.ts `fromStatus`.
 */
import * as grpc from '@grpc/grpc-js';
import type { MethodDefinition } from '@grpc/grpc-js';
import { UsageError } from '../../src/errors.js';
import { formatGrpcUri, grpcTarget } from '../../src/rpc/grpc-address.js';
import { MESSAGE_OVERHEAD } from '../../src/rpc/grpc-server.js';
import type { BearerToken } from '../../src/rpc/bearer-token.js';
import type { GrpcClientTls, GrpcTarget } from '../../src/rpc/grpc-target.js';

export interface GrpcClientOptions {
  readonly target: GrpcTarget;
  /** TLS (grpcs://); undefined = plaintext. Not for Unix sockets. */
  readonly tls?: GrpcClientTls;
  readonly token?: BearerToken;
  /** HTTP/2 connections; default 4. */
  readonly channels?: number;
  /** Largest payload one call sends (the backend's chunk size); default 4 MiB. */
  readonly maxPayload?: number;
  /** Largest message accepted; default max(maxPayload, 64 MiB) plus overhead (Seeder.Sync lists can be long). */
  readonly maxReceiveMessageSize?: number;
  /** HTTP/2 receive window in bytes; default 32 MiB, 0 = Node's 64 KiB. */
  readonly flowControlWindow?: number;
  /** Ping interval while calls run; default 30 s, 0 = off. */
  readonly keepaliveMs?: number;
}

export const DEFAULT_CHANNELS = 4;
const DEFAULT_FLOW_CONTROL_WINDOW = 32 * 1024 * 1024;

export class GrpcClient {
  /** The server as a URI, for messages: grpc://127.0.0.1:1337, grpcs://…, grpc+unix:///path. */
  readonly uri: string;
  readonly #clients: grpc.Client[] = [];
  readonly #metadata = new grpc.Metadata();
  #next = 0;
  #closed = false;

  constructor(options: GrpcClientOptions) {
    const channels = options.channels ?? DEFAULT_CHANNELS;
    if (!Number.isSafeInteger(channels) || channels < 1 || channels > 64) throw new UsageError(`channels must be 1..64, got ${channels}`);
    const tls = options.tls;
    if (tls !== undefined && (tls.cert === undefined) !== (tls.key === undefined)) {
      throw new UsageError('a client certificate needs its key and a key needs its certificate (cert= and key=)');
    }
    if (tls !== undefined && 'path' in options.target) throw new UsageError('TLS over a Unix socket is not supported: use grpc+unix:// without TLS');
    this.uri = 'path' in options.target
      ? formatGrpcUri({ scheme: 'grpc+unix', path: options.target.path })
      : formatGrpcUri({ scheme: tls === undefined ? 'grpc' : 'grpcs', ...options.target });
    const maxPayload = options.maxPayload ?? 4 * 1024 * 1024;
    const window = options.flowControlWindow ?? DEFAULT_FLOW_CONTROL_WINDOW;
    const keepaliveMs = options.keepaliveMs ?? 30_000;
    const channelOptions: grpc.ChannelOptions = {
      'grpc.max_send_message_length': maxPayload + MESSAGE_OVERHEAD,
      'grpc.max_receive_message_length': options.maxReceiveMessageSize ?? Math.max(maxPayload, 64 * 1024 * 1024) + MESSAGE_OVERHEAD,
      'grpc.use_local_subchannel_pool': 1,
      'grpc.enable_retries': 0,
      'grpc.enable_channelz': 0,
      ...(window > 65_535 ? { 'grpc-node.flow_control_window': window } : {}),
      ...(keepaliveMs > 0 ? { 'grpc.keepalive_time_ms': keepaliveMs, 'grpc.keepalive_timeout_ms': 10_000 } : {}),
    };
    const credentials = tls === undefined
      ? grpc.credentials.createInsecure()
      : grpc.credentials.createSsl(tls.ca ?? null, tls.key ?? null, tls.cert ?? null);
    const target = grpcTarget(options.target);
    for (let i = 0; i < channels; i++) this.#clients.push(new grpc.Client(target, credentials, channelOptions));
    if (options.token !== undefined) this.#metadata.set('authorization', options.token.header);
  }

  /** One unary call on the next channel; rejects with grpc-js's ServiceError. */
  call<Req, Res>(method: MethodDefinition<Req, Res>, request: Req, timeoutMs: number): Promise<Res> {
    if (this.#closed) return Promise.reject(Object.assign(new Error('client is closed'), { code: grpc.status.CANCELLED, details: 'client is closed' }));
    const client = this.#clients[this.#next++ % this.#clients.length]!;
    return new Promise<Res>((resolve, reject) => {
      client.makeUnaryRequest(method.path, method.requestSerialize, method.responseDeserialize, request, this.#metadata,
        { deadline: Date.now() + timeoutMs }, (err, value) => {
          if (err !== null) reject(err);
          else resolve(value as Res);
        });
    });
  }

  /** Closes every channel: calls already on the wire run to completion, later ones fail. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const client of this.#clients) client.close();
  }
}
