/**
 * The CQL v4 test server over a raw socket (every request frame it implements, in order and out
 * of order) and under cassandra-driver itself (what the driver sends on connect).
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import cassandra from 'cassandra-driver';
import { BodyReader, BodyWriter, encodeRequest, type Frame } from './codec.js';
import { Consistency, ErrorCode, Opcode, PASSWORD_AUTHENTICATOR, ResultKind, opcodeName } from './constants.js';
import { FrameParser } from './parser.js';
import { CqlTestServer } from './server.js';

/** A bare CQL client: sends frames, waits (bounded) for response frames. */
class RawClient {
  readonly #socket: net.Socket;
  readonly #parser = new FrameParser({ direction: 'response' });
  readonly #frames: Frame[] = [];
  #wake: (() => void) | undefined;
  #ended = false;

  private constructor(socket: net.Socket) {
    this.#socket = socket;
    socket.on('data', (d: Buffer) => {
      this.#frames.push(...this.#parser.push(d));
      this.#wake?.();
    });
    socket.on('close', () => {
      this.#ended = true;
      this.#wake?.();
    });
    socket.on('error', () => {});
  }

  static async connect(port: number): Promise<RawClient> {
    const socket = net.connect(port, '127.0.0.1');
    await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
    return new RawClient(socket);
  }

  get ended(): boolean {
    return this.#ended;
  }

  send(bytes: Buffer): void {
    this.#socket.write(bytes);
  }

  /** Sends one frame a byte at a time (each its own write). */
  async sendByteByByte(bytes: Buffer): Promise<void> {
    for (let i = 0; i < bytes.length; i++) {
      this.#socket.write(bytes.subarray(i, i + 1));
      await new Promise((resolve) => setImmediate(resolve));
    }
  }

  async next(timeoutMs = 5000): Promise<Frame> {
    const deadline = Date.now() + timeoutMs;
    while (this.#frames.length === 0) {
      if (this.#ended) throw new Error('connection closed before a response');
      if (Date.now() > deadline) throw new Error(`no response within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        this.#wake = resolve;
        setTimeout(resolve, 50);
      });
    }
    return this.#frames.shift()!;
  }

  async request(stream: number, opcode: number, body?: Buffer): Promise<Frame> {
    this.send(encodeRequest(stream, opcode, body));
    const f = await this.next();
    assert.equal(f.stream, stream, 'the response reuses the request stream id');
    assert.equal(f.version, 0x84);
    return f;
  }

  close(): void {
    this.#socket.destroy();
  }
}

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');
const startup = (): Buffer => Buffer.from(new BodyWriter().stringMap(new Map([['CQL_VERSION', '3.0.0']])).finish());

/** QUERY or EXECUTE parameters with positional values at consistency ONE. */
function params(values: readonly (Buffer | null)[] = [], w = new BodyWriter()): Buffer {
  w.short(Consistency.ONE).byte(values.length > 0 ? 0x01 : 0);
  if (values.length > 0) {
    w.short(values.length);
    for (const v of values) w.bytes(v);
  }
  return Buffer.from(w.finish());
}
const query = (cql: string, values: readonly (Buffer | null)[] = []): Buffer => params(values, new BodyWriter().longString(cql));

function errorOf(f: Frame): { code: number; message: string } {
  assert.equal(opcodeName(f.opcode), 'ERROR', `expected an ERROR frame, got ${opcodeName(f.opcode)}`);
  const r = new BodyReader(f.body);
  return { code: r.int(), message: r.string() };
}

function kindOf(f: Frame): number {
  assert.equal(opcodeName(f.opcode), 'RESULT', `expected a RESULT, got ${opcodeName(f.opcode)} ${f.opcode === Opcode.ERROR ? errorOf(f).message : ''}`);
  return f.body.readInt32BE(0);
}

describe('CQL test server over a raw socket', () => {
  let server: CqlTestServer;
  let client: RawClient;
  before(async () => {
    server = await CqlTestServer.start();
    client = await RawClient.connect(server.port);
  });
  after(async () => {
    client?.close();
    await server?.stop();
  });

  it('answers OPTIONS with SUPPORTED before STARTUP', async () => {
    const f = await client.request(3, Opcode.OPTIONS);
    assert.equal(opcodeName(f.opcode), 'SUPPORTED');
    const r = new BodyReader(f.body);
    const n = r.short();
    const map = new Map<string, string[]>();
    for (let i = 0; i < n; i++) map.set(r.string(), r.stringList());
    assert.deepEqual(map.get('CQL_VERSION'), ['3.4.5']);
  });

  it('refuses a QUERY before STARTUP with a Protocol_error and keeps the connection', async () => {
    assert.equal(errorOf(await client.request(4, Opcode.QUERY, query('USE x'))).code, ErrorCode.Protocol_error);
    assert.equal(client.ended, false);
  });

  it('answers STARTUP sent one byte per write with READY', async () => {
    await client.sendByteByByte(encodeRequest(5, Opcode.STARTUP, startup()));
    const f = await client.next();
    assert.equal(opcodeName(f.opcode), 'READY');
    assert.equal(f.stream, 5);
  });

  it('answers REGISTER with READY', async () => {
    const body = Buffer.from(new BodyWriter().stringList(['TOPOLOGY_CHANGE', 'STATUS_CHANGE', 'SCHEMA_CHANGE']).finish());
    assert.equal(opcodeName((await client.request(6, Opcode.REGISTER, body)).opcode), 'READY');
  });

  const key = Buffer.from('vm1-0');
  const data = Buffer.from('chunk bytes');
  const statements: { name: string; cql: string; values?: (Buffer | null)[]; kind?: number; error?: number; check?: (f: Frame) => void }[] = [
    { name: 'USE of a missing keyspace is Invalid', cql: 'USE ks1', error: ErrorCode.Invalid },
    { name: 'CREATE KEYSPACE is a Schema_change', cql: "CREATE KEYSPACE IF NOT EXISTS ks1 WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}", kind: ResultKind.Schema_change },
    { name: 'CREATE KEYSPACE IF NOT EXISTS again is Void', cql: "CREATE KEYSPACE IF NOT EXISTS KS1 WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}", kind: ResultKind.Void },
    { name: 'CREATE KEYSPACE without IF NOT EXISTS again is Already_exists', cql: "CREATE KEYSPACE ks1 WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}", error: ErrorCode.Already_exists },
    { name: 'SELECT from a table not created yet is Invalid', cql: 'SELECT data FROM ks1.t WHERE key = ?', values: [key], error: ErrorCode.Invalid },
    { name: 'CREATE TABLE is a Schema_change', cql: 'CREATE TABLE IF NOT EXISTS ks1.t (key blob PRIMARY KEY, data blob)', kind: ResultKind.Schema_change },
    { name: 'a SELECT of a missing row has zero rows', cql: 'SELECT data FROM ks1.t WHERE key = ?', values: [key], kind: ResultKind.Rows, check: (f) => assert.equal(f.body.readInt32BE(f.body.length - 4), 0) },
    { name: 'INSERT with two values is Void', cql: 'INSERT INTO ks1.t (key, data) VALUES (?, ?)', values: [key, data], kind: ResultKind.Void },
    { name: 'INSERT with one value for two markers is Invalid', cql: 'INSERT INTO ks1.t (key, data) VALUES (?, ?)', values: [key], error: ErrorCode.Invalid },
    { name: 'a SELECT of the row ends with its data as [bytes]', cql: 'SELECT data FROM ks1.t WHERE key = ? LIMIT 1', values: [key], kind: ResultKind.Rows, check: (f) => assert.deepEqual(f.body.subarray(f.body.length - data.length), data) },
    { name: 'a table without a keyspace before USE is Invalid', cql: 'SELECT data FROM t WHERE key = ?', values: [key], error: ErrorCode.Invalid },
    { name: 'USE is a Set_keyspace', cql: 'USE ks1', kind: ResultKind.Set_keyspace },
    { name: 'DELETE after USE is Void', cql: 'DELETE FROM t WHERE key = ?', values: [key], kind: ResultKind.Void },
    { name: 'a null key is Invalid', cql: 'DELETE FROM t WHERE key = ?', values: [null], error: ErrorCode.Invalid },
    { name: 'system.local has one row', cql: "SELECT * FROM system.local WHERE key='local'", kind: ResultKind.Rows },
    { name: 'an unknown statement is a Syntax_error', cql: 'SELECT * FROM ks1.t', error: ErrorCode.Syntax_error },
  ];
  let stream = 100;
  for (const s of statements) {
    it(`QUERY: ${s.name}`, async () => {
      const f = await client.request(stream++, Opcode.QUERY, query(s.cql, s.values));
      if (s.error !== undefined) assert.equal(errorOf(f).code, s.error, errorOf(f).message);
      else assert.equal(kindOf(f), s.kind);
      s.check?.(f);
    });
  }

  it('names the statement it does not understand in the ERROR message', async () => {
    const { code, message } = errorOf(await client.request(200, Opcode.QUERY, query('TRUNCATE ks1.t')));
    assert.equal(code, ErrorCode.Syntax_error);
    assert.ok(message.includes('TRUNCATE ks1.t'), message);
  });

  it('PREPAREs with the bind markers and the partition key index, then EXECUTEs', async () => {
    const prep = await client.request(201, Opcode.PREPARE, Buffer.from(new BodyWriter().longString('INSERT INTO ks1.t (key, data) VALUES (?, ?)').finish()));
    assert.equal(kindOf(prep), ResultKind.Prepared);
    const r = new BodyReader(prep.body);
    r.int();
    const id = Buffer.from(r.shortBytes());
    assert.deepEqual([r.int(), r.int(), r.int(), r.short()], [0x0001, 2, 1, 0], 'flags, two markers, one pk at index 0');
    assert.deepEqual([r.string(), r.string(), r.string(), r.short(), r.string(), r.short()], ['ks1', 't', 'key', 0x0003, 'data', 0x0003]);
    const exec = await client.request(202, Opcode.EXECUTE, params([key, data], new BodyWriter().shortBytes(id)));
    assert.equal(kindOf(exec), ResultKind.Void);
    assert.equal(server.store.rowCount('ks1', 't'), 1);
  });

  it('answers EXECUTE of an unknown id with Unprepared carrying that id', async () => {
    const id = Buffer.from('00112233445566778899aabbccddeeff', 'hex');
    const f = await client.request(203, Opcode.EXECUTE, params([key], new BodyWriter().shortBytes(id)));
    const r = new BodyReader(f.body);
    assert.equal(r.int(), ErrorCode.Unprepared);
    r.string();
    assert.deepEqual(r.shortBytes(), id);
  });

  it('fails the next data statements with an injected code, then recovers', async () => {
    server.failNext(1, ErrorCode.Overloaded);
    assert.equal(errorOf(await client.request(204, Opcode.QUERY, query('DELETE FROM ks1.t WHERE key = ?', [key]))).code, ErrorCode.Overloaded);
    assert.equal(kindOf(await client.request(205, Opcode.QUERY, query('DELETE FROM ks1.t WHERE key = ?', [key]))), ResultKind.Void);
  });

  it('answers a truncated body with a Protocol_error and stays in sync', async () => {
    const f = await client.request(206, Opcode.QUERY, hex('00000020 5345'));
    assert.equal(errorOf(f).code, ErrorCode.Protocol_error);
    assert.equal(opcodeName((await client.request(207, Opcode.OPTIONS)).opcode), 'SUPPORTED');
  });

  it('refuses BATCH, which the backend never sends, with a Protocol_error', async () => {
    assert.equal(errorOf(await client.request(208, Opcode.BATCH, hex('01 0000 0001 00'))).code, ErrorCode.Protocol_error);
  });

  it('answers a v5 STARTUP with the unsupported-version error drivers look for, in v4, then closes', async () => {
    const probe = await RawClient.connect(server.port);
    try {
      const frame = encodeRequest(0, Opcode.STARTUP, startup());
      frame[0] = 0x05;
      probe.send(frame);
      const f = await probe.next();
      assert.equal(f.version, 0x84);
      const { code, message } = errorOf(f);
      assert.equal(code, ErrorCode.Protocol_error);
      assert.ok(message.startsWith('Invalid or unsupported protocol version (5)'), message); // cassandra-driver matches this text
      await probe.next(500).then(() => assert.fail('no more frames expected'), () => undefined);
      assert.equal(probe.ended, true);
    } finally {
      probe.close();
    }
  });
});

describe('CQL test server with PasswordAuthenticator', () => {
  let server: CqlTestServer;
  before(async () => {
    server = await CqlTestServer.start({ credentials: { username: 'r3map', password: 's3cret' } });
  });
  after(() => server?.stop());

  const sasl = (user: string, pass: string): Buffer => Buffer.from(new BodyWriter().bytes(Buffer.from(`\0${user}\0${pass}`)).finish());

  it('asks for PasswordAuthenticator, refuses a wrong password, then accepts the right one', async () => {
    const c = await RawClient.connect(server.port);
    try {
      const auth = await c.request(0, Opcode.STARTUP, startup());
      assert.equal(opcodeName(auth.opcode), 'AUTHENTICATE');
      assert.equal(new BodyReader(auth.body).string(), PASSWORD_AUTHENTICATOR);
      assert.equal(errorOf(await c.request(1, Opcode.QUERY, query('USE x'))).code, ErrorCode.Protocol_error);
      assert.equal(errorOf(await c.request(2, Opcode.AUTH_RESPONSE, sasl('r3map', 'wrong'))).code, ErrorCode.Authentication_error);
      assert.equal(opcodeName((await c.request(3, Opcode.AUTH_RESPONSE, sasl('r3map', 's3cret'))).opcode), 'AUTH_SUCCESS');
      assert.equal(kindOf(await c.request(4, Opcode.QUERY, query('SELECT * FROM system.peers'))), ResultKind.Rows);
    } finally {
      c.close();
    }
  });
});

describe('CQL test server under cassandra-driver', () => {
  let server: CqlTestServer;
  before(async () => {
    server = await CqlTestServer.start();
  });
  after(() => server?.stop());

  const clientFor = (extra: cassandra.DseClientOptions = {}): cassandra.Client => new cassandra.Client({
    contactPoints: ['127.0.0.1'],
    localDataCenter: 'datacenter1',
    protocolOptions: { port: server.port, maxVersion: 4 },
    isMetadataSyncEnabled: false,
    monitorReporting: { enabled: false },
    ...extra,
  } as cassandra.DseClientOptions);

  it('lets the driver discover one node of datacenter1 from system.local and system.peers', async () => {
    const client = clientFor();
    try {
      await client.connect();
      const hosts = client.hosts.values();
      assert.equal(hosts.length, 1);
      assert.equal(hosts[0]!.datacenter, 'datacenter1');
      assert.equal(hosts[0]!.cassandraVersion, '4.1.0');
      assert.ok(server.served('QUERY system') >= 2, 'system.local and system.peers were queried');
      assert.ok(server.served('REGISTER') >= 1);
    } finally {
      await client.shutdown();
    }
  });

  it('negotiates down to v4 when the driver is not pinned to it', async () => {
    const client = clientFor({ protocolOptions: { port: server.port } });
    try {
      await client.connect();
      const rs = await client.execute("SELECT * FROM system.local WHERE key='local'");
      assert.equal(rs.rows[0]!['data_center'], 'datacenter1');
    } finally {
      await client.shutdown();
    }
  });

  it('hands the driver an unknown statement back as a ResponseError with the Syntax_error code', async () => {
    const client = clientFor();
    try {
      await client.connect();
      await assert.rejects(client.execute('SELECT now() FROM system.local'), (err: unknown) => {
        assert.ok(err instanceof cassandra.errors.ResponseError);
        assert.equal(err.code, cassandra.types.responseErrorCodes.syntaxError);
        return true;
      });
    } finally {
      await client.shutdown();
    }
  });
});
