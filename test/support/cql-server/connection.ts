/**
 * CqlConnection: one client socket of the test server, from STARTUP to close.
 *
 * Frames are parsed in order and answered in order (the store is in memory, so every request
 * completes synchronously); each response reuses the request's stream id. Section 4.1.1 order is
 * enforced: only OPTIONS and STARTUP before STARTUP, then AUTH_RESPONSE while authenticating.
 * A body that ends early is a Protocol_error for that request and the connection stays in sync
 * (the frame length is trusted only after the parser capped it); broken framing or a protocol
 * version other than 4 gets one ERROR, then the socket is closed, as Cassandra does.
 */
import { createHash } from 'node:crypto';
import type { Socket } from 'node:net';
import { BodyReader, BodyWriter, CqlProtocolError, encodeHeader, type Frame } from './codec.js';
import { CQL_RESPONSE, CQL_VERSION_4, ErrorCode, FrameFlag, Opcode, PASSWORD_AUTHENTICATOR, QueryFlag, opcodeName } from './constants.js';
import { execute, prepare, type BoundValue, type ExecutionContext } from './executor.js';
import { FrameParser } from './parser.js';
import { errorBody, supportedBody } from './results.js';
import { CqlError, parseStatement, type Statement } from './statements.js';

export interface PreparedStatement {
  readonly query: string;
  readonly statement: Statement;
  /** The connection's keyspace when it was prepared (Cassandra binds it then). */
  readonly keyspace: string | undefined;
}

/** What a connection needs from its server. */
export interface ServerContext extends ExecutionContext {
  readonly credentials: { readonly username: string; readonly password: string } | undefined;
  readonly prepared: Map<string, PreparedStatement>;
  readonly maxBodyLength: number;
  /** Counts a handled request: 'OPTIONS', 'PREPARE select', 'EXECUTE insert', 'QUERY system', … */
  count(what: string): void;
  /** Records the [consistency] a statement of this kind ran at. */
  noteConsistency(kind: Statement['kind'], consistency: number): void;
  /** An injected failure for the next data statement (select/insert/delete), if one is armed. */
  takeFailure(): CqlError | undefined;
}

interface QueryParameters {
  readonly consistency: number;
  readonly values: BoundValue[];
  readonly skipMetadata: boolean;
}

export class CqlConnection {
  readonly #socket: Socket;
  readonly #ctx: ServerContext;
  readonly #parser: FrameParser;
  #state: 'new' | 'authenticating' | 'ready' = 'new';
  #keyspace: string | undefined;

  constructor(socket: Socket, ctx: ServerContext) {
    this.#socket = socket;
    this.#ctx = ctx;
    this.#parser = new FrameParser({ direction: 'request', maxBodyLength: ctx.maxBodyLength });
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => this.#onData(chunk));
    socket.on('drain', () => socket.resume());
    socket.on('error', () => socket.destroy());
  }

  destroy(): void {
    this.#socket.destroy();
  }

  #onData(chunk: Buffer): void {
    let frames: Frame[];
    try {
      frames = this.#parser.push(chunk);
    } catch (err) {
      this.#fatal(0, CQL_VERSION_4, (err as Error).message);
      return;
    }
    for (const frame of frames) {
      if (this.#socket.destroyed) return;
      this.#handle(frame);
    }
  }

  #handle(frame: Frame): void {
    const version = frame.version & ~CQL_RESPONSE;
    if (version !== CQL_VERSION_4) {
      this.#fatal(frame.stream, CQL_VERSION_4, `Invalid or unsupported protocol version (${version}); supported versions are (4/v4)`);
      return;
    }
    try {
      if ((frame.flags & FrameFlag.COMPRESSION) !== 0) throw new CqlProtocolError('compressed frames are not supported (no COMPRESSION was agreed in STARTUP)');
      const reader = new BodyReader(frame.body);
      if ((frame.flags & FrameFlag.CUSTOM_PAYLOAD) !== 0) reader.skipBytesMap();
      this.#dispatch(frame, reader);
    } catch (err) {
      if (err instanceof CqlError) this.#send(frame.stream, Opcode.ERROR, [errorBody(err.code, err.message, err.extra)]);
      else if (err instanceof CqlProtocolError) this.#send(frame.stream, Opcode.ERROR, [errorBody(ErrorCode.Protocol_error, err.message)]);
      else this.#send(frame.stream, Opcode.ERROR, [errorBody(ErrorCode.Server_error, `test server bug: ${(err as Error).stack ?? String(err)}`)]);
    }
  }

  #dispatch(frame: Frame, r: BodyReader): void {
    const op = frame.opcode;
    const name = opcodeName(op);
    if (op === Opcode.OPTIONS) {
      this.#ctx.count(name);
      return this.#send(frame.stream, Opcode.SUPPORTED, [supportedBody()]);
    }
    if (this.#state === 'new' && op !== Opcode.STARTUP) {
      throw new CqlProtocolError(`${name} before STARTUP: only OPTIONS and STARTUP may come first`);
    }
    if (this.#state === 'authenticating' && op !== Opcode.AUTH_RESPONSE) {
      throw new CqlProtocolError(`${name} while authenticating: send AUTH_RESPONSE first`);
    }
    this.#ctx.count(name);
    switch (op) {
      case Opcode.STARTUP:
        return this.#startup(frame.stream, r.stringMap());
      case Opcode.AUTH_RESPONSE:
        return this.#authenticate(frame.stream, r.bytes());
      case Opcode.REGISTER:
        r.stringList(); // no events are ever pushed: one node, no topology changes
        return this.#send(frame.stream, Opcode.READY, []);
      case Opcode.QUERY: {
        const query = r.longString();
        const stmt = parseStatement(query);
        this.#ctx.count(`QUERY ${stmt.kind}`);
        return this.#run(frame.stream, stmt, this.#keyspace, readParameters(r));
      }
      case Opcode.PREPARE:
        return this.#prepare(frame.stream, r.longString());
      case Opcode.EXECUTE: {
        const id = r.shortBytes();
        const prepared = this.#ctx.prepared.get(id.toString('hex'));
        if (prepared === undefined) {
          throw new CqlError(ErrorCode.Unprepared, `Prepared query with ID ${id.toString('hex')} not found (either the query was not prepared on this host (maybe the host has been restarted?) or you have prepared too many queries and it has been evicted from the internal cache)`, Buffer.from([id.length >> 8, id.length & 0xff, ...id]));
        }
        this.#ctx.count(`EXECUTE ${prepared.statement.kind}`);
        return this.#run(frame.stream, prepared.statement, prepared.keyspace, readParameters(r));
      }
      default:
        throw new CqlProtocolError(`${name} is not a request this test server implements (it serves OPTIONS, STARTUP, AUTH_RESPONSE, REGISTER, QUERY, PREPARE and EXECUTE)`);
    }
  }

  #startup(stream: number, options: Map<string, string>): void {
    if (this.#state !== 'new') throw new CqlProtocolError('STARTUP was already received on this connection');
    const cql = options.get('CQL_VERSION');
    if (cql === undefined || !cql.startsWith('3.')) throw new CqlProtocolError(`STARTUP needs CQL_VERSION 3.x, got ${cql ?? 'none'}`);
    const compression = options.get('COMPRESSION');
    if (compression !== undefined) throw new CqlProtocolError(`Unknown compression algorithm: ${compression}`);
    if (this.#ctx.credentials !== undefined) {
      this.#state = 'authenticating';
      this.#send(stream, Opcode.AUTHENTICATE, [new BodyWriter().string(PASSWORD_AUTHENTICATOR).finish()]);
      return;
    }
    this.#state = 'ready';
    this.#send(stream, Opcode.READY, []);
  }

  /** SASL PLAIN: [authzid] NUL user NUL password. */
  #authenticate(stream: number, token: Buffer | null): void {
    if (this.#state !== 'authenticating') throw new CqlProtocolError('AUTH_RESPONSE without AUTHENTICATE');
    const want = this.#ctx.credentials!;
    const parts = token === null ? [] : token.toString('utf8').split('\0');
    if (parts.length !== 3 || parts[1] !== want.username || parts[2] !== want.password) {
      throw new CqlError(ErrorCode.Authentication_error, 'Provided username and/or password are incorrect');
    }
    this.#state = 'ready';
    this.#send(stream, Opcode.AUTH_SUCCESS, [Buffer.from([0xff, 0xff, 0xff, 0xff])]); // [bytes] null
  }

  #prepare(stream: number, query: string): void {
    const stmt = parseStatement(query);
    this.#ctx.count(`PREPARE ${stmt.kind}`);
    const id = createHash('md5').update(`${this.#keyspace ?? ''}\0${query}`).digest();
    const body = prepare(this.#ctx, stmt, id, this.#keyspace);
    this.#ctx.prepared.set(id.toString('hex'), { query, statement: stmt, keyspace: this.#keyspace });
    this.#send(stream, Opcode.RESULT, [body]);
  }

  #run(stream: number, stmt: Statement, keyspace: string | undefined, params: QueryParameters): void {
    this.#ctx.noteConsistency(stmt.kind, params.consistency);
    if (stmt.kind === 'select' || stmt.kind === 'insert' || stmt.kind === 'delete') {
      const failure = this.#ctx.takeFailure();
      if (failure !== undefined) throw failure;
    }
    const outcome = execute(this.#ctx, stmt, params.values, keyspace, params.skipMetadata);
    if (outcome.keyspace !== undefined) this.#keyspace = outcome.keyspace;
    this.#send(stream, Opcode.RESULT, outcome.body);
  }

  /** Header and body parts in one corked write; pauses reading while the socket is full. */
  #send(stream: number, opcode: number, parts: readonly Buffer[]): void {
    let length = 0;
    for (const p of parts) length += p.length;
    const s = this.#socket;
    if (s.destroyed) return;
    s.cork();
    s.write(encodeHeader({ version: CQL_RESPONSE | CQL_VERSION_4, flags: 0, stream, opcode, length }));
    let ok = true;
    for (const p of parts) if (p.length > 0) ok = s.write(p);
    s.uncork();
    if (!ok) s.pause();
  }

  /** One ERROR, then close: the stream cannot be trusted any more. */
  #fatal(stream: number, version: number, message: string): void {
    const s = this.#socket;
    if (s.destroyed) return;
    const body = errorBody(ErrorCode.Protocol_error, message);
    s.end(Buffer.concat([encodeHeader({ version: CQL_RESPONSE | version, flags: 0, stream, opcode: Opcode.ERROR, length: body.length }), body]));
    s.pause();
  }
}

/** <consistency><flags>[<n><value_i>…][<page_size>][<paging_state>][<serial_consistency>][<timestamp>] */
function readParameters(r: BodyReader): QueryParameters {
  const consistency = r.short(); // one node: every level is met, the level is only recorded
  const flags = r.byte();
  const values: BoundValue[] = [];
  if ((flags & QueryFlag.With_names_for_values) !== 0) {
    throw new CqlError(ErrorCode.Invalid, 'named values (flag 0x40) are not supported by the r3map CQL test server');
  }
  if ((flags & QueryFlag.Values) !== 0) {
    const n = r.short();
    for (let i = 0; i < n; i++) values.push(r.value());
  }
  if ((flags & QueryFlag.Page_size) !== 0) r.int(); // results have at most one row: never paged
  if ((flags & QueryFlag.With_paging_state) !== 0) r.bytes();
  if ((flags & QueryFlag.With_serial_consistency) !== 0) r.short();
  if ((flags & QueryFlag.With_default_timestamp) !== 0) r.raw(8, '[long] timestamp');
  return { consistency, values, skipMetadata: (flags & QueryFlag.Skip_metadata) !== 0 };
}
