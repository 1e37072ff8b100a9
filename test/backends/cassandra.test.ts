/**
 * CassandraBackend against the in-process CQL native protocol v4 test server
 * (test/support/cql-server/): no Cassandra or ScyllaDB can be installed here, see docs/cassandra.md
 * for what this does and does not prove about a real cluster.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import cassandra from 'cassandra-driver';
import { CassandraBackend, type CassandraBackendOptions } from '../../src/backends/cassandra.js';
import { BackendError, isR3mapError, TimeoutError } from '../../src/errors.js';
import { composeBackend } from '../../src/mount/compose.js';
import type { Backend } from '../../src/pipeline/types.js';
import { ErrorCode, Consistency } from '../support/cql-server/constants.js';
import { CqlTestServer } from '../support/cql-server/server.js';
import { freePort } from '../support/tools.js';
import { pattern, readWriterAtSuite } from '../support/rwat-suite.js';

const KEYSPACE = 'r3map';
const TABLE = 'chunks';
let server: CqlTestServer;
let prefixSeq = 0;

before(async () => {
  server = await CqlTestServer.start();
});
after(() => server?.stop());

function options(extra: Partial<CassandraBackendOptions> = {}): CassandraBackendOptions {
  return { contactPoints: ['127.0.0.1'], port: server.port, keyspace: KEYSPACE, table: TABLE, prefix: `p${++prefixSeq}`, size: 10 * 64 + 37, chunkSize: 64, ...extra };
}

/** Opened as every caller that needs any range opens it: through mount/compose.ts. */
async function openAny(o: CassandraBackendOptions): Promise<Backend> {
  return composeBackend(await CassandraBackend.open(o));
}

const isCode = (code: string) => (err: unknown): boolean => isR3mapError(err) && err.code === code;

/** The row bytes stored under `key` in r3map.chunks (undefined: no row). */
function row(key: string, srv = server): Buffer | null | undefined {
  return srv.store.table(KEYSPACE, TABLE).get(Buffer.from(key).toString('latin1'));
}

// Sizes not a multiple of the chunk size: the last row is short. Every case gets a fresh prefix.
for (const { chunkSize, tail } of [{ chunkSize: 64, tail: 37 }, { chunkSize: 4096, tail: 1234 }]) {
  readWriterAtSuite(`CassandraBackend (CQL v4 test server) with ${chunkSize}-byte rows`, async () => {
    const backend = await openAny(options({ chunkSize, size: 10 * chunkSize + tail }));
    return { rw: backend, size: backend.size, chunkSize, close: () => backend.close() };
  });
}

describe('CassandraBackend', () => {
  it('the bare backend takes whole rows (blockSize = chunkSize) and rejects an unaligned call with ERR_MISALIGNED', async () => {
    const bare = await CassandraBackend.open(options({ prefix: 'bare' }));
    try {
      assert.equal(bare.blockSize, 64);
      await assert.rejects(bare.writeAt(Buffer.alloc(10), 5), isCode('ERR_MISALIGNED'));
      await assert.rejects(bare.readAt(Buffer.alloc(10), 0), isCode('ERR_BAD_LENGTH'));
      assert.equal(row('bare-0'), undefined);
    } finally {
      await bare.close();
    }
  });

  it('creates the keyspace (SimpleStrategy, factor 1) and the table when missing, and reuses them', async () => {
    const a = await CassandraBackend.open(options({ keyspace: 'fresh_ks', table: 'T1' }));
    const b = await CassandraBackend.open(options({ keyspace: 'fresh_ks', table: 't1' }));
    await Promise.all([a.close(), b.close()]);
    assert.deepEqual(server.store.replication('fresh_ks'), { class: 'SimpleStrategy', factor: 1 });
    assert.equal(server.store.rowCount('fresh_ks', 't1'), 0);
    assert.equal(a.table, 't1', 'unquoted identifiers are folded to lower case');
  });

  it("stores chunk i under '<prefix>-<i * chunkSize>' as a blob, r3map's layout, and reads rows written by others", async () => {
    const backend = await openAny(options({ prefix: 'vm1', size: 200, chunkSize: 64 }));
    try {
      await backend.writeAt(pattern(64, 1), 128);
      assert.deepEqual(row('vm1-128'), pattern(64, 1));
      server.store.table(KEYSPACE, TABLE).set(Buffer.from('vm1-192').toString('latin1'), pattern(64, 2)); // r3map pads the last chunk
      server.store.table(KEYSPACE, TABLE).set(Buffer.from('vm1-64').toString('latin1'), null);
      const back = Buffer.alloc(200, 0xff);
      await backend.readAt(back, 0);
      assert.deepEqual(back, Buffer.concat([Buffer.alloc(128), pattern(64, 1), pattern(8, 2)]));
    } finally {
      await backend.close();
    }
  });

  it('rejects a row of another length with ERR_BACKEND instead of returning wrong bytes', async () => {
    const backend = await openAny(options({ prefix: 'odd', size: 256, chunkSize: 64 }));
    try {
      server.store.table(KEYSPACE, TABLE).set(Buffer.from('odd-64').toString('latin1'), Buffer.alloc(32, 1));
      await assert.rejects(backend.readAt(Buffer.alloc(10), 70), isCode('ERR_BACKEND'));
    } finally {
      await backend.close();
    }
  });

  it('runs every data statement prepared, never as a plain QUERY', async () => {
    const before = { q: server.served('QUERY insert') + server.served('QUERY select') + server.served('QUERY delete'), exec: server.served('EXECUTE insert') };
    const backend = await openAny(options());
    try {
      await backend.writeAt(pattern(100, 3), 10);
      await backend.readAt(Buffer.alloc(100), 10);
      await backend.trim!(0, 128);
    } finally {
      await backend.close();
    }
    assert.equal(server.served('QUERY insert') + server.served('QUERY select') + server.served('QUERY delete'), before.q);
    assert.ok(server.served('EXECUTE insert') > before.exec);
    assert.ok(server.served('PREPARE select') >= 1 && server.served('PREPARE insert') >= 1 && server.served('PREPARE delete') >= 1);
  });

  it('deletes whole rows on trim and writes zeros into partial chunks', async () => {
    const backend = await openAny(options({ prefix: 'trim', size: 256, chunkSize: 64 }));
    try {
      await backend.writeAt(pattern(256, 4), 0);
      await backend.trim!(32, 128); // half of row 0, all of row 64, half of row 128
      assert.equal(row('trim-64'), undefined);
      assert.deepEqual(row('trim-0'), Buffer.concat([pattern(32, 4), Buffer.alloc(32)]));
      const back = Buffer.alloc(256, 0xff);
      await backend.readAt(back, 0);
      const model = pattern(256, 4).fill(0, 32, 160);
      assert.deepEqual(back, model);
    } finally {
      await backend.close();
    }
  });

  const consistencyCases = [
    { name: 'QUORUM by default', consistency: undefined, level: Consistency.QUORUM },
    { name: 'the level asked for, in either spelling', consistency: 'LOCAL_QUORUM', level: Consistency.LOCAL_QUORUM },
    { name: 'ONE for a single node', consistency: 'one', level: Consistency.ONE },
  ];
  for (const c of consistencyCases) {
    it(`sends reads and writes at ${c.name}`, async () => {
      const backend = await openAny(options(c.consistency === undefined ? {} : { consistency: c.consistency }));
      try {
        await backend.writeAt(Buffer.from([1]), 0);
        assert.equal(server.consistency.get('insert'), c.level);
        await backend.readAt(Buffer.alloc(1), 0);
        assert.equal(server.consistency.get('select'), c.level);
      } finally {
        await backend.close();
      }
    });
  }

  it('retries transient server errors (Overloaded, Unavailable) and then succeeds', async () => {
    const backend = await openAny(options({ prefix: 'retry' }));
    try {
      server.failNext(2, ErrorCode.Overloaded);
      await backend.writeAt(pattern(64, 5), 0);
      server.failNext(2, ErrorCode.Unavailable);
      const back = Buffer.alloc(64);
      await backend.readAt(back, 0);
      assert.deepEqual(back, pattern(64, 5));
    } finally {
      server.failNext(0, 0);
      await backend.close();
    }
  });

  it('gives up after the configured retries with ERR_BACKEND whose cause is the driver error', async () => {
    const backend = await openAny(options({ retries: 1 }));
    try {
      server.failNext(5, ErrorCode.Overloaded);
      await assert.rejects(backend.writeAt(Buffer.alloc(64), 0), (err: unknown) => {
        assert.ok(err instanceof BackendError);
        assert.ok(err.cause instanceof cassandra.errors.NoHostAvailableError);
        return true;
      });
    } finally {
      server.failNext(0, 0);
      await backend.close();
    }
  });

  it('fails at once, without retrying, on an error that will not go away', async () => {
    const backend = await openAny(options());
    try {
      server.failNext(3, ErrorCode.Invalid);
      await assert.rejects(backend.writeAt(Buffer.alloc(64), 0), (err: unknown) => err instanceof BackendError && err.cause instanceof cassandra.errors.ResponseError);
      await assert.rejects(backend.writeAt(Buffer.alloc(64), 0), isCode('ERR_BACKEND'));
      server.failNext(0, 0);
      await backend.writeAt(Buffer.alloc(64, 1), 0);
    } finally {
      server.failNext(0, 0);
      await backend.close();
    }
  });

  it('read-only: creates nothing, reads, refuses writes and trims with ERR_READ_ONLY', async () => {
    const writer = await openAny(options({ prefix: 'ro' }));
    await writer.writeAt(pattern(10, 6), 5);
    await writer.close();
    const reader = await openAny(options({ prefix: 'ro', readOnly: true }));
    try {
      const back = Buffer.alloc(10);
      await reader.readAt(back, 5);
      assert.deepEqual(back, pattern(10, 6));
      await assert.rejects(reader.writeAt(Buffer.alloc(1), 0), isCode('ERR_READ_ONLY'));
      await assert.rejects(reader.trim!(0, 64), isCode('ERR_READ_ONLY'));
    } finally {
      await reader.close();
    }
    await assert.rejects(openAny(options({ keyspace: 'never_created', readOnly: true })), isCode('ERR_BACKEND'));
    assert.equal(server.store.hasKeyspace('never_created'), false);
  });

  it('is closed for good after close(): calls reject with ERR_CLOSED, close is idempotent, the connections go', async () => {
    const backend = await openAny(options());
    const connections = server.connectionCount;
    await backend.close();
    await backend.close();
    await assert.rejects(backend.readAt(Buffer.alloc(1), 0), isCode('ERR_CLOSED'));
    for (let i = 0; i < 100 && server.connectionCount >= connections; i++) await new Promise((r) => setTimeout(r, 20));
    assert.ok(server.connectionCount < connections, 'the driver closed its connections');
  });

  const usage: { name: string; extra: Partial<CassandraBackendOptions> }[] = [
    { name: 'no contact points', extra: { contactPoints: [] } },
    { name: 'port 0', extra: { port: 0 } },
    { name: 'a keyspace that is not a CQL identifier', extra: { keyspace: 'r3map; DROP' } },
    { name: 'a table name over 48 characters', extra: { table: 't'.repeat(49) } },
    { name: 'an empty prefix', extra: { prefix: '' } },
    { name: 'an unknown consistency', extra: { consistency: 'most' } },
    { name: 'a username without a password', extra: { username: 'r3map' } },
    { name: 'a chunk size of 0', extra: { chunkSize: 0 } },
  ];
  for (const c of usage) {
    it(`rejects ${c.name} with ERR_USAGE before connecting`, async () => {
      const startups = server.served('STARTUP');
      await assert.rejects(openAny(options(c.extra)), isCode('ERR_USAGE'));
      assert.equal(server.served('STARTUP'), startups);
    });
  }
});

describe('CassandraBackend start-up check', () => {
  it('rejects with ERR_BACKEND naming host:port when nothing listens there', async () => {
    const port = await freePort();
    await assert.rejects(openAny(options({ port })), (err: unknown) => {
      assert.ok(err instanceof BackendError);
      assert.ok(err.message.includes(`127.0.0.1:${port}`), err.message);
      return true;
    });
  });

  it('rejects with ERR_BACKEND within connectTimeoutMs when the peer accepts but never answers', { timeout: 20_000 }, async () => {
    const closed: Promise<void>[] = [];
    const silent = net.createServer((s) => {
      s.on('error', () => {}).resume(); // reads and ignores everything, so the client's close is seen
      closed.push(new Promise((resolve) => s.once('close', () => resolve())));
    });
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    const port = (silent.address() as net.AddressInfo).port;
    try {
      await assert.rejects(openAny(options({ port, connectTimeoutMs: 300, requestTimeoutMs: 500 })), (err: unknown) => {
        assert.ok(err instanceof BackendError);
        assert.ok(err.cause instanceof TimeoutError);
        assert.ok(err.message.includes(`127.0.0.1:${port}`), err.message);
        return true;
      });
      // The driver gives up on its own STARTUP (requestTimeoutMs) and closes its socket; nothing is left behind.
      await Promise.all(closed);
    } finally {
      await new Promise((resolve) => silent.close(resolve));
    }
  });

  it('rejects a wrong password with ERR_BACKEND and logs in with the right one', async () => {
    const secured = await CqlTestServer.start({ credentials: { username: 'r3map', password: 's3cret' } });
    try {
      const base = { port: secured.port, username: 'r3map' };
      await assert.rejects(openAny(options({ ...base, password: 'wrong' })), (err: unknown) => {
        assert.ok(err instanceof BackendError);
        assert.ok(err.message.includes(`127.0.0.1:${secured.port}`), err.message);
        return true;
      });
      await assert.rejects(openAny(options({ port: secured.port })), isCode('ERR_BACKEND'));
      const backend = await openAny(options({ ...base, password: 's3cret' }));
      await backend.writeAt(Buffer.from([7]), 3);
      await backend.close();
    } finally {
      await secured.stop();
    }
  });

  it('rejects a local data center the cluster does not have with ERR_BACKEND', async () => {
    await assert.rejects(openAny(options({ localDataCenter: 'dc-elsewhere' })), isCode('ERR_BACKEND'));
  });
});

describe('CassandraBackend when the node goes away', () => {
  it('rejects reads and writes with ERR_BACKEND, in bounded time, once the server is stopped', { timeout: 30_000 }, async () => {
    const node = await CqlTestServer.start();
    const backend = await openAny(options({ port: node.port, retries: 2 }));
    try {
      await backend.writeAt(pattern(64, 8), 0);
      await node.stop();
      await assert.rejects(backend.readAt(Buffer.alloc(64), 0), (err: unknown) => {
        assert.ok(err instanceof BackendError);
        assert.ok(err.cause instanceof cassandra.errors.NoHostAvailableError);
        return true;
      });
      await assert.rejects(backend.writeAt(Buffer.alloc(64), 64), isCode('ERR_BACKEND'));
    } finally {
      await backend.close();
    }
  });

  it('reconnects when the node comes back on the same port with its data, re-preparing its statements', { timeout: 30_000 }, async () => {
    const first = await CqlTestServer.start();
    const backend = await openAny(options({ port: first.port, retries: 10, prefix: 'restart' }));
    let second: CqlTestServer | undefined;
    try {
      await backend.writeAt(pattern(64, 9), 64);
      const port = first.port;
      await first.stop();
      second = await CqlTestServer.start({ port, store: first.store });
      const back = Buffer.alloc(64);
      await backend.readAt(back, 64);
      assert.deepEqual(back, pattern(64, 9));
      await backend.writeAt(pattern(64, 10), 0);
      assert.deepEqual(row('restart-0', second), pattern(64, 10));
      assert.ok(second.served('PREPARE select') >= 1, 'the restarted node had to prepare again');
    } finally {
      await backend.close();
      await second?.stop();
    }
  });
});
