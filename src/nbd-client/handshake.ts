/**
 * The client half of the fixed newstyle handshake, over an already-connected socket: greeting,
 * client flags, NBD_OPT_STARTTLS first when `tls` is given (the socket is then upgraded in place
 * and everything after runs over TLS), then NBD_OPT_GO (asking for NBD_INFO_BLOCK_SIZE) with a fall back to
 * NBD_OPT_EXPORT_NAME when the server answers NBD_REP_ERR_UNSUP, or NBD_OPT_LIST then
 * NBD_OPT_ABORT. No transmission here: `negotiate` leaves the socket (`Negotiated.socket`: the TLS
 * one after STARTTLS) paused, with no listeners of its own, at the first byte of the transmission
 * phase, so the caller (NbdClient, or later the kernel attach) owns it from there. Every length that comes off the wire is capped.
 */
import net, { type Socket } from 'node:net';
import { once } from 'node:events';
import { ClosedError, NbdProtocolError, TimeoutError } from '../errors.js';
import { upgradeClientSocket, type NbdClientTlsOptions } from '../nbd/tls.js';
import {
  decodeGreeting,
  decodeOptionReplyHeader,
  decodeString,
  encodeClientFlags,
  encodeInfoRequest,
  encodeMetaContextRequest,
  encodeOption,
  readU64,
  type NbdOptionReplyHeader,
} from '../nbd/codec.js';
import {
  NBD_EXPORT_NAME_ZEROES,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_NO_ZEROES,
  NBD_GREETING_SIZE,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_EXPORT,
  NBD_INFO_NAME,
  NBD_MAX_STRING,
  NBD_OPTION_REPLY_HEADER_SIZE,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_LIST,
  NBD_OPT_STARTTLS,
  NBD_REP_ACK,
  NBD_REP_ERR_TLS_REQD,
  NBD_REP_ERR_UNSUP,
  NBD_REP_INFO,
  NBD_REP_META_CONTEXT,
  NBD_REP_SERVER,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STRUCTURED_REPLY,
  NbdOpt,
  NbdRep,
  isNbdRepError,
  nameOf,
} from '../nbd/constants.js';

const BASE_ALLOCATION = 'base:allocation';
/** Largest option reply we accept: a name and a description of NBD_MAX_STRING each, plus framing. */
const MAX_OPTION_REPLY = 2 * NBD_MAX_STRING + 64;
/** Most replies we read for one option (NBD_OPT_LIST answers one per export). */
const MAX_REPLIES_PER_OPTION = 65536;
/** Defaults the spec gives when the server sends no NBD_INFO_BLOCK_SIZE. */
const DEFAULT_BLOCK_SIZE = Object.freeze({ min: 1, preferred: 4096, max: 32 * 1024 * 1024 });

/** Where the server listens: TCP host and port, or a Unix socket path. */
export type NbdAddress = { readonly host: string; readonly port: number } | { readonly path: string };

export interface NbdBlockSize {
  readonly min: number;
  readonly preferred: number;
  readonly max: number;
}

/** What the handshake learned about the export. */
export interface NbdExportInfo {
  readonly exportName: string;
  readonly size: number;
  readonly transmissionFlags: number;
  readonly blockSize: NbdBlockSize;
  /** True when the server sent NBD_INFO_BLOCK_SIZE (else `blockSize` holds the spec's defaults). */
  readonly blockSizeAdvertised: boolean;
  readonly description: string | undefined;
  /** How transmission was entered: 'go' (NBD_OPT_GO) or 'export-name' (the old way). */
  readonly via: 'go' | 'export-name';
  /** NBD_OPT_STRUCTURED_REPLY was agreed: READ and BLOCK_STATUS replies come as chunks. */
  readonly structured: boolean;
  /** The id the server gave base:allocation (NBD_OPT_SET_META_CONTEXT); undefined without it. */
  readonly allocationContext: number | undefined;
}

export interface NbdExportListing {
  readonly name: string;
  readonly description: string;
}

export interface NegotiateOptions {
  /** Export to ask for; '' is the server's default export. */
  readonly exportName?: string;
  /** Bound on the whole handshake in ms; 0 means none. Default 30000. */
  readonly timeoutMs?: number;
  /** Upgrade with NBD_OPT_STARTTLS before anything else; a server that refuses is an error. */
  readonly tls?: NbdClientTlsOptions;
  /** Ask for structured replies and base:allocation (default true); false keeps simple replies. */
  readonly structuredReplies?: boolean;
  /** The host dialled, checked against the server certificate (default 'localhost'). */
  readonly host?: string;
}

export interface Negotiated {
  /** The socket transmission runs on: the one given, or the TLS socket over it. */
  readonly socket: Socket;
  readonly info: NbdExportInfo;
  /** Bytes that arrived after the handshake (normally none: the server waits for requests). */
  readonly leftover: Buffer;
}

/** Runs the handshake on `socket` and enters transmission. On failure the socket is destroyed. */
export async function negotiate(socket: Socket, options: NegotiateOptions = {}): Promise<Negotiated> {
  const exportName = options.exportName ?? '';
  const timeoutMs = options.timeoutMs ?? 30_000;
  const deadline = Date.now() + timeoutMs;
  let current = socket;
  let reader = new HandshakeReader(socket, timeoutMs);
  try {
    const noZeroes = await greet(socket, reader);
    if (options.tls !== undefined) {
      await startTls(socket, reader);
      reader.detach();
      current = await upgradeClientSocket(socket, options.host, options.tls, timeoutMs > 0 ? Math.max(1, deadline - Date.now()) : 0);
      reader = new HandshakeReader(current, timeoutMs > 0 ? Math.max(1, deadline - Date.now()) : 0);
      reader.fixedNewstyle = true;
    }
    let extras: Extras = { structured: false, allocationContext: undefined };
    if (reader.fixedNewstyle && options.structuredReplies !== false && (await optStructuredReply(current, reader))) {
      extras = { structured: true, allocationContext: await optSetAllocationContext(current, reader, exportName) };
    }
    const info = reader.fixedNewstyle
      ? (await optGo(current, reader, exportName, extras)) ?? (await optExportName(current, reader, exportName, noZeroes, extras))
      : await optExportName(current, reader, exportName, noZeroes, extras);
    return { socket: current, info, leftover: reader.detach() };
  } catch (err) {
    reader.detach();
    current.destroy();
    socket.destroy();
    throw err;
  }
}

/** NBD_OPT_STARTTLS; resolves on NBD_REP_ACK, when the caller must upgrade at once. */
async function startTls(socket: Socket, reader: HandshakeReader): Promise<void> {
  if (!reader.fixedNewstyle) throw new NbdProtocolError('server is not fixed newstyle: NBD_OPT_STARTTLS is not available');
  socket.write(encodeOption(NBD_OPT_STARTTLS));
  const hdr: NbdOptionReplyHeader = { option: 0, type: 0, length: 0 };
  const data = await readReply(reader, NBD_OPT_STARTTLS, hdr);
  if (hdr.type !== NBD_REP_ACK) {
    // The spec: a client that wants TLS terminates when STARTTLS is refused (no downgrade).
    throw isNbdRepError(hdr.type)
      ? refused(NBD_OPT_STARTTLS, hdr.type, data, '')
      : new NbdProtocolError(`NBD_OPT_STARTTLS answered with ${nameOf(NbdRep, hdr.type)}, want NBD_REP_ACK`);
  }
  if (reader.buffered > 0) throw new NbdProtocolError(`server sent ${reader.buffered} bytes after the NBD_OPT_STARTTLS ACK before TLS`);
}

/** Runs NBD_OPT_LIST, then NBD_OPT_ABORT, and ends the socket. */
export async function listExports(socket: Socket, options: Pick<NegotiateOptions, 'timeoutMs'> = {}): Promise<NbdExportListing[]> {
  const reader = new HandshakeReader(socket, options.timeoutMs ?? 30_000);
  try {
    await greet(socket, reader);
    if (!reader.fixedNewstyle) throw new NbdProtocolError('server is not fixed newstyle: NBD_OPT_LIST is not available');
    socket.write(encodeOption(NBD_OPT_LIST));
    const exports: NbdExportListing[] = [];
    const hdr: NbdOptionReplyHeader = { option: 0, type: 0, length: 0 };
    for (let i = 0; i < MAX_REPLIES_PER_OPTION; i++) {
      const data = await readReply(reader, NBD_OPT_LIST, hdr);
      if (hdr.type === NBD_REP_ACK) {
        await abort(socket, reader);
        return exports;
      }
      if (isNbdRepError(hdr.type)) throw refused(NBD_OPT_LIST, hdr.type, data, '');
      if (hdr.type !== NBD_REP_SERVER) continue; // spec: ignore reply types we do not know
      exports.push(decodeRepServer(data));
    }
    throw new NbdProtocolError(`NBD_OPT_LIST: more than ${MAX_REPLIES_PER_OPTION} replies`);
  } finally {
    reader.detach();
    socket.destroy();
  }
}

/** Reads the greeting and sends our flags; returns whether NO_ZEROES was agreed. */
async function greet(socket: Socket, reader: HandshakeReader): Promise<boolean> {
  const flags = decodeGreeting(await reader.read(NBD_GREETING_SIZE));
  reader.fixedNewstyle = (flags & NBD_FLAG_FIXED_NEWSTYLE) !== 0;
  const noZeroes = (flags & NBD_FLAG_NO_ZEROES) !== 0;
  // NBD_FLAG_C_NO_ZEROES only when the server offered it, as the spec demands.
  socket.write(encodeClientFlags((reader.fixedNewstyle ? NBD_FLAG_C_FIXED_NEWSTYLE : 0) | (noZeroes ? NBD_FLAG_C_NO_ZEROES : 0)));
  return noZeroes;
}

type Extras = Pick<NbdExportInfo, 'structured' | 'allocationContext'>;

/** NBD_OPT_STRUCTURED_REPLY: true on NBD_REP_ACK; any error reply means simple replies. */
async function optStructuredReply(socket: Socket, reader: HandshakeReader): Promise<boolean> {
  socket.write(encodeOption(NBD_OPT_STRUCTURED_REPLY));
  const hdr: NbdOptionReplyHeader = { option: 0, type: 0, length: 0 };
  await readReply(reader, NBD_OPT_STRUCTURED_REPLY, hdr);
  if (hdr.type === NBD_REP_ACK) return true;
  if (isNbdRepError(hdr.type)) return false;
  throw new NbdProtocolError(`NBD_OPT_STRUCTURED_REPLY answered with ${nameOf(NbdRep, hdr.type)}, want NBD_REP_ACK`);
}

/** NBD_OPT_SET_META_CONTEXT for base:allocation: the id the server gave it, or undefined. */
async function optSetAllocationContext(socket: Socket, reader: HandshakeReader, exportName: string): Promise<number | undefined> {
  socket.write(encodeOption(NBD_OPT_SET_META_CONTEXT, encodeMetaContextRequest(exportName, [BASE_ALLOCATION])));
  const hdr: NbdOptionReplyHeader = { option: 0, type: 0, length: 0 };
  let id: number | undefined;
  for (let i = 0; i < MAX_REPLIES_PER_OPTION; i++) {
    const reply = await readReply(reader, NBD_OPT_SET_META_CONTEXT, hdr);
    if (hdr.type === NBD_REP_ACK) return id;
    if (isNbdRepError(hdr.type)) return undefined; // the server has no meta contexts: no block status
    if (hdr.type === NBD_REP_META_CONTEXT && reply.length >= 4 && reply.toString('utf8', 4) === BASE_ALLOCATION) id = reply.readUInt32BE(0);
  }
  throw new NbdProtocolError(`NBD_OPT_SET_META_CONTEXT: more than ${MAX_REPLIES_PER_OPTION} replies`);
}

/** NBD_OPT_GO; undefined when the server does not know the option (fall back to EXPORT_NAME). */
async function optGo(socket: Socket, reader: HandshakeReader, exportName: string, extras: Extras): Promise<NbdExportInfo | undefined> {
  socket.write(encodeOption(NBD_OPT_GO, encodeInfoRequest(exportName, [NBD_INFO_BLOCK_SIZE])));
  const hdr: NbdOptionReplyHeader = { option: 0, type: 0, length: 0 };
  let size = -1;
  let transmissionFlags = 0;
  let blockSize: NbdBlockSize | undefined;
  let description: string | undefined;
  for (let i = 0; i < MAX_REPLIES_PER_OPTION; i++) {
    const data = await readReply(reader, NBD_OPT_GO, hdr);
    if (hdr.type === NBD_REP_ACK) {
      if (size < 0) throw new NbdProtocolError(`NBD_OPT_GO '${exportName}': NBD_REP_ACK without NBD_INFO_EXPORT`);
      return Object.freeze({
        exportName, size, transmissionFlags, description, via: 'go', ...extras,
        blockSize: blockSize ?? DEFAULT_BLOCK_SIZE,
        blockSizeAdvertised: blockSize !== undefined,
      });
    }
    if (hdr.type === NBD_REP_ERR_UNSUP) return undefined;
    if (isNbdRepError(hdr.type)) throw refused(NBD_OPT_GO, hdr.type, data, exportName);
    if (hdr.type !== NBD_REP_INFO) continue;
    if (data.length < 2) throw new NbdProtocolError(`NBD_REP_INFO of ${data.length} bytes has no type`);
    const type = data.readUInt16BE(0);
    if (type === NBD_INFO_EXPORT) {
      expectLength(data, 12, 'NBD_INFO_EXPORT');
      size = readU64(data, 2, 'export size');
      transmissionFlags = data.readUInt16BE(10);
    } else if (type === NBD_INFO_BLOCK_SIZE) {
      expectLength(data, 14, 'NBD_INFO_BLOCK_SIZE');
      blockSize = decodeBlockSize(data);
    } else if (type === NBD_INFO_DESCRIPTION) {
      description = decodeString(data, 2, data.length - 2);
    } else if (type !== NBD_INFO_NAME) {
      // Unknown information types are ignored, as the spec asks of clients.
    }
  }
  throw new NbdProtocolError(`NBD_OPT_GO: more than ${MAX_REPLIES_PER_OPTION} replies`);
}

async function optExportName(socket: Socket, reader: HandshakeReader, exportName: string, noZeroes: boolean, extras: Extras): Promise<NbdExportInfo> {
  const name = Buffer.from(exportName, 'utf8');
  if (name.length > NBD_MAX_STRING) throw new NbdProtocolError(`export name of ${name.length} bytes exceeds ${NBD_MAX_STRING}`);
  socket.write(encodeOption(NBD_OPT_EXPORT_NAME, name));
  let data: Buffer;
  try {
    data = await reader.read(10 + (noZeroes ? 0 : NBD_EXPORT_NAME_ZEROES));
  } catch (err) {
    // The option has no error reply: a server that refuses the export just hangs up.
    if (!(err instanceof ClosedError)) throw err;
    throw new NbdProtocolError(`server closed the connection after NBD_OPT_EXPORT_NAME '${exportName}' (no such export?)`, { cause: err });
  }
  return Object.freeze({
    exportName,
    size: readU64(data, 0, 'export size'),
    transmissionFlags: data.readUInt16BE(8),
    blockSize: DEFAULT_BLOCK_SIZE,
    blockSizeAdvertised: false,
    description: undefined,
    via: 'export-name',
    ...extras,
  });
}

async function abort(socket: Socket, reader: HandshakeReader): Promise<void> {
  socket.write(encodeOption(NBD_OPT_ABORT));
  // The server SHOULD acknowledge; some just hang up (nbd-server resets). Any of these ends it.
  try {
    await readReply(reader, NBD_OPT_ABORT, { option: 0, type: 0, length: 0 });
  } catch (err) {
    if (!(err instanceof ClosedError) && (err as NodeJS.ErrnoException).code !== 'ECONNRESET' && (err as NodeJS.ErrnoException).code !== 'EPIPE') throw err;
  }
}

/** Reads one option reply header (into `hdr`) and its data; checks the magic, option and length. */
async function readReply(reader: HandshakeReader, option: number, hdr: NbdOptionReplyHeader): Promise<Buffer> {
  decodeOptionReplyHeader(await reader.read(NBD_OPTION_REPLY_HEADER_SIZE), 0, hdr);
  if (hdr.option !== option) {
    throw new NbdProtocolError(`reply to ${nameOf(NbdOpt, hdr.option)} while waiting for ${nameOf(NbdOpt, option)}`);
  }
  if (hdr.length > MAX_OPTION_REPLY) {
    throw new NbdProtocolError(`${nameOf(NbdRep, hdr.type)} of ${hdr.length} bytes exceeds ${MAX_OPTION_REPLY}`);
  }
  return hdr.length === 0 ? Buffer.alloc(0) : reader.read(hdr.length);
}

function refused(option: number, type: number, data: Buffer, exportName: string): NbdProtocolError {
  const message = decodeString(data, 0, data.length);
  const hint = type === NBD_REP_ERR_TLS_REQD ? ' (the server requires TLS: use nbds://)' : '';
  return new NbdProtocolError(
    `${nameOf(NbdOpt, option)}${exportName ? ` '${exportName}'` : ''} refused: ${nameOf(NbdRep, type)}${message ? `: ${message}` : ''}${hint}`,
  );
}

function decodeRepServer(data: Buffer): NbdExportListing {
  if (data.length < 4) throw new NbdProtocolError(`NBD_REP_SERVER of ${data.length} bytes has no name length`);
  const nameLength = data.readUInt32BE(0);
  const name = nameLength <= data.length - 4 ? decodeString(data, 4, nameLength) : undefined;
  if (name === undefined) throw new NbdProtocolError(`NBD_REP_SERVER has a bad name (length ${nameLength}, data ${data.length})`);
  return { name, description: decodeString(data, 4 + nameLength, data.length - 4 - nameLength) ?? '' };
}

function decodeBlockSize(data: Buffer): NbdBlockSize {
  const min = data.readUInt32BE(2);
  const preferred = data.readUInt32BE(6);
  const max = data.readUInt32BE(10);
  if (min === 0 || (min & (min - 1)) !== 0 || preferred < min || max < min) {
    throw new NbdProtocolError(`NBD_INFO_BLOCK_SIZE is inconsistent: min=${min} preferred=${preferred} max=${max}`);
  }
  return Object.freeze({ min, preferred, max });
}

function expectLength(data: Buffer, length: number, what: string): void {
  if (data.length !== length) throw new NbdProtocolError(`${what} is ${data.length} bytes, want ${length}`);
}

/** Connects a socket (TCP_NODELAY on TCP), bounded by `timeoutMs` (0 means none). */
export async function openSocket(address: NbdAddress, timeoutMs: number): Promise<Socket> {
  const socket = 'path' in address ? net.connect({ path: address.path }) : net.connect({ host: address.host, port: address.port });
  const signal = timeoutMs > 0 ? AbortSignal.timeout(timeoutMs) : undefined;
  try {
    await once(socket, 'connect', signal ? { signal } : {});
  } catch (err) {
    socket.destroy();
    if (signal?.aborted) throw new TimeoutError(`connecting to ${describeAddress(address)} took longer than ${timeoutMs} ms`, { cause: err });
    throw err;
  }
  if (!('path' in address)) socket.setNoDelay(true);
  return socket;
}

/** 'unix:/path' or 'host:port', for messages. */
export function describeAddress(address: NbdAddress): string {
  return 'path' in address ? `unix:${address.path}` : `${address.host.includes(':') ? `[${address.host}]` : address.host}:${address.port}`;
}

/** Exact-length reads over a socket's 'data' events, bounded by one deadline. Handshake only. */
class HandshakeReader {
  fixedNewstyle = false;
  readonly #socket: Socket;
  #chunks: Buffer[] = [];
  #buffered = 0;
  #want = 0;
  #resolve: ((buf: Buffer) => void) | undefined;
  #reject: ((err: Error) => void) | undefined;
  #error: Error | undefined;
  readonly #timer: NodeJS.Timeout | undefined;

  constructor(socket: Socket, timeoutMs: number) {
    this.#socket = socket;
    socket.on('data', this.#onData);
    socket.on('end', this.#onEnd);
    socket.on('close', this.#onEnd);
    socket.on('error', this.#onError);
    this.#timer = timeoutMs > 0
      ? setTimeout(() => this.#fail(new TimeoutError(`NBD handshake took longer than ${timeoutMs} ms`)), timeoutMs)
      : undefined;
    socket.resume();
  }

  /** Bytes received and not yet read. */
  get buffered(): number {
    return this.#buffered;
  }

  read(n: number): Promise<Buffer> {
    if (this.#buffered >= n) return Promise.resolve(this.#take(n));
    if (this.#error !== undefined) return Promise.reject(this.#error);
    this.#want = n;
    return new Promise((resolve, reject) => {
      this.#resolve = resolve;
      this.#reject = reject;
    });
  }

  /** Stops listening, pauses the socket and returns whatever arrived beyond the handshake. */
  detach(): Buffer {
    clearTimeout(this.#timer);
    this.#socket.pause();
    this.#socket.off('data', this.#onData);
    this.#socket.off('end', this.#onEnd);
    this.#socket.off('close', this.#onEnd);
    this.#socket.off('error', this.#onError);
    const rest = this.#chunks.length === 1 ? this.#chunks[0]! : Buffer.concat(this.#chunks);
    this.#chunks = [];
    this.#buffered = 0;
    return rest;
  }

  #take(n: number): Buffer {
    const all = this.#chunks.length === 1 ? this.#chunks[0]! : Buffer.concat(this.#chunks, this.#buffered);
    this.#chunks = all.length > n ? [all.subarray(n)] : [];
    this.#buffered -= n;
    return all.subarray(0, n);
  }

  readonly #onData = (chunk: Buffer): void => {
    this.#chunks.push(chunk);
    this.#buffered += chunk.length;
    if (this.#resolve !== undefined && this.#buffered >= this.#want) {
      const resolve = this.#resolve;
      this.#resolve = this.#reject = undefined;
      resolve(this.#take(this.#want));
    }
  };

  readonly #onEnd = (): void => this.#fail(new ClosedError('NBD connection'));

  readonly #onError = (err: Error): void => this.#fail(err);

  #fail(err: Error): void {
    this.#error ??= err;
    const reject = this.#reject;
    this.#resolve = this.#reject = undefined;
    reject?.(this.#error);
  }
}
