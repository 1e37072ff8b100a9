/**
 * CqlStore: the test server's in-memory keyspaces and `(key blob PRIMARY KEY, data blob)`
 * tables. It outlives a server: pass the same store to a new CqlTestServer to "restart" a node
 * with its data intact. Rows are keyed by the key bytes (as a latin1 string); values may be views
 * of the request frame that carried them (Node does not reuse socket read buffers).
 */
import { randomUUID } from 'node:crypto';
import { ErrorCode } from './constants.js';
import { CqlError, type Replication } from './statements.js';

export type Table = Map<string, Buffer | null>;

export interface KeyspaceInfo {
  readonly replication: Replication;
  readonly tables: Map<string, Table>;
}

export class CqlStore {
  readonly #keyspaces = new Map<string, KeyspaceInfo>();
  /** Changes on every schema change, as Cassandra's does. */
  schemaVersion: string = randomUUID();

  hasKeyspace(name: string): boolean {
    return this.#keyspaces.has(name);
  }

  /** The replication a keyspace was created with, or undefined when there is no such keyspace. */
  replication(name: string): Replication | undefined {
    return this.#keyspaces.get(name)?.replication;
  }

  /** true when created, false when it already existed. */
  createKeyspace(name: string, replication: Replication): boolean {
    if (this.#keyspaces.has(name)) return false;
    this.#keyspaces.set(name, { replication, tables: new Map() });
    this.schemaVersion = randomUUID();
    return true;
  }

  /** true when created, false when it already existed. Throws when the keyspace is missing. */
  createTable(keyspace: string, table: string): boolean {
    const ks = this.#keyspace(keyspace);
    if (ks.tables.has(table)) return false;
    ks.tables.set(table, new Map());
    this.schemaVersion = randomUUID();
    return true;
  }

  /** The table, or CqlError Invalid as Cassandra words it. */
  table(keyspace: string, table: string): Table {
    const t = this.#keyspace(keyspace).tables.get(table);
    if (t === undefined) throw new CqlError(ErrorCode.Invalid, `unconfigured table ${table}`);
    return t;
  }

  /** Rows in a table (for tests: proves DELETE and INSERT reached the store). */
  rowCount(keyspace: string, table: string): number {
    return this.table(keyspace, table).size;
  }

  #keyspace(name: string): KeyspaceInfo {
    const ks = this.#keyspaces.get(name);
    if (ks === undefined) throw new CqlError(ErrorCode.Invalid, `Keyspace ${name} does not exist`);
    return ks;
  }
}
