/**
 * RedisBackend: one Redis string per chunk, key `<prefix>-<offset>` (offset = index * chunkSize
 * in decimal; an empty prefix gives `<offset>`, r3map Go's own Redis keys), through ioredis.
 *
 * Guarantees, on top of ChunkStoreBackend's (whole chunks, blockSize = chunkSize: any range
 * through mount/compose.ts; missing key = zeros, at most `maxInFlight` chunk commands at once,
 * trim = DEL):
 * - The chunk commands of one call are issued in one tick and pipelined on the connection (each
 *   is sent without waiting for earlier replies). ioredis' auto-pipelining (one Pipeline per
 *   tick) is an option, off by default: its Pipeline settles only when its last reply is in,
 *   which measured 2-4x slower with 64 KiB values and 16 calls in flight.
 * - Bounded everywhere: open() connects and PINGs within `connectTimeoutMs` or fails with a
 *   BackendError naming the URL (without its password); a command gets no answer within
 *   `commandTimeoutMs` → it fails; ioredis queues nothing while disconnected (commands fail at
 *   once and hold no view of the caller's buffer), reconnects at most `reconnectAttempts` times
 *   in a row, and never re-sends unanswered commands by itself.
 * - Connection-level failures and LOADING/BUSY/TRYAGAIN/CLUSTERDOWN/MASTERDOWN replies are
 *   retried by withRetry (`retries`, backoff, one warning per retry); after ioredis gave up
 *   reconnecting, the next retry starts a fresh connect. Other replies (WRONGTYPE, NOAUTH, OOM …)
 *   fail at once. A value whose length is not the chunk's is an error, not data.
 * - sync() is a no-op: a reply means the server has the write; its durability is the server's
 *   persistence setting. Writes are visible to every client at once (canMultiConn).
 */
import { setMaxListeners } from 'node:events';
import { Cluster, Redis, type RedisOptions } from 'ioredis';
import { BackendError, UsageError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import { ChunkStoreBackend, type ChunkStore } from './chunk-store.js';
import { withRetry, withTimeout, type RetryOptions } from '../util/retry.js';
import { DEFAULT_CHUNK_SIZE } from '../util/chunks.js';

export interface RedisBackendOptions {
  /** redis://[user:pass@]host:port/db or rediss://… (TLS); with `cluster`, one seed node. */
  readonly url: string;
  /** Key prefix; '' gives bare offsets as keys. */
  readonly prefix: string;
  readonly size: number;
  /** Bytes per key; default DEFAULT_CHUNK_SIZE (64 KiB). */
  readonly chunkSize?: number;
  /** Use ioredis' Redis Cluster client (db must be 0). */
  readonly cluster?: boolean;
  readonly readOnly?: boolean;
  /** Chunk commands in flight; default 16, 0 = no cap. */
  readonly maxInFlight?: number;
  /** Retries of one chunk command on transient errors; default 5, 0 = none. */
  readonly retries?: number;
  /** Bound on open() (connect + PING) and on each reconnect; default 5000 ms. */
  readonly connectTimeoutMs?: number;
  /** Bound on one command; default 5000 ms, 0 = none. */
  readonly commandTimeoutMs?: number;
  /**
   * ioredis auto-pipelining (the commands of one tick go out as one Pipeline); default false.
   * Commands are pipelined on the connection either way (sent without waiting for replies); a
   * Pipeline only settles when its last reply is in, which measured 2-4x slower with 64 KiB values.
   */
  readonly autoPipelining?: boolean;
  /** Reconnects in a row before ioredis gives up (commands then fail); default 20. */
  readonly reconnectAttempts?: number;
  readonly log?: Logger;
}

type Client = Redis | Cluster;

/** Reply errors that go away by themselves (the first word of a Redis error is its code). */
const TRANSIENT_REPLIES = /^(LOADING|BUSY|TRYAGAIN|CLUSTERDOWN|MASTERDOWN)\b/;

/** The URL without its password, for messages and logs. */
export function redactRedisUrl(url: string): string {
  try {
    const u = new URL(url);
    u.password = '';
    return u.toString().replace(/\/$/, '');
  } catch {
    return '(an unparsable Redis URL)';
  }
}

class RedisChunkStore implements ChunkStore {
  readonly name = 'redis';
  readonly #client: Client;
  readonly #prefix: string;
  readonly #endpoint: string;
  readonly #abort = new AbortController();
  readonly #get: RetryOptions;
  readonly #set: RetryOptions;
  readonly #del: RetryOptions;
  readonly #exists: RetryOptions;
  readonly #retries: number;
  /** The last connection-level error ioredis reported (for messages while disconnected). */
  #lastConnError: Error | undefined;

  constructor(client: Client, prefix: string, endpoint: string, retries: number, log: Logger) {
    this.#client = client;
    this.#retries = retries;
    client.on('error', (err: Error) => void (this.#lastConnError = err));
    setMaxListeners(0, this.#abort.signal); // every op waiting to retry listens for close
    this.#prefix = prefix === '' ? '' : `${prefix}-`;
    this.#endpoint = endpoint;
    const base = { retries, isTransient: (err: unknown) => this.#isTransient(err), log, signal: this.#abort.signal };
    this.#get = Object.freeze({ ...base, what: 'redis GET' });
    this.#set = Object.freeze({ ...base, what: 'redis SET' });
    this.#del = Object.freeze({ ...base, what: 'redis DEL' });
    this.#exists = Object.freeze({ ...base, what: 'redis EXISTS' });
  }

  async readChunk(_index: number, off: number, dst: Buffer): Promise<boolean> {
    const key = this.#prefix + off;
    let value: Buffer | null;
    try {
      value = await withRetry(() => this.#client.getBuffer(key), this.#get);
    } catch (err) {
      throw this.#error(err, 'read', off, dst.length);
    }
    if (value === null) return false;
    if (value.length !== dst.length) {
      throw new BackendError(
        { backend: 'redis', op: 'read', off, length: dst.length },
        `${this.#endpoint}: key ${key} holds ${value.length} bytes, expected ${dst.length} (written with another chunk size?)`,
      );
    }
    value.copy(dst);
    return true;
  }

  async writeChunk(_index: number, off: number, src: Buffer): Promise<void> {
    const key = this.#prefix + off;
    try {
      await withRetry(() => this.#client.set(key, src), this.#set);
    } catch (err) {
      throw this.#error(err, 'write', off, src.length);
    }
  }

  /** EXISTS per key, all sent at once (ioredis pipelines them on the connection). */
  async present(first: number, count: number, chunkSize: number): Promise<readonly boolean[]> {
    const keys = Array.from({ length: count }, (_, i) => this.#prefix + (first + i) * chunkSize);
    try {
      const found = await withRetry(() => Promise.all(keys.map((key) => this.#client.exists(key))), this.#exists);
      return found.map((n) => n > 0);
    } catch (err) {
      throw this.#error(err, 'extents', first * chunkSize, count * chunkSize);
    }
  }

  async deleteChunk(_index: number, off: number): Promise<void> {
    const key = this.#prefix + off;
    try {
      await withRetry(() => this.#client.del(key), this.#del);
    } catch (err) {
      throw this.#error(err, 'trim', off, 0);
    }
  }

  async close(): Promise<void> {
    this.#abort.abort();
    const client = this.#client;
    if (client.status === 'end') return;
    try {
      await withTimeout(client.quit(), 2000, `${this.#endpoint}: QUIT`);
    } catch {
      // the server is gone or slow: drop the connection instead
    } finally {
      client.disconnect();
    }
  }

  #isTransient(err: unknown): boolean {
    if (this.#abort.signal.aborted || !(err instanceof Error)) return false;
    if (err.name === 'ReplyError') return TRANSIENT_REPLIES.test(err.message);
    if (err instanceof TypeError || err instanceof RangeError) return false;
    // Connection-level: refused, reset, timed out, closed, not writable while reconnecting.
    if (this.#client.status === 'end') this.#client.connect().catch(() => undefined); // ioredis gave up: try afresh
    return true;
  }

  #error(err: unknown, op: string, off: number, length: number): BackendError {
    let message = err instanceof Error ? err.message : String(err);
    if (err instanceof Error && err.name !== 'ReplyError' && this.#client.status !== 'ready') {
      const last = this.#lastConnError?.message ?? message;
      message = `not connected (${this.#client.status}; ${last}), gave up after ${this.#retries} retries`;
    }
    return new BackendError({ backend: 'redis', op, off, length }, `${this.#endpoint}: ${message}`, { cause: err });
  }
}

export class RedisBackend extends ChunkStoreBackend {
  /** The URL without its password. */
  readonly url: string;
  readonly prefix: string;

  private constructor(store: RedisChunkStore, url: string, options: RedisBackendOptions, chunkSize: number) {
    super(store, { size: options.size, chunkSize, readOnly: options.readOnly ?? false, maxInFlight: options.maxInFlight ?? 16, canMultiConn: true, log: options.log });
    this.url = url;
    this.prefix = options.prefix;
  }

  static async open(options: RedisBackendOptions): Promise<RedisBackend> {
    const endpoint = redactRedisUrl(options.url);
    const chunkSize = options.chunkSize ?? DEFAULT_CHUNK_SIZE;
    const connectTimeoutMs = options.connectTimeoutMs ?? 5000;
    const reconnectAttempts = options.reconnectAttempts ?? 20;
    let parsed: URL;
    try {
      parsed = new URL(options.url);
    } catch (err) {
      throw new UsageError(`redis URL is not a URL: ${endpoint} (expected redis://[user:pass@]host:port/db)`, { cause: err });
    }
    if (parsed.protocol !== 'redis:' && parsed.protocol !== 'rediss:') {
      throw new UsageError(`redis URL must start with redis:// or rediss://, got ${endpoint}`);
    }
    const log = (options.log ?? silentLogger).child({ component: 'redis-backend', url: endpoint });
    const common: RedisOptions = {
      lazyConnect: true,
      enableOfflineQueue: false,
      autoResendUnfulfilledCommands: false,
      maxRetriesPerRequest: 1,
      connectTimeout: connectTimeoutMs,
      ...(options.commandTimeoutMs === 0 ? {} : { commandTimeout: options.commandTimeoutMs ?? 5000 }),
      retryStrategy: (times: number) => (times > reconnectAttempts ? null : Math.min(50 * times, 200)),
    };
    let client: Client;
    if (options.cluster === true) {
      const db = parsed.pathname.replace(/^\//, '');
      if (db !== '' && db !== '0') throw new UsageError(`redis cluster has only db 0, got ${endpoint}`);
      client = new Cluster([{ host: parsed.hostname.replace(/^\[|\]$/g, ''), port: Number(parsed.port || 6379) }], {
        lazyConnect: true,
        enableAutoPipelining: options.autoPipelining ?? false,
        enableOfflineQueue: false,
        maxRedirections: 16,
        clusterRetryStrategy: (times: number) => (times > reconnectAttempts ? null : Math.min(50 * times, 200)),
        redisOptions: {
          ...common,
          ...(parsed.username ? { username: decodeURIComponent(parsed.username) } : {}),
          ...(parsed.password ? { password: decodeURIComponent(parsed.password) } : {}),
          ...(parsed.protocol === 'rediss:' ? { tls: {} } : {}),
        },
      });
    } else {
      client = new Redis(options.url, { ...common, enableAutoPipelining: options.autoPipelining ?? false });
    }
    watch(client, log);
    let lastError: Error | undefined; // ioredis rejects connect() with "Connection is closed."; the cause comes as an event
    const remember = (err: Error): void => void (lastError = err);
    client.on('error', remember);
    try {
      await withTimeout(client.connect(), connectTimeoutMs, `${endpoint}: connect`);
      await withTimeout(client.ping(), connectTimeoutMs, `${endpoint}: PING`);
    } catch (err) {
      client.disconnect();
      const cause = lastError ?? err;
      throw new BackendError({ backend: 'redis', op: 'open' }, `${endpoint}: ${describeStartupError(cause)}`, { cause });
    } finally {
      client.off('error', remember);
    }
    const store = new RedisChunkStore(client, options.prefix, endpoint, options.retries ?? 5, log);
    log.debug({ cluster: options.cluster === true }, 'connected');
    return new RedisBackend(store, endpoint, options, chunkSize);
  }
}

/** Logs an outage once when it starts, once when it ends, and once if ioredis gives up. */
function watch(client: Client, log: Logger): void {
  let down = false;
  client.on('error', (err: Error) => {
    if (down) return;
    down = true;
    log.warn({ err }, 'redis connection failed; reconnecting');
  });
  client.on('ready', () => {
    if (down) log.info('redis connection is back');
    down = false;
  });
  client.on('end', () => {
    if (down) log.error('redis reconnect attempts used up; commands fail until a retry reconnects');
  });
}

function describeStartupError(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  if (err.name === 'ReplyError' && /^(WRONGPASS|NOAUTH|NOPERM)\b/.test(err.message)) return `authentication failed (${err.message})`;
  const code = (err as { code?: unknown }).code;
  if (code === 'ECONNREFUSED') return `unreachable: connection refused (${err.message})`;
  return err.message;
}
