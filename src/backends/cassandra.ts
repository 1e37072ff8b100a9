/**
 * CassandraBackend: a Backend on a Cassandra or ScyllaDB table, one row per chunk
 * (cassandra-driver 4.x, CQL native protocol v4).
 *
 * Guarantees:
 * - Row key `<prefix>-<offset>` (offset = chunk index * chunkSize, decimal) as a blob, value in
 *   `data blob`: the layout r3map's Go backend uses. A missing row (or a null `data`) reads as
 *   zeros; trim deletes whole rows (DELETE). Every data statement is prepared, idempotent and
 *   runs at the configured consistency (default QUORUM, gocql's and so r3map's default).
 * - open() creates the keyspace (SimpleStrategy, replicationFactor, default 1) and table when
 *   missing (not when readOnly), then does one prepared SELECT as the start-up check; each step
 *   is bounded in time, and an unreachable node, wrong credentials or a wrong data center reject
 *   with a BackendError that names host:port.
 * - NoHostAvailableError, OperationTimedOutError and the server's Overloaded, Is_bootstrapping,
 *   Unavailable, Read_timeout and Write_timeout errors are retried with bounded backoff
 *   (matched by class and error code, never by message text); anything else fails at once.
 * - A stored row whose length is not the chunk's length rejects (a resource written with another
 *   chunk size), except a full-size last chunk, which r3map may have padded.
 * Whole-chunk calls (blockSize = chunkSize), concurrency caps and zero-fill come from
 * ChunkStoreBackend; any range and chunk locking from mount/compose.ts (openComposed).
 */
import cassandra from 'cassandra-driver';
import { BackendError, TimeoutError, UsageError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import { ChunkStoreBackend, type ChunkStore } from './chunk-store.js';
import { withRetry, type RetryOptions } from '../util/retry.js';

const { Client, auth, errors, policies, types } = cassandra;

/** Consistency levels by the names the options accept (case and `_` ignored: LOCAL_QUORUM = localQuorum). */
export const CASSANDRA_CONSISTENCIES = {
  any: types.consistencies.any,
  one: types.consistencies.one,
  two: types.consistencies.two,
  three: types.consistencies.three,
  quorum: types.consistencies.quorum,
  all: types.consistencies.all,
  localquorum: types.consistencies.localQuorum,
  eachquorum: types.consistencies.eachQuorum,
  localone: types.consistencies.localOne,
} as const;

export interface CassandraBackendOptions {
  /** Hosts (names or IPs) of the first nodes to contact. */
  readonly contactPoints: readonly string[];
  /** CQL native port, e.g. 9042. */
  readonly port: number;
  /** The data center whose nodes are used; default 'datacenter1' (Cassandra's and ScyllaDB's default). */
  readonly localDataCenter?: string;
  /** Unquoted CQL identifiers (letters, digits, `_`, up to 48), folded to lower case. */
  readonly keyspace: string;
  readonly table: string;
  /** Row keys are `<prefix>-<offset>`. */
  readonly prefix: string;
  /** Bytes in the resource. */
  readonly size: number;
  /** Bytes per row; fixed per resource. */
  readonly chunkSize: number;
  /** PasswordAuthenticator login (both or neither). */
  readonly username?: string;
  readonly password?: string;
  /** Refuse writes and trims; the keyspace and table must exist. */
  readonly readOnly?: boolean;
  readonly log?: Logger;
  /** Consistency of every data statement; default 'quorum'. */
  readonly consistency?: string;
  /** Replication factor of a keyspace created by open(); default 1. */
  readonly replicationFactor?: number;
  /** Bound on connecting (TCP, STARTUP, login, topology queries); default 5000 ms. */
  readonly connectTimeoutMs?: number;
  /** Bound on one statement (driver readTimeout); default 12000 ms. */
  readonly requestTimeoutMs?: number;
  /** Concurrent row operations; default 16, 0 = no cap. */
  readonly maxInFlight?: number;
  /** Retries of a transient failure; default 5, 0 = none. */
  readonly retries?: number;
}

interface ResolvedCassandraBackendOptions {
  readonly contactPoints: readonly string[];
  readonly port: number;
  readonly localDataCenter: string;
  readonly keyspace: string;
  readonly table: string;
  readonly prefix: string;
  readonly consistency: number;
  readonly replicationFactor: number;
  readonly connectTimeoutMs: number;
  readonly requestTimeoutMs: number;
  readonly retries: number;
  readonly readOnly: boolean;
  /** host:port, … for messages. */
  readonly endpoints: string;
}

const IDENTIFIER = /^[A-Za-z][A-Za-z0-9_]{0,47}$/;
/** cassandra-driver waits up to maxSchemaAgreementWaitSeconds (10) after DDL on a multi-node cluster. */
const SCHEMA_AGREEMENT_WAIT_MS = 10_000;

const TRANSIENT_RESPONSE_CODES: ReadonlySet<number> = new Set([
  types.responseErrorCodes.overloaded,
  types.responseErrorCodes.isBootstrapping,
  types.responseErrorCodes.unavailableException,
  types.responseErrorCodes.readTimeout,
  types.responseErrorCodes.writeTimeout,
]);

/** Driver failures a later attempt may not see: no host up, client-side timeout, a busy node. */
export function isTransientCassandraError(err: unknown): boolean {
  if (err instanceof errors.NoHostAvailableError || err instanceof errors.OperationTimedOutError) return true;
  return err instanceof errors.ResponseError && TRANSIENT_RESPONSE_CODES.has(err.code);
}

const codeNames = new Map<number, string>(Object.entries(types.responseErrorCodes).filter(([, v]) => typeof v === 'number').map(([k, v]) => [v as number, k]));

/** One line about a driver error: what failed, where, and the server's words. */
export function describeCassandraError(err: unknown, endpoints: string): string {
  if (err instanceof errors.NoHostAvailableError) {
    const inner = Object.entries((err.innerErrors ?? {}) as Record<string, unknown>);
    if (inner.some(([, e]) => e instanceof errors.AuthenticationError)) {
      return `credentials rejected by ${endpoints}: ${inner.map(([h, e]) => `${h}: ${(e as Error).message}`).join('; ')}`;
    }
    if (inner.length === 0) return `no host available (${endpoints}): ${err.message}`;
    return `no host available: ${inner.map(([h, e]) => `${h}: ${e instanceof Error ? e.message : String(e)}`).join('; ')}`;
  }
  if (err instanceof errors.OperationTimedOutError) return `timed out waiting for ${err.host ?? endpoints}: ${err.message}`;
  if (err instanceof errors.AuthenticationError) return `credentials rejected by ${endpoints}: ${err.message}`;
  if (err instanceof errors.ResponseError) {
    return `${endpoints} answered ${codeNames.get(err.code) ?? 'error'} (0x${err.code.toString(16).padStart(4, '0')}): ${err.message}`;
  }
  return err instanceof Error ? `${endpoints}: ${err.message}` : `${endpoints}: ${String(err)}`;
}

function resolve(options: CassandraBackendOptions): ResolvedCassandraBackendOptions {
  const { contactPoints, port } = options;
  if (!Array.isArray(contactPoints) || contactPoints.length === 0 || contactPoints.some((h) => typeof h !== 'string' || h === '')) {
    throw new UsageError(`cassandra contactPoints must be a non-empty list of host names, got ${JSON.stringify(contactPoints)}`);
  }
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new UsageError(`cassandra port is out of range (1..65535): ${port}`);
  for (const [what, name] of [['keyspace', options.keyspace], ['table', options.table]] as const) {
    if (typeof name !== 'string' || !IDENTIFIER.test(name)) {
      throw new UsageError(`cassandra ${what} '${name}' is not a CQL identifier (a letter, then letters, digits or _; at most 48)`);
    }
  }
  if (typeof options.prefix !== 'string' || options.prefix === '') throw new UsageError('cassandra prefix must be a non-empty string');
  const consistencyName = (options.consistency ?? 'quorum').toLowerCase().replace(/_/g, '');
  const consistency = (CASSANDRA_CONSISTENCIES as Record<string, number>)[consistencyName];
  if (consistency === undefined) {
    throw new UsageError(`cassandra consistency '${options.consistency}' is not one of ${Object.keys(CASSANDRA_CONSISTENCIES).join(', ')}`);
  }
  if ((options.username === undefined) !== (options.password === undefined)) {
    throw new UsageError('cassandra username and password go together: give both or neither');
  }
  const positive = (name: string, v: number | undefined, dflt: number, min: number): number => {
    const value = v ?? dflt;
    if (!Number.isSafeInteger(value) || value < min) throw new UsageError(`cassandra ${name} must be a whole number >= ${min}, got ${v}`);
    return value;
  };
  return Object.freeze({
    contactPoints: Object.freeze([...contactPoints]),
    port,
    localDataCenter: options.localDataCenter ?? 'datacenter1',
    keyspace: options.keyspace.toLowerCase(),
    table: options.table.toLowerCase(),
    prefix: options.prefix,
    consistency,
    replicationFactor: positive('replicationFactor', options.replicationFactor, 1, 1),
    connectTimeoutMs: positive('connectTimeoutMs', options.connectTimeoutMs, 5000, 1),
    requestTimeoutMs: positive('requestTimeoutMs', options.requestTimeoutMs, 12_000, 1),
    retries: positive('retries', options.retries, 5, 0),
    readOnly: options.readOnly ?? false,
    endpoints: contactPoints.map((h) => `${h.includes(':') ? `[${h}]` : h}:${port}`).join(', '),
  });
}

/** Rejects with TimeoutError(`<what> within <ms> ms`) unless `work` settles first; the timer never outlives the race. */
async function bounded<T>(work: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new TimeoutError(`${what} within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([work, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** The rows, seen as whole chunks. */
class CassandraChunkStore implements ChunkStore {
  readonly name = 'cassandra';
  readonly #client: cassandra.Client;
  readonly #o: ResolvedCassandraBackendOptions;
  readonly #chunkSize: number;
  readonly #size: number;
  readonly #select: string;
  readonly #insert: string;
  readonly #delete: string;
  readonly #exec: cassandra.QueryOptions;
  readonly #retry: RetryOptions;
  readonly #log: Logger;

  constructor(client: cassandra.Client, o: ResolvedCassandraBackendOptions, size: number, chunkSize: number, log: Logger) {
    this.#client = client;
    this.#o = o;
    this.#size = size;
    this.#chunkSize = chunkSize;
    this.#log = log;
    const t = `${o.keyspace}.${o.table}`;
    this.#select = `SELECT data FROM ${t} WHERE key = ?`;
    this.#insert = `INSERT INTO ${t} (key, data) VALUES (?, ?)`;
    this.#delete = `DELETE FROM ${t} WHERE key = ?`;
    this.#exec = Object.freeze({ prepare: true, consistency: o.consistency, isIdempotent: true });
    this.#retry = Object.freeze({ retries: o.retries, isTransient: isTransientCassandraError, log, what: `cassandra ${t}` });
  }

  #key(off: number): Buffer {
    return Buffer.from(`${this.#o.prefix}-${off}`, 'utf8');
  }

  #fail(err: unknown, op: string, off: number, length: number): never {
    throw new BackendError({ backend: 'cassandra', op, off, length }, describeCassandraError(err, this.#o.endpoints), { cause: err });
  }

  /** One prepared SELECT (also the start-up check). */
  async probe(): Promise<void> {
    await this.#client.execute(this.#select, [this.#key(0)], this.#exec);
  }

  async readChunk(_index: number, off: number, dst: Buffer): Promise<boolean> {
    let rs: cassandra.types.ResultSet;
    try {
      rs = await withRetry(() => this.#client.execute(this.#select, [this.#key(off)], this.#exec), this.#retry);
    } catch (err) {
      this.#fail(err, 'read', off, dst.length);
    }
    const data = rs.rows[0]?.['data'] as Buffer | null | undefined;
    if (data === undefined || data === null) return false;
    const paddedLast = data.length === this.#chunkSize && off + this.#chunkSize > this.#size;
    if (data.length !== dst.length && !paddedLast) {
      throw new BackendError({ backend: 'cassandra', op: 'read', off, length: dst.length },
        `row '${this.#o.prefix}-${off}' in ${this.#o.keyspace}.${this.#o.table} holds ${data.length} bytes, expected ${dst.length} (written with another chunk size?)`);
    }
    data.copy(dst, 0, 0, dst.length);
    return true;
  }

  async writeChunk(_index: number, off: number, src: Buffer): Promise<void> {
    try {
      await withRetry(() => this.#client.execute(this.#insert, [this.#key(off), src], this.#exec), this.#retry);
    } catch (err) {
      this.#fail(err, 'write', off, src.length);
    }
  }

  async deleteChunk(_index: number, off: number): Promise<void> {
    try {
      await withRetry(() => this.#client.execute(this.#delete, [this.#key(off)], this.#exec), this.#retry);
    } catch (err) {
      this.#fail(err, 'trim', off, Math.min(this.#chunkSize, this.#size - off));
    }
  }

  /** Acknowledged writes are already durable at the chosen consistency. */
  async sync(): Promise<void> {}

  async close(): Promise<void> {
    await shutdown(this.#client, this.#o.connectTimeoutMs, this.#log);
  }
}

async function shutdown(client: cassandra.Client, ms: number, log: Logger): Promise<void> {
  try {
    await bounded(client.shutdown(), ms, 'cassandra client shutdown did not finish');
  } catch (err) {
    log.warn({ err }, 'closing the cassandra client failed');
  }
}

export class CassandraBackend extends ChunkStoreBackend {
  readonly keyspace: string;
  readonly table: string;
  readonly prefix: string;

  private constructor(store: CassandraChunkStore, o: ResolvedCassandraBackendOptions, options: CassandraBackendOptions) {
    super(store, { size: options.size, chunkSize: options.chunkSize, readOnly: o.readOnly, maxInFlight: options.maxInFlight ?? 16, ...(options.log ? { log: options.log } : {}) });
    this.keyspace = o.keyspace;
    this.table = o.table;
    this.prefix = o.prefix;
  }

  /** Connects, creates the keyspace and table when missing (unless readOnly) and checks the table. */
  static async open(options: CassandraBackendOptions): Promise<CassandraBackend> {
    const o = resolve(options);
    const log = (options.log ?? silentLogger).child({ component: 'cassandra', keyspace: o.keyspace, table: o.table });
    const client = new Client({
      contactPoints: [...o.contactPoints],
      localDataCenter: o.localDataCenter,
      protocolOptions: { port: o.port, maxVersion: types.protocolVersion.v4 },
      isMetadataSyncEnabled: false,
      pooling: { coreConnectionsPerHost: { [types.distance.local]: 1, [types.distance.remote]: 1 } },
      socketOptions: { connectTimeout: o.connectTimeoutMs, readTimeout: o.requestTimeoutMs },
      policies: { reconnection: new policies.reconnection.ExponentialReconnectionPolicy(100, 5000, false) },
      ...(options.username !== undefined ? { authProvider: new auth.PlainTextAuthProvider(options.username, options.password ?? '') } : {}),
      monitorReporting: { enabled: false },
    } as cassandra.DseClientOptions);
    // When the control connection re-initializes (the node was down), the driver replaces the
    // Host object but leaves the old one's pool reconnecting forever, even after shutdown().
    client.on('hostRemove', (host: cassandra.Host & { shutdown?: (waitForPending: boolean) => Promise<void> }) => {
      host.shutdown?.(false).catch((err: unknown) => log.debug({ err }, 'closing a replaced host failed'));
    });
    client.on('log', (level: string, className: string, message: string) => {
      if (level === 'error') log.warn({ driver: className }, message);
      else if (level === 'warning') log.debug({ driver: className }, message);
    });
    const step = async (what: string, ms: number, work: () => Promise<unknown>): Promise<void> => {
      const running = work();
      try {
        await bounded(running, ms, `no answer from ${o.endpoints}`);
      } catch (err) {
        // The driver cannot cancel a step, and shutdown() is a no-op while it is still connecting:
        // shut down now, and again once the step settles, so a late connect is closed too.
        await shutdown(client, o.connectTimeoutMs, log);
        const late = (): Promise<void> => shutdown(client, o.connectTimeoutMs, log);
        running.then(late, late);
        const message = err instanceof TimeoutError ? err.message : describeCassandraError(err, o.endpoints);
        throw new BackendError({ backend: 'cassandra', op: 'open' }, `${what}: ${message}`, { cause: err });
      }
    };
    const store = new CassandraChunkStore(client, o, options.size, options.chunkSize, log);
    const backend = new CassandraBackend(store, o, options); // checks size and chunkSize before any I/O
    await step('connect', o.connectTimeoutMs, () => client.connect());
    if (!o.readOnly) {
      const replication = `{'class': 'SimpleStrategy', 'replication_factor': ${o.replicationFactor}}`;
      const ddlMs = o.requestTimeoutMs + SCHEMA_AGREEMENT_WAIT_MS;
      await step(`create keyspace ${o.keyspace}`, ddlMs, () =>
        client.execute(`CREATE KEYSPACE IF NOT EXISTS ${o.keyspace} WITH replication = ${replication}`));
      await step(`create table ${o.keyspace}.${o.table}`, ddlMs, () =>
        client.execute(`CREATE TABLE IF NOT EXISTS ${o.keyspace}.${o.table} (key blob PRIMARY KEY, data blob)`));
    }
    await step(`check table ${o.keyspace}.${o.table}`, o.requestTimeoutMs, () => store.probe());
    log.debug({ endpoints: o.endpoints, consistency: options.consistency ?? 'quorum' }, 'cassandra backend open');
    return backend;
  }
}
