/**
 * A userspace NBD client: fixed newstyle handshake (handshake.ts), then pipelined
 * transmission with simple replies. Any number of requests may be in flight; each carries a handle
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
import { ClosedError, NbdProtocolError, NbdRequestError, OutOfRangeError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import {
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
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_SIMPLE_REPLY_SIZE,
  NBD_STRUCTURED_REPLY_MAGIC,
  NbdCmd,
  NbdErrno,
  NbdTransmissionFlag,
  flagNames,
  nameOf,
} from '../nbd/constants.js';
import type { NbdClientTlsOptions } from '../nbd/tls.js';
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
  readonly log: Logger;
}

const U32_MAX = 0xffffffff;
const TWO_32 = 2 ** 32;

/** One request slot; reused, so a request costs a header buffer and a promise. */
class Pending {
  readonly index: number;
  seq = 0;
  type = 0;
  off = 0;
  length = 0;
  buf: Buffer | undefined;
  resolve: (() => void) | undefined;
  reject: ((err: Error) => void) | undefined;
  constructor(index: number) {
    this.index = index;
  }
}

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
  readonly #hdr = Buffer.allocUnsafe(NBD_SIMPLE_REPLY_SIZE);
  #hdrFill = 0;
  #payload: Pending | undefined;
  #payloadFill = 0;
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

  #request(type: number, flags: number, off: number, length: number, buf: Buffer | undefined): Promise<void> {
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

  readonly #onData = (chunk: Buffer): void => {
    const n = chunk.length;
    let pos = 0;
    while (pos < n && this.#error === undefined) {
      const p = this.#payload;
      if (p !== undefined) {
        const take = Math.min(p.length - this.#payloadFill, n - pos);
        chunk.copy(p.buf!, this.#payloadFill, pos, pos + take);
        pos += take;
        this.#payloadFill += take;
        if (this.#payloadFill === p.length) {
          this.#payload = undefined;
          this.#complete(p, 0);
        }
      } else if (this.#hdrFill === 0 && n - pos >= NBD_SIMPLE_REPLY_SIZE) {
        this.#onReply(chunk, pos);
        pos += NBD_SIMPLE_REPLY_SIZE;
      } else {
        const take = Math.min(NBD_SIMPLE_REPLY_SIZE - this.#hdrFill, n - pos);
        chunk.copy(this.#hdr, this.#hdrFill, pos, pos + take);
        pos += take;
        this.#hdrFill += take;
        if (this.#hdrFill === NBD_SIMPLE_REPLY_SIZE) {
          this.#hdrFill = 0;
          this.#onReply(this.#hdr, 0);
        }
      }
    }
  };

  #onReply(buf: Buffer, at: number): void {
    const magic = buf.readUInt32BE(at);
    if (magic !== NBD_SIMPLE_REPLY_MAGIC) {
      this.#fail(new NbdProtocolError(magic === NBD_STRUCTURED_REPLY_MAGIC
        ? 'structured reply although none was negotiated'
        : `bad reply magic 0x${magic.toString(16)} (want 0x${NBD_SIMPLE_REPLY_MAGIC.toString(16)})`));
      return;
    }
    const errno = buf.readUInt32BE(at + 4);
    const seq = buf.readUInt32BE(at + 8);
    const index = buf.readUInt32BE(at + 12);
    const p = this.#slots[index];
    if (p === undefined || p.resolve === undefined || p.seq !== seq) {
      this.#fail(new NbdProtocolError(`reply for a handle with no request in flight: ${seq}:${index}`));
      return;
    }
    if (errno === 0 && p.type === NBD_CMD_READ) {
      this.#payload = p;
      this.#payloadFill = 0;
      return;
    }
    this.#complete(p, errno);
  }

  #complete(p: Pending, errno: number): void {
    const resolve = p.resolve!;
    const reject = p.reject!;
    const { type, off, length } = p;
    p.resolve = p.reject = p.buf = undefined;
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
    this.#payload = undefined;
    for (const p of this.#slots) {
      const reject = p.reject;
      if (reject === undefined) continue;
      p.resolve = p.reject = p.buf = undefined;
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
    log: options.log ?? silentLogger,
  });
}
