/**
 * Incremental parser for transmission-phase requests; copes with any chunking.
 *
 * - A header that arrives whole is decoded in place; one split across chunks is gathered into a
 *   28-byte scratch buffer.
 * - A WRITE payload that arrives inside one chunk is handed out as a `subarray` view (no copy; Node
 *   never reuses the 'data' chunks of a net.Socket or tls.TLSSocket: each read gets its own
 *   ArrayBuffer, which test/nbd/transmission.test.ts checks). One that spans chunks
 *   is, for a sink with `scatterWrites`, handed out as the list of its chunk views (`pieces`, for
 *   Backend.writev: no copy at all); otherwise, or when the pieces get too small on average (over
 *   2 + length / MIN_AVG_PIECE of them), it is copied piece by piece straight into a destination the
 *   sink provides (`allocPayload`): never a concat of socket chunks.
 * - A sink with `writeTarget` may name where a WRITE payload goes (a backend's own memory, or a
 *   buffer of its own): the bytes are copied there from the chunk, and the rest is read by the
 *   socket straight into it (`directBuffer()` names the next read's destination, `pushDirect(n)` reports it): the
 *   payload is never copied in user space beyond the first chunk.
 * - Transient chunks (`transient`: the socket reads into one reused buffer) are never kept: a
 *   WRITE payload inside one is copied out, and bytes left queued when parsing stops are copied.
 * - The sink validates each header before its payload: a WRITE it refuses has its payload skipped
 *   (drained without buffering) so the stream stays in sync.
 * - Parsing stops when `onRequest` returns false and goes on at `resume()`; chunks pushed meanwhile
 *   are queued as they are. A bad magic throws NbdProtocolError and the parser is then dead.
 */
import type { NbdRequestHeader } from './codec.js';
import { decodeRequestHeader } from './codec.js';
import { NBD_CMD_WRITE, NBD_REQUEST_SIZE } from './constants.js';

/** One request as parsed; the transmission loop carries it until its reply is sent. */
export class NbdRequest implements NbdRequestHeader {
  flags = 0;
  type = 0;
  handleHi = 0;
  handleLo = 0;
  offset = 0;
  length = 0;
  /** NBD errno the sink's `validate` decided at header time; 0 when the request is valid. */
  errno = 0;
  /** WRITE payload (a chunk view or a view of `pooled`); undefined for other commands, a skipped payload or `pieces`. */
  payload: Buffer | undefined = undefined;
  /** A multi-chunk WRITE payload as its chunk views, in order (sinks with `scatterWrites` only). */
  pieces: Buffer[] | undefined = undefined;
  /** Buffer from the sink's allocator backing `payload` (or, later, READ data), to give back when done. */
  pooled: Buffer | undefined = undefined;
  /** A READ's data as the backend's own views (Backend.views), sent as they are. */
  views: readonly Buffer[] | undefined = undefined;
  /** The WRITE payload was received straight into the backend's own memory: it is written already (set by the sink). */
  direct = false;
}

export interface RequestSink {
  /** Take a WRITE payload that spans chunks as `req.pieces` (chunk views) instead of a copy. Read once. */
  readonly scatterWrites?: boolean;
  /** Called for each header before its payload. Returns an NBD errno; non-zero skips a WRITE payload. */
  validate(req: NbdRequest): number;
  /** A buffer of at least `length` bytes for a WRITE payload that spans chunks. */
  allocPayload(length: number): Buffer;
  /**
   * Where a valid WRITE's payload goes, as views to fill in order (their lengths add up to
   * `req.length`), or undefined to receive it as usual. May set `req.errno` instead (the payload
   * is then skipped). Called once per WRITE, after `validate` passed it. The sink records what the
   * views are (`req.direct` for the store's own memory, `req.payload` for a buffer of its own).
   */
  writeTarget?(req: NbdRequest): readonly Buffer[] | undefined;
  /** A complete request (WRITE payload received or skipped). Return false to stop parsing. */
  onRequest(req: NbdRequest): boolean;
}

export interface RequestParserOptions {
  /** Every pushed chunk is reused by the caller once `push` returns (see the file comment). */
  readonly transient?: boolean;
}

const STATE_HEADER = 0;
const STATE_PAYLOAD = 1;
const STATE_SKIP = 2;
const STATE_DEAD = 3;
/** A WRITE payload going into `writeTarget` views. */
const STATE_DIRECT = 4;
/** Pieces smaller than this on average are gathered into one buffer instead (bounds per-piece overhead). */
const MIN_AVG_PIECE = 4096;

export class RequestParser {
  readonly #sink: RequestSink;
  readonly #scatter: boolean;
  readonly #header = Buffer.allocUnsafe(NBD_REQUEST_SIZE);
  #headerFill = 0;
  #state = STATE_HEADER;
  /** The request whose payload is being copied or skipped. */
  #current: NbdRequest | undefined = undefined;
  #payloadFill = 0;
  /** Pieces allowed for `#current` before it is gathered into one buffer. */
  #maxPieces = 0;
  #skipLeft = 0;
  readonly #queue: Buffer[] = [];
  #stopped = false;
  #parsing = false;
  readonly #transient: boolean;
  /** STATE_DIRECT: the views being filled, the one being filled now and how far. */
  #targets: readonly Buffer[] = [];
  #targetIndex = 0;
  #targetFill = 0;

  constructor(sink: RequestSink, options: RequestParserOptions = {}) {
    this.#sink = sink;
    this.#transient = options.transient === true;
    this.#scatter = sink.scatterWrites === true && !this.#transient;
  }

  /** Feeds bytes; throws NbdProtocolError on garbage (the parser is then dead). */
  push(chunk: Buffer): void {
    if (this.#state === STATE_DEAD || chunk.length === 0) return;
    this.#queue.push(chunk);
    this.#drain();
    if (this.#transient) this.#keepQueued();
  }

  /**
   * Where the next socket read may go straight: the unfilled rest of the current `writeTarget`
   * view, while a payload is being received into one and nothing is queued; else undefined.
   */
  directBuffer(): Buffer | undefined {
    if (this.#state !== STATE_DIRECT || this.#queue.length > 0) return undefined;
    const target = this.#targets[this.#targetIndex]!;
    return this.#targetFill === 0 ? target : target.subarray(this.#targetFill);
  }

  /** `n` bytes were read straight into the buffer `directBuffer()` returned. */
  pushDirect(n: number): void {
    if (this.#state !== STATE_DIRECT) return;
    this.#advanceTarget(n);
    this.#drain();
  }

  /** Goes on parsing after `onRequest` returned false. */
  resume(): void {
    this.#stopped = false;
    this.#drain();
  }

  /** Stops for good (after NBD_CMD_DISC or on close); queued bytes are dropped. */
  close(): void {
    this.#state = STATE_DEAD;
    this.#queue.length = 0;
    this.#current = undefined;
  }

  get stopped(): boolean {
    return this.#stopped;
  }

  /** Bytes queued but not parsed yet (the parser was stopped). */
  get queuedBytes(): number {
    let n = 0;
    for (const chunk of this.#queue) n += chunk.length;
    return n;
  }

  /** True when part of a request has been consumed but not all of it. */
  get midFrame(): boolean {
    return this.#headerFill > 0 || this.#state === STATE_PAYLOAD || this.#state === STATE_SKIP || this.#state === STATE_DIRECT;
  }

  #drain(): void {
    if (this.#parsing) return;
    this.#parsing = true;
    try {
      const queue = this.#queue;
      while (queue.length > 0 && !this.#stopped && this.#state !== STATE_DEAD) {
        const chunk = queue[0]!;
        const pos = this.#consume(chunk);
        if (this.#state === STATE_DEAD) break;
        if (pos >= chunk.length) queue.shift();
        else queue[0] = chunk.subarray(pos);
      }
    } catch (err) {
      this.close();
      throw err;
    } finally {
      this.#parsing = false;
    }
  }

  /** Transient chunks: what stays queued is copied, since the caller reuses the chunk. */
  #keepQueued(): void {
    const queue = this.#queue;
    for (let i = 0; i < queue.length; i++) queue[i] = Buffer.from(queue[i]!);
  }

  /** STATE_DIRECT: `n` more bytes of the payload are in place. */
  #advanceTarget(n: number): void {
    this.#payloadFill += n;
    this.#targetFill += n;
    const targets = this.#targets;
    while (this.#targetIndex < targets.length && this.#targetFill >= targets[this.#targetIndex]!.length) {
      this.#targetFill -= targets[this.#targetIndex]!.length;
      this.#targetIndex++;
    }
    if (this.#payloadFill === this.#current!.length) {
      this.#targets = [];
      this.#finishCurrent();
    }
  }

  /** Parses from the start of `chunk` until it is used up or parsing stops; returns bytes consumed. */
  #consume(chunk: Buffer): number {
    const end = chunk.length;
    let pos = 0;
    while (pos < end && !this.#stopped && this.#state !== STATE_DEAD) {
      if (this.#state === STATE_HEADER) {
        const req = new NbdRequest();
        if (this.#headerFill === 0 && end - pos >= NBD_REQUEST_SIZE) {
          decodeRequestHeader(chunk, pos, req);
          pos += NBD_REQUEST_SIZE;
        } else {
          const n = Math.min(NBD_REQUEST_SIZE - this.#headerFill, end - pos);
          chunk.copy(this.#header, this.#headerFill, pos, pos + n);
          this.#headerFill += n;
          pos += n;
          if (this.#headerFill < NBD_REQUEST_SIZE) break;
          this.#headerFill = 0;
          decodeRequestHeader(this.#header, 0, req);
        }
        req.errno = this.#sink.validate(req);
        if (req.type !== NBD_CMD_WRITE || req.length === 0) {
          this.#emit(req);
        } else if (this.#takePayload(req)) {
          // skipped, or going into the sink's views
        } else if (end - pos >= req.length && !this.#transient) {
          req.payload = chunk.subarray(pos, pos + req.length);
          pos += req.length;
          this.#emit(req);
        } else {
          if (this.#scatter) {
            req.pieces = [];
            this.#maxPieces = 2 + Math.floor(req.length / MIN_AVG_PIECE);
          } else {
            this.#allocPayload(req);
          }
          this.#current = req;
          this.#payloadFill = 0;
          this.#state = STATE_PAYLOAD;
        }
      } else if (this.#state === STATE_DIRECT) {
        const target = this.#targets[this.#targetIndex]!;
        const n = Math.min(target.length - this.#targetFill, end - pos);
        chunk.copy(target, this.#targetFill, pos, pos + n);
        pos += n;
        this.#advanceTarget(n);
      } else if (this.#state === STATE_PAYLOAD) {
        const req = this.#current!;
        const n = Math.min(req.length - this.#payloadFill, end - pos);
        const pieces = req.pieces;
        if (pieces !== undefined && pieces.length < this.#maxPieces) pieces.push(chunk.subarray(pos, pos + n));
        else {
          if (pieces !== undefined) this.#gather(req, pieces);
          chunk.copy(req.payload!, this.#payloadFill, pos, pos + n);
        }
        this.#payloadFill += n;
        pos += n;
        if (this.#payloadFill === req.length) this.#finishCurrent();
      } else {
        const n = Math.min(this.#skipLeft, end - pos);
        this.#skipLeft -= n;
        pos += n;
        if (this.#skipLeft === 0) this.#finishCurrent();
      }
    }
    return pos;
  }

  /**
   * A WRITE with a payload: skipped when refused, else the sink is asked for target views. True
   * when the payload is taken care of (STATE_SKIP or STATE_DIRECT); false to receive it as usual.
   */
  #takePayload(req: NbdRequest): boolean {
    if (req.errno === 0) {
      if (this.#sink.writeTarget === undefined) return false;
      const targets = this.#sink.writeTarget(req);
      if (targets !== undefined && req.errno === 0) {
        this.#current = req;
        this.#targets = targets;
        this.#targetIndex = 0;
        this.#targetFill = 0;
        this.#payloadFill = 0;
        this.#state = STATE_DIRECT;
        return true;
      }
      if (req.errno === 0) return false;
    }
    this.#current = req;
    this.#skipLeft = req.length;
    this.#state = STATE_SKIP;
    return true;
  }

  #allocPayload(req: NbdRequest): void {
    const buf = this.#sink.allocPayload(req.length);
    req.pooled = buf;
    req.payload = buf.length === req.length ? buf : buf.subarray(0, req.length);
  }

  /** Too many small pieces: copy them into one payload buffer and go on copying. */
  #gather(req: NbdRequest, pieces: Buffer[]): void {
    this.#allocPayload(req);
    let at = 0;
    for (let i = 0; i < pieces.length; i++) {
      const piece = pieces[i]!;
      piece.copy(req.payload!, at);
      at += piece.length;
    }
    req.pieces = undefined;
  }

  #finishCurrent(): void {
    const req = this.#current!;
    this.#current = undefined;
    this.#state = STATE_HEADER;
    this.#emit(req);
  }

  #emit(req: NbdRequest): void {
    if (!this.#sink.onRequest(req)) this.#stopped = true;
  }
}
