/**
 * A userspace NBD client: fixed newstyle handshake (handshake.ts: structured replies and
 * base:allocation where the server has them), then pipelined transmission (replies.ts reads
 * simple replies and structured chunks). Any number of requests may be in flight; each carries a handle
 * (hi = sequence number, lo = slot index) and replies may come back in any order. One incremental
 * parser reads reply headers and copies READ payloads straight into the caller's buffer; a WRITE's
 * header and payload are written while the socket is corked, so they leave in one writev together
 * with everything else issued in the same tick.
 *
 * The client checks only what it must to stay on the wire (safe offsets, u32 lengths, flags the
 * server advertised); ranges, read-only exports and payload limits are the server's to refuse, so
 * tests can see the server's errno. NBD errors reject with NbdRequestError; a broken stream fails
 * every pending request and resolves `closed()` with the error.
 */
import type { Socket } from 'node:net';
import { ClosedError, NbdRequestError, OutOfRangeError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import {
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_DISC,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_ENOTSUP,
  NBD_ESHUTDOWN,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_WRITE_ZEROES,
  NBD_REQUEST_MAGIC,
  NBD_REQUEST_SIZE,
  NbdCmd,
  NbdErrno,
  NbdTransmissionFlag,
  flagNames,
  nameOf,
} from '../nbd/constants.js';
import type { NbdClientTlsOptions } from '../nbd/tls.js';
import { Pending, ReplyReader, type NbdClientExtent } from './replies.js';
import { listExports, negotiate, openSocket, type NbdAddress, type NbdBlockSize, type NbdExportInfo, type NbdExportListing } from './handshake.js';

export { describeAddress } from './handshake.js';
export type { NbdAddress, NbdBlockSize, NbdExportInfo, NbdExportListing } from './handshake.js';
export type { NbdClientTlsOptions } from '../nbd/tls.js';

export interface NbdClientOptions {
  /** Export to open; '' (the default) is the server's default export. */
  readonly exportName?: string;
  /** Bound in ms on connecting, on the handshake and on close; 0 means none. Default 30000. */
  readonly timeoutMs?: number;
  /** NBD_OPT_STARTTLS before anything else, verifying the server (nbds://). */
  readonly tls?: NbdClientTlsOptions;
  /** The host the server certificate must name; connect() passes the TCP host. */
  readonly host?: string;
  /** Ask for structured replies and base:allocation (default true); false keeps simple replies. */
  readonly structuredReplies?: boolean;
  readonly log?: Logger;
}

export interface WriteOptions {
  /** NBD_CMD_FLAG_FUA: the reply waits until the data is durable. */
  readonly fua?: boolean;
}

export interface ZeroOptions extends WriteOptions {
  /** NBD_CMD_FLAG_NO_HOLE: the range must stay allocated. */
  readonly noHole?: boolean;
}

interface ResolvedOptions {
  readonly exportName: string;
  readonly timeoutMs: number;
  readonly tls: NbdClientTlsOptions | undefined;
  readonly host: string | undefined;
  readonly structuredReplies: boolean;
  readonly log: Logger;
}

const U32_MAX = 0xffffffff;
const TWO_32 = 2 ** 32;

export class NbdClient {
  readonly exportName: string;
  readonly size: number;
  readonly transmissionFlags: number;
  readonly blockSize: NbdBlockSize;
  readonly readOnly: boolean;
  readonly description: string | undefined;
  /** True when the connection runs over TLS (NBD_OPT_STARTTLS). */
  readonly encrypted: boolean;
  /** Everything the handshake learned. */
  readonly info: NbdExportInfo;

  readonly #socket: Socket;
  readonly #options: ResolvedOptions;
  readonly #log: Logger;
  readonly #slots: Pending[] = [];
  readonly #free: number[] = [];
  #inFlight = 0;
  #seq = 0;
  #corked = false;
  readonly #replies: ReplyReader;
  #captureResolve: (() => void) | undefined;
  #captureReject: ((err: Error) => void) | undefined;
  #error: Error | undefined;
  #closing: Promise<void> | undefined;
  #drained: (() => void) | undefined;
  #resolveClosed: ((err: Error | undefined) => void) | undefined;
  readonly #closed: Promise<Error | undefined>;

  /** Connects to `address` and runs the handshake. */
  static async connect(address: NbdAddress, options: NbdClientOptions = {}): Promise<NbdClient> {
    const resolved = resolveOptions(options);
    const host = resolved.host ?? ('host' in address ? address.host : undefined);
    return NbdClient.connectSocket(await openSocket(address, resolved.timeoutMs), { ...resolved, host });
  }

  /** Runs the handshake over an already-connected socket and takes it over. */
  static async connectSocket(socket: Socket, options: NbdClientOptions = {}): Promise<NbdClient> {
    const resolved = resolveOptions(options);
    const { socket: transmission, info, leftover } = await negotiate(socket, {
      exportName: resolved.exportName,
      timeoutMs: resolved.timeoutMs,
      structuredReplies: resolved.structuredReplies,
      ...(resolved.tls !== undefined ? { tls: resolved.tls } : {}),
      ...(resolved.host !== undefined ? { host: resolved.host } : {}),
    });
    return new NbdClient(transmission, info, leftover, resolved);
  }

  /** The server's exports (NBD_OPT_LIST), one entry per NBD_REP_SERVER. */
  static async list(address: NbdAddress, options: Pick<NbdClientOptions, 'timeoutMs'> = {}): Promise<NbdExportListing[]> {
    const timeoutMs = options.timeoutMs ?? 30_000;
    return listExports(await openSocket(address, timeoutMs), { timeoutMs });
  }

  private constructor(socket: Socket, info: NbdExportInfo, leftover: Buffer, options: ResolvedOptions) {
    this.#socket = socket;
    this.#options = options;
    this.info = info;
    this.exportName = info.exportName;
    this.size = info.size;
    this.transmissionFlags = info.transmissionFlags;
    this.blockSize = info.blockSize;
    this.readOnly = (info.transmissionFlags & NBD_FLAG_READ_ONLY) !== 0;
    this.description = info.description;
    this.encrypted = (socket as Socket & { encrypted?: boolean }).encrypted === true;
    this.#log = options.log.child({ component: 'nbd-client', export: info.exportName });
    this.#log.debug({ size: info.size, flags: flagNames(NbdTransmissionFlag, info.transmissionFlags), blockSize: info.blockSize, via: info.via }, 'NBD transmission');
    this.#closed = new Promise((resolve) => (this.#resolveClosed = resolve));
    this.#replies = new ReplyReader({
      pending: (seq, index) => {
        const p = this.#slots[index];
        return p === undefined || p.resolve === undefined || p.seq !== seq ? undefined : p;
      },
      complete: (p, errno) => this.#complete(p, errno),
      fail: (err) => this.#fail(err),
    }, info.structured, info.allocationContext);
    socket.on('data', this.#onData);
    socket.on('end', this.#onEnd);
    socket.on('error', this.#onError);
    socket.on('close', this.#onClose);
    if (leftover.length > 0) this.#onData(leftover);
    socket.resume();
  }

  /** Requests sent and not yet answered. */
  get inFlight(): number {
    return this.#inFlight;
  }

  /** Resolves when the connection is gone: undefined after close(), else the error that ended it. */
  closed(): Promise<Error | undefined> {
    return this.#closed;
  }

  readAt(buf: Buffer, off: number): Promise<void> {
    return this.#request(NBD_CMD_READ, 0, off, buf.length, buf);
  }

  writeAt(buf: Buffer, off: number, options?: WriteOptions): Promise<void> {
    const flags = options?.fua === true ? NBD_CMD_FLAG_FUA : 0;
    return this.#request(NBD_CMD_WRITE, flags, off, buf.length, buf);
  }

  flush(): Promise<void> {
    return this.#request(NBD_CMD_FLUSH, 0, 0, 0, undefined);
  }

  trim(off: number, length: number, options?: WriteOptions): Promise<void> {
    return this.#request(NBD_CMD_TRIM, options?.fua === true ? NBD_CMD_FLAG_FUA : 0, off, length, undefined);
  }

  zero(off: number, length: number, options?: ZeroOptions): Promise<void> {
    const flags = (options?.fua === true ? NBD_CMD_FLAG_FUA : 0) | (options?.noHole === true ? NBD_CMD_FLAG_NO_HOLE : 0);
    return this.#request(NBD_CMD_WRITE_ZEROES, flags, off, length, undefined);
  }

  /** base:allocation was negotiated: blockStatus() works. */
  get canBlockStatus(): boolean {
    return this.info.allocationContext !== undefined;
  }

  /**
   * NBD_CMD_BLOCK_STATUS for base:allocation: the extents from `off` (NBD_STATE_HOLE = 1,
   * NBD_STATE_ZERO = 2), covering at least a part of [off, off + length), trimmed to it. Rejects
   * with ENOTSUP when the server selected no base:allocation context.
   */
  async blockStatus(off: number, length: number): Promise<NbdClientExtent[]> {
    if (this.info.allocationContext === undefined) throw new NbdRequestError(NBD_ENOTSUP, 'NBD_CMD_BLOCK_STATUS: the server has no base:allocation context');
    const extents: NbdClientExtent[] = [];
    await this.#request(NBD_CMD_BLOCK_STATUS, 0, off, length, undefined, extents);
    // The spec lets the last extent run past the request; callers get exactly what they asked about.
    let covered = 0;
    const out: NbdClientExtent[] = [];
    for (const e of extents) {
      if (covered >= length || e.length === 0) break;
      const n = Math.min(e.length, length - covered);
      out.push({ length: n, flags: e.flags });
      covered += n;
    }
    return out;
  }

  /** Waits for requests in flight, sends NBD_CMD_DISC and ends the socket. Idempotent. */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    if (this.#error === undefined && this.#inFlight > 0) {
      await new Promise<void>((resolve) => (this.#drained = resolve));
    }
    if (this.#error === undefined && !this.#socket.destroyed) {
      this.#socket.end(this.#header(NBD_CMD_DISC, 0, 0, 0, 0, 0));
    } else {
      this.#socket.destroy();
    }
    const timeoutMs = this.#options.timeoutMs;
    const timer = timeoutMs > 0 ? setTimeout(() => this.#socket.destroy(), timeoutMs) : undefined;
    try {
      await this.#closed;
    } finally {
      clearTimeout(timer);
    }
  }

  #request(type: number, flags: number, off: number, length: number, buf: Buffer | undefined, extents?: NbdClientExtent[]): Promise<void> {
    if (this.#error !== undefined || this.#closing !== undefined) return Promise.reject(new ClosedError('NBD connection'));
    if (!Number.isSafeInteger(off) || off < 0 || length > U32_MAX) return Promise.reject(new OutOfRangeError(off, length, this.size));
    const missing = this.#missingFlag(type, flags);
    if (missing !== 0) {
      return Promise.reject(new NbdRequestError(NBD_ENOTSUP, `${nameOf(NbdCmd, type)}: the server does not advertise ${flagNames(NbdTransmissionFlag, missing)}`));
    }
    if (length === 0 && type !== NBD_CMD_FLUSH) return Promise.resolve();
    const p = this.#free.length > 0 ? this.#slots[this.#free.pop()!]! : this.#newSlot();
    this.#seq = (this.#seq + 1) >>> 0;
    p.seq = this.#seq;
    p.type = type;
    p.off = off;
    p.length = length;
    p.buf = type === NBD_CMD_READ ? buf : undefined;
    p.extents = extents;
    const promise = new Promise<void>(this.#capture);
    p.resolve = this.#captureResolve;
    p.reject = this.#captureReject;
    this.#inFlight++;
    if (!this.#corked) {
      this.#corked = true;
      this.#socket.cork();
      process.nextTick(this.#uncork);
    }
    this.#socket.write(this.#header(type, flags, p.seq, p.index, off, length));
    if (type === NBD_CMD_WRITE) this.#socket.write(buf!);
    return promise;
  }

  #missingFlag(type: number, flags: number): number {
    const t = this.transmissionFlags;
    if ((flags & NBD_CMD_FLAG_FUA) !== 0 && (t & NBD_FLAG_SEND_FUA) === 0) return NBD_FLAG_SEND_FUA;
    if (type === NBD_CMD_FLUSH && (t & NBD_FLAG_SEND_FLUSH) === 0) return NBD_FLAG_SEND_FLUSH;
    if (type === NBD_CMD_TRIM && (t & NBD_FLAG_SEND_TRIM) === 0) return NBD_FLAG_SEND_TRIM;
    if (type === NBD_CMD_WRITE_ZEROES && (t & NBD_FLAG_SEND_WRITE_ZEROES) === 0) return NBD_FLAG_SEND_WRITE_ZEROES;
    return 0;
  }

  #header(type: number, flags: number, handleHi: number, handleLo: number, off: number, length: number): Buffer {
    const h = Buffer.allocUnsafe(NBD_REQUEST_SIZE);
    const offHi = Math.floor(off / TWO_32);
    h.writeUInt32BE(NBD_REQUEST_MAGIC, 0);
    h.writeUInt16BE(flags, 4);
    h.writeUInt16BE(type, 6);
    h.writeUInt32BE(handleHi, 8);
    h.writeUInt32BE(handleLo, 12);
    h.writeUInt32BE(offHi, 16);
    h.writeUInt32BE(off - offHi * TWO_32, 20);
    h.writeUInt32BE(length, 24);
    return h;
  }

  #newSlot(): Pending {
    const p = new Pending(this.#slots.length);
    this.#slots.push(p);
    return p;
  }

  readonly #capture = (resolve: () => void, reject: (err: Error) => void): void => {
    this.#captureResolve = resolve;
    this.#captureReject = reject;
  };

  readonly #uncork = (): void => {
    this.#corked = false;
    this.#socket.uncork();
  };

  readonly #onData = (chunk: Buffer): void => this.#replies.push(chunk);

  #complete(p: Pending, errno: number): void {
    const resolve = p.resolve!;
    const reject = p.reject!;
    const { type, off, length } = p;
    p.resolve = p.reject = p.buf = p.extents = undefined;
    p.errno = 0;
    this.#free.push(p.index);
    this.#inFlight--;
    if (errno === 0) {
      resolve();
    } else {
      reject(new NbdRequestError(errno, `${nameOf(NbdCmd, type)} off=${off} length=${length}: ${nameOf(NbdErrno, errno)}`));
      // The spec: a client that receives ESHUTDOWN must initiate a soft disconnect.
      if (errno === NBD_ESHUTDOWN) void this.close();
    }
    if (this.#inFlight === 0 && this.#drained !== undefined) {
      const drained = this.#drained;
      this.#drained = undefined;
      drained();
    }
  }

  readonly #onEnd = (): void => {
    if (this.#closing === undefined || this.#inFlight > 0) {
      this.#fail(new ClosedError(`NBD connection (ended by the server with ${this.#inFlight} requests in flight)`));
    }
  };

  readonly #onError = (err: Error): void => this.#fail(err);

  readonly #onClose = (): void => {
    if (this.#closing === undefined || this.#inFlight > 0) this.#fail(new ClosedError('NBD connection'));
    this.#resolveClosed?.(this.#error);
    this.#resolveClosed = undefined;
  };

  /** Ends the connection for good: every pending request rejects with `err`. */
  #fail(err: Error): void {
    if (this.#error !== undefined) return;
    this.#error = err;
    if (this.#closing === undefined) this.#log.warn({ err, inFlight: this.#inFlight }, 'NBD connection failed');
    this.#socket.destroy();
    for (const p of this.#slots) {
      const reject = p.reject;
      if (reject === undefined) continue;
      p.resolve = p.reject = p.buf = p.extents = undefined;
      p.errno = 0;
      this.#free.push(p.index);
      reject(err);
    }
    this.#inFlight = 0;
    const drained = this.#drained;
    this.#drained = undefined;
    drained?.();
  }
}

function resolveOptions(options: NbdClientOptions): ResolvedOptions {
  return Object.freeze({
    exportName: options.exportName ?? '',
    timeoutMs: options.timeoutMs ?? 30_000,
    tls: options.tls,
    host: options.host,
    structuredReplies: options.structuredReplies ?? true,
    log: options.log ?? silentLogger,
  });
}
