/**
 * Bodies of the responses the test server sends (section 4.2 of native_protocol_v4.spec):
 * ERROR, SUPPORTED, the RESULT kinds, and the rows of system.local / system.peers that
 * cassandra-driver reads to discover the "cluster" (one node, no peers).
 */
import { BodyWriter } from './codec.js';
import { ResultKind, RowsFlag, TypeId } from './constants.js';

/** A column of a result or a bind marker: its name and its encoded [option] type. */
export interface Column {
  readonly name: string;
  readonly type: Buffer;
}

/** Columns that all belong to one table (sent with Global_tables_spec). */
export interface ColumnSet {
  readonly keyspace: string;
  readonly table: string;
  readonly columns: readonly Column[];
}

const option = (...ids: number[]): Buffer => {
  const w = new BodyWriter(8);
  for (const id of ids) w.short(id);
  return Buffer.from(w.finish());
};

export const CqlType = {
  blob: option(TypeId.Blob),
  text: option(TypeId.Varchar),
  uuid: option(TypeId.Uuid),
  inet: option(TypeId.Inet),
  setOfText: option(TypeId.Set, TypeId.Varchar),
} as const;

export function errorBody(code: number, message: string, extra?: Buffer): Buffer {
  const w = new BodyWriter().int(code).string(message);
  if (extra !== undefined) w.raw(extra);
  return w.finish();
}

export function supportedBody(): Buffer {
  return new BodyWriter()
    .stringMultimap(new Map([
      ['CQL_VERSION', ['3.4.5']],
      ['COMPRESSION', []],
      ['PROTOCOL_VERSIONS', ['4/v4']],
    ]))
    .finish();
}

export function voidResult(): Buffer {
  return new BodyWriter(4).int(ResultKind.Void).finish();
}

export function setKeyspaceResult(keyspace: string): Buffer {
  return new BodyWriter().int(ResultKind.Set_keyspace).string(keyspace).finish();
}

/** Schema_change: CREATED KEYSPACE <ks>, or CREATED TABLE <ks> <table>. */
export function schemaChangeResult(keyspace: string, table?: string): Buffer {
  const w = new BodyWriter().int(ResultKind.Schema_change).string('CREATED').string(table === undefined ? 'KEYSPACE' : 'TABLE').string(keyspace);
  if (table !== undefined) w.string(table);
  return w.finish();
}

function writeColumns(w: BodyWriter, set: ColumnSet): void {
  w.string(set.keyspace).string(set.table);
  for (const c of set.columns) w.string(c.name).raw(c.type);
}

/**
 * The head of a Rows result up to and including <rows_count>; the caller appends the
 * rows_count * columns_count [bytes] values (so a chunk payload is never copied into it).
 */
export function rowsHead(set: ColumnSet, rowCount: number, skipMetadata: boolean): BodyWriter {
  const w = new BodyWriter().int(ResultKind.Rows);
  if (skipMetadata) {
    w.int(RowsFlag.No_metadata).int(set.columns.length);
  } else {
    w.int(RowsFlag.Global_tables_spec).int(set.columns.length);
    writeColumns(w, set);
  }
  return w.int(rowCount);
}

/**
 * Prepared: <id><metadata><result_metadata>. The bind markers all belong to `markers`'s table
 * and the partition key (`key`) is bound by the marker named 'key', if any.
 */
export function preparedResult(id: Buffer, markers: ColumnSet, result: ColumnSet | undefined): Buffer {
  const w = new BodyWriter().int(ResultKind.Prepared).shortBytes(id);
  const n = markers.columns.length;
  const pk = markers.columns.findIndex((c) => c.name === 'key');
  w.int(n > 0 ? RowsFlag.Global_tables_spec : 0).int(n);
  if (pk === -1) w.int(0);
  else w.int(1).short(pk);
  if (n > 0) writeColumns(w, markers);
  if (result === undefined) w.int(RowsFlag.No_metadata).int(0);
  else {
    w.int(RowsFlag.Global_tables_spec).int(result.columns.length);
    writeColumns(w, result);
  }
  return w.finish();
}

/** What the one node reports about itself in system.local. */
export interface NodeInfo {
  readonly clusterName: string;
  readonly dataCenter: string;
  readonly rack: string;
  readonly releaseVersion: string;
  readonly partitioner: string;
  readonly hostId: string;
  readonly tokens: readonly string[];
  /** The IPv4 address it listens on (rpc/broadcast/listen address). */
  readonly address: string;
}

const uuidBytes = (uuid: string): Buffer => Buffer.from(uuid.replace(/-/g, ''), 'hex');
const inetBytes = (ip: string): Buffer => Buffer.from(ip.split('.').map(Number));
const text = (s: string): Buffer => Buffer.from(s, 'utf8');
function textSet(items: readonly string[]): Buffer {
  const w = new BodyWriter().int(items.length);
  for (const s of items) w.bytes(text(s));
  return Buffer.from(w.finish());
}

const col = (name: string, type: Buffer): Column => ({ name, type });

const LOCAL_COLUMNS: readonly Column[] = [
  col('key', CqlType.text), col('bootstrapped', CqlType.text), col('broadcast_address', CqlType.inet),
  col('cluster_name', CqlType.text), col('cql_version', CqlType.text), col('data_center', CqlType.text),
  col('host_id', CqlType.uuid), col('listen_address', CqlType.inet), col('native_protocol_version', CqlType.text),
  col('partitioner', CqlType.text), col('rack', CqlType.text), col('release_version', CqlType.text),
  col('rpc_address', CqlType.inet), col('schema_version', CqlType.uuid), col('tokens', CqlType.setOfText),
];

const PEERS_COLUMNS: readonly Column[] = [
  col('peer', CqlType.inet), col('data_center', CqlType.text), col('host_id', CqlType.uuid),
  col('preferred_ip', CqlType.inet), col('rack', CqlType.text), col('release_version', CqlType.text),
  col('rpc_address', CqlType.inet), col('schema_version', CqlType.uuid), col('tokens', CqlType.setOfText),
];

const SCHEMA_VERSION_ONLY: readonly Column[] = [col('schema_version', CqlType.uuid)];

/** Columns of a system query (for PREPARE's result metadata too). */
export function systemColumns(table: 'local' | 'peers', columns: '*' | 'schema_version'): ColumnSet {
  const cols = columns === 'schema_version' ? SCHEMA_VERSION_ONLY : table === 'local' ? LOCAL_COLUMNS : PEERS_COLUMNS;
  return { keyspace: 'system', table, columns: cols };
}

/** Rows of system.local (one) or system.peers (none: a one-node cluster). */
export function systemRows(table: 'local' | 'peers', columns: '*' | 'schema_version', node: NodeInfo, schemaVersion: string, skipMetadata: boolean): Buffer {
  const set = systemColumns(table, columns);
  if (table === 'peers') return rowsHead(set, 0, skipMetadata).finish();
  const w = rowsHead(set, 1, skipMetadata);
  if (columns === 'schema_version') return w.bytes(uuidBytes(schemaVersion)).finish();
  const values: Record<string, Buffer> = {
    key: text('local'),
    bootstrapped: text('COMPLETED'),
    broadcast_address: inetBytes(node.address),
    cluster_name: text(node.clusterName),
    cql_version: text('3.4.5'),
    data_center: text(node.dataCenter),
    host_id: uuidBytes(node.hostId),
    listen_address: inetBytes(node.address),
    native_protocol_version: text('4'),
    partitioner: text(node.partitioner),
    rack: text(node.rack),
    release_version: text(node.releaseVersion),
    rpc_address: inetBytes(node.address),
    schema_version: uuidBytes(schemaVersion),
    tokens: textSet(node.tokens),
  };
  for (const c of LOCAL_COLUMNS) w.bytes(values[c.name]!);
  return w.finish();
}
