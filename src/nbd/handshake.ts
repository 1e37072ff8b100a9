/**
 * The fixed newstyle server handshake, as a synchronous state machine fed with socket chunks.
 *
 * Greeting (NBDMAGIC, IHAVEOPT, FIXED_NEWSTYLE | NO_ZEROES) → client flags (unknown bits close the
 * connection) → options until NBD_OPT_GO succeeds, NBD_OPT_EXPORT_NAME names an export, or
 * NBD_OPT_ABORT. Supported: EXPORT_NAME, ABORT, LIST, INFO, GO, and STARTTLS when the server
 * has TLS (`tls`): the ACK ends in status 'starttls', the caller upgrades the socket, calls
 * `secured()` with the TLS socket and goes on feeding what arrives over TLS. With `tls.require`
 * (FORCEDTLS) every option but STARTTLS and ABORT gets NBD_REP_ERR_TLS_REQD until then, and an
 * EXPORT_NAME (which cannot fail) drops the connection. Any other option gets
 * NBD_REP_ERR_UNSUP and haggling goes on. Every length and loop is capped; a violation that leaves
 * the stream out of sync (bad magic, oversized option, unknown EXPORT_NAME) throws NbdProtocolError.
 */
import { NbdProtocolError } from '../errors.js';
import type { Logger } from '../log.js';
import {
  decodeInfoRequest,
  decodeMetaContextRequest,
  decodeOptionHeader,
  decodeString,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoString,
  encodeOptionReply,
  encodeRepMetaContext,
  encodeRepServer,
  type NbdOptionHeader,
} from './codec.js';
import {
  NBD_CLIENT_FLAGS_SIZE,
  NBD_FLAG_CAN_MULTI_CONN,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_HAS_FLAGS,
  NBD_FLAG_NO_ZEROES,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_CACHE,
  NBD_FLAG_SEND_DF,
  NBD_FLAG_SEND_FAST_ZERO,
  NBD_FLAG_SEND_WRITE_ZEROES,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_NAME,
  NBD_MAX_STRING,
  NBD_OPTION_HEADER_SIZE,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_INFO,
  NBD_OPT_LIST,
  NBD_OPT_LIST_META_CONTEXT,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STARTTLS,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ACK,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_TLS_REQD,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REP_INFO,
  NBD_REP_META_CONTEXT,
  NBD_REP_SERVER,
  NbdOpt,
  nameOf,
} from './constants.js';
import type { NbdExport } from './export.js';

export interface HandshakeOptions {
  readonly exports: readonly NbdExport[];
  readonly minBlockSize: number;
  readonly preferredBlockSize: number;
  /** Advertised as the NBD_INFO_BLOCK_SIZE maximum. */
  readonly maxPayload: number;
  /** Options accepted before the connection is dropped. */
  readonly maxOptions: number;
  /** Bytes of option data accepted in one option. */
  readonly maxOptionLength: number;
  /** Set when the server offers NBD_OPT_STARTTLS; `require` makes it FORCEDTLS. */
  readonly tls?: { readonly require: boolean } | undefined;
  readonly log: Logger;
}

export interface HandshakeOutput {
  write(buf: Buffer): unknown;
}

export interface HandshakeResult {
  readonly export: NbdExport;
  readonly size: number;
  readonly transmissionFlags: number;
  /** Bytes that followed the final option in the same chunk (already transmission phase). */
  readonly remainder: Buffer | undefined;
  /** NBD_OPT_STRUCTURED_REPLY was negotiated: READ and BLOCK_STATUS replies are structured. */
  readonly structured?: boolean;
  /** The id of base:allocation when the client selected it for this export (BLOCK_STATUS). */
  readonly allocationContext?: number;
}

/** The one meta context this server offers, and the id it answers with. */
export const BASE_ALLOCATION = 'base:allocation';
const BASE_ALLOCATION_ID = 1;

/**
 * 'more': keep feeding; 'transmission': `result` is set; 'abort': the client sent NBD_OPT_ABORT;
 * 'starttls': NBD_REP_ACK to NBD_OPT_STARTTLS was written: upgrade, then `secured()`.
 */
export type HandshakeStatus = 'more' | 'transmission' | 'abort' | 'starttls';

/** Transmission flags for an export, honest to its backend (as nbdkit: no write features when read-only). */
export function transmissionFlagsFor(exp: NbdExport, structured = false): number {
  let flags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH;
  if (structured) flags |= NBD_FLAG_SEND_DF; // a READ is always one chunk: DF costs nothing
  if (isReadOnly(exp)) flags |= NBD_FLAG_READ_ONLY;
  else flags |= NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_FAST_ZERO;
  flags |= NBD_FLAG_SEND_CACHE; // honoured by every export: a managed mount pulls ahead, others succeed at once
  if (exp.backend.canMultiConn === true) flags |= NBD_FLAG_CAN_MULTI_CONN;
  return flags;
}

export function isReadOnly(exp: NbdExport): boolean {
  return exp.readOnly === true || exp.backend.readOnly === true;
}

const STATE_CLIENT_FLAGS = 0;
const STATE_OPTION_HEADER = 1;
const STATE_OPTION_DATA = 2;
const STATE_DONE = 3;
const KNOWN_CLIENT_FLAGS = NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES;
const EMPTY = Buffer.alloc(0);

export class Handshake {
  readonly #options: HandshakeOptions;
  #out: HandshakeOutput;
  #secured = false;
  #earlyBytes = 0;
  #state = STATE_CLIENT_FLAGS;
  readonly #headerBuf = Buffer.allocUnsafe(NBD_OPTION_HEADER_SIZE);
  #target: Buffer = Buffer.allocUnsafe(NBD_CLIENT_FLAGS_SIZE);
  #fill = 0;
  readonly #option: NbdOptionHeader = { option: 0, length: 0 };
  #optionCount = 0;
  #noZeroes = false;
  #result: HandshakeResult | undefined = undefined;
  #structured = false;
  /** The export base:allocation was selected for (SET_META_CONTEXT), if any. */
  #allocationFor: string | undefined;

  constructor(options: HandshakeOptions, out: HandshakeOutput) {
    this.#options = options;
    this.#out = out;
  }

  get result(): HandshakeResult | undefined {
    return this.#result;
  }

  /** True once TLS is up on this connection. */
  get isSecured(): boolean {
    return this.#secured;
  }

  /**
   * Bytes that followed NBD_OPT_STARTTLS in the same chunk: the client did not wait for the ACK,
   * which the spec forbids (they would be TLS records read as plaintext). Non-zero: drop it.
   */
  get earlyBytes(): number {
    return this.#earlyBytes;
  }

  /** TLS is up: option replies (and the rest of the connection) go to `out` from now on. */
  secured(out: HandshakeOutput): void {
    if (this.#state !== STATE_OPTION_HEADER || this.#secured) throw new NbdProtocolError('secured() without a STARTTLS to finish');
    this.#out = out;
    this.#secured = true;
    this.#structured = false; // nothing negotiated before TLS carries over
    this.#allocationFor = undefined;
  }

  /** Sends the greeting; call once, before any push. */
  start(): void {
    this.#out.write(encodeGreeting(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES));
  }

  push(chunk: Buffer): HandshakeStatus {
    if (this.#state === STATE_DONE) throw new NbdProtocolError('handshake is over');
    let pos = 0;
    while (pos < chunk.length) {
      const n = Math.min(this.#target.length - this.#fill, chunk.length - pos);
      chunk.copy(this.#target, this.#fill, pos, pos + n);
      this.#fill += n;
      pos += n;
      if (this.#fill < this.#target.length) break;
      const status = this.#step();
      if (status === 'starttls') {
        this.#earlyBytes = chunk.length - pos;
        return status;
      }
      if (status !== 'more') {
        this.#state = STATE_DONE;
        if (this.#result !== undefined && pos < chunk.length) this.#result = { ...this.#result, remainder: chunk.subarray(pos) };
        return status;
      }
    }
    return 'more';
  }

  /** The target buffer is full: act on it and choose the next one. */
  #step(): HandshakeStatus {
    if (this.#state === STATE_CLIENT_FLAGS) {
      const flags = this.#target.readUInt32BE(0);
      if ((flags & ~KNOWN_CLIENT_FLAGS) !== 0) throw new NbdProtocolError(`client sent unknown flags 0x${flags.toString(16)}`);
      this.#noZeroes = (flags & NBD_FLAG_C_NO_ZEROES) !== 0;
      this.#expect(STATE_OPTION_HEADER, this.#headerBuf);
      return 'more';
    }
    if (this.#state === STATE_OPTION_HEADER) {
      decodeOptionHeader(this.#target, 0, this.#option);
      const { option, length } = this.#option;
      if (++this.#optionCount > this.#options.maxOptions) {
        throw new NbdProtocolError(`client sent more than ${this.#options.maxOptions} options`);
      }
      if (length > this.#options.maxOptionLength) {
        throw new NbdProtocolError(`${nameOf(NbdOpt, option)} data of ${length} bytes exceeds ${this.#options.maxOptionLength}`);
      }
      if (length > 0) {
        this.#expect(STATE_OPTION_DATA, Buffer.allocUnsafe(length));
        return 'more';
      }
      return this.#handleOption(option, EMPTY);
    }
    return this.#handleOption(this.#option.option, this.#target);
  }

  #expect(state: number, target: Buffer): void {
    this.#state = state;
    this.#target = target;
    this.#fill = 0;
  }

  #handleOption(option: number, data: Buffer): HandshakeStatus {
    this.#options.log.debug({ option: nameOf(NbdOpt, option), length: data.length }, 'option');
    this.#expect(STATE_OPTION_HEADER, this.#headerBuf);
    const tls = this.#options.tls;
    if (tls !== undefined && tls.require && !this.#secured && option !== NBD_OPT_STARTTLS && option !== NBD_OPT_ABORT) {
      if (option === NBD_OPT_EXPORT_NAME) throw new NbdProtocolError('NBD_OPT_EXPORT_NAME before NBD_OPT_STARTTLS: this server requires TLS');
      this.#error(option, NBD_REP_ERR_TLS_REQD, 'this server requires TLS: send NBD_OPT_STARTTLS first');
      return 'more';
    }
    if (option === NBD_OPT_STARTTLS && tls !== undefined) return this.#startTls(data);
    switch (option) {
      case NBD_OPT_EXPORT_NAME:
        return this.#exportName(data);
      case NBD_OPT_ABORT:
        this.#out.write(encodeOptionReply(option, NBD_REP_ACK));
        return 'abort';
      case NBD_OPT_LIST:
        this.#list(data);
        return 'more';
      case NBD_OPT_INFO:
      case NBD_OPT_GO:
        return this.#infoOrGo(option, data);
      case NBD_OPT_STRUCTURED_REPLY:
        if (data.length !== 0) this.#error(option, NBD_REP_ERR_INVALID, 'NBD_OPT_STRUCTURED_REPLY takes no data');
        else {
          this.#structured = true;
          this.#out.write(encodeOptionReply(option, NBD_REP_ACK));
        }
        return 'more';
      case NBD_OPT_LIST_META_CONTEXT:
      case NBD_OPT_SET_META_CONTEXT:
        this.#metaContext(option, data);
        return 'more';
      default:
        this.#error(option, NBD_REP_ERR_UNSUP, `option ${nameOf(NbdOpt, option)} is not supported`);
        return 'more';
    }
  }

  /** Only when the server has TLS; without it STARTTLS gets NBD_REP_ERR_UNSUP like any unknown option. */
  #startTls(data: Buffer): HandshakeStatus {
    if (this.#secured) {
      this.#error(NBD_OPT_STARTTLS, NBD_REP_ERR_INVALID, 'TLS is already up');
      return 'more';
    }
    if (data.length !== 0) {
      this.#error(NBD_OPT_STARTTLS, NBD_REP_ERR_INVALID, 'NBD_OPT_STARTTLS takes no data');
      return 'more';
    }
    this.#out.write(encodeOptionReply(NBD_OPT_STARTTLS, NBD_REP_ACK));
    return 'starttls';
  }

  #exportName(data: Buffer): HandshakeStatus {
    const name = decodeString(data, 0, data.length);
    if (name === undefined) throw new NbdProtocolError(`NBD_OPT_EXPORT_NAME with an invalid name of ${data.length} bytes`);
    const exp = this.#find(name);
    if (exp === undefined) throw new NbdProtocolError(`NBD_OPT_EXPORT_NAME asked for unknown export "${name}"`);
    const result = this.#go(exp);
    this.#out.write(encodeExportNameReply(result.size, result.transmissionFlags, !this.#noZeroes));
    return 'transmission';
  }

  #list(data: Buffer): void {
    if (data.length !== 0) {
      this.#error(NBD_OPT_LIST, NBD_REP_ERR_INVALID, 'NBD_OPT_LIST takes no data');
      return;
    }
    const replies = this.#options.exports.map((exp) => encodeOptionReply(NBD_OPT_LIST, NBD_REP_SERVER, encodeRepServer(exp.name, exp.description)));
    replies.push(encodeOptionReply(NBD_OPT_LIST, NBD_REP_ACK));
    this.#out.write(Buffer.concat(replies));
  }

  #infoOrGo(option: number, data: Buffer): HandshakeStatus {
    const request = decodeInfoRequest(data);
    if (!request.ok) {
      this.#error(option, NBD_REP_ERR_INVALID, request.reason);
      return 'more';
    }
    const exp = this.#find(request.name);
    if (exp === undefined) {
      this.#error(option, NBD_REP_ERR_UNKNOWN, `export "${request.name}" does not exist`);
      return 'more';
    }
    const { minBlockSize, preferredBlockSize, maxPayload } = this.#options;
    const size = exp.backend.size;
    const infos = [encodeInfoExport(size, transmissionFlagsFor(exp, this.#structured)), encodeInfoBlockSize(minBlockSize, preferredBlockSize, maxPayload)];
    if (request.infos.includes(NBD_INFO_NAME)) infos.push(encodeInfoString(NBD_INFO_NAME, exp.name));
    if (request.infos.includes(NBD_INFO_DESCRIPTION) && exp.description !== undefined) {
      infos.push(encodeInfoString(NBD_INFO_DESCRIPTION, exp.description));
    }
    const replies = infos.map((info) => encodeOptionReply(option, NBD_REP_INFO, info));
    replies.push(encodeOptionReply(option, NBD_REP_ACK));
    this.#out.write(Buffer.concat(replies));
    if (option !== NBD_OPT_GO) return 'more';
    this.#go(exp);
    return 'transmission';
  }

  /**
   * LIST: base:allocation for no query, "base:" or its own name. SET (after STRUCTURED_REPLY
   * only): selects it when asked for by name, and forgets an earlier selection otherwise.
   */
  #metaContext(option: number, data: Buffer): void {
    const request = decodeMetaContextRequest(data);
    if (!request.ok) return this.#error(option, NBD_REP_ERR_INVALID, request.reason);
    const set = option === NBD_OPT_SET_META_CONTEXT;
    if (set && !this.#structured) return this.#error(option, NBD_REP_ERR_INVALID, 'NBD_OPT_SET_META_CONTEXT needs NBD_OPT_STRUCTURED_REPLY first');
    const exp = this.#find(request.name);
    if (exp === undefined) return this.#error(option, NBD_REP_ERR_UNKNOWN, `export "${request.name}" does not exist`);
    const matches = set ? request.queries.includes(BASE_ALLOCATION)
      : request.queries.length === 0 || request.queries.some((q) => q === 'base:' || q === BASE_ALLOCATION);
    if (set) this.#allocationFor = matches ? exp.name : undefined;
    const replies = matches ? [encodeOptionReply(option, NBD_REP_META_CONTEXT, encodeRepMetaContext(BASE_ALLOCATION_ID, BASE_ALLOCATION))] : [];
    replies.push(encodeOptionReply(option, NBD_REP_ACK));
    this.#out.write(Buffer.concat(replies));
  }

  #go(exp: NbdExport): HandshakeResult {
    const structured = this.#structured;
    this.#result = {
      export: exp, size: exp.backend.size, transmissionFlags: transmissionFlagsFor(exp, structured), remainder: undefined, structured,
      ...(structured && this.#allocationFor === exp.name ? { allocationContext: BASE_ALLOCATION_ID } : {}),
    };
    return this.#result;
  }

  #find(name: string): NbdExport | undefined {
    const exports = this.#options.exports;
    return name === '' ? exports[0] : exports.find((exp) => exp.name === name);
  }

  #error(option: number, type: number, message: string): void {
    this.#options.log.debug({ option: nameOf(NbdOpt, option), message }, 'option refused');
    const text = Buffer.from(message.slice(0, NBD_MAX_STRING), 'utf8').subarray(0, NBD_MAX_STRING);
    this.#out.write(encodeOptionReply(option, type, text));
  }
}
