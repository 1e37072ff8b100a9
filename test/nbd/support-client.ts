/**
 * A deliberately small, test-only NBD client: raw bytes in and out, so the tests can also send
 * what a real client never would. Every wait is bounded (default 5 s) so a test cannot hang.
 */
import { connect, type Socket } from 'node:net';
import {
  decodeGreeting,
  decodeOptionReplyHeader,
  decodeSimpleReply,
  encodeClientFlags,
  encodeInfoRequest,
  encodeOption,
  encodeRequest,
  type NbdOptionReplyHeader,
  type NbdSimpleReply,
} from '../../src/nbd/codec.js';
import {
  NBD_CMD_READ,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_INFO_EXPORT,
  NBD_OPT_GO,
  NBD_OPTION_REPLY_HEADER_SIZE,
  NBD_REP_ACK,
  NBD_REP_INFO,
  NBD_SIMPLE_REPLY_SIZE,
  isNbdRepError,
} from '../../src/nbd/constants.js';
import type { ListenAddress } from '../../src/nbd/listen-address.js';

const DEFAULT_TIMEOUT_MS = 5000;

export class RawClient {
  readonly socket: Socket;
  #chunks: Buffer[] = [];
  #length = 0;
  #ended = false;
  #closed = false;
  #wake: (() => void) | undefined = undefined;
  readonly #closedPromise: Promise<void>;

  constructor(socket: Socket) {
    this.socket = socket;
    socket.on('data', (chunk: Buffer) => {
      this.#chunks.push(chunk);
      this.#length += chunk.length;
      this.#wake?.();
    });
    socket.on('end', () => {
      this.#ended = true;
      this.#wake?.();
    });
    socket.on('error', () => undefined);
    this.#closedPromise = new Promise((resolve) =>
      socket.once('close', () => {
        this.#closed = true;
        this.#ended = true;
        this.#wake?.();
        resolve();
      }),
    );
  }

  static connect(address: ListenAddress): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const socket = 'path' in address ? connect({ path: address.path }) : connect({ host: address.host, port: address.port });
      socket.once('error', reject);
      socket.once('connect', () => {
        socket.off('error', reject);
        resolve(new RawClient(socket));
      });
    });
  }

  get isClosed(): boolean {
    return this.#closed;
  }

  write(buf: Buffer): void {
    this.socket.write(buf);
  }

  /** Exactly `n` bytes; rejects on EOF or timeout. */
  async read(n: number, timeoutMs = DEFAULT_TIMEOUT_MS): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (this.#length < n) {
      if (this.#ended) throw new Error(`connection ended with ${this.#length} of ${n} bytes read`);
      await this.#waitForData(deadline, n);
    }
    const all = this.#chunks.length === 1 ? this.#chunks[0]! : Buffer.concat(this.#chunks);
    const out = Buffer.from(all.subarray(0, n));
    this.#chunks = all.length > n ? [all.subarray(n)] : [];
    this.#length -= n;
    return out;
  }

  /** Resolves true when the server closes the connection within the timeout. */
  async waitClosed(timeoutMs = DEFAULT_TIMEOUT_MS): Promise<boolean> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), timeoutMs)));
    const result = await Promise.race([this.#closedPromise.then(() => true), timeout]);
    clearTimeout(timer);
    return result;
  }

  /** Resolves true when the server has sent EOF (or closed) within the timeout. */
  async waitEnded(timeoutMs = DEFAULT_TIMEOUT_MS): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (!this.#ended) {
      if (Date.now() >= deadline) return false;
      await this.#waitForData(deadline, Number.POSITIVE_INFINITY).catch(() => undefined);
    }
    return true;
  }

  /** Bytes received but not read yet. */
  get buffered(): number {
    return this.#length;
  }

  destroy(): void {
    this.socket.destroy();
  }

  #waitForData(deadline: number, n: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#wake = undefined;
        reject(new Error(`timed out waiting for ${n} bytes (have ${this.#length})`));
      }, Math.max(0, deadline - Date.now()));
      this.#wake = () => {
        clearTimeout(timer);
        this.#wake = undefined;
        resolve();
      };
    });
  }
}

/** Reads the greeting and sends the client flags; returns the server's handshake flags. */
export async function startHandshake(client: RawClient, clientFlags = NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES): Promise<number> {
  const flags = decodeGreeting(await client.read(18));
  client.write(encodeClientFlags(clientFlags));
  return flags;
}

export interface OptionReply extends NbdOptionReplyHeader {
  readonly data: Buffer;
}

export async function readOptionReply(client: RawClient): Promise<OptionReply> {
  const header: NbdOptionReplyHeader = { option: 0, type: 0, length: 0 };
  decodeOptionReplyHeader(await client.read(NBD_OPTION_REPLY_HEADER_SIZE), 0, header);
  return { ...header, data: await client.read(header.length) };
}

/** Reads replies to one option until its final one (ACK or an error). */
export async function readOptionReplies(client: RawClient): Promise<OptionReply[]> {
  const replies: OptionReply[] = [];
  for (;;) {
    const reply = await readOptionReply(client);
    replies.push(reply);
    if (reply.type === NBD_REP_ACK || isNbdRepError(reply.type)) return replies;
  }
}

export interface Session {
  readonly client: RawClient;
  readonly size: number;
  readonly flags: number;
}

/** Connects, negotiates with NBD_OPT_GO, and returns the export's size and transmission flags. */
export async function openSession(address: ListenAddress, name = '', infos: readonly number[] = []): Promise<Session> {
  const client = await RawClient.connect(address);
  await startHandshake(client);
  client.write(encodeOption(NBD_OPT_GO, encodeInfoRequest(name, infos)));
  const replies = await readOptionReplies(client);
  const last = replies.at(-1)!;
  if (last.type !== NBD_REP_ACK) throw new Error(`NBD_OPT_GO failed with reply type 0x${last.type.toString(16)}`);
  const exportInfo = replies.find((r) => r.type === NBD_REP_INFO && r.data.readUInt16BE(0) === NBD_INFO_EXPORT)!;
  const hi = exportInfo.data.readUInt32BE(2);
  return { client, size: hi * 2 ** 32 + exportInfo.data.readUInt32BE(6), flags: exportInfo.data.readUInt16BE(10) };
}

export interface RequestSpec {
  readonly type: number;
  readonly flags?: number;
  readonly handle: number;
  readonly offset?: number;
  readonly length?: number;
  readonly payload?: Buffer;
}

export function sendRequest(client: RawClient, spec: RequestSpec): void {
  const length = spec.length ?? spec.payload?.length ?? 0;
  const header = encodeRequest({ flags: spec.flags ?? 0, type: spec.type, handleHi: 0, handleLo: spec.handle, offset: spec.offset ?? 0, length });
  client.write(spec.payload === undefined ? header : Buffer.concat([header, spec.payload]));
}

export interface Reply {
  readonly errno: number;
  readonly handle: number;
  readonly data?: Buffer;
}

/**
 * Reads one simple reply. `readLengths` maps the handles of READs in flight to their lengths, so
 * a successful READ reply's data is read too (the simple reply does not carry its own length).
 */
export async function readReply(client: RawClient, readLengths: Map<number, number> = new Map(), timeoutMs?: number): Promise<Reply> {
  const reply: NbdSimpleReply = { errno: 0, handleHi: 0, handleLo: 0 };
  decodeSimpleReply(await client.read(NBD_SIMPLE_REPLY_SIZE, timeoutMs), 0, reply);
  const length = readLengths.get(reply.handleLo);
  readLengths.delete(reply.handleLo);
  if (reply.errno !== 0 || length === undefined) return { errno: reply.errno, handle: reply.handleLo };
  return { errno: 0, handle: reply.handleLo, data: await client.read(length, timeoutMs) };
}

/** One READ, waiting for its reply. */
export async function readAt(client: RawClient, handle: number, offset: number, length: number, flags = 0): Promise<Reply> {
  sendRequest(client, { type: NBD_CMD_READ, handle, offset, length, flags });
  return readReply(client, new Map([[handle, length]]));
}
