/**
 * GrpcBackend: a remote r3map Backend service (r3map-serve --listen grpc://…) as a Backend.
 *
 * Guarantees: the size comes from the Size RPC at open(), which is bounded by `connectTimeoutMs`
 * and fails with a BackendError that says what went wrong (unreachable, wrong token, TLS, not an
 * r3map server). Reads and writes larger than `maxRequestBytes` are split into concurrent calls of at
 * most `maxRequestBytes` bytes, spread over a pool of `channels` HTTP/2 connections. A call that fails
 * with UNAVAILABLE (connection refused or reset, server restarting) is retried with bounded
 * backoff (WriteAt of the same bytes to the same place is idempotent); other errors come back as
 * the class the server raised (rpc/status.ts). Ranges are checked here first, so an
 * out-of-range call never travels. Every call has a deadline (`callTimeoutMs`). `writev` encodes
 * a payload that comes in pieces straight into the messages (one copy, no concatenation).
 */
import type { Backend } from '../pipeline/types.js';
import { BackendError, ClosedError, OutOfRangeError, ReadOnlyError, UsageError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import { withRetry, type RetryOptions } from '../util/retry.js';
import type { GrpcClientTls, GrpcTarget } from '../rpc/grpc-target.js';
import { GrpcHttp2Client } from '../rpc/grpc-http2-client.js';
import { backendDefinition, seederDefinition } from '../rpc/definitions.js';
import { EMPTY } from '../rpc/codec.js';
import { fromStatus, isTransientStatus, statusName, type RpcError } from '../rpc/status.js';
import { BearerToken } from '../rpc/bearer-token.js';
import { readPemFile } from '../rpc/pem-file.js';
import { status as Status, type MethodDefinition } from '@grpc/grpc-js';

export interface GrpcBackendTls {
  /** PEM file of the CA that signed the server's certificate; default the system's roots. */
  readonly ca?: string;
  /** PEM files of a client certificate and its key, for mutual TLS. */
  readonly cert?: string;
  readonly key?: string;
}

export interface GrpcBackendOptions {
  readonly target: GrpcTarget;
  /** TLS (grpcs://); undefined = plaintext. */
  readonly tls?: GrpcBackendTls;
  /** File holding the bearer token the server expects. */
  readonly tokenFile?: string;
  /**
   * Most bytes one ReadAt/WriteAt call moves (the URI's `chunk-size`); larger reads and writes
   * become concurrent calls. A transport limit, not a storage chunk: the server accepts any range.
   * 1 byte to 2 GiB - 1; default DEFAULT_GRPC_MAX_REQUEST_BYTES (1 MiB).
   */
  readonly maxRequestBytes?: number;
  /** @deprecated The old name of `maxRequestBytes` (used when that is not given). */
  readonly chunkSize?: number;
  /** HTTP/2 connections in the pool; default 4. */
  readonly channels?: number;
  readonly readOnly?: boolean;
  /** Deadline of one call; default 60 s. */
  readonly callTimeoutMs?: number;
  /** Deadline of the start-up Size call; default 5 s. */
  readonly connectTimeoutMs?: number;
  /** Retries of a call that failed with UNAVAILABLE; default 5, 0 = none. */
  readonly retries?: number;
  /**
   * Which r3map service to read: 'backend' (default), or 'seeder' — a migration source, whose
   * ReadAt and Size carry the same messages; read-only (it has no WriteAt), sync() is a no-op,
   * and the rest of its methods go through call().
   */
  readonly service?: 'backend' | 'seeder';
  readonly log?: Logger;
}

/** Most bytes per gRPC call by default: 1 MiB (a request size, not a chunk size). */
export const DEFAULT_GRPC_MAX_REQUEST_BYTES = 1024 * 1024;
/** @deprecated The old name of DEFAULT_GRPC_MAX_REQUEST_BYTES. */
export const DEFAULT_GRPC_CHUNK_SIZE = DEFAULT_GRPC_MAX_REQUEST_BYTES;

interface Resolved {
  readonly service: 'backend' | 'seeder';
  readonly maxRequestBytes: number;
  readonly readOnly: boolean;
  readonly callTimeoutMs: number;
}

export class GrpcBackend implements Backend {
  readonly size: number;
  readonly readOnly: boolean;
  readonly maxInFlight = 64;
  /** Most bytes per call. */
  readonly maxRequestBytes: number;
  /** The server, e.g. grpc://127.0.0.1:1337. */
  readonly uri: string;
  readonly #client: GrpcHttp2Client;
  readonly #options: Resolved;
  readonly #retry: Readonly<Record<'ReadAt' | 'WriteAt' | 'Sync', RetryOptions>>;
  readonly #reads: { readonly ReadAt: { readonly path: string }; readonly Size: MethodDefinition<typeof EMPTY, { size: number }> };
  #closed = false;

  private constructor(client: GrpcHttp2Client, size: number, options: Resolved, retry: Omit<RetryOptions, 'what'>) {
    this.#client = client;
    this.#options = options;
    this.uri = client.uri;
    this.size = size;
    this.maxRequestBytes = options.maxRequestBytes;
    this.readOnly = options.readOnly;
    this.#reads = options.service === 'seeder' ? seederDefinition : backendDefinition;
    this.#retry = Object.freeze({
      ReadAt: Object.freeze({ ...retry, what: `${client.uri} ReadAt` }),
      WriteAt: Object.freeze({ ...retry, what: `${client.uri} WriteAt` }),
      Sync: Object.freeze({ ...retry, what: `${client.uri} Sync` }),
    });
  }

  /** Connects and asks the server for the size; rejects with a clear error within `connectTimeoutMs`. */
  static async open(options: GrpcBackendOptions): Promise<GrpcBackend> {
    const maxRequestBytes = options.maxRequestBytes ?? options.chunkSize ?? DEFAULT_GRPC_MAX_REQUEST_BYTES;
    if (!Number.isSafeInteger(maxRequestBytes) || maxRequestBytes < 1 || maxRequestBytes > 2 ** 31 - 1) {
      throw new UsageError(`grpc maxRequestBytes (chunk-size) must be 1 byte .. 2 GiB - 1, got ${maxRequestBytes}`);
    }
    const tls = options.tls === undefined ? undefined : await readTls(options.tls);
    const token = options.tokenFile === undefined ? undefined : await BearerToken.fromFile(options.tokenFile);
    const client = new GrpcHttp2Client({
      target: options.target,
      ...(tls !== undefined ? { tls } : {}),
      ...(token !== undefined ? { token } : {}),
      ...(options.channels !== undefined ? { channels: options.channels } : {}),
    });
    const service = options.service ?? 'backend';
    const log = (options.log ?? silentLogger).child({ component: 'grpc-backend', server: client.uri, service });
    const connectTimeoutMs = options.connectTimeoutMs ?? 5_000;
    let size: number;
    try {
      size = (await client.call((service === 'seeder' ? seederDefinition : backendDefinition).Size, EMPTY, connectTimeoutMs)).size;
    } catch (err) {
      client.close();
      throw openError(err as RpcError, client.uri, token !== undefined, connectTimeoutMs, service);
    }
    if (!Number.isSafeInteger(size) || size < 0) {
      client.close();
      throw new BackendError({ backend: client.uri, op: 'Size' }, `the server reported an impossible size ${size}`);
    }
    log.debug({ size, maxRequestBytes }, 'connected');
    return new GrpcBackend(client, size, {
      service,
      maxRequestBytes,
      readOnly: service === 'seeder' || (options.readOnly ?? false),
      callTimeoutMs: options.callTimeoutMs ?? 60_000,
    }, { retries: options.retries ?? 5, isTransient: isTransientStatus, log });
  }

  async readAt(buf: Buffer, off: number): Promise<void> {
    this.#check(off, buf.length, false);
    const max = this.maxRequestBytes;
    if (buf.length <= max) return this.#readPiece(buf, off);
    const pieces: Promise<void>[] = [];
    for (let done = 0; done < buf.length; done += max) {
      pieces.push(this.#readPiece(buf.subarray(done, Math.min(done + max, buf.length)), off + done));
    }
    await Promise.all(pieces);
  }

  async writeAt(buf: Buffer, off: number): Promise<void> {
    this.#check(off, buf.length, true);
    const max = this.maxRequestBytes;
    if (buf.length <= max) return this.#writePiece([buf], off, buf.length);
    const pieces: Promise<void>[] = [];
    for (let done = 0; done < buf.length; done += max) {
      const p = buf.subarray(done, Math.min(done + max, buf.length));
      pieces.push(this.#writePiece([p], off + done, p.length));
    }
    await Promise.all(pieces);
  }

  /** A scatter write: the pieces are encoded straight into the messages, never concatenated first. */
  async writev(bufs: readonly Buffer[], off: number): Promise<void> {
    let total = 0;
    for (const b of bufs) total += b.length;
    this.#check(off, total, true);
    const max = this.maxRequestBytes;
    if (total <= max) return this.#writePiece(bufs, off, total);
    const calls: Promise<void>[] = [];
    let parts: Buffer[] = [];
    let filled = 0;
    let callOff = off;
    for (const b of bufs) {
      for (let pos = 0; pos < b.length;) {
        const n = Math.min(b.length - pos, max - filled);
        parts.push(b.subarray(pos, pos + n));
        filled += n;
        pos += n;
        if (filled === max) {
          calls.push(this.#writePiece(parts, callOff, filled));
          callOff += filled;
          parts = [];
          filled = 0;
        }
      }
    }
    if (filled > 0) calls.push(this.#writePiece(parts, callOff, filled));
    await Promise.all(calls);
  }

  async sync(): Promise<void> {
    if (this.#closed) throw new ClosedError('grpc backend');
    if (this.#options.service === 'seeder') return; // nothing is written through a seeder
    try {
      await withRetry(() => this.#client.call(backendDefinition.Sync, EMPTY, this.#options.callTimeoutMs), this.#retry.Sync);
    } catch (err) {
      throw this.#mapError(err, 'Sync', undefined, undefined);
    }
  }

  /**
   * Any other unary method of the server (the Seeder's Track, Sync, Close), with the deadline of a
   * call and the same error mapping; `retry` only for methods that are safe to repeat.
   */
  async call<Req, Res>(method: MethodDefinition<Req, Res>, request: Req, op: string, retry: boolean): Promise<Res> {
    if (this.#closed) throw new ClosedError('grpc backend');
    const once = (): Promise<Res> => this.#client.call(method, request, this.#options.callTimeoutMs);
    try {
      return await (retry ? withRetry(once, { ...this.#retry.Sync, what: `${this.uri} ${op}` }) : once());
    } catch (err) {
      throw this.#mapError(err, op, undefined, undefined);
    }
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#client.close();
  }

  async #readPiece(dst: Buffer, off: number): Promise<void> {
    if (dst.length === 0) return;
    try {
      await withRetry(() => this.#client.readAt(this.#reads.ReadAt, dst, off, this.#options.callTimeoutMs), this.#retry.ReadAt);
    } catch (err) {
      throw this.#mapError(err, 'ReadAt', off, dst.length);
    }
  }

  /** One WriteAt of `parts` (together `length` bytes), sent as they are. */
  async #writePiece(parts: readonly Buffer[], off: number, length: number): Promise<void> {
    if (length === 0) return;
    let written: number;
    try {
      const call = (): Promise<{ length: number }> => this.#client.writeAt(backendDefinition.WriteAt, parts, length, off, this.#options.callTimeoutMs);
      written = (await withRetry(call, this.#retry.WriteAt)).length;
    } catch (err) {
      throw this.#mapError(err, 'WriteAt', off, length);
    }
    if (written !== length) {
      throw new BackendError({ backend: this.uri, op: 'WriteAt', off, length }, `the server wrote ${written} bytes`);
    }
  }

  #mapError(err: unknown, op: string, off: number | undefined, length: number | undefined): Error {
    if (this.#closed) return new ClosedError('grpc backend');
    if (!(err instanceof Error) || typeof (err as RpcError).code !== 'number') return err as Error;
    return fromStatus(err as RpcError, { backend: this.uri, op, size: this.size, ...(off !== undefined ? { off, length: length ?? 0 } : {}) });
  }

  #check(off: number, length: number, write: boolean): void {
    if (this.#closed) throw new ClosedError('grpc backend');
    if (write && this.readOnly) throw new ReadOnlyError('grpc backend');
    if (!Number.isSafeInteger(off) || off < 0 || off + length > this.size) throw new OutOfRangeError(off, length, this.size);
  }
}

async function readTls(tls: GrpcBackendTls): Promise<GrpcClientTls> {
  return {
    ...(tls.ca !== undefined ? { ca: await readPemFile(tls.ca, 'the CA file (ca=)') } : {}),
    ...(tls.cert !== undefined ? { cert: await readPemFile(tls.cert, 'the client certificate (cert=)') } : {}),
    ...(tls.key !== undefined ? { key: await readPemFile(tls.key, 'the client key (key=)') } : {}),
  };
}

/** Why the start-up call failed, in words a user can act on. */
function openError(err: RpcError, uri: string, sentToken: boolean, timeoutMs: number, service: 'backend' | 'seeder'): Error {
  const info = { backend: uri, op: 'open' };
  const details = err.details ?? err.message;
  switch (err.code) {
    case Status.UNAUTHENTICATED:
      return new BackendError(info, sentToken
        ? `the server refused our token (wrong token?): ${details}`
        : `the server needs a token: add ?token-file=/path to the URI (${details})`, { cause: err });
    case Status.UNAVAILABLE:
      return new BackendError(info, `cannot reach the server: ${details}`, { cause: err });
    case Status.DEADLINE_EXCEEDED:
      return new BackendError(info, `no answer within ${timeoutMs} ms (wrong address, or TLS on one side only?)`, { cause: err });
    case Status.UNIMPLEMENTED:
      return new BackendError(info, service === 'seeder'
        ? `the server has no Seeder service: it is not an r3map-seed endpoint (${details})`
        : `the server has no Size RPC: it is not an r3map-serve gRPC endpoint (${details})`, { cause: err });
    default:
      return new BackendError(info, `${details} (gRPC ${statusName(err.code)})`, { cause: err });
  }
}
