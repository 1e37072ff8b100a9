/**
 * The few CQL statements the test server understands: exactly what the r3map Cassandra backend
 * and cassandra-driver 4.x (with metadata sync off) issue. Anything else is a CqlError
 * Syntax_error that names the statement, so a new statement in the backend fails loudly here
 * instead of being half-understood.
 *
 * Identifiers follow CQL: unquoted ones are case-insensitive (folded to lower case), "quoted"
 * ones keep their case.
 */
import { ErrorCode } from './constants.js';

/** A CQL-level failure, sent as an ERROR frame with this code; the connection stays open. */
export class CqlError extends Error {
  readonly code: number;
  /** Extra body after the message (e.g. Already_exists <ks><table>, Unprepared <id>). */
  readonly extra: Buffer | undefined;
  constructor(code: number, message: string, extra?: Buffer) {
    super(message);
    this.name = 'CqlError';
    this.code = code;
    this.extra = extra;
  }
}

/** A keyspace's replication map: the strategy class and, for SimpleStrategy, the factor. */
export interface Replication {
  readonly class: string;
  readonly factor: number | undefined;
}

/** A table name as written: the keyspace may be left to the connection's USE. */
export interface TableRef {
  readonly keyspace: string | undefined;
  readonly table: string;
}

export type Statement =
  | { readonly kind: 'use'; readonly keyspace: string }
  | { readonly kind: 'createKeyspace'; readonly keyspace: string; readonly ifNotExists: boolean; readonly replication: Replication }
  | { readonly kind: 'createTable'; readonly ref: TableRef; readonly ifNotExists: boolean }
  | { readonly kind: 'select'; readonly ref: TableRef }
  | { readonly kind: 'insert'; readonly ref: TableRef }
  | { readonly kind: 'delete'; readonly ref: TableRef }
  | { readonly kind: 'system'; readonly table: 'local' | 'peers'; readonly columns: '*' | 'schema_version' };

export type StatementKind = Statement['kind'];

/** Bind markers (`?`) each kind takes, in order. */
export const MARKERS: Readonly<Record<StatementKind, readonly string[]>> = {
  use: [],
  createKeyspace: [],
  createTable: [],
  system: [],
  select: ['key'],
  insert: ['key', 'data'],
  delete: ['key'],
};

const ID = String.raw`("[^"]+"|[A-Za-z][A-Za-z0-9_]*)`;
const QNAME = String.raw`(?:${ID}\.)?${ID}`;
const END = String.raw`\s*;?\s*$`;

const patterns: readonly { readonly re: RegExp; readonly make: (m: RegExpExecArray) => Statement }[] = [
  {
    re: new RegExp(String.raw`^USE\s+${ID}${END}`, 'i'),
    make: (m) => ({ kind: 'use', keyspace: ident(m[1]!) }),
  },
  {
    re: new RegExp(String.raw`^CREATE\s+KEYSPACE\s+(IF\s+NOT\s+EXISTS\s+)?${ID}\s+WITH\s+replication\s*=\s*(\{[^}]*\})(?:\s+AND\s+durable_writes\s*=\s*(?:true|false))?${END}`, 'i'),
    make: (m) => ({ kind: 'createKeyspace', ifNotExists: m[1] !== undefined, keyspace: ident(m[2]!), replication: replication(m[3]!) }),
  },
  {
    re: new RegExp(String.raw`^CREATE\s+TABLE\s+(IF\s+NOT\s+EXISTS\s+)?${QNAME}\s*\(\s*key\s+blob\s+PRIMARY\s+KEY\s*,\s*data\s+blob\s*\)${END}`, 'i'),
    make: (m) => ({ kind: 'createTable', ifNotExists: m[1] !== undefined, ref: ref(m[2], m[3]!) }),
  },
  {
    re: new RegExp(String.raw`^SELECT\s+data\s+FROM\s+${QNAME}\s+WHERE\s+key\s*=\s*\?(?:\s+LIMIT\s+1)?${END}`, 'i'),
    make: (m) => ({ kind: 'select', ref: ref(m[1], m[2]!) }),
  },
  {
    re: new RegExp(String.raw`^INSERT\s+INTO\s+${QNAME}\s*\(\s*key\s*,\s*data\s*\)\s*VALUES\s*\(\s*\?\s*,\s*\?\s*\)${END}`, 'i'),
    make: (m) => ({ kind: 'insert', ref: ref(m[1], m[2]!) }),
  },
  {
    re: new RegExp(String.raw`^DELETE\s+FROM\s+${QNAME}\s+WHERE\s+key\s*=\s*\?${END}`, 'i'),
    make: (m) => ({ kind: 'delete', ref: ref(m[1], m[2]!) }),
  },
  {
    // The driver's topology queries: SELECT * FROM system.local WHERE key='local', SELECT *
    // FROM system.peers, and SELECT schema_version FROM system.{local,peers} (schema agreement).
    re: new RegExp(String.raw`^SELECT\s+(\*|schema_version)\s+FROM\s+system\s*\.\s*(local|peers)(?:\s+WHERE\s+key\s*=\s*'local')?${END}`, 'i'),
    make: (m) => ({ kind: 'system', columns: m[1] === '*' ? '*' : 'schema_version', table: m[2]!.toLowerCase() === 'local' ? 'local' : 'peers' }),
  },
];

function ident(raw: string): string {
  return raw.startsWith('"') ? raw.slice(1, -1) : raw.toLowerCase();
}

function ref(keyspace: string | undefined, table: string): TableRef {
  return { keyspace: keyspace === undefined ? undefined : ident(keyspace), table: ident(table) };
}

function replication(map: string): Replication {
  const cls = /'class'\s*:\s*'([^']+)'/i.exec(map);
  if (cls === null) throw new CqlError(ErrorCode.Config_error, `Missing replication strategy class in ${map}`);
  const factor = /'replication_factor'\s*:\s*'?(\d+)'?/i.exec(map);
  return { class: cls[1]!, factor: factor === null ? undefined : Number(factor[1]) };
}

/** Parses one statement or throws CqlError Syntax_error naming it. */
export function parseStatement(cql: string): Statement {
  const text = cql.trim();
  for (const { re, make } of patterns) {
    const m = re.exec(text);
    if (m !== null) return make(m);
  }
  const shown = text.length > 200 ? `${text.slice(0, 200)}…` : text;
  throw new CqlError(ErrorCode.Syntax_error, `r3map CQL test server does not understand this statement: ${shown}`);
}
