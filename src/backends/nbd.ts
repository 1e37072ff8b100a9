/**
 * NbdRemoteBackend: a Backend served by a remote NBD server (r3map-serve, nbdkit, qemu-nbd, …)
 * through our userspace NbdClient: `nbd://host:port/export`, `nbd+unix:///export?socket=/path`,
 * and `nbds://` (NBD_OPT_STARTTLS, verified against `tls.ca`, with an optional client certificate).
 *
 * Guarantees:
 * - Size and read-only come from the handshake; a range outside [0, size) rejects with
 *   OutOfRangeError and writes to a read-only export with ReadOnlyError, before the wire.
 * - Many requests in flight: up to `maxInFlight` per connection, the rest queue in order.
 *   Requests above the server's maximum block size are split; when the server asks for a minimum
 *   block size above 1, unaligned edges are read-modify-written (ArbitraryReadWriterAt).
 *   This is the one backend that composes that stage itself instead of declaring `blockSize`
 *   and leaving it to mount/compose.ts: the minimum block size is a property of the remote,
 *   learned in the handshake, and the backend's own requests need it too: its zero/trim fallback
 *   (writes of zeros when the server lacks WRITE_ZEROES) goes through the same aligned path, and a
 *   bare backend that forwarded an unaligned request would break the NBD spec's contract with the
 *   server (which may then fail the request, or the connection) instead of rejecting cleanly.
 *   So the backend accepts any range and declares no blockSize.
 * - `connections` > 1 opens that many connections when the server advertises
 *   NBD_FLAG_CAN_MULTI_CONN (one otherwise, with a warning); requests go to the least busy one.
 * - sync() is NBD_CMD_FLUSH on every connection (a no-op when the server has no flush); zero() is
 *   NBD_CMD_WRITE_ZEROES, trim() too (NBD_CMD_TRIM may leave garbage; trim must read as zeros);
 *   both fall back to writes of zeros when the server lacks WRITE_ZEROES.
 * - A dropped connection is reconnected and the request retried (withRetry: bounded backoff);
 *   a reconnect that finds a different export size fails for good.
 * - Errors other than range/read-only/closed reject as BackendError { backend: 'nbd', op, off,
 *   length } with the NBD error as `cause`. open() fails within `connectTimeoutMs` with a
 *   BackendError naming the address when the server is unreachable or refuses the export.
 * - Structured replies and base:allocation where the server has them: `extents` passes its block
 *   status through (so a managed mount or r3map-serve over this backend keeps a sparse export
 *   sparse), and a READ of a hole costs the server no payload.
 * - close() waits for requests in flight, then disconnects (NBD_CMD_DISC); idempotent.
 */
import { BackendError, ClosedError, NbdRequestError, OutOfRangeError, R3mapError, ReadOnlyError, TimeoutError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import { NbdClient, describeAddress, type NbdAddress, type NbdClientTlsOptions } from '../nbd-client/client.js';
import { NBD_ESHUTDOWN, NBD_FLAG_CAN_MULTI_CONN, NBD_FLAG_SEND_FLUSH, NBD_FLAG_SEND_WRITE_ZEROES } from '../nbd/constants.js';
import { readTlsFiles, type TlsFiles } from '../nbd/tls.js';
import { ArbitraryReadWriterAt } from '../pipeline/arbitrary.js';
import type { Backend, BackendExtent, ReadWriterAt } from '../pipeline/types.js';
import { isTransientNetworkError, withRetry, type RetryOptions } from '../util/retry.js';
import { settleAll } from '../util/settle-all.js';

export interface NbdRemoteBackendOptions {
  readonly address: NbdAddress;
  /** '' (the default) is the server's default export. */
  readonly exportName?: string;
  /** Use NBD_OPT_STARTTLS; PEM file paths (no `ca`: the system store). */
  readonly tls?: TlsFiles;
  /** Connections to open when the server allows multi-conn; default 1. */
  readonly connections?: number;
  /** Requests in flight per connection before they queue; default 64. */
  readonly maxInFlight?: number;
  readonly readOnly?: boolean;
  /** Bound on connecting plus the handshake, at open() and on each reconnect; default 5000. */
  readonly connectTimeoutMs?: number;
  /** Retries after a transient failure (dropped connection, ESHUTDOWN); default 5, 0 = none. */
  readonly retries?: number;
  readonly log?: Logger;
}

const OP_READ = 0;
const OP_WRITE = 1;
const OP_ZERO = 2;
const OP_NAMES = ['read', 'write', 'zero'] as const;
const ZERO_PIECE = 1024 * 1024 * 1024;
const ZERO_FILL = 1024 * 1024;
/** Longest range one BLOCK_STATUS asks about (its length is 32 bits; the caller asks again). */
const MAX_STATUS_LENGTH = 2 ** 32 - 2 ** 20;

interface Resolved {
  readonly address: NbdAddress;
  readonly exportName: string;
  readonly connections: number;
  readonly maxInFlight: number;
  readonly connectTimeoutMs: number;
  readonly retries: number;
}

/** One connection; `client` is undefined while it is down. */
class Slot {
  client: NbdClient | undefined;
  connecting: Promise<NbdClient> | undefined;
  constructor(client: NbdClient) {
    this.client = client;
  }
}

export class NbdRemoteBackend implements Backend {
  readonly size: number;
  readonly readOnly: boolean;
  readonly maxInFlight: number;
  readonly canMultiConn: boolean;
  /** Where it points, e.g. 'nbds://127.0.0.1:10809/disk' (no secrets: TLS is by file path). */
  readonly target: string;

  /** Where the server has base:allocation: its block status, passed through. */
  extents?: (off: number, length: number) => Promise<readonly BackendExtent[]>;
  readonly #options: Resolved;
  readonly #tls: NbdClientTlsOptions | undefined;
  readonly #log: Logger;
  readonly #slots: Slot[];
  readonly #flags: number;
  readonly #maxRequest: number;
  readonly #aligned: ReadWriterAt | undefined;
  readonly #retry: RetryOptions;
  #active = 0;
  readonly #queue: (() => void)[] = [];
  #drained: (() => void) | undefined;
  #closing: Promise<void> | undefined;
  #disconnecting = false;

  static async open(options: NbdRemoteBackendOptions): Promise<NbdRemoteBackend> {
    const resolved: Resolved = Object.freeze({
      address: options.address,
      exportName: options.exportName ?? '',
      connections: Math.max(1, options.connections ?? 1),
      maxInFlight: Math.max(1, options.maxInFlight ?? 64),
      connectTimeoutMs: options.connectTimeoutMs ?? 5000,
      retries: options.retries ?? 5,
    });
    const log = (options.log ?? silentLogger).child({ component: 'nbd-backend', target: targetOf(resolved, options.tls !== undefined) });
    const tls = options.tls === undefined ? undefined : await readTlsFiles(options.tls);
    const first = await connectOrFail(resolved, tls, log);
    const clients = [first];
    let wanted = resolved.connections;
    if (wanted > 1 && (first.transmissionFlags & NBD_FLAG_CAN_MULTI_CONN) === 0) {
      log.warn({ connections: wanted }, 'server does not advertise NBD_FLAG_CAN_MULTI_CONN: using one connection');
      wanted = 1;
    }
    try {
      for (let i = 1; i < wanted; i++) clients.push(await connectOrFail(resolved, tls, log));
    } catch (err) {
      await Promise.allSettled(clients.map((c) => c.close()));
      throw err;
    }
    return new NbdRemoteBackend(resolved, tls, clients, options.readOnly === true, log);
  }

  private constructor(options: Resolved, tls: NbdClientTlsOptions | undefined, clients: NbdClient[], readOnly: boolean, log: Logger) {
    const first = clients[0]!;
    this.#options = options;
    this.#tls = tls;
    this.#log = log;
    this.target = targetOf(options, tls !== undefined);
    this.size = first.size;
    this.readOnly = readOnly || first.readOnly;
    this.#flags = first.transmissionFlags;
    this.canMultiConn = (this.#flags & NBD_FLAG_CAN_MULTI_CONN) !== 0;
    this.maxInFlight = options.maxInFlight * clients.length;
    this.#maxRequest = first.blockSize.max;
    this.#slots = clients.map((c) => this.#watch(new Slot(c), c));
    this.#retry = Object.freeze({ retries: options.retries, isTransient: this.#isTransient, log, what: `NBD ${this.target}` });
    const min = first.blockSize.min;
    this.#aligned = min > 1 ? new ArbitraryReadWriterAt({ readAt: (b, o) => this.#io(OP_READ, b, o, b.length), writeAt: (b, o) => this.#io(OP_WRITE, b, o, b.length) }, { chunkSize: min, size: this.size }) : undefined;
    if (first.canBlockStatus) this.extents = (off, length) => this.#extents(off, length);
    log.debug({ size: this.size, readOnly: this.readOnly, connections: clients.length, blockSize: first.blockSize, encrypted: first.encrypted, blockStatus: first.canBlockStatus }, 'NBD backend open');
  }

  readAt(buf: Buffer, off: number): Promise<void> {
    const refused = this.#refuse(off, buf.length, false);
    if (refused !== undefined) return Promise.reject(refused);
    return this.#aligned !== undefined ? this.#aligned.readAt(buf, off) : this.#io(OP_READ, buf, off, buf.length);
  }

  writeAt(buf: Buffer, off: number): Promise<void> {
    const refused = this.#refuse(off, buf.length, true);
    if (refused !== undefined) return Promise.reject(refused);
    return this.#aligned !== undefined ? this.#aligned.writeAt(buf, off) : this.#io(OP_WRITE, buf, off, buf.length);
  }

  zero(off: number, length: number): Promise<void> {
    const refused = this.#refuse(off, length, true);
    if (refused !== undefined) return Promise.reject(refused);
    if ((this.#flags & NBD_FLAG_SEND_WRITE_ZEROES) === 0) return this.#writeZeros(off, length);
    return this.#io(OP_ZERO, undefined, off, length);
  }

  /** Discards a range so that it reads as zeros: NBD_CMD_WRITE_ZEROES without NO_HOLE (the server may punch holes). */
  trim(off: number, length: number): Promise<void> {
    return this.zero(off, length);
  }

  async sync(): Promise<void> {
    if (this.#closing !== undefined) throw new ClosedError('NBD backend');
    if ((this.#flags & NBD_FLAG_SEND_FLUSH) === 0 || this.readOnly) return;
    try {
      await withRetry(this.#flushAll, this.#retry);
    } catch (err) {
      throw this.#wrap(err, 'sync', undefined, undefined);
    }
  }

  /** NBD_CMD_FLUSH on every live connection (at least one: a dropped one is reconnected first). */
  readonly #flushAll = async (): Promise<void> => {
    const clients = this.#slots.map((s) => s.client).filter((c): c is NbdClient => c !== undefined);
    if (clients.length === 0) clients.push(await this.#reconnect());
    await Promise.all(clients.map((c) => c.flush()));
  };

  /** Waits for requests in flight, then disconnects every connection; idempotent. */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    if (this.#active > 0) await new Promise<void>((resolve) => (this.#drained = resolve));
    this.#disconnecting = true;
    const results = await Promise.allSettled(this.#slots.map((s) => (s.connecting ?? Promise.resolve(s.client)).then((c) => c?.close())));
    const errors = results.flatMap((r) => (r.status === 'rejected' ? [r.reason as unknown] : []));
    this.#log.debug({ errors: errors.length }, 'NBD backend closed');
    if (errors.length > 0) throw new AggregateError(errors, `NBD backend ${this.target}: ${errors.length} connection(s) failed to close`);
  }

  #refuse(off: number, length: number, write: boolean): Error | undefined {
    if (this.#closing !== undefined) return new ClosedError('NBD backend');
    if (!Number.isSafeInteger(off) || off < 0 || length < 0 || off + length > this.size) return new OutOfRangeError(off, length, this.size);
    if (write && this.readOnly) return new ReadOnlyError(`NBD export ${this.target}`);
    return undefined;
  }

  /** One request, split at the server's maximum block size; retried after transient failures. */
  async #io(op: number, buf: Buffer | undefined, off: number, length: number): Promise<void> {
    if (length <= (op === OP_ZERO ? ZERO_PIECE : this.#maxRequest)) return this.#attempt(op, buf, off, length);
    const piece = op === OP_ZERO ? ZERO_PIECE : this.#maxRequest;
    const parts: Promise<void>[] = [];
    for (let pos = 0; pos < length; pos += piece) {
      const n = Math.min(piece, length - pos);
      parts.push(this.#attempt(op, buf?.subarray(pos, pos + n), off + pos, n));
    }
    await settleAll(parts);
  }

  async #attempt(op: number, buf: Buffer | undefined, off: number, length: number): Promise<void> {
    try {
      await this.#once(op, buf, off, length);
    } catch (err) {
      if (!this.#isTransient(err) || this.#options.retries === 0) throw this.#wrap(err, OP_NAMES[op]!, off, length);
      this.#log.debug({ err, op: OP_NAMES[op], off, length }, 'NBD request failed; retrying');
      try {
        await withRetry(() => this.#once(op, buf, off, length), this.#retry);
      } catch (again) {
        throw this.#wrap(again, OP_NAMES[op]!, off, length);
      }
    }
  }

  #once(op: number, buf: Buffer | undefined, off: number, length: number): Promise<void> {
    return this.#withClient((client) => {
      if (op === OP_READ) return client.readAt(buf!, off);
      if (op === OP_WRITE) return client.writeAt(buf!, off);
      return client.zero(off, length);
    });
  }

  /** Block status passes through (NBD_CMD_BLOCK_STATUS, base:allocation); retried like a read. */
  async #extents(off: number, length: number): Promise<readonly BackendExtent[]> {
    const refused = this.#refuse(off, length, false);
    if (refused !== undefined) throw refused;
    if (length === 0) return [];
    const n = Math.min(length, MAX_STATUS_LENGTH);
    const call = (): Promise<readonly BackendExtent[]> => this.#withClient(async (client) => {
      if (!client.canBlockStatus) return [{ length: n, flags: 0 }]; // a reconnected server without it: all data
      return client.blockStatus(off, n);
    });
    try {
      return await withRetry(call, this.#retry);
    } catch (err) {
      throw this.#wrap(err, 'extents', off, n);
    }
  }

  /** Runs one call on the least busy connection, within maxInFlight. */
  async #withClient<T>(call: (client: NbdClient) => Promise<T>): Promise<T> {
    if (this.#active >= this.maxInFlight) await new Promise<void>((resolve) => this.#queue.push(resolve));
    else this.#active++;
    try {
      return await call(this.#pick() ?? (await this.#reconnect()));
    } finally {
      const next = this.#queue.shift();
      if (next !== undefined) next(); // the slot passes straight to the next request
      else if (--this.#active === 0 && this.#drained !== undefined) this.#drained();
    }
  }

  /** The connected client with the fewest requests in flight. */
  #pick(): NbdClient | undefined {
    let best: NbdClient | undefined;
    for (const slot of this.#slots) {
      const c = slot.client;
      if (c !== undefined && (best === undefined || c.inFlight < best.inFlight)) best = c;
    }
    return best;
  }

  /** Brings the first dropped connection back (one attempt; withRetry decides about more). */
  #reconnect(): Promise<NbdClient> {
    if (this.#disconnecting) return Promise.reject(new ClosedError('NBD backend'));
    const slot = this.#slots.find((s) => s.connecting !== undefined) ?? this.#slots.find((s) => s.client === undefined) ?? this.#slots[0]!;
    slot.connecting ??= connect(this.#options, this.#tls, this.#log)
      .then(async (client) => {
        if (client.size !== this.size) {
          await client.close();
          throw new BackendError({ backend: 'nbd', op: 'reconnect' }, `${this.target} changed size from ${this.size} to ${client.size}`);
        }
        this.#log.info('NBD connection re-established');
        slot.client = this.#disconnecting ? undefined : client;
        this.#watch(slot, client);
        return client;
      })
      .finally(() => (slot.connecting = undefined));
    return slot.connecting;
  }

  #watch(slot: Slot, client: NbdClient): Slot {
    void client.closed().then((err) => {
      if (slot.client !== client) return;
      slot.client = undefined;
      if (err !== undefined && !this.#disconnecting) this.#log.warn({ err }, 'NBD connection lost');
    });
    return slot;
  }

  readonly #isTransient = (err: unknown): boolean => {
    if (this.#disconnecting) return false;
    if (err instanceof ClosedError || err instanceof TimeoutError) return true;
    if (err instanceof NbdRequestError) return err.errno === NBD_ESHUTDOWN;
    return !(err instanceof R3mapError) && isTransientNetworkError(err);
  };

  #wrap(err: unknown, op: string, off: number | undefined, length: number | undefined): Error {
    if (err instanceof OutOfRangeError || err instanceof ReadOnlyError || err instanceof BackendError) return err;
    if (err instanceof ClosedError && this.#closing !== undefined) return err;
    const message = err instanceof Error ? err.message : String(err);
    return new BackendError({ backend: 'nbd', op, ...(off !== undefined ? { off, length: length ?? 0 } : {}) }, `${this.target}: ${message}`, { cause: err });
  }

  async #writeZeros(off: number, length: number): Promise<void> {
    const zeros = Buffer.alloc(Math.min(ZERO_FILL, length));
    for (let pos = 0; pos < length; pos += zeros.length) {
      const n = Math.min(zeros.length, length - pos);
      await this.writeAt(n === zeros.length ? zeros : zeros.subarray(0, n), off + pos);
    }
  }
}

function targetOf(o: Pick<Resolved, 'address' | 'exportName'>, tls: boolean): string {
  const name = encodeURIComponent(o.exportName);
  if ('path' in o.address) return `nbd${tls ? 's' : ''}+unix:///${name}?socket=${o.address.path}`;
  return `nbd${tls ? 's' : ''}://${describeAddress(o.address)}/${name}`;
}

function connect(o: Resolved, tls: NbdClientTlsOptions | undefined, log: Logger): Promise<NbdClient> {
  return NbdClient.connect(o.address, { exportName: o.exportName, timeoutMs: o.connectTimeoutMs, log, ...(tls !== undefined ? { tls } : {}) });
}

async function connectOrFail(o: Resolved, tls: NbdClientTlsOptions | undefined, log: Logger): Promise<NbdClient> {
  try {
    return await connect(o, tls, log);
  } catch (err) {
    const reason = (err as NodeJS.ErrnoException).code !== undefined && !(err instanceof R3mapError)
      ? `${(err as NodeJS.ErrnoException).code}: ${(err as Error).message}`
      : (err as Error).message;
    throw new BackendError({ backend: 'nbd', op: 'open' }, `cannot open ${targetOf(o, tls !== undefined)}: ${reason}`, { cause: err });
  }
}
