/**
 * The NBD server: listens on TCP (IPv4/IPv6) and Unix sockets, runs the fixed newstyle handshake
 * on each connection, then hands it to a Transmission. Connections are independent: one client's
 * garbage closes only its own connection. `close()` stops accepting, lets in-flight requests
 * finish, syncs every writable backend and closes the connections; it is idempotent.
 *
 * With `tls`, the server offers NBD_OPT_STARTTLS (tls.ts) and, by default, requires it; after
 * the upgrade the rest of the handshake and the transmission run over the TLS socket.
 *
 * Backends are the caller's: the server syncs them on close but never closes them.
 */
import { connect, createServer, type Server, type Socket } from 'node:net';
import { lstat, unlink } from 'node:fs/promises';
import { ClosedError, UsageError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import { NBD_MAX_STRING } from './constants.js';
import type { NbdExport } from './export.js';
import { Handshake, isReadOnly, transmissionFlagsFor, type HandshakeOptions } from './handshake.js';
import { formatListenAddress, type ListenAddress } from './listen-address.js';
import { ConnectionWorkers } from './connection-workers.js';
import { Transmission } from './transmission.js';

export type { NbdExport } from './export.js';
import { resolveServerTls, upgradeServerSocket, type NbdServerTlsOptions, type ResolvedServerTls } from './tls.js';

export interface NbdServerOptions {
  /** The first one is also the default export (the empty name). */
  readonly exports: readonly NbdExport[];
  /** Largest READ/WRITE in bytes, advertised as the NBD_INFO_BLOCK_SIZE maximum; default 32 MiB. */
  readonly maxPayload?: number;
  /** Requests in flight per connection before reading pauses; default 64. */
  readonly maxInFlight?: number;
  /** READ/WRITE payload bytes in flight per connection before reading pauses; default max(64 MiB, maxPayload). */
  readonly maxInFlightBytes?: number;
  /** Advertised minimum block size (a power of two, 1..64 KiB); default 1. Above 1 it is enforced. */
  readonly minBlockSize?: number;
  /** Advertised preferred block size (a power of two, >= 512); default 4096. */
  readonly preferredBlockSize?: number;
  /** Offer NBD_OPT_STARTTLS with this certificate (and require it unless `tls.require` is false). */
  readonly tls?: NbdServerTlsOptions;
  /**
   * Worker threads that serve the transmission phase of plain connections to exports whose
   * backend can be shared across threads (Backend.share); default 0 (all on this thread).
   */
  readonly workers?: number;
  /**
   * Re-open accepted plain connections to read into reused buffers and straight into WRITE
   * destinations (user-buffer-socket.ts); default true. False keeps Node's per-read buffers.
   */
  readonly userBuffers?: boolean;
  readonly log?: Logger;
}

interface ResolvedOptions {
  readonly exports: readonly NbdExport[];
  readonly maxPayload: number;
  readonly maxInFlight: number;
  readonly maxInFlightBytes: number;
  readonly minBlockSize: number;
  readonly preferredBlockSize: number;
  readonly tls: ResolvedServerTls | undefined;
}

interface Connection {
  /** The accepted socket, or the TLS socket over it after NBD_OPT_STARTTLS. */
  socket: Socket;
  readonly conn: number;
  readonly log: Logger;
  transmission: Transmission | undefined;
  /** Marks the connection's socket closed (the raw socket's 'close', or the TLS socket's). */
  readonly socketClosed: () => void;
  /** Accepted by a listener (not handed over by serveAttached): the transmission may re-open it. */
  readonly accepted: boolean;
  /** Served on a worker thread: resolves when the worker closed it. */
  handedOff: Promise<void> | undefined;
}

const MIB = 1024 * 1024;
const MAX_OPTIONS = 1024;
const MAX_OPTION_LENGTH = 64 * 1024;
const ABORT_GRACE_MS = 2000;

export class NbdServer {
  readonly #options: ResolvedOptions;
  readonly #log: Logger;
  readonly #userBuffers: boolean;
  /** Worker threads for shareable exports; undefined with `workers` 0. */
  readonly #workers: ConnectionWorkers | undefined;
  readonly #listeners: Server[] = [];
  readonly #connections = new Map<Connection, Promise<void>>();
  #nextConn = 1;
  #closing: Promise<void> | undefined = undefined;

  constructor(options: NbdServerOptions) {
    this.#options = resolveOptions(options);
    this.#log = (options.log ?? silentLogger).child({ component: 'nbd-server' });
    this.#userBuffers = options.userBuffers ?? true;
    const workers = options.workers ?? 0;
    if (!Number.isSafeInteger(workers) || workers < 0) throw new UsageError(`workers must be a whole number >= 0, got ${workers}`);
    this.#workers = workers > 0 ? new ConnectionWorkers(workers, this.#log) : undefined;
    for (const exp of this.#options.exports) {
      if (exp.backend.size % this.#options.minBlockSize !== 0) {
        this.#log.warn({ export: exp.name, size: exp.backend.size }, 'export size is not a multiple of minBlockSize; its tail is unreachable');
      }
    }
  }

  /** Starts listening; resolves with the bound address ("127.0.0.1:PORT", "[::1]:PORT", "unix:/path"). */
  async listen(address: ListenAddress): Promise<string> {
    if (this.#closing !== undefined) throw new ClosedError('NBD server');
    if (this.#workers !== undefined) {
      const handles = this.#options.exports.flatMap((exp) => (exp.backend.share === undefined ? [] : [exp.backend.share()]));
      if (handles.length > 0) this.#workers.start(handles);
    }
    const server = createServer({ allowHalfOpen: true, noDelay: true }, (socket) => this.#accept(socket, true));
    if ('path' in address) await listenUnix(server, address.path);
    else await listenOn(server, { host: address.host === '' ? undefined : address.host, port: address.port }, formatListenAddress(address));
    server.on('error', (err) => this.#log.error({ err }, 'listener failed'));
    this.#listeners.push(server);
    const bound = server.address();
    const text = typeof bound === 'string' || bound === null ? formatListenAddress(address) : formatListenAddress({ host: bound.address, port: bound.port });
    this.#log.info({ address: text, exports: this.#options.exports.map((exp) => exp.name) }, 'NBD server listening');
    return text;
  }

  /**
   * Serves one already-connected socket (a socketpair end, an accepted connection). Create it with
   * `allowHalfOpen: true` (as `listen()` does) so a client that half-closes still gets its replies.
   */
  handle(socket: Socket): void {
    this.#accept(socket, false);
  }

  /** `owned`: the server accepted the socket itself, so the transmission may re-open it. */
  #accept(socket: Socket, owned: boolean): void {
    const entry = this.#register(socket, owned);
    if (entry === undefined) return;
    const handshake = new Handshake(this.#handshakeOptions(entry.log), socket);
    this.#haggle(entry, handshake);
    if (socket.destroyed) return;
    handshake.start();
  }

  /** Feeds what arrives on `entry.socket` to the handshake until it ends, or STARTTLS swaps the socket. */
  #haggle(entry: Connection, handshake: Handshake): void {
    const { socket, log } = entry;
    const onEnd = (): void => {
      log.debug('client closed the connection during the handshake');
      socket.end();
    };
    const onData = (chunk: Buffer): void => {
      let status;
      try {
        status = handshake.push(chunk);
      } catch (err) {
        log.warn({ err }, `closing connection in handshake: ${(err as Error).message}`);
        socket.destroy();
        return;
      }
      if (status === 'more') return;
      socket.off('data', onData);
      socket.off('end', onEnd);
      if (status === 'abort') {
        log.debug('client sent NBD_OPT_ABORT');
        socket.end();
        setTimeout(() => socket.destroy(), ABORT_GRACE_MS).unref();
        return;
      }
      if (status === 'starttls') {
        void this.#startTls(entry, handshake);
        return;
      }
      const result = handshake.result!;
      this.#transmit(entry, result.export, result.size, result.transmissionFlags, result.remainder, result.structured === true, result.allocationContext);
    };
    socket.on('data', onData);
    socket.on('end', onEnd);
  }

  async #startTls(entry: Connection, handshake: Handshake): Promise<void> {
    const raw = entry.socket;
    if (handshake.earlyBytes > 0) {
      entry.log.warn({ bytes: handshake.earlyBytes }, 'client sent data after NBD_OPT_STARTTLS before the ACK; closing');
      raw.destroy();
      return;
    }
    raw.pause();
    try {
      const secure = await upgradeServerSocket(raw, this.#options.tls!);
      secure.once('close', () => {
        raw.destroy();
        entry.socketClosed();
      });
      secure.on('error', (err) => entry.log.debug({ err }, 'TLS socket error'));
      entry.socket = secure;
      entry.log.debug({ protocol: secure.getProtocol(), mutual: this.#options.tls!.mutual }, 'TLS is up');
      if (this.#closing !== undefined) {
        secure.destroy();
        return;
      }
      handshake.secured(secure);
      this.#haggle(entry, handshake);
    } catch (err) {
      entry.log.warn({ err }, `closing connection: ${(err as Error).message}`);
      raw.destroy();
      entry.socketClosed();
    }
  }

  /**
   * Serves the transmission phase of one export on a socket whose client skipped the handshake:
   * the kernel side of a socketpair after NBD_SET_SOCK, which learns size and flags by ioctl
   * (see `transmissionFlagsOf`). Throws a UsageError for an unknown export.
   */
  serveAttached(socket: Socket, exportName: string): void {
    const exp = this.#exportNamed(exportName);
    const entry = this.#register(socket, false);
    if (entry === undefined) return;
    this.#transmit(entry, exp, exp.backend.size, transmissionFlagsFor(exp), undefined);
  }

  /** The transmission flags the handshake would advertise for an export (for NBD_SET_FLAGS). */
  transmissionFlagsOf(exportName: string): number {
    return transmissionFlagsFor(this.#exportNamed(exportName));
  }

  #exportNamed(name: string): NbdExport {
    const exp = this.#options.exports.find((e) => e.name === name) ?? (name === '' ? this.#options.exports[0] : undefined);
    if (exp === undefined) throw new UsageError(`no export named "${name}"`);
    return exp;
  }

  #register(socket: Socket, accepted: boolean): Connection | undefined {
    if (this.#closing !== undefined) {
      socket.destroy();
      return undefined;
    }
    const conn = this.#nextConn++;
    const log = this.#log.child({ conn });
    log.debug({ remote: socket.remoteAddress ?? 'unix' }, 'connection accepted');
    let socketClosed!: () => void;
    const closedSocket = new Promise<void>((resolve) => (socketClosed = resolve));
    const entry: Connection = { socket, conn, log, transmission: undefined, socketClosed, accepted, handedOff: undefined };
    socket.setNoDelay(true);
    socket.on('error', (err) => log.debug({ err }, 'socket error'));
    socket.once('close', socketClosed);
    const closed = closedSocket
      .then(() => entry.transmission?.closed ?? entry.handedOff)
      .then(() => {
        this.#connections.delete(entry);
        log.debug('connection closed');
      });
    this.#connections.set(entry, closed);
    return entry;
  }

  #transmit(entry: Connection, exp: NbdExport, size: number, transmissionFlags: number, remainder: Buffer | undefined, structured = false, allocationContext?: number): void {
    entry.log.debug({ export: exp.name, size, flags: transmissionFlags, structured, blockStatus: allocationContext !== undefined }, 'transmission phase');
    const params = {
      size,
      transmissionFlags,
      structured,
      ...(allocationContext !== undefined ? { allocationContext } : {}),
      maxPayload: this.#options.maxPayload,
      maxInFlight: this.#options.maxInFlight,
      maxInFlightBytes: this.#options.maxInFlightBytes,
      minBlockSize: this.#options.minBlockSize,
      conn: entry.conn,
    };
    const handle = entry.accepted && this.#workers !== undefined ? exp.backend.share?.() : undefined;
    if (handle !== undefined) {
      entry.handedOff = this.#workers!.serve(entry.socket, entry.conn, handle, params, remainder);
      if (entry.handedOff !== undefined) {
        entry.log.debug('served on a worker thread');
        return;
      }
    }
    entry.transmission = new Transmission(entry.socket, { ...params, backend: exp.backend, userBuffers: entry.accepted && this.#userBuffers, log: entry.log });
    entry.transmission.start(remainder);
  }

  /** Stops accepting, drains in-flight requests, syncs writable backends, closes connections. */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    const listenersClosed = this.#listeners.map((server) => new Promise<void>((resolve) => server.close(() => resolve())));
    for (const entry of this.#connections.keys()) {
      if (entry.transmission !== undefined) void entry.transmission.shutdown();
      else if (entry.handedOff !== undefined) this.#workers!.shutdown(entry.conn);
      else entry.socket.destroy();
    }
    await Promise.all(this.#connections.values());
    await this.#workers?.close();
    await Promise.all(listenersClosed);
    const errors: unknown[] = [];
    const backends = new Set(this.#options.exports.filter((exp) => !isReadOnly(exp)).map((exp) => exp.backend));
    for (const backend of backends) {
      try {
        await backend.sync();
      } catch (err) {
        this.#log.error({ err }, 'backend sync at close failed');
        errors.push(err);
      }
    }
    this.#log.info('NBD server closed');
    if (errors.length > 0) throw new AggregateError(errors, `NBD server close: ${errors.length} backend sync(s) failed`);
  }

  #handshakeOptions(log: Logger): HandshakeOptions {
    const { exports, minBlockSize, preferredBlockSize, maxPayload } = this.#options;
    const tls = this.#options.tls === undefined ? undefined : { require: this.#options.tls.require };
    return { exports, minBlockSize, preferredBlockSize, maxPayload, maxOptions: MAX_OPTIONS, maxOptionLength: MAX_OPTION_LENGTH, tls, log };
  }
}

function resolveOptions(options: NbdServerOptions): ResolvedOptions {
  const exports = [...options.exports];
  if (exports.length === 0) throw new UsageError('NBD server needs at least one export');
  const names = new Set<string>();
  for (const exp of exports) {
    if (names.has(exp.name)) throw new UsageError(`export name "${exp.name}" is used twice`);
    names.add(exp.name);
    checkString(exp.name, 'export name');
    if (exp.description !== undefined) checkString(exp.description, 'export description');
    if (!Number.isSafeInteger(exp.backend.size) || exp.backend.size < 0) {
      throw new UsageError(`export "${exp.name}" has an invalid size ${exp.backend.size}`);
    }
  }
  const minBlockSize = options.minBlockSize ?? 1;
  const preferredBlockSize = options.preferredBlockSize ?? 4096;
  const maxPayload = options.maxPayload ?? 32 * MIB;
  const maxInFlight = options.maxInFlight ?? 64;
  const maxInFlightBytes = options.maxInFlightBytes ?? Math.max(64 * MIB, maxPayload);
  if (!isPowerOfTwo(minBlockSize) || minBlockSize > 65536) throw new UsageError(`minBlockSize ${minBlockSize} is not a power of two in 1..65536`);
  if (!isPowerOfTwo(preferredBlockSize) || preferredBlockSize < Math.max(minBlockSize, 512)) {
    throw new UsageError(`preferredBlockSize ${preferredBlockSize} is not a power of two >= max(minBlockSize, 512)`);
  }
  if (!Number.isSafeInteger(maxPayload) || maxPayload < preferredBlockSize || maxPayload > 2 ** 31 || maxPayload % minBlockSize !== 0) {
    throw new UsageError(`maxPayload ${maxPayload} must be a multiple of minBlockSize in ${preferredBlockSize}..${2 ** 31}`);
  }
  if (!Number.isSafeInteger(maxInFlight) || maxInFlight < 1) throw new UsageError(`maxInFlight ${maxInFlight} must be an integer >= 1`);
  if (!Number.isSafeInteger(maxInFlightBytes) || maxInFlightBytes < 1) {
    throw new UsageError(`maxInFlightBytes ${maxInFlightBytes} must be an integer >= 1`);
  }
  const tls = options.tls === undefined ? undefined : resolveServerTls(options.tls);
  return Object.freeze({ exports: Object.freeze(exports), maxPayload, maxInFlight, maxInFlightBytes, minBlockSize, preferredBlockSize, tls });
}

function checkString(text: string, what: string): void {
  if (Buffer.byteLength(text, 'utf8') > NBD_MAX_STRING || text.includes('\0')) {
    throw new UsageError(`${what} "${text.slice(0, 64)}" must be at most ${NBD_MAX_STRING} bytes of UTF-8 without NUL`);
  }
}

function isPowerOfTwo(n: number): boolean {
  return Number.isSafeInteger(n) && n >= 1 && (n & (n - 1)) === 0;
}

function listenOn(server: Server, options: { host?: string | undefined; port?: number; path?: string }, what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException): void => {
      reject(new UsageError(`cannot listen on ${what}: ${err.code ?? err.message}`, { cause: err }));
    };
    server.once('error', onError);
    server.listen(options, () => {
      server.off('error', onError);
      resolve();
    });
  });
}

/** Listens on a Unix socket path, replacing a stale socket file that nobody accepts on. */
async function listenUnix(server: Server, path: string): Promise<void> {
  const what = `unix:${path}`;
  try {
    await listenOn(server, { path }, what);
  } catch (err) {
    if ((err as UsageError).cause === undefined || ((err as UsageError).cause as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw err;
    const stat = await lstat(path).catch(() => undefined);
    if (stat === undefined || !stat.isSocket() || (await isAccepting(path))) throw err;
    await unlink(path);
    await listenOn(server, { path }, what);
  }
}

function isAccepting(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = connect({ path });
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
}
