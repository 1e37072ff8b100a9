import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { setImmediate as nextTurn, setTimeout as sleep } from 'node:timers/promises';
import { SyncedReadWriterAt, type SyncedOptions } from '../../src/pipeline/synced.js';
import { MemoryStore } from '../support/memory-store.js';

const chunkSize = 4;

/** remote + local stores of `chunks` chunks (+ `extra` bytes), the stage, and its callback log. */
function setup(chunks = 2, extra = 0, options: Partial<SyncedOptions> = {}) {
  const size = chunks * chunkSize + extra;
  const remote = new MemoryStore(size);
  const local = new MemoryStore(size);
  const localized: number[] = [];
  const synced = new SyncedReadWriterAt(remote, local, {
    chunkSize,
    size,
    onChunkIsLocal: (off) => localized.push(off),
    ...options,
  });
  return { remote, local, synced, localized, size };
}

const text = (s: string): Buffer => Buffer.from(s, 'latin1');

describe('SyncedReadWriterAt', () => {
  it('with remoteExtents, pulls of chunks the remote reports as holes write zeros without a fetch', async () => {
    const calls: [number, number][] = [];
    // chunks 0-1 data, 2-4 hole, chunk 5 half hole half data (so data), 6-7 hole
    let extents = [{ length: 8, flags: 0 }, { length: 14, flags: 3 }, { length: 2, flags: 0 }, { length: 8, flags: 3 }];
    const { remote, local, synced, localized } = setup(8, 0, {
      remoteExtents: async (off, length) => {
        calls.push([off, length]);
        let at = 0;
        const out = [];
        for (const e of extents) {
          const s0 = Math.max(at, off);
          const s1 = Math.min(at + e.length, off + length);
          if (s1 > s0) out.push({ length: s1 - s0, flags: e.flags });
          at += e.length;
        }
        return out;
      },
    });
    remote.fill(0, text('datadata'));
    remote.fill(22, text('dd'));
    local.fill(8, Buffer.alloc(24, 0x77)); // stale bytes the zeros must replace
    await Promise.all(Array.from({ length: 8 }, (_, c) => synced.pull(c * 4)));
    assert.deepEqual(calls, [[0, 32]], 'one block status call for the window, shared by the pulls');
    assert.equal(remote.readCalls, 3, 'only chunks 0, 1 and 5 were fetched');
    assert.deepEqual(local.peek(0, 32), Buffer.concat([text('datadata'), Buffer.alloc(14), text('dd'), Buffer.alloc(8)]));
    assert.deepEqual(localized.sort((a, b) => a - b), [0, 4, 8, 12, 16, 20, 24, 28]);
    synced.markAsRemote([8]);
    remote.fill(8, text('new!'));
    extents = [{ length: 12, flags: 0 }, { length: 10, flags: 3 }, { length: 2, flags: 0 }, { length: 8, flags: 3 }];
    await synced.pull(8);
    assert.equal(calls.length, 2, 'what was known of chunk 2 was forgotten and learned again');
    assert.deepEqual(local.peek(8, 4), text('new!'), 'marked remote: fetched, not assumed a hole');
  });

  const answers: [string, () => Promise<{ length: number; flags: number }[]>][] = [
    ['fail', async () => { throw new Error('no block status'); }],
    ['answer nothing', async () => []],
    ['answer empty extents', async () => [{ length: 0, flags: 3 }]],
  ];
  for (const [what, remoteExtents] of answers) {
    it(`with remoteExtents that ${what}, pulls fetch as usual and the remote is asked once`, async () => {
      let asked = 0;
      const { remote, synced } = setup(2, 0, { remoteExtents: () => { asked++; return remoteExtents(); } });
      remote.fill(0, text('abcdefgh'));
      await synced.pull(0);
      await synced.pull(4);
      assert.equal(remote.readCalls, 2);
      assert.equal(asked, 1);
    });
  }

  for (const off of [0, 4]) {
    it(`writes the chunk at ${off} and reads it back without asking the remote`, async () => {
      const { remote, local, synced, localized } = setup();
      await synced.writeAt(text('test'), off);
      const out = Buffer.alloc(4, 0xff);
      await synced.readAt(out, off);
      assert.deepEqual(out, text('test'));
      assert.deepEqual(local.peek(off, 4), text('test'));
      assert.equal(remote.readCalls, 0);
      assert.deepEqual(localized, [off]);
      assert.equal(synced.isLocal(off), true);
    });

    it(`reads the chunk at ${off} from the remote into local`, async () => {
      const { remote, local, synced, localized } = setup();
      remote.fill(off, text('test'));
      const out = Buffer.alloc(4, 0xff);
      await synced.readAt(out, off);
      assert.deepEqual(out, text('test'));
      assert.deepEqual(local.peek(off, 4), text('test'));
      assert.deepEqual(localized, [off]);
      assert.equal(synced.localCount, 1);
      await synced.readAt(out, off);
      assert.equal(remote.readCalls, 1, 'a local chunk is not fetched again');
    });
  }

  it('syncs, then fetches again after the remote changed and the chunk was marked remote', async () => {
    const { remote, synced, localized } = setup();
    remote.fill(4, text('test'));
    const out = Buffer.alloc(4);
    await synced.readAt(out, 4);
    remote.fill(4, text('pass'));
    synced.markAsRemote([4]);
    assert.equal(synced.isLocal(4), false);
    assert.equal(synced.localCount, 0);
    await synced.readAt(out, 4);
    assert.deepEqual(out, text('pass'));
    assert.equal(remote.readCalls, 2);
    assert.deepEqual(localized, [4, 4]);
  });

  it('reads a short last chunk at its short length', async () => {
    const { remote, synced } = setup(2, 3);
    remote.fill(8, text('end'));
    const out = Buffer.alloc(3);
    await synced.readAt(out, 8);
    assert.deepEqual(out, text('end'));
    assert.deepEqual(remote.calls, ['read 8+3']);
  });

  it('asks the remote once when eight reads of one remote chunk run at once', async () => {
    const { remote, synced, localized } = setup();
    remote.fill(4, text('once'));
    const outs = Array.from({ length: 8 }, () => Buffer.alloc(4, 0xff));
    await Promise.all(outs.map((out) => synced.readAt(out, 4)));
    assert.equal(remote.readCalls, 1);
    for (const out of outs) assert.deepEqual(out, text('once'));
    assert.deepEqual(localized, [4]);
  });

  it('fires onChunkIsLocal once per remote-to-local transition, whatever caused it', async () => {
    const { synced, localized } = setup(3);
    await synced.writeAt(text('aaaa'), 0); // write: fires
    await synced.readAt(Buffer.alloc(4), 0); // already local
    await synced.pull(0); // already local
    await synced.pull(4); // pull: fires
    await synced.readAt(Buffer.alloc(4), 8); // read: fires
    synced.markAsRemote([0, 4]);
    await synced.writeAt(text('bbbb'), 0); // fires again after markAsRemote
    await Promise.all([synced.pull(4), synced.pull(4), synced.readAt(Buffer.alloc(4), 4)]); // once
    assert.deepEqual(localized, [0, 4, 8, 0, 4]);
    assert.equal(synced.localCount, 3);
  });

  it('pull makes a chunk local without returning data, and does nothing for a local chunk', async () => {
    const { remote, local, synced } = setup();
    remote.fill(0, text('pull'));
    await synced.pull(0);
    await synced.pull(0);
    assert.equal(remote.readCalls, 1);
    assert.deepEqual(local.peek(0, 4), text('pull'));
  });

  for (const via of ['pull', 'read'] as const) {
    it(`a write during a ${via} of the same chunk survives`, async () => {
      const { remote, local, synced } = setup();
      remote.fill(0, text('old!'));
      const release = remote.hold('read');
      const fetch = via === 'pull' ? synced.pull(0) : synced.readAt(Buffer.alloc(4), 0);
      await nextTurn();
      const write = synced.writeAt(text('new!'), 0);
      await nextTurn();
      assert.equal(local.writeCalls, 0, 'the write waits for the fetch');
      release();
      await Promise.all([fetch, write]);
      const out = Buffer.alloc(4);
      await synced.readAt(out, 0);
      assert.deepEqual(out, text('new!'));
      assert.deepEqual(local.peek(0, 4), text('new!'));
    });
  }

  it('a chunk marked remote during its fetch stays remote and is fetched again', async () => {
    const { remote, synced, localized } = setup();
    remote.fill(0, text('old!'));
    const release = remote.hold('read');
    const fetch = synced.pull(0);
    await nextTurn();
    synced.markAsRemote([0]);
    remote.fill(0, text('new!'));
    release();
    await fetch;
    assert.equal(synced.isLocal(0), false);
    assert.deepEqual(localized, []);
    const out = Buffer.alloc(4);
    await synced.readAt(out, 0);
    assert.deepEqual(out, text('new!'));
  });

  it('markAsLocal makes chunks local without a fetch or a callback', async () => {
    const { remote, local, synced, localized } = setup();
    local.fill(4, text('kept'));
    synced.markAsLocal([4, 4]);
    assert.equal(synced.localCount, 1);
    const out = Buffer.alloc(4);
    await synced.readAt(out, 4);
    assert.deepEqual(out, text('kept'));
    assert.equal(remote.readCalls, 0);
    assert.deepEqual(localized, []);
  });

  it('marking an offset that is not a chunk inside the target throws and changes nothing', () => {
    const { synced } = setup();
    assert.throws(() => synced.markAsLocal([0, 2]), { code: 'ERR_MISALIGNED' });
    assert.throws(() => synced.markAsLocal([0, 8]), { code: 'ERR_OUT_OF_RANGE' });
    assert.equal(synced.localCount, 0);
  });

  const invalid = [
    { name: 'a misaligned offset', off: 2, length: 4, code: 'ERR_MISALIGNED' },
    { name: 'a partial chunk', off: 0, length: 2, code: 'ERR_BAD_LENGTH' },
    { name: 'a chunk past the end', off: 8, length: 4, code: 'ERR_OUT_OF_RANGE' },
  ];
  for (const c of invalid) {
    it(`rejects ${c.name} without touching either side`, async () => {
      const { remote, local, synced } = setup();
      await assert.rejects(synced.readAt(Buffer.alloc(c.length), c.off), { code: c.code });
      await assert.rejects(synced.writeAt(Buffer.alloc(c.length), c.off), { code: c.code });
      assert.deepEqual([...remote.calls, ...local.calls], []);
    });
  }

  it('a failed fetch leaves the chunk remote, and the next read fetches again', async () => {
    const { remote, synced, localized } = setup();
    remote.fill(0, text('data'));
    const boom = new Error('remote down');
    remote.failNext('read', boom);
    await assert.rejects(synced.readAt(Buffer.alloc(4), 0), (err) => err === boom);
    assert.equal(synced.isLocal(0), false);
    const out = Buffer.alloc(4);
    await synced.readAt(out, 0);
    assert.deepEqual(out, text('data'));
    assert.deepEqual(localized, [0]);
  });

  it('a failed local write to a remote chunk leaves it remote', async () => {
    const { local, synced, localized } = setup();
    const boom = new Error('local full');
    local.failNext('write', boom);
    await assert.rejects(synced.writeAt(text('lost'), 0), (err) => err === boom);
    assert.equal(synced.isLocal(0), false);
    assert.deepEqual(localized, []);
  });

  it('a throwing onChunkIsLocal does not fail the read and goes to onError', async () => {
    const boom = new Error('hook failed');
    const errors: unknown[] = [];
    const { remote, synced } = setup(2, 0, {
      onChunkIsLocal: () => {
        throw boom;
      },
      onError: (err) => errors.push(err),
    });
    remote.fill(0, text('fine'));
    const out = Buffer.alloc(4);
    await synced.readAt(out, 0);
    assert.deepEqual(out, text('fine'));
    assert.deepEqual(errors, [boom]);
    assert.equal(synced.isLocal(0), true);
  });

  it('a throwing onChunkIsLocal without onError is emitted as a process warning', async () => {
    const boom = new Error('hook failed');
    const { synced } = setup(2, 0, {
      onChunkIsLocal: () => {
        throw boom;
      },
    });
    const warned = once(process, 'warning');
    await synced.writeAt(text('fine'), 0);
    const [warning] = (await Promise.race([warned, sleep(5000, undefined, { ref: false }).then(() => [undefined])])) as [Error | undefined];
    assert.ok(warning !== undefined, 'a warning was emitted');
    assert.equal(warning.name, 'R3mapHookWarning');
    assert.equal(warning.cause, boom);
  });

  it('a rejecting async onChunkIsLocal goes to onError too', async () => {
    const boom = new Error('async hook failed');
    const errors: unknown[] = [];
    const { synced } = setup(2, 0, {
      onChunkIsLocal: async () => {
        throw boom;
      },
      onError: (err) => errors.push(err),
    });
    await synced.writeAt(text('fine'), 4);
    await nextTurn();
    assert.deepEqual(errors, [boom]);
  });
});

describe('SyncedReadWriterAt.writev', () => {
  it('to a local chunk: the pieces go to local.writev as they are; to a remote chunk: gathered, made local', async () => {
    const { remote, local, synced, localized } = setup(2);
    const seen: Array<readonly Buffer[]> = [];
    Object.assign(local, { writev: async (bufs: readonly Buffer[], off: number) => (seen.push(bufs), local.writeAt(Buffer.concat(bufs), off)) });
    await synced.writev([text('ab'), text('cd')], 4); // remote chunk: gathered, no fetch
    assert.equal(remote.readCalls, 0);
    assert.deepEqual(localized, [4]);
    assert.deepEqual(seen, []);
    const pieces = [text('w'), text('xyz')];
    await synced.writev(pieces, 4); // now local
    assert.equal(seen[0], pieces);
    assert.deepEqual(local.peek(4, 4), text('wxyz'));
  });

  it('shares the state column of the table it is given', async () => {
    const { ChunkTable } = await import('../../src/pipeline/chunk-table.js');
    const table = new ChunkTable({ chunkSize, size: 2 * chunkSize });
    const { synced } = setup(2, 0, { table });
    await synced.writeAt(text('abcd'), 0);
    assert.equal(table.localCount, 1);
    assert.equal(synced.localCount, 1);
    assert.throws(() => setup(3, 0, { table }), /synced: the chunk table is for 8 bytes/);
  });

  it('rejects pieces that do not make one whole chunk', async () => {
    const { synced } = setup(2);
    await assert.rejects(synced.writev([text('ab'), text('c')], 0));
  });
});
