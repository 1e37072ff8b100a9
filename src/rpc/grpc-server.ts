/**
 * GrpcServer: serves a Backend (and optionally a Seeder) over gRPC with grpc-js, a thin adapter
 * over BackendService / SeederService that translates messages and errors (rpc/status.ts).
 *
 * - Listeners: grpc://HOST:PORT (plaintext, only with `insecure: true`), grpcs://HOST:PORT (TLS;
 *   mutual TLS when `tls.clientCa` is given: a client certificate signed by it is required) and
 *   grpc+unix:///PATH (plaintext; the socket file's permissions guard it). A stale socket file
 *   that nobody accepts on is replaced.
 * - Auth: with `token`, every call needs `authorization: Bearer <token>` (constant-time check,
 *   UNAUTHENTICATED otherwise), on every listener.
 * - Calls are served concurrently; the message size limit follows `maxChunkSize`.
 * - close(): stop accepting (GOAWAY), let in-flight calls finish (bounded by
 *   `shutdownTimeoutMs`, then forced), then sync the backend. Idempotent. The backend is not
 *   closed: it belongs to the caller.
 */
import { lstat, unlink } from 'node:fs/promises';
import { connect } from 'node:net';
import type { Http2Server, Http2Session } from 'node:http2';
import * as grpc from '@grpc/grpc-js';
import type { Backend } from '../pipeline/types.js';
import { ClosedError, R3mapError, UsageError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import { BackendService } from './backend-service.js';
import { SeederService, type SeederSource } from './seeder-service.js';
import { backendDefinition, seederDefinition } from './definitions.js';
import { statusCodeOf, statusName, toStatus, unauthenticated } from './status.js';
import { formatGrpcUri, grpcTarget, parseGrpcListenUri, type GrpcAddress } from './grpc-address.js';
import type { BearerToken } from './bearer-token.js';

/** Room for a message's fields around its payload. */
export const MESSAGE_OVERHEAD = 1024;
const DEFAULT_FLOW_CONTROL_WINDOW = 32 * 1024 * 1024;

export interface GrpcServerTls {
  /** PEM certificate chain. */
  readonly cert: Buffer;
  /** PEM private key. */
  readonly key: Buffer;
  /** PEM CA bundle: clients must present a certificate it signed (mutual TLS). */
  readonly clientCa?: Buffer;
}

export interface GrpcServerOptions {
  readonly backend: Backend;
  /** Also serve the Seeder service over this source. */
  readonly seeder?: SeederSource;
  /** Most bytes one call may move; default 32 MiB. */
  readonly maxChunkSize?: number;
  /** Refuse writes (PERMISSION_DENIED). Default: the backend's own readOnly. */
  readonly readOnly?: boolean;
  /** Needed for grpcs:// listeners. */
  readonly tls?: GrpcServerTls;
  /** Required on every call when given. */
  readonly token?: BearerToken;
  /** Allow plaintext grpc:// on TCP. */
  readonly insecure?: boolean;
  /** HTTP/2 receive window per connection and per stream in bytes; default 32 MiB, 0 = Node's 64 KiB. */
  readonly flowControlWindow?: number;
  /** Bound on close()'s wait for in-flight calls; default 10 s. */
  readonly shutdownTimeoutMs?: number;
  readonly log?: Logger;
}

type Handler<Req, Res> = grpc.handleUnaryCall<Req, Res>;

export class GrpcServer {
  readonly maxChunkSize: number;
  readonly #options: GrpcServerOptions;
  readonly #log: Logger;
  readonly #server: grpc.Server;
  readonly #flowControlWindow: number;
  readonly #tuned = new WeakSet<Http2Server>();
  #inFlight = 0;
  #onIdle: (() => void) | undefined;
  #closing: Promise<void> | undefined;

  constructor(options: GrpcServerOptions) {
    this.#options = Object.freeze({ ...options });
    this.#log = (options.log ?? silentLogger).child({ component: 'grpc-server' });
    this.#flowControlWindow = options.flowControlWindow ?? DEFAULT_FLOW_CONTROL_WINDOW;
    const backend = new BackendService(options.backend, {
      ...(options.maxChunkSize !== undefined ? { maxChunkSize: options.maxChunkSize } : {}),
      ...(options.readOnly !== undefined ? { readOnly: options.readOnly } : {}),
    });
    this.maxChunkSize = backend.options.maxChunkSize;
    this.#server = new grpc.Server({
      'grpc.max_receive_message_length': this.maxChunkSize + MESSAGE_OVERHEAD,
      'grpc.max_send_message_length': -1,
      'grpc.enable_channelz': 0, // per-call bookkeeping nobody reads
    });
    this.#server.addService(backendDefinition as unknown as grpc.ServiceDefinition, {
      ReadAt: this.#unary('ReadAt', (req: { length: number; off: number }) => backend.readAt(req.length, req.off)),
      WriteAt: this.#unary('WriteAt', (req: { p: Buffer; off: number }) => backend.writeAt(req.p, req.off)),
      Sync: this.#unary('Sync', () => backend.sync()),
      Size: this.#unary('Size', () => backend.size()),
    });
    if (options.seeder !== undefined) {
      const seeder = new SeederService(options.seeder, { maxChunkSize: this.maxChunkSize });
      this.#server.addService(seederDefinition as unknown as grpc.ServiceDefinition, {
        ReadAt: this.#unary('Seeder.ReadAt', (req: { length: number; off: number }) => seeder.readAt(req.length, req.off)),
        Size: this.#unary('Seeder.Size', () => seeder.size()),
        Track: this.#unary('Seeder.Track', () => seeder.track()),
        Sync: this.#unary('Seeder.Sync', (req: { since: number }) => seeder.sync(req.since)),
        Dirty: this.#unary('Seeder.Dirty', (req: { since: number }) => seeder.dirty(req.since)),
        Session: this.#unary('Seeder.Session', () => seeder.session()),
        Close: this.#unary('Seeder.Close', () => seeder.close()),
      });
    }
  }

  /** Binds one listener; resolves with the URI clients use (port 0 replaced by the real one). */
  async listen(uri: string | GrpcAddress): Promise<string> {
    if (this.#closing !== undefined) throw new ClosedError('gRPC server');
    const address = typeof uri === 'string' ? parseGrpcListenUri(uri) : uri;
    const credentials = this.#credentials(address);
    if (address.scheme === 'grpc+unix') await removeStaleSocket(address.path);
    const port = await new Promise<number>((resolve, reject) => {
      this.#server.bindAsync(grpcTarget(address), credentials, (err, bound) => {
        if (err === null) resolve(bound);
        else reject(new UsageError(`cannot listen on ${formatGrpcUri(address)}: ${err.message}`, { cause: err }));
      });
    });
    this.#tuneFlowControl();
    const bound = formatGrpcUri(address.scheme === 'grpc+unix' ? address : { ...address, port });
    this.#log.info({ listen: bound, mtls: address.scheme === 'grpcs' && this.#options.tls?.clientCa !== undefined, token: this.#options.token !== undefined }, 'gRPC server listening');
    return bound;
  }

  /** Stops accepting, waits for in-flight calls (bounded), then syncs the backend. */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    const timeoutMs = this.#options.shutdownTimeoutMs ?? 10_000;
    const deadline = Date.now() + timeoutMs;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        this.#log.warn({ timeoutMs }, 'calls still open at the shutdown deadline: closing their connections');
        this.#server.forceShutdown();
        resolve();
      }, timeoutMs);
      this.#server.tryShutdown(() => {
        clearTimeout(timer);
        resolve();
      });
    });
    if (this.#inFlight > 0) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.max(0, deadline - Date.now()));
        this.#onIdle = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      if (this.#inFlight > 0) this.#log.warn({ inFlight: this.#inFlight }, 'backend calls still running after the shutdown deadline');
    }
    await this.#options.backend.sync();
    this.#log.info('gRPC server closed');
  }

  #credentials(address: GrpcAddress): grpc.ServerCredentials {
    checkListenerSecurity(address, this.#options);
    const tls = this.#options.tls;
    if (address.scheme !== 'grpcs' || tls === undefined) return grpc.ServerCredentials.createInsecure();
    const uri = formatGrpcUri(address);
    try {
      return grpc.ServerCredentials.createSsl(tls.clientCa ?? null, [{ cert_chain: tls.cert, private_key: tls.key }], tls.clientCa !== undefined);
    } catch (err) {
      throw new UsageError(`TLS setup for ${uri} failed: ${(err as Error).message}`, { cause: err });
    }
  }

  /**
   * grpc-js has no server-side flow-control option (grpc/grpc-node#3058), so a server keeps
   * Node's 64 KiB HTTP/2 window and large WriteAt calls crawl. Raise it per session, as grpc-js
   * does on the client; if grpc-js's internals change, the server still works with the default.
   */
  #tuneFlowControl(): void {
    const window = this.#flowControlWindow;
    if (window <= 65_535) return;
    const servers = (this.#server as unknown as { http2Servers?: Map<Http2Server, unknown> }).http2Servers;
    if (!(servers instanceof Map)) {
      this.#log.debug('cannot reach grpc-js http2 servers: keeping the default flow-control window');
      return;
    }
    for (const http2Server of servers.keys()) {
      if (this.#tuned.has(http2Server)) continue;
      this.#tuned.add(http2Server);
      http2Server.on('session', (session: Http2Session) => {
        try {
          session.settings({ initialWindowSize: window });
          session.setLocalWindowSize(window);
        } catch (err) {
          this.#log.debug({ err }, 'could not raise the flow-control window');
        }
      });
    }
  }

  #unary<Req, Res>(op: string, run: (req: Req) => Promise<Res>): Handler<Req, Res> {
    return (call, callback) => {
      if (this.#closing !== undefined) {
        callback(toStatus(new ClosedError('gRPC server')));
        return;
      }
      const token = this.#options.token;
      if (token !== undefined && !token.matches(call.metadata.get('authorization'))) {
        this.#log.warn({ op, peer: call.getPeer() }, 'refused a call without the right bearer token');
        callback(unauthenticated('missing or wrong bearer token'));
        return;
      }
      this.#inFlight++;
      run(call.request).then(
        (res) => {
          this.#settled();
          callback(null, res);
        },
        (err: unknown) => {
          this.#settled();
          this.#logFailure(op, err);
          callback(toStatus(err));
        },
      );
    };
  }

  #settled(): void {
    if (--this.#inFlight === 0 && this.#onIdle !== undefined) this.#onIdle();
  }

  /** Requests the client got wrong at debug; failures of the server or backend at warn. */
  #logFailure(op: string, err: unknown): void {
    const code = statusCodeOf(err);
    const clientFault = err instanceof R3mapError && ['ERR_OUT_OF_RANGE', 'ERR_USAGE', 'ERR_BAD_LENGTH', 'ERR_MISALIGNED', 'ERR_READ_ONLY'].includes(err.code);
    if (clientFault) this.#log.debug({ op, err, status: statusName(code) }, `${op} refused`);
    else this.#log.warn({ op, err, status: statusName(code) }, `${op} failed`);
  }
}

/**
 * Throws the UsageError `listen()` would throw for `address`: plaintext TCP without `insecure`,
 * grpcs:// without a certificate. For a CLI that wants to fail before opening anything.
 */
export function checkListenerSecurity(address: GrpcAddress, options: { readonly tls?: unknown; readonly insecure?: boolean }): void {
  const uri = formatGrpcUri(address);
  if (address.scheme === 'grpc' && options.insecure !== true) {
    throw new UsageError(`refusing to serve plaintext gRPC on ${uri}: pass --insecure, or serve grpcs://… with --tls-cert and --tls-key`);
  }
  if (address.scheme === 'grpcs' && options.tls === undefined) throw new UsageError(`${uri} needs a certificate: pass --tls-cert and --tls-key`);
}

/** Unlinks `path` when it is a socket file nobody accepts on (a crashed server's leftover). */
async function removeStaleSocket(path: string): Promise<void> {
  const stat = await lstat(path).catch(() => undefined);
  if (stat === undefined || !stat.isSocket()) return;
  const accepting = await new Promise<boolean>((resolve) => {
    const probe = connect({ path });
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
  if (accepting) throw new UsageError(`cannot listen on grpc+unix://${path}: another server is accepting on it`);
  await unlink(path);
}
