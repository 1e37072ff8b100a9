/**
 * Fuzz-style robustness: random, mutated and truncated handshake and request bytes. The server
 * must never crash (no uncaught exception or unhandled rejection), must close every such
 * connection once the client hangs up, must log at most one warning per connection and no
 * errors, and must keep serving other clients throughout. CORPUS keeps inputs worth replaying.
 * Transmission cases run against three exports in turn: a BufferBackend (payloads as socket
 * chunks), a MemoryBackend (payloads read straight into its pages over a re-opened socket) and a
 * SharedMemoryBackend (the same, on a worker thread), with simple
 * replies and, for 'structured' cases, after NBD_OPT_STRUCTURED_REPLY and base:allocation.
 */
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { pino } from 'pino';
import { encodeClientFlags, encodeInfoRequest, encodeMetaContextRequest, encodeOption, encodeRequest } from '../../src/nbd/codec.js';
import { MemoryBackend } from '../../src/backends/memory.js';
import { SharedMemoryBackend } from '../../src/backends/shared-memory.js';
import {
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_CACHE,
  NBD_CMD_DISC,
  NBD_CMD_FLAG_DF,
  NBD_CMD_FLAG_FAST_ZERO,
  NBD_CMD_FLAG_REQ_ONE,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_INFO,
  NBD_OPT_LIST,
  NBD_OPT_LIST_META_CONTEXT,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ACK,
} from '../../src/nbd/constants.js';
import type { ListenAddress } from '../../src/nbd/listen-address.js';
import { NbdServer } from '../../src/nbd/server.js';
import { BufferBackend } from './support-backend.js';
import { RawClient, openSession, readAt, readOptionReplies, readOptionReply, startHandshake } from './support-client.js';

const FLAGS = encodeClientFlags(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
const GO = encodeOption(NBD_OPT_GO, encodeInfoRequest('disk'));
const req = (type: number, offset: number, length: number, handle = 1): Buffer => encodeRequest({ flags: 0, type, handleHi: 0, handleLo: handle, offset, length });
const hex = (text: string): Buffer => Buffer.from(text.replace(/\s+/g, ''), 'hex');
const flagged = (flags: number, type: number, offset: number, length: number, handle = 1): Buffer => encodeRequest({ flags, type, handleHi: 0, handleLo: handle, offset, length });
const STRUCTURED = encodeOption(NBD_OPT_STRUCTURED_REPLY);
const SET_ALLOCATION = encodeOption(NBD_OPT_SET_META_CONTEXT, encodeMetaContextRequest('disk', ['base:allocation']));

interface Case {
  readonly name: string;
  /**
   * 'handshake': bytes right after the greeting; 'transmission': after a successful NBD_OPT_GO;
   * 'structured': after NBD_OPT_STRUCTURED_REPLY, base:allocation and NBD_OPT_GO.
   */
  readonly phase: 'handshake' | 'transmission' | 'structured';
  readonly bytes: Buffer;
}

/** Inputs that exercise every early exit; add any input that ever broke the server. */
const CORPUS: readonly Case[] = [
  { name: 'nothing at all', phase: 'handshake', bytes: Buffer.alloc(0) },
  { name: 'half of the client flags', phase: 'handshake', bytes: hex('0000') },
  { name: 'unknown client flags', phase: 'handshake', bytes: hex('80000003') },
  { name: 'a truncated option header', phase: 'handshake', bytes: Buffer.concat([FLAGS, GO.subarray(0, 11)]) },
  { name: 'a bad option magic', phase: 'handshake', bytes: Buffer.concat([FLAGS, Buffer.alloc(16, 0xff)]) },
  { name: 'an option claiming 4 GiB of data', phase: 'handshake', bytes: Buffer.concat([FLAGS, hex('49484156454f5054 00000007 ffffffff')]) },
  { name: 'NBD_OPT_GO with truncated data', phase: 'handshake', bytes: Buffer.concat([FLAGS, hex('49484156454f5054 00000007 00000064'), Buffer.alloc(10)]) },
  { name: 'NBD_OPT_GO with a name length past its data', phase: 'handshake', bytes: Buffer.concat([FLAGS, encodeOption(NBD_OPT_GO, hex('7fffffff0000'))]) },
  { name: 'NBD_OPT_INFO with an odd info list', phase: 'handshake', bytes: Buffer.concat([FLAGS, encodeOption(NBD_OPT_INFO, hex('00000000000300'))]) },
  { name: 'NBD_OPT_EXPORT_NAME for an unknown export', phase: 'handshake', bytes: Buffer.concat([FLAGS, encodeOption(NBD_OPT_EXPORT_NAME, Buffer.from('nope'))]) },
  { name: 'NBD_OPT_EXPORT_NAME with a NUL', phase: 'handshake', bytes: Buffer.concat([FLAGS, encodeOption(NBD_OPT_EXPORT_NAME, hex('6400'))]) },
  { name: 'more options than the cap', phase: 'handshake', bytes: Buffer.concat([FLAGS, ...Array.from({ length: 1100 }, () => encodeOption(NBD_OPT_LIST))]) },
  { name: 'NBD_OPT_ABORT followed by junk', phase: 'handshake', bytes: Buffer.concat([FLAGS, encodeOption(NBD_OPT_ABORT), Buffer.from('junk')]) },
  { name: 'an HTTP request', phase: 'handshake', bytes: Buffer.from('GET / HTTP/1.1\r\nHost: localhost\r\n\r\n') },
  { name: 'a truncated request header', phase: 'transmission', bytes: req(NBD_CMD_READ, 0, 512).subarray(0, 10) },
  { name: 'a WRITE whose payload never arrives', phase: 'transmission', bytes: Buffer.concat([req(NBD_CMD_WRITE, 0, 60000), Buffer.alloc(100)]) },
  { name: 'an oversized WRITE being skipped when the client leaves', phase: 'transmission', bytes: Buffer.concat([req(NBD_CMD_WRITE, 0, 0xffffffff), Buffer.alloc(5000)]) },
  { name: 'a bad request magic', phase: 'transmission', bytes: Buffer.alloc(28, 0x42) },
  { name: 'an offset of 2^64-1', phase: 'transmission', bytes: Buffer.concat([hex('25609513 0000 0000 0000000000000001 ffffffffffffffff 00000200')]) },
  { name: 'a READ of 4 GiB', phase: 'transmission', bytes: req(NBD_CMD_READ, 0, 0xffffffff) },
  { name: 'a TRIM of 4 GiB past the end', phase: 'transmission', bytes: req(NBD_CMD_TRIM, 2 ** 40, 0xffffffff) },
  { name: 'a CACHE of 4 GiB past the end', phase: 'transmission', bytes: req(NBD_CMD_CACHE, 2 ** 40, 0xffffffff) },
  { name: 'a CACHE then garbage', phase: 'transmission', bytes: Buffer.concat([req(NBD_CMD_CACHE, 0, 1 << 20), Buffer.alloc(40, 0x5a)]) },
  { name: 'a FAST_ZERO of 4 GiB', phase: 'transmission', bytes: encodeRequest({ flags: NBD_CMD_FLAG_FAST_ZERO, type: NBD_CMD_WRITE_ZEROES, handleHi: 0, handleLo: 9, offset: 0, length: 0xffffffff }) },
  { name: 'requests after NBD_CMD_DISC', phase: 'transmission', bytes: Buffer.concat([req(NBD_CMD_DISC, 0, 0), req(NBD_CMD_READ, 0, 512), Buffer.from('garbage')]) },
  { name: 'a valid READ then garbage', phase: 'transmission', bytes: Buffer.concat([req(NBD_CMD_READ, 0, 512), Buffer.alloc(40, 0x13)]) },
  { name: 'NBD_OPT_STRUCTURED_REPLY with data', phase: 'handshake', bytes: Buffer.concat([FLAGS, encodeOption(NBD_OPT_STRUCTURED_REPLY, Buffer.alloc(9))]) },
  { name: 'SET_META_CONTEXT before structured replies', phase: 'handshake', bytes: Buffer.concat([FLAGS, SET_ALLOCATION, GO]) },
  { name: 'SET_META_CONTEXT claiming 2^32-1 queries', phase: 'handshake', bytes: Buffer.concat([FLAGS, STRUCTURED, encodeOption(NBD_OPT_SET_META_CONTEXT, hex('00000004 6469736b ffffffff'))]) },
  { name: 'LIST_META_CONTEXT with a query past its data', phase: 'handshake', bytes: Buffer.concat([FLAGS, STRUCTURED, encodeOption(NBD_OPT_LIST_META_CONTEXT, hex('00000000 00000001 7fffffff 61'))]) },
  { name: 'SET_META_CONTEXT for an unknown export and a bad namespace', phase: 'handshake', bytes: Buffer.concat([FLAGS, STRUCTURED, encodeOption(NBD_OPT_SET_META_CONTEXT, encodeMetaContextRequest('nope', ['base:', 'x', 'base:allocation\u0000'])), GO]) },
  { name: 'BLOCK_STATUS without a context', phase: 'transmission', bytes: req(NBD_CMD_BLOCK_STATUS, 0, 4096) },
  { name: 'BLOCK_STATUS of 4 GiB past the end', phase: 'structured', bytes: req(NBD_CMD_BLOCK_STATUS, 2 ** 40, 0xffffffff) },
  { name: 'BLOCK_STATUS of length 0 and with unknown flags', phase: 'structured', bytes: Buffer.concat([req(NBD_CMD_BLOCK_STATUS, 0, 0), flagged(0xff, NBD_CMD_BLOCK_STATUS, 0, 512, 2)]) },
  { name: 'a READ with DF of 4 GiB', phase: 'structured', bytes: flagged(NBD_CMD_FLAG_DF, NBD_CMD_READ, 0, 0xffffffff) },
  { name: 'a WRITE with DF (not allowed) then its payload', phase: 'structured', bytes: Buffer.concat([flagged(NBD_CMD_FLAG_DF, NBD_CMD_WRITE, 0, 512), Buffer.alloc(512, 1)]) },
  { name: 'a WRITE past the end, its payload, then a READ', phase: 'structured', bytes: Buffer.concat([req(NBD_CMD_WRITE, 1024 * 1024 - 100, 4096), Buffer.alloc(4096, 3), req(NBD_CMD_READ, 0, 512, 2)]) },
];

function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Random bytes, and valid streams with flipped bytes and cut at a random point. */
function randomCases(seed: number, count: number): Case[] {
  const random = mulberry32(seed);
  const valid: Case[] = [
    { name: 'handshake', phase: 'handshake', bytes: Buffer.concat([FLAGS, encodeOption(NBD_OPT_LIST), encodeOption(NBD_OPT_INFO, encodeInfoRequest('', [1, 2, 3])), GO, req(NBD_CMD_READ, 0, 512)]) },
    { name: 'requests', phase: 'transmission', bytes: Buffer.concat([req(NBD_CMD_WRITE, 4096, 1000), Buffer.alloc(1000, 7), req(NBD_CMD_READ, 0, 4096, 2), req(NBD_CMD_TRIM, 0, 512, 3), req(NBD_CMD_DISC, 0, 0, 4)]) },
    { name: 'structured handshake', phase: 'handshake', bytes: Buffer.concat([FLAGS, STRUCTURED, encodeOption(NBD_OPT_LIST_META_CONTEXT, encodeMetaContextRequest('disk', ['base:'])), SET_ALLOCATION, GO, req(NBD_CMD_BLOCK_STATUS, 0, 8192)]) },
    {
      name: 'structured requests', phase: 'structured',
      bytes: Buffer.concat([
        req(NBD_CMD_WRITE, 70000, 9000), Buffer.alloc(9000, 5), flagged(NBD_CMD_FLAG_REQ_ONE, NBD_CMD_BLOCK_STATUS, 0, 1 << 20, 2),
        flagged(NBD_CMD_FLAG_DF, NBD_CMD_READ, 65536, 20000, 3), req(NBD_CMD_CACHE, 0, 4096, 4), req(NBD_CMD_READ, 0, 65536, 5), req(NBD_CMD_DISC, 0, 0, 6),
      ]),
    },
  ];
  const cases: Case[] = [];
  for (let i = 0; i < count; i++) {
    if (i % 3 === 0) {
      const bytes = Buffer.alloc(Math.floor(random() * 300));
      for (let j = 0; j < bytes.length; j++) bytes[j] = Math.floor(random() * 256);
      cases.push({ name: `random #${i}`, phase: random() < 0.5 ? 'handshake' : 'transmission', bytes });
      continue;
    }
    const base = valid[i % valid.length]!;
    const bytes = Buffer.from(base.bytes.subarray(0, Math.floor(random() * (base.bytes.length + 1))));
    const flips = Math.floor(random() * 4);
    for (let f = 0; f < flips && bytes.length > 0; f++) bytes[Math.floor(random() * bytes.length)] ^= 1 << Math.floor(random() * 8);
    cases.push({ name: `mutated ${base.name} #${i}`, phase: base.phase, bytes });
  }
  return cases;
}

describe('fuzzing the server with bad bytes', () => {
  const lines: { level: number; conn?: number; msg: string }[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      for (const line of chunk.toString().split('\n')) if (line !== '') lines.push(JSON.parse(line));
      callback();
    },
  });
  const crashes: unknown[] = [];
  const onCrash = (err: unknown): void => void crashes.push(err);
  let server: NbdServer;
  let shared: SharedMemoryBackend;
  let address: ListenAddress;

  before(async () => {
    process.on('uncaughtException', onCrash);
    process.on('unhandledRejection', onCrash);
    const backend = new BufferBackend({ size: 1024 * 1024, withTrim: true });
    const memory = new MemoryBackend({ size: 1024 * 1024, pageSize: 64 * 1024 });
    shared = SharedMemoryBackend.create({ size: 1024 * 1024 });
    server = new NbdServer({
      exports: [{ name: 'disk', backend }, { name: 'mem', backend: memory }, { name: 'shm', backend: shared }],
      maxPayload: 64 * 1024, workers: 1, log: pino({ level: 'debug' }, sink),
    });
    const bound = await server.listen({ host: '127.0.0.1', port: 0 });
    address = { host: '127.0.0.1', port: Number(bound.split(':').at(-1)) };
  });

  after(async () => {
    await server.close();
    await shared.close();
    process.off('uncaughtException', onCrash);
    process.off('unhandledRejection', onCrash);
  });

  /** Negotiates structured replies and base:allocation, then enters transmission with NBD_OPT_GO. */
  async function openStructured(name: string): Promise<RawClient> {
    const client = await RawClient.connect(address);
    await startHandshake(client);
    client.write(STRUCTURED);
    assert.equal((await readOptionReply(client)).type, NBD_REP_ACK);
    client.write(encodeOption(NBD_OPT_SET_META_CONTEXT, encodeMetaContextRequest(name, ['base:allocation'])));
    assert.equal((await readOptionReplies(client)).at(-1)!.type, NBD_REP_ACK);
    client.write(encodeOption(NBD_OPT_GO, encodeInfoRequest(name)));
    assert.equal((await readOptionReplies(client)).at(-1)!.type, NBD_REP_ACK);
    return client;
  }

  async function open(c: Case, k: number): Promise<RawClient> {
    const name = ['disk', 'mem', 'shm'][k % 3]!;
    if (c.phase === 'transmission' || c.phase === 'structured') {
      const client = c.phase === 'structured' ? await openStructured(name) : (await openSession(address, name)).client;
      client.write(c.bytes);
      return client;
    }
    const client = await RawClient.connect(address);
    await client.read(18);
    client.write(c.bytes);
    return client;
  }

  async function runBatch(cases: readonly Case[]): Promise<void> {
    for (let i = 0; i < cases.length; i += 8) {
      const batch = cases.slice(i, i + 8);
      const clients = await Promise.all(batch.map((c, j) => open(c, i + j)));
      // While those connections sit on their bad bytes, a well-behaved client is still served.
      const good = await openSession(address, 'disk');
      assert.equal((await readAt(good.client, 1, 0, 512)).errno, 0);
      good.client.destroy();
      for (const client of clients) client.socket.end();
      const closed = await Promise.all(clients.map((client) => client.waitClosed(3000)));
      const stuck = batch.filter((_, j) => !closed[j]).map((c) => c.name);
      assert.deepEqual(stuck, [], 'every connection closes after the client hangs up');
    }
  }

  test('the corpus neither crashes nor hangs the server', async () => {
    await runBatch(CORPUS);
    await runBatch([CORPUS[0]!, ...CORPUS]); // shifted by one and two: every transmission case meets every export
    await runBatch([CORPUS[0]!, CORPUS[0]!, ...CORPUS]);
  });

  test('random and mutated inputs neither crash nor hang the server', async () => {
    await runBatch(randomCases(20240601, 96));
  });

  test('a real handshake still works afterwards, with no crash and at most one warning per connection', async () => {
    const client = await RawClient.connect(address);
    assert.equal(await startHandshake(client), 3);
    client.write(GO);
    client.destroy();
    const session = await openSession(address, 'disk');
    assert.equal((await readAt(session.client, 1, 4096, 4096)).errno, 0);
    session.client.destroy();
    assert.deepEqual(crashes, []);
    assert.deepEqual(lines.filter((l) => l.level >= 50).map((l) => l.msg), [], 'no error-level logs');
    const warnings = new Map<number, number>();
    for (const l of lines) if (l.level === 40 && l.conn !== undefined) warnings.set(l.conn, (warnings.get(l.conn) ?? 0) + 1);
    assert.ok([...warnings.values()].every((n) => n === 1), 'one log line per dropped connection');
    assert.ok(warnings.size > 5, 'bad magic and truncation were logged');
  });
});
