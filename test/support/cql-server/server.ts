/**
 * CqlTestServer: an in-process CQL native protocol v4 server for tests, on 127.0.0.1 and a free
 * port. It is one "node" of one data center, stores `(key blob PRIMARY KEY, data blob)` tables in
 * memory and understands only what the r3map Cassandra backend and cassandra-driver 4.x send
 * (see statements.ts); anything else gets an ERROR frame that says so.
 *
 * For tests it counts what it served (`counts`: 'STARTUP', 'PREPARE insert', 'EXECUTE select',
 * 'QUERY createTable', …), can require a password (PasswordAuthenticator, SASL PLAIN), can fail
 * the next data statements with an error code (`failNext`), and keeps its data in a CqlStore that
 * a new server can take over (a node restart: prepared statements are forgotten, data is not).
 */
import { randomUUID } from 'node:crypto';
import net from 'node:net';
import { CQL_MAX_BODY_LENGTH, ErrorCode } from './constants.js';
import { CqlConnection, type PreparedStatement, type ServerContext } from './connection.js';
import type { NodeInfo } from './results.js';
import { CqlError } from './statements.js';
import { CqlStore } from './store.js';
import { BodyWriter } from './codec.js';

export interface CqlTestServerOptions {
  /** Loopback only; default 127.0.0.1. */
  readonly host?: string;
  /** Default 0 (a free port). Pass a stopped server's port to restart it in place. */
  readonly port?: number;
  /** Keyspaces and rows; default a new, empty store. */
  readonly store?: CqlStore;
  /** Require PasswordAuthenticator login with these credentials. */
  readonly credentials?: { readonly username: string; readonly password: string };
  /** What system.local reports; default datacenter1 / rack1 / 4.1.0. */
  readonly node?: Partial<Omit<NodeInfo, 'address'>>;
  /** Default 256 MiB. */
  readonly maxBodyLength?: number;
}

export class CqlTestServer implements ServerContext {
  readonly store: CqlStore;
  readonly node: NodeInfo;
  readonly credentials: { readonly username: string; readonly password: string } | undefined;
  readonly prepared = new Map<string, PreparedStatement>();
  readonly maxBodyLength: number;
  /** Requests served, by 'OPCODE' and 'OPCODE statement-kind'. */
  readonly counts = new Map<string, number>();
  /** The [consistency] the last statement of each kind ran at ('insert' → 0x0004 QUORUM, …). */
  readonly consistency = new Map<string, number>();
  readonly #server: net.Server;
  readonly #connections = new Set<CqlConnection>();
  #failures: { remaining: number; code: number } = { remaining: 0, code: 0 };
  #stopped: Promise<void> | undefined;

  private constructor(server: net.Server, options: CqlTestServerOptions, address: string) {
    this.#server = server;
    this.store = options.store ?? new CqlStore();
    this.credentials = options.credentials;
    this.maxBodyLength = options.maxBodyLength ?? CQL_MAX_BODY_LENGTH;
    this.node = Object.freeze({
      clusterName: 'r3map test cluster',
      dataCenter: 'datacenter1',
      rack: 'rack1',
      releaseVersion: '4.1.0',
      partitioner: 'org.apache.cassandra.dht.Murmur3Partitioner',
      hostId: randomUUID(),
      tokens: ['0'],
      ...options.node,
      address,
    });
  }

  static async start(options: CqlTestServerOptions = {}): Promise<CqlTestServer> {
    const host = options.host ?? '127.0.0.1';
    if (host !== '127.0.0.1') throw new Error(`the CQL test server listens on loopback only, not ${host}`);
    const server = net.createServer();
    const self = new CqlTestServer(server, options, host);
    server.on('connection', (socket) => {
      const conn = new CqlConnection(socket, self);
      self.#connections.add(conn);
      socket.once('close', () => self.#connections.delete(conn));
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(options.port ?? 0, host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    return self;
  }

  get host(): string {
    return this.node.address;
  }

  get port(): number {
    return (this.#server.address() as net.AddressInfo).port;
  }

  /** Open client connections. */
  get connectionCount(): number {
    return this.#connections.size;
  }

  count(what: string): void {
    this.counts.set(what, (this.counts.get(what) ?? 0) + 1);
  }

  noteConsistency(kind: string, consistency: number): void {
    this.consistency.set(kind, consistency);
  }

  /** How many requests of this kind were served (0 when none). */
  served(what: string): number {
    return this.counts.get(what) ?? 0;
  }

  /**
   * The next `count` data statements (SELECT/INSERT/DELETE on a user table) fail with `code`
   * (e.g. ErrorCode.Overloaded, Unavailable, Invalid); topology queries are not affected.
   */
  failNext(count: number, code: number): void {
    this.#failures = { remaining: count, code };
  }

  takeFailure(): CqlError | undefined {
    if (this.#failures.remaining === 0) return undefined;
    this.#failures.remaining--;
    const code = this.#failures.code;
    if (code === ErrorCode.Unavailable) {
      // <cl><required><alive>
      const extra = Buffer.from(new BodyWriter().short(0x0004).int(1).int(0).finish());
      return new CqlError(code, 'Cannot achieve consistency level QUORUM (injected by the test server)', extra);
    }
    return new CqlError(code, `injected failure 0x${code.toString(16).padStart(4, '0')} (test server failNext)`);
  }

  /** Closes the listener and drops every connection at once (a node going away). Idempotent. */
  stop(): Promise<void> {
    this.#stopped ??= new Promise<void>((resolve) => {
      this.#server.close(() => resolve());
      for (const conn of this.#connections) conn.destroy();
    });
    return this.#stopped;
  }
}
