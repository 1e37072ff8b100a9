/**
 * Runs one parsed statement against a CqlStore and produces the RESULT body, as a list of
 * parts so a stored chunk goes to the socket without being copied into a frame buffer.
 * Failures are CqlErrors worded as Cassandra words them (Invalid, Already_exists, …).
 */
import { BodyWriter } from './codec.js';
import { ErrorCode } from './constants.js';
import {
  CqlType,
  preparedResult,
  rowsHead,
  schemaChangeResult,
  setKeyspaceResult,
  systemColumns,
  systemRows,
  voidResult,
  type ColumnSet,
  type NodeInfo,
} from './results.js';
import { CqlError, MARKERS, type Statement, type TableRef } from './statements.js';
import type { CqlStore } from './store.js';

/** A bound value as read off the wire: bytes, null, or "not set". */
export type BoundValue = Buffer | null | 'unset';

export interface ExecutionContext {
  readonly store: CqlStore;
  readonly node: NodeInfo;
}

export interface Outcome {
  readonly body: readonly Buffer[];
  /** Set by USE: the connection's new keyspace. */
  readonly keyspace?: string;
}

/** The keyspace a table reference lands in, given the connection's current one (USE). */
export function resolveKeyspace(ref: TableRef, current: string | undefined): string {
  const ks = ref.keyspace ?? current;
  if (ks === undefined) {
    throw new CqlError(ErrorCode.Invalid, 'No keyspace has been specified. USE a keyspace, or explicitly specify keyspace.tablename');
  }
  return ks;
}

function dataColumns(keyspace: string, table: string, names: readonly string[]): ColumnSet {
  return { keyspace, table, columns: names.map((name) => ({ name, type: CqlType.blob })) };
}

/** Bind markers and result columns of a statement, for a Prepared result. */
export function prepare(ctx: ExecutionContext, stmt: Statement, id: Buffer, current: string | undefined): Buffer {
  if (stmt.kind === 'select' || stmt.kind === 'insert' || stmt.kind === 'delete') {
    const ks = resolveKeyspace(stmt.ref, current);
    ctx.store.table(ks, stmt.ref.table); // Cassandra validates the table at PREPARE time
    const markers = dataColumns(ks, stmt.ref.table, MARKERS[stmt.kind]);
    const result = stmt.kind === 'select' ? dataColumns(ks, stmt.ref.table, ['data']) : undefined;
    return preparedResult(id, markers, result);
  }
  const none: ColumnSet = { keyspace: '', table: '', columns: [] };
  return preparedResult(id, none, stmt.kind === 'system' ? systemColumns(stmt.table, stmt.columns) : undefined);
}

function keyOf(value: BoundValue): string {
  if (value === null || value === 'unset') throw new CqlError(ErrorCode.Invalid, 'Invalid null value in condition for column key');
  return value.toString('latin1');
}

export function execute(ctx: ExecutionContext, stmt: Statement, values: readonly BoundValue[], current: string | undefined, skipMetadata: boolean): Outcome {
  const expected = MARKERS[stmt.kind].length;
  if (values.length !== expected) {
    throw new CqlError(ErrorCode.Invalid, `There were ${expected} markers(?) in CQL but ${values.length} bound variables`);
  }
  switch (stmt.kind) {
    case 'use':
      if (!ctx.store.hasKeyspace(stmt.keyspace)) throw new CqlError(ErrorCode.Invalid, `Keyspace '${stmt.keyspace}' does not exist`);
      return { body: [setKeyspaceResult(stmt.keyspace)], keyspace: stmt.keyspace };
    case 'createKeyspace': {
      if (ctx.store.createKeyspace(stmt.keyspace, stmt.replication)) return { body: [schemaChangeResult(stmt.keyspace)] };
      if (stmt.ifNotExists) return { body: [voidResult()] };
      const extra = new BodyWriter().string(stmt.keyspace).string('').finish();
      throw new CqlError(ErrorCode.Already_exists, `Cannot add existing keyspace "${stmt.keyspace}"`, Buffer.from(extra));
    }
    case 'createTable': {
      const ks = resolveKeyspace(stmt.ref, current);
      if (ctx.store.createTable(ks, stmt.ref.table)) return { body: [schemaChangeResult(ks, stmt.ref.table)] };
      if (stmt.ifNotExists) return { body: [voidResult()] };
      const extra = new BodyWriter().string(ks).string(stmt.ref.table).finish();
      throw new CqlError(ErrorCode.Already_exists, `Cannot add already existing table "${stmt.ref.table}" to keyspace "${ks}"`, Buffer.from(extra));
    }
    case 'system':
      return { body: [systemRows(stmt.table, stmt.columns, ctx.node, ctx.store.schemaVersion, skipMetadata)] };
    case 'select': {
      const ks = resolveKeyspace(stmt.ref, current);
      const row = ctx.store.table(ks, stmt.ref.table).get(keyOf(values[0]!));
      const set = dataColumns(ks, stmt.ref.table, ['data']);
      if (row === undefined) return { body: [rowsHead(set, 0, skipMetadata).finish()] };
      const head = rowsHead(set, 1, skipMetadata);
      if (row === null) return { body: [head.int(-1).finish()] };
      return { body: [head.int(row.length).finish(), row] };
    }
    case 'insert': {
      const ks = resolveKeyspace(stmt.ref, current);
      const table = ctx.store.table(ks, stmt.ref.table);
      const key = keyOf(values[0]!);
      const data = values[1]!;
      if (data === 'unset') {
        if (!table.has(key)) table.set(key, null);
      } else {
        // Kept as a view of the frame: Node never reuses a socket's read buffers, and a frame
        // that spanned reads was already joined into a buffer of its own.
        table.set(key, data);
      }
      return { body: [voidResult()] };
    }
    case 'delete': {
      const ks = resolveKeyspace(stmt.ref, current);
      ctx.store.table(ks, stmt.ref.table).delete(keyOf(values[0]!));
      return { body: [voidResult()] };
    }
  }
}
