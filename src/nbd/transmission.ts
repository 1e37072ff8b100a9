/**
 * One connection's transmission phase: requests are parsed in order, dispatched at once (served
 * concurrently) and answered as each completes, in any order.
 *
 * - Validate, act, then reply: no reply header leaves before the result is known. A READ's header
 *   and payload go out in one writev (the socket is corked until the next tick, which also batches
 *   every reply that completes in the same tick).
 * - Bounded: reading stops (socket paused, parser stopped) at `maxInFlight` requests or
 *   `maxInFlightBytes` of payload in flight, and while more than OUTPUT_HIGH_WATER bytes of replies
 *   wait in the socket (until 'drain').
 * - Buffers: READ data and WRITE payloads that span chunks come from a per-connection PayloadPool; a
 *   READ buffer goes back only in its write callback, never while the socket may still send it.
 *   With a backend that has `writev`, a WRITE payload that spans chunks is not copied at all: the
 *   parser hands over its chunk views (`req.pieces`) and they go to `backend.writev` as they are.
 * - An accepted plain socket is re-opened with `onread`: every read goes into one reused buffer,
 *   or straight to where the WRITE payload being received belongs. With a backend that has
 *   `views` (memory) that is the backend's pages, so nothing is copied in user space (and a READ
 *   reply is sent from them); otherwise a large payload is read into a pooled buffer of its own.
 * - Bad requests get an NBD errno and the connection goes on; a broken stream (bad magic) closes
 *   only this connection, with one log line.
 */
import diagnosticsChannel from 'node:diagnostics_channel';
import type { Socket } from 'node:net';
import { NbdProtocolError } from '../errors.js';
import type { Logger } from '../log.js';
import { appendExtent } from '../pipeline/extents.js';
import type { Backend } from '../pipeline/types.js';
import {
  encodeBlockStatusReply,
  encodeSimpleReply,
  encodeStructuredError,
  encodeStructuredReplyHeader,
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE_NONE,
  NBD_REPLY_TYPE_OFFSET_DATA,
  NBD_STRUCTURED_REPLY_HEADER_SIZE,
  writeU64,
  type NbdExtent,
} from './codec.js';
import {
  NBD_CMD_BLOCK_STATUS, NBD_CMD_CACHE, NBD_CMD_DISC, NBD_CMD_FLAG_DF, NBD_CMD_FLAG_FAST_ZERO, NBD_CMD_FLAG_REQ_ONE, NBD_CMD_FLAG_FUA, NBD_CMD_FLAG_NO_HOLE, NBD_CMD_FLUSH, NBD_CMD_READ, NBD_CMD_TRIM, NBD_CMD_WRITE, NBD_CMD_WRITE_ZEROES,
  NBD_EINVAL, NBD_ENOSPC, NBD_ENOTSUP, NBD_EOVERFLOW, NBD_EPERM, NBD_FLAG_READ_ONLY, NBD_FLAG_SEND_FAST_ZERO, NBD_FLAG_SEND_FUA, NBD_SIMPLE_REPLY_SIZE,
} from './constants.js';
import { replyErrnoFor } from './errno.js';
import { NbdRequest, RequestParser, type RequestSink } from './parser.js';
import { PayloadPool } from './payload-pool.js';
import { readDataOnly, sparseReplyParts } from './sparse-read.js';
import { reopenWithUserBuffers } from './user-buffer-socket.js';

export interface TransmissionOptions {
  readonly backend: Backend;
  /** Export size in bytes, as advertised in the handshake. */
  readonly size: number;
  readonly transmissionFlags: number;
  /** Structured replies were negotiated: READ replies are OFFSET_DATA or ERROR chunks. */
  readonly structured?: boolean;
  /** base:allocation's context id when the client selected it: BLOCK_STATUS is served. */
  readonly allocationContext?: number;
  readonly maxPayload: number;
  readonly maxInFlight: number;
  readonly maxInFlightBytes: number;
  readonly minBlockSize: number;
  /**
   * The socket may be re-opened to read into reused buffers (user-buffer-socket.ts): true for
   * connections the server accepted, not for sockets it was handed (their owner closes them).
   */
  readonly userBuffers?: boolean;
  /** Connection id for diagnostics events. */
  readonly conn: number;
  /** The connection's child logger. */
  readonly log: Logger;
}

/** Per-request events for r3map-bench and debugging: { conn, cmd, offset, length, errno }. */
export const requestChannel = diagnosticsChannel.channel('r3map:nbd:request');

/** Reply bytes queued in the socket above which reading pauses until 'drain'. */
const OUTPUT_HIGH_WATER = 4 * 1024 * 1024;
/** WRITE_ZEROES without backend.zero is written from this one shared buffer, piece by piece. */
const ZEROES = Buffer.alloc(1024 * 1024);
/** Most extents in one BLOCK_STATUS reply (the reply then covers less than was asked, as the spec allows). */
const MAX_EXTENTS = 4096;
/** How long a closing socket may wait for the peer's FIN before it is destroyed. */
const CLOSE_GRACE_MS = 2000;

const STATE_RUNNING = 0;
const STATE_DRAINING = 1;
const STATE_ENDING = 2;
const STATE_CLOSED = 3;

/** A structured READ at least this long from a backend with `localExtents` asks for its holes first. */
const SPARSE_READ_MIN = 64 * 1024;
const EMPTY = Buffer.alloc(0);
/** READ replies from Backend.views up to this size go out as one buffer (header and data copied in). */
const COALESCE_MAX = 16 * 1024;
/** On a re-opened socket, WRITE payloads from this size on are read into a pooled buffer of their own. */
const STAGE_MIN = 64 * 1024;
/** Size of the reused buffer a re-opened socket reads requests into (Node's own read size). */
const READ_BUFFER_SIZE = 64 * 1024;

export class Transmission implements RequestSink {
  #socket: Socket;
  readonly #backend: Backend;
  readonly #options: TransmissionOptions;
  readonly #log: Logger;
  #parser: RequestParser;
  /** The reused read buffer of a re-opened socket; undefined while Node allocates per read. */
  #readBuffer: Buffer | undefined = undefined;
  readonly #pool: PayloadPool;
  readonly #readOnly: boolean;
  /** FUA where advertised (writable exports), else 0: an unadvertised flag is EINVAL. */
  readonly #fuaFlag: number;
  /** FAST_ZERO where advertised (writable exports), else 0. */
  readonly #fastZeroFlag: number;
  /** DF where advertised (structured replies): the READ reply is then one OFFSET_DATA chunk, holes included. */
  readonly #dfFlag: number;
  readonly #structured: boolean;
  /** RequestSink: multi-chunk WRITE payloads as chunk views, for backend.writev. */
  readonly scatterWrites: boolean;
  #state = STATE_RUNNING;
  #inFlight = 0;
  #inFlightBytes = 0;
  #paused = false;
  #outputBlocked = false;
  #corked = false;
  #readEnded = false;
  #syncOnEnd = false;
  #dirty = false;
  /** Pool buffers of READ replies in socket write order; each write callback releases the oldest. */
  readonly #sent: (Buffer | undefined)[] = [];
  #sentHead = 0;
  #closeTimer: NodeJS.Timeout | undefined = undefined;
  readonly #closed: Promise<void>;
  #resolveClosed!: () => void;
  #socketClosed = false;
  #endDone = false;

  constructor(socket: Socket, options: TransmissionOptions) {
    this.#socket = socket;
    this.#options = options;
    this.#backend = options.backend;
    this.#log = options.log;
    this.#readOnly = (options.transmissionFlags & NBD_FLAG_READ_ONLY) !== 0;
    this.#fuaFlag = (options.transmissionFlags & NBD_FLAG_SEND_FUA) !== 0 ? NBD_CMD_FLAG_FUA : 0;
    this.#fastZeroFlag = (options.transmissionFlags & NBD_FLAG_SEND_FAST_ZERO) !== 0 ? NBD_CMD_FLAG_FAST_ZERO : 0;
    this.#structured = options.structured === true;
    this.#dfFlag = this.#structured ? NBD_CMD_FLAG_DF : 0;
    this.scatterWrites = options.backend.writev !== undefined;
    this.#parser = new RequestParser(this);
    this.#pool = new PayloadPool({ maxRetainedBytes: Math.min(options.maxInFlightBytes, 32 * 1024 * 1024) });
    this.#closed = new Promise((resolve) => (this.#resolveClosed = resolve));
  }

  /** Resolves once the socket is closed and no request is in flight; never rejects. */
  get closed(): Promise<void> {
    return this.#closed;
  }

  /** Takes over the socket's events; `remainder` is what followed the handshake in its last chunk. */
  start(remainder: Buffer | undefined): void {
    if (this.#options.userBuffers === true) this.#useUserBuffers();
    const socket = this.#socket;
    socket.on('data', this.#onData);
    socket.on('end', this.#onEnd);
    socket.on('drain', this.#onDrain);
    socket.on('close', this.#onClose);
    if (socket.destroyed) this.#onClose();
    else if (remainder !== undefined) this.#onData(remainder);
  }

  /** Re-opens the socket to read into `#readBuffer` or straight into the backend's pages. */
  #useUserBuffers(): void {
    // Both are in place before the reopen: the new socket asks for its first buffer at once.
    const parser = this.#parser;
    this.#readBuffer = Buffer.allocUnsafeSlow(READ_BUFFER_SIZE);
    this.#parser = new RequestParser(this, { transient: true });
    const reopened = reopenWithUserBuffers(this.#socket, { buffer: this.#nextReadBuffer, callback: this.#onUserRead });
    if (reopened === undefined) {
      this.#readBuffer = undefined;
      this.#parser = parser;
      return;
    }
    this.#socket = reopened;
    this.#log.debug('reading into reused buffers');
    reopened.on('error', (err) => this.#log.debug({ err }, 'socket error'));
    reopened.resume();
  }

  readonly #nextReadBuffer = (): Buffer => this.#parser.directBuffer() ?? this.#readBuffer!;

  readonly #onUserRead = (n: number, buf: Buffer): boolean => {
    try {
      if (buf === this.#readBuffer) this.#parser.push(buf.subarray(0, n));
      else this.#parser.pushDirect(n);
    } catch (err) {
      this.#fail(err);
    }
    return true;
  };

  /** Graceful stop for server close: read no more, finish what is in flight, sync if written, close. */
  shutdown(): Promise<void> {
    if (this.#state === STATE_RUNNING) {
      this.#syncOnEnd = this.#dirty;
      this.#beginDrain();
    }
    return this.#closed;
  }

  // ---- RequestSink: validate at header time, then dispatch ------------------------------------

  validate(req: NbdRequest): number {
    const { type, flags, offset, length } = req;
    switch (type) {
      case NBD_CMD_READ:
      case NBD_CMD_WRITE:
      case NBD_CMD_TRIM:
      case NBD_CMD_WRITE_ZEROES: {
        const allowed = type === NBD_CMD_WRITE_ZEROES ? this.#fuaFlag | NBD_CMD_FLAG_NO_HOLE | this.#fastZeroFlag
          : type === NBD_CMD_READ ? this.#fuaFlag | this.#dfFlag : this.#fuaFlag;
        if ((flags & ~allowed) !== 0) return NBD_EINVAL;
        if (type !== NBD_CMD_READ && this.#readOnly) return NBD_EPERM;
        // FAST_ZERO: fail at once where a zero is no quicker than writing zeros (the spec's MUST).
        if ((flags & NBD_CMD_FLAG_FAST_ZERO) !== 0 && (this.#backend.zero === undefined || this.#backend.fastZero !== true)) return NBD_ENOTSUP;
        if (type !== NBD_CMD_TRIM && type !== NBD_CMD_WRITE_ZEROES && length > this.#options.maxPayload) return NBD_EOVERFLOW;
        if (offset + length > this.#options.size) {
          // The spec: a write past the end SHOULD fail with ENOSPC (as nbdkit does); reads and trims with EINVAL.
          return type === NBD_CMD_WRITE || type === NBD_CMD_WRITE_ZEROES ? NBD_ENOSPC : NBD_EINVAL;
        }
        const min = this.#options.minBlockSize;
        if (min > 1 && (offset % min !== 0 || length % min !== 0)) return NBD_EINVAL;
        return 0;
      }
      case NBD_CMD_FLUSH:
        return (flags & ~this.#fuaFlag) !== 0 || offset !== 0 || length !== 0 ? NBD_EINVAL : 0;
      case NBD_CMD_CACHE:
        return flags !== 0 || offset + length > this.#options.size ? NBD_EINVAL : 0;
      case NBD_CMD_BLOCK_STATUS:
        if (this.#options.allocationContext === undefined || (flags & ~NBD_CMD_FLAG_REQ_ONE) !== 0) return NBD_EINVAL;
        return length === 0 || offset + length > this.#options.size ? NBD_EINVAL : 0;
      case NBD_CMD_DISC:
        return 0;
      default:
        return NBD_EINVAL;
    }
  }

  allocPayload(length: number): Buffer {
    return this.#pool.acquire(length);
  }

  /**
   * Where a WRITE payload goes: straight into the backend's pages where it has them
   * (Backend.views); on a re-opened socket, a large one into a pooled buffer of its own, so the
   * socket reads it there in a few large reads; otherwise as the parser receives it.
   */
  writeTarget(req: NbdRequest): readonly Buffer[] | undefined {
    const backend = this.#backend;
    if (backend.views === undefined) {
      if (this.#readBuffer === undefined || req.length < STAGE_MIN) return undefined;
      const buf = this.#pool.acquire(req.length);
      req.pooled = buf;
      req.payload = buf.length === req.length ? buf : buf.subarray(0, req.length);
      return [req.payload];
    }
    try {
      const views = backend.views(req.offset, req.length, true);
      req.direct = true;
      return views;
    } catch (err) {
      req.errno = replyErrnoFor(err, this.#log, { cmd: req.type, offset: req.offset, length: req.length });
      return undefined;
    }
  }

  onRequest(req: NbdRequest): boolean {
    if (this.#state !== STATE_RUNNING) return false;
    if (req.type === NBD_CMD_DISC) {
      this.#log.debug('NBD_CMD_DISC');
      this.#syncOnEnd = !this.#readOnly;
      this.#beginDrain();
      return false;
    }
    if (req.errno !== 0 || (req.length === 0 && req.type !== NBD_CMD_FLUSH)) {
      this.#reply(req, req.errno);
      if (req.errno !== 0) this.#log.debug({ cmd: req.type, offset: req.offset, length: req.length, errno: req.errno }, 'request refused');
    } else {
      this.#inFlight++;
      if (req.type === NBD_CMD_READ || req.type === NBD_CMD_WRITE) this.#inFlightBytes += req.length;
      void this.#serve(req);
    }
    this.#updateFlow();
    return !this.#paused;
  }

  // ---- serving -----------------------------------------------------------------------------

  async #serve(req: NbdRequest): Promise<void> {
    let errno = 0;
    try {
      const backend = this.#backend;
      switch (req.type) {
        case NBD_CMD_READ: {
          if (backend.views !== undefined) {
            req.views = backend.views(req.offset, req.length, false);
            break;
          }
          const buf = this.#pool.acquire(req.length);
          req.pooled = buf;
          req.payload = buf.length === req.length ? buf : buf.subarray(0, req.length);
          if (this.#structured && (req.flags & NBD_CMD_FLAG_DF) === 0 && backend.localExtents === true && req.length >= SPARSE_READ_MIN) {
            req.views = await readDataOnly(backend, req, req.payload);
            if (req.views !== undefined) break;
          }
          await backend.readAt(req.payload, req.offset);
          break;
        }
        case NBD_CMD_WRITE:
          if (req.direct) {
            // already in the backend's pages (writeTarget)
          } else if (req.pieces !== undefined) {
            const pieces = req.pieces;
            req.pieces = undefined;
            await backend.writev!(pieces, req.offset);
          } else {
            await backend.writeAt(req.payload!, req.offset);
          }
          this.#dirty = true;
          break;
        case NBD_CMD_FLUSH:
          if (!this.#readOnly) await this.#sync();
          break;
        case NBD_CMD_TRIM:
          if (backend.trim !== undefined) await backend.trim(req.offset, req.length);
          this.#dirty = true;
          break;
        case NBD_CMD_WRITE_ZEROES:
          await this.#zero(req.offset, req.length);
          this.#dirty = true;
          break;
        case NBD_CMD_CACHE:
          if (backend.cache !== undefined) await backend.cache(req.offset, req.length);
          break;
        case NBD_CMD_BLOCK_STATUS:
          req.payload = encodeBlockStatusReply(this.#options.allocationContext!, await this.#extents(req), req.handleHi, req.handleLo);
          break;
      }
      if ((req.flags & NBD_CMD_FLAG_FUA) !== 0 && req.type !== NBD_CMD_READ && req.type !== NBD_CMD_FLUSH) await this.#sync();
    } catch (err) {
      errno = replyErrnoFor(err, this.#log, { cmd: req.type, offset: req.offset, length: req.length });
    }
    this.#complete(req, errno);
  }

  #sync(): Promise<void> {
    this.#dirty = false;
    return this.#backend.sync();
  }

  async #zero(offset: number, length: number): Promise<void> {
    if (this.#backend.zero !== undefined) return this.#backend.zero(offset, length);
    for (let off = offset, left = length; left > 0; ) {
      const n = Math.min(left, ZEROES.length);
      await this.#backend.writeAt(n === ZEROES.length ? ZEROES : ZEROES.subarray(0, n), off);
      off += n;
      left -= n;
    }
  }

  /**
   * base:allocation for [offset, offset + length): the backend's extents where it has them (trimmed
   * to the request, empty ones dropped, neighbours with equal flags merged, one with REQ_ONE, at
   * most MAX_EXTENTS), else one extent of data. The reply may cover less than asked, never more.
   */
  async #extents(req: NbdRequest): Promise<NbdExtent[]> {
    const { offset, length } = req;
    const found = this.#backend.extents === undefined ? undefined : await this.#backend.extents(offset, length);
    const out: { length: number; flags: number }[] = [];
    let covered = 0;
    for (const e of found ?? [{ length, flags: 0 }]) {
      const n = Math.min(e.length, length - covered);
      if (n <= 0) continue;
      appendExtent(out, n, e.flags);
      covered += n;
      if (covered >= length || out.length >= MAX_EXTENTS) break;
    }
    if (out.length === 0) out.push({ length, flags: 0 });
    return (req.flags & NBD_CMD_FLAG_REQ_ONE) !== 0 ? out.slice(0, 1) : out;
  }

  #complete(req: NbdRequest, errno: number): void {
    try {
      this.#inFlight--;
      if (req.type === NBD_CMD_READ || req.type === NBD_CMD_WRITE) this.#inFlightBytes -= req.length;
      this.#reply(req, errno);
      if (this.#state === STATE_RUNNING) this.#updateFlow();
      else this.#maybeEnd();
    } catch (err) {
      this.#fail(err);
    }
  }

  /** Sends the simple reply (with READ data on success) and gives back buffers no longer needed. */
  #reply(req: NbdRequest, errno: number): void {
    if (requestChannel.hasSubscribers) {
      requestChannel.publish({ conn: this.#options.conn, cmd: req.type, offset: req.offset, length: req.length, errno });
    }
    const socket = this.#socket;
    const withData = errno === 0 && req.type === NBD_CMD_READ && (req.payload !== undefined || req.views !== undefined);
    if (socket.destroyed || !socket.writable) {
      if (req.pooled !== undefined) this.#pool.release(req.pooled);
      return;
    }
    if (!this.#corked) {
      this.#corked = true;
      socket.cork();
      process.nextTick(this.#uncork);
    }
    const views = req.views;
    req.views = undefined;
    const sparse = views !== undefined && withData && this.#structured && (req.flags & NBD_CMD_FLAG_DF) === 0 ? sparseReplyParts(req, views) : undefined;
    if (sparse !== undefined) {
      // data and hole chunks; a pooled buffer (readDataOnly's) goes back after the last one
      for (let i = 0; i < sparse.length; i++) socket.write(sparse[i]!);
      if (req.pooled !== undefined) {
        this.#sent.push(req.pooled);
        socket.write(EMPTY, this.#onPayloadWritten);
      }
    } else if (views !== undefined && withData && req.length <= COALESCE_MAX) {
      // A small READ from the backend's pages: header and data in one buffer, one write.
      const headerLength = this.#structured ? NBD_STRUCTURED_REPLY_HEADER_SIZE + 8 : NBD_SIMPLE_REPLY_SIZE;
      const total = headerLength + req.length;
      const buf = this.#pool.acquire(total);
      this.#encodeDataHeader(buf, req);
      for (let i = 0, at = headerLength; i < views.length; i++) at += views[i]!.copy(buf, at);
      this.#sent.push(buf);
      socket.write(buf.length === total ? buf : buf.subarray(0, total), this.#onPayloadWritten);
    } else {
      socket.write(this.#replyHeader(req, errno, withData));
      if (views !== undefined && withData) {
        for (let i = 0; i < views.length; i++) socket.write(views[i]!);
      } else if (withData) {
        this.#sent.push(req.pooled);
        socket.write(req.payload!, this.#onPayloadWritten);
      } else if (req.pooled !== undefined) {
        this.#pool.release(req.pooled);
      }
    }
    req.payload = undefined;
    req.pooled = undefined;
    if (socket.writableLength > OUTPUT_HIGH_WATER) this.#outputBlocked = true;
  }

  /**
   * The reply's header: simple, or with structured replies for READ (one OFFSET_DATA chunk with
   * DONE, or an ERROR chunk) and BLOCK_STATUS (its encoded chunk, or an ERROR chunk).
   */
  #replyHeader(req: NbdRequest, errno: number, withData: boolean): Buffer {
    const structured = this.#structured && (req.type === NBD_CMD_READ || req.type === NBD_CMD_BLOCK_STATUS);
    if (!structured) {
      const header = Buffer.allocUnsafe(NBD_SIMPLE_REPLY_SIZE);
      encodeSimpleReply(header, 0, errno, req.handleHi, req.handleLo);
      return header;
    }
    if (errno !== 0) return encodeStructuredError(errno, req.handleHi, req.handleLo);
    if (req.type === NBD_CMD_BLOCK_STATUS) {
      const reply = req.payload!;
      req.payload = undefined;
      return reply;
    }
    const dataLength = withData ? req.length : 0;
    if (dataLength === 0) { // a zero-length READ: no data chunk, only the end of the reply
      const none = Buffer.allocUnsafe(NBD_STRUCTURED_REPLY_HEADER_SIZE);
      encodeStructuredReplyHeader(none, 0, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE, req.handleHi, req.handleLo, 0);
      return none;
    }
    const header = Buffer.allocUnsafe(NBD_STRUCTURED_REPLY_HEADER_SIZE + 8);
    this.#encodeDataHeader(header, req);
    return header;
  }

  /** The header of a successful READ reply with all its data, at the start of `target`. */
  #encodeDataHeader(target: Buffer, req: NbdRequest): void {
    if (!this.#structured) {
      encodeSimpleReply(target, 0, 0, req.handleHi, req.handleLo);
      return;
    }
    encodeStructuredReplyHeader(target, 0, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_DATA, req.handleHi, req.handleLo, 8 + req.length);
    writeU64(target, NBD_STRUCTURED_REPLY_HEADER_SIZE, req.offset);
  }

  readonly #uncork = (): void => {
    this.#corked = false;
    this.#socket.uncork();
  };

  /** Write callbacks run in write order, so the oldest entry of `#sent` is the one just sent. */
  readonly #onPayloadWritten = (): void => {
    const sent = this.#sent;
    const buf = sent[this.#sentHead];
    sent[this.#sentHead++] = undefined;
    if (this.#sentHead === sent.length || this.#sentHead >= 1024) {
      sent.splice(0, this.#sentHead);
      this.#sentHead = 0;
    }
    if (buf !== undefined) this.#pool.release(buf);
  };

  // ---- flow and lifecycle ------------------------------------------------------------------

  #updateFlow(): void {
    const pause =
      this.#state !== STATE_RUNNING ||
      this.#inFlight >= this.#options.maxInFlight ||
      this.#inFlightBytes >= this.#options.maxInFlightBytes ||
      this.#outputBlocked;
    if (pause) {
      if (!this.#paused) {
        this.#paused = true;
        this.#socket.pause();
      }
      return;
    }
    if (this.#paused) {
      this.#paused = false;
      if (!this.#readEnded) this.#socket.resume();
    }
    if (this.#parser.stopped) this.#parser.resume();
    if (this.#readEnded && !this.#parser.stopped && this.#parser.queuedBytes === 0) this.#onInputDone();
  }

  readonly #onData = (chunk: Buffer): void => {
    try {
      this.#parser.push(chunk);
    } catch (err) {
      this.#fail(err);
    }
  };

  readonly #onDrain = (): void => {
    this.#outputBlocked = false;
    if (this.#state !== STATE_RUNNING) return;
    try {
      this.#updateFlow();
    } catch (err) {
      this.#fail(err);
    }
  };

  readonly #onEnd = (): void => {
    this.#readEnded = true;
    if (this.#state === STATE_RUNNING && !this.#parser.stopped) this.#onInputDone();
  };

  /** The peer sent FIN and every byte it sent has been parsed. */
  #onInputDone(): void {
    if (this.#state !== STATE_RUNNING) return;
    if (this.#parser.midFrame) this.#log.warn('connection closed by the client in the middle of a request');
    else this.#log.debug('connection closed by the client without NBD_CMD_DISC');
    this.#syncOnEnd = this.#dirty;
    this.#beginDrain();
  }

  #beginDrain(): void {
    this.#parser.close();
    this.#state = STATE_DRAINING;
    this.#updateFlow();
    this.#maybeEnd();
  }

  /** Once draining and nothing is in flight: sync if asked, then end the socket. */
  #maybeEnd(): void {
    if (this.#state !== STATE_DRAINING || this.#inFlight > 0) return;
    this.#state = STATE_ENDING;
    void this.#end();
  }

  /**
   * Ends the socket, then syncs if asked. The client is not kept waiting for the sync (NBD_CMD_DISC
   * has no reply, and a write without FUA or FLUSH was never promised durable); whoever awaits
   * `closed` (the server's close, a mount's detach) still waits for it.
   */
  async #end(): Promise<void> {
    const socket = this.#socket;
    if (!this.#socketClosed && !socket.destroyed) {
      // Read (and drop) what still comes, so the peer's FIN is seen and the socket can close.
      if (this.#paused) socket.resume();
      socket.end();
      this.#closeTimer = setTimeout(() => socket.destroy(), CLOSE_GRACE_MS).unref();
    }
    if (this.#syncOnEnd) {
      try {
        await this.#sync();
      } catch (err) {
        this.#log.warn({ err }, 'sync at disconnect failed');
      }
    }
    this.#endDone = true;
    if (this.#socketClosed) this.#finish();
  }

  /** A broken stream or an unexpected throw: log once, drop this connection only. */
  #fail(err: unknown): void {
    if (this.#state === STATE_CLOSED || this.#socketClosed) return;
    if (err instanceof NbdProtocolError) this.#log.warn({ err }, `closing connection: ${err.message}`);
    else this.#log.error({ err }, 'closing connection after an unexpected error');
    this.#parser.close();
    if (this.#state === STATE_RUNNING) {
      this.#syncOnEnd = this.#dirty;
      this.#state = STATE_DRAINING;
    }
    this.#socket.destroy();
  }

  readonly #onClose = (): void => {
    this.#socketClosed = true;
    this.#parser.close();
    if (this.#closeTimer !== undefined) clearTimeout(this.#closeTimer);
    if (this.#state === STATE_RUNNING) {
      this.#syncOnEnd = this.#dirty;
      this.#state = STATE_DRAINING;
    }
    if (this.#state === STATE_DRAINING) this.#maybeEnd();
    else if (this.#state === STATE_ENDING && this.#endDone) this.#finish();
  };

  #finish(): void {
    if (this.#state === STATE_CLOSED) return;
    this.#state = STATE_CLOSED;
    this.#resolveClosed();
  }
}
