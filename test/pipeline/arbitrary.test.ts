import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { ArbitraryReadWriterAt } from '../../src/pipeline/arbitrary.js';
import { ChunkedReadWriterAt } from '../../src/pipeline/chunked.js';
import { MemoryStore } from '../support/memory-store.js';

const chunkSize = 16;
const size = 3 * chunkSize + 5;

/** Arbitrary over Chunked over a store: Chunked proves only whole chunks reach the store. */
function setup(): { store: MemoryStore; rw: ArbitraryReadWriterAt } {
  const store = new MemoryStore(size);
  const rw = new ArbitraryReadWriterAt(new ChunkedReadWriterAt(store, { chunkSize, size }), { chunkSize, size });
  return { store, rw };
}

/** Tracks whether a promise settled, without waiting for it. */
function watch(p: Promise<unknown>): { readonly settled: boolean } {
  const state = { settled: false };
  p.then(() => (state.settled = true), () => (state.settled = true));
  return state;
}

describe('ArbitraryReadWriterAt', () => {
  const outOfRange = [
    { name: 'at the end', off: size, length: 1 },
    { name: 'starting in range and ending past it', off: size - 2, length: 3 },
    { name: 'at a negative offset', off: -1, length: 1 },
    { name: 'at a fractional offset', off: 1.5, length: 1 },
  ];
  for (const c of outOfRange) {
    it(`rejects a read and a write ${c.name} with OutOfRangeError and never calls next`, async () => {
      const { store, rw } = setup();
      await assert.rejects(rw.readAt(Buffer.alloc(c.length), c.off), { code: 'ERR_OUT_OF_RANGE' });
      await assert.rejects(rw.writeAt(Buffer.alloc(c.length), c.off), { code: 'ERR_OUT_OF_RANGE' });
      assert.deepEqual(store.calls, []);
    });
  }

  const writes = [
    { name: 'a whole aligned chunk is written without a read', off: chunkSize, length: chunkSize, calls: ['write 16+16'] },
    { name: 'a partial chunk is read once and written once', off: chunkSize + 3, length: 5, calls: ['read 16+16', 'write 16+16'] },
    { name: 'the short last chunk written whole needs no read', off: 3 * chunkSize, length: 5, calls: ['write 48+5'] },
    { name: 'a write over one and a half chunks reads only the partial one', off: 8, length: 24, calls: ['read 0+16', 'write 16+16', 'write 0+16'] },
  ];
  for (const c of writes) {
    it(`${c.name}`, async () => {
      const { store, rw } = setup();
      await rw.writeAt(Buffer.alloc(c.length, 7), c.off);
      assert.deepEqual([...store.calls].sort(), [...c.calls].sort());
      assert.deepEqual(store.peek(c.off, c.length), Buffer.alloc(c.length, 7));
    });
  }

  it('a zero-length read or write inside the range does nothing', async () => {
    const { store, rw } = setup();
    await rw.readAt(Buffer.alloc(0), 5);
    await rw.writeAt(Buffer.alloc(0), size);
    assert.deepEqual(store.calls, []);
  });

  it('a whole-chunk write waits for a read-modify-write of the same chunk in progress', async () => {
    const { store, rw } = setup();
    const releaseReads = store.hold('read');
    const partial = rw.writeAt(Buffer.alloc(4, 1), chunkSize + 2); // RMW: its read is held
    await nextTurn();
    const wholeWrite = rw.writeAt(Buffer.alloc(chunkSize, 2), chunkSize);
    const whole = watch(wholeWrite);
    await nextTurn();
    assert.equal(store.writeCalls, 0, 'the whole-chunk write did not overtake the RMW');
    assert.equal(whole.settled, false);
    releaseReads();
    await partial;
    await wholeWrite;
    assert.deepEqual(store.peek(chunkSize, chunkSize), Buffer.alloc(chunkSize, 2), 'the later whole write wins');
  });

  it('two concurrent partial writes to one chunk both survive', async () => {
    const { store, rw } = setup();
    await Promise.all([rw.writeAt(Buffer.alloc(4, 1), 0), rw.writeAt(Buffer.alloc(4, 2), 8)]);
    const expected = Buffer.alloc(chunkSize);
    expected.fill(1, 0, 4).fill(2, 8, 12);
    assert.deepEqual(store.peek(0, chunkSize), expected);
  });

  it('a failed chunk read rejects the call only after the other chunk reads settled', async () => {
    const { store, rw } = setup();
    const boom = new Error('disk on fire');
    store.failNext('read', boom);
    const release = store.hold('read');
    const read = rw.readAt(Buffer.alloc(2 * chunkSize), 0);
    const state = watch(read);
    await nextTurn();
    assert.equal(store.readCalls, 2);
    assert.equal(state.settled, false);
    release();
    await assert.rejects(read, (err) => err === boom);
  });

  it('a read of parts of several chunks returns zeros for never-written parts, even into a dirty buffer', async () => {
    const { rw } = setup();
    await rw.writeAt(Buffer.alloc(4, 9), chunkSize - 2);
    const out = Buffer.alloc(size - 1, 0xff);
    await rw.readAt(out, 1);
    const expected = Buffer.alloc(size - 1);
    expected.fill(9, chunkSize - 3, chunkSize + 1);
    assert.deepEqual(out, expected);
  });
});

it('a multi-chunk read whose later chunk fails while an earlier one is pending rejects without an unhandled rejection', async () => {
  const chunkSize = 16;
  let unhandled: unknown;
  const onUnhandled = (err: unknown): void => {
    unhandled = err;
  };
  process.on('unhandledRejection', onUnhandled);
  try {
    const next = {
      readAt: (_buf: Buffer, off: number): Promise<void> =>
        off === 0 ? new Promise((resolve) => setTimeout(resolve, 30)) : Promise.reject(new Error(`chunk at ${off} failed`)),
      writeAt: (): Promise<void> => Promise.resolve(),
    };
    const rw = new ArbitraryReadWriterAt(next, { chunkSize, size: 4 * chunkSize });
    await assert.rejects(rw.readAt(Buffer.alloc(4 * chunkSize), 0), /chunk at 16 failed/);
    await new Promise((resolve) => setTimeout(resolve, 10));
    assert.equal(unhandled, undefined);
  } finally {
    process.off('unhandledRejection', onUnhandled);
  }
});

describe('ArbitraryReadWriterAt.writev', () => {
  /** A next that records how each chunk arrived: one buffer (a view or a copy) or pieces. */
  function scatterSetup(withWritev: boolean) {
    const store = new MemoryStore(size);
    const arrived: Array<{ off: number; pieces: readonly Buffer[] }> = [];
    const next = {
      readAt: (buf: Buffer, off: number) => store.readAt(buf, off),
      writeAt: (buf: Buffer, off: number) => (arrived.push({ off, pieces: [buf] }), store.writeAt(buf, off)),
      ...(withWritev ? { writev: (bufs: readonly Buffer[], off: number) => (arrived.push({ off, pieces: bufs }), store.writeAt(Buffer.concat(bufs), off)) } : {}),
    };
    return { store, arrived, rw: new ArbitraryReadWriterAt(next, { chunkSize, size }) };
  }
  const pattern = (length: number, seed: number): Buffer => Buffer.from(Array.from({ length }, (_, i) => (i * 7 + seed) & 0xff));

  it('writes the pieces as if concatenated, across chunk and piece boundaries, partial chunks included', async () => {
    for (const withWritev of [true, false]) {
      const { store, rw } = scatterSetup(withWritev);
      const data = pattern(size - 3, 1);
      const pieces = [data.subarray(0, 5), Buffer.alloc(0), data.subarray(5, 30), data.subarray(30, 31), data.subarray(31)];
      await rw.writev(pieces, 2);
      assert.deepEqual(store.peek(2, size - 3), data);
      assert.deepEqual(store.peek(0, 2), Buffer.alloc(2), 'the bytes before the write are kept');
    }
  });

  it('hands on views of the caller\'s pieces, never a copy, where a chunk lies in one piece or next has writev', async () => {
    const { arrived, rw } = scatterSetup(true);
    const a = pattern(chunkSize + 4, 2); // chunk 0 whole, 4 bytes of chunk 1
    const b = pattern(chunkSize - 4, 3); // the rest of chunk 1
    await rw.writev([a, b], 0);
    arrived.sort((x, y) => x.off - y.off);
    assert.equal(arrived.length, 2);
    assert.equal(arrived[0]!.pieces[0]!.buffer, a.buffer, 'chunk 0: a view of piece a');
    assert.equal(arrived[1]!.pieces.length, 2, 'chunk 1: two pieces, passed to writev');
    assert.equal(arrived[1]!.pieces[1]!.buffer, b.buffer);
  });

  it('rejects a range outside the target before next is touched', async () => {
    const { arrived, rw } = scatterSetup(true);
    await assert.rejects(rw.writev([Buffer.alloc(4), Buffer.alloc(4)], size - 4), { code: 'ERR_OUT_OF_RANGE' });
    assert.deepEqual(arrived, []);
    await rw.writev([], 0);
  });
});
