/**
 * The shared ReadWriterAt suite, run against every backend and every stage combination.
 *
 * A target accepts any (off, length) inside [0, size): whole-chunk stages are tested wrapped in
 * ArbitraryReadWriterAt. `chunkSize` only shapes the test geometry (where chunk boundaries are);
 * the suite needs `chunkSize >= 16` and `size >= 3 * chunkSize`, and is most useful when `size` is
 * not a multiple of `chunkSize` (the last chunk is then short).
 *
 * Every case calls `make()` for a fresh, never-written target (all zeros, or `initial` when given),
 * keeps a model of what it holds, and ends by reading the whole target back into a dirty
 * (0xff-filled) buffer and comparing it with the model, so a stray write anywhere is caught too.
 * The target is closed however the case ends.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { ReadWriterAt } from '../../src/pipeline/types.js';

export interface SuiteTarget {
  readonly rw: ReadWriterAt;
  readonly size: number;
  readonly chunkSize: number;
  /** What the target holds before the case writes anything; default all zeros. */
  readonly initial?: Buffer;
  close(): Promise<void>;
}

/** Fills `buf` with a non-zero pattern that depends on `seed` and the byte's position. */
export function pattern(length: number, seed: number): Buffer {
  const buf = Buffer.allocUnsafe(length);
  for (let i = 0; i < length; i++) buf[i] = 1 + ((seed * 131 + i * 7 + (i >>> 8)) % 255);
  return buf;
}

/** Reports the first differing byte instead of dumping two large buffers. */
export function assertBytes(actual: Buffer, expected: Buffer, what: string): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  const at = actual.findIndex((b, i) => b !== expected[i]);
  if (at !== -1) {
    assert.fail(`${what}: byte ${at} is ${actual[at]}, expected ${expected[at]} (and maybe more after it)`);
  }
}

/** A target plus the bytes it must hold. */
class Harness {
  readonly rw: ReadWriterAt;
  readonly size: number;
  readonly c: number;
  readonly model: Buffer;

  constructor(target: SuiteTarget) {
    this.rw = target.rw;
    this.size = target.size;
    this.c = target.chunkSize;
    this.model = target.initial === undefined ? Buffer.alloc(target.size) : Buffer.from(target.initial);
    assert.equal(this.model.length, target.size, 'initial must be exactly size bytes');
  }

  /** Half a chunk, rounded down. */
  get half(): number {
    return Math.floor(this.c / 2);
  }

  get lastChunkOff(): number {
    return (Math.ceil(this.size / this.c) - 1) * this.c;
  }

  async write(off: number, length: number, seed: number): Promise<void> {
    const data = pattern(length, seed);
    await this.rw.writeAt(data, off);
    data.copy(this.model, off);
  }

  async expectRange(off: number, length: number): Promise<void> {
    const buf = Buffer.alloc(length, 0xff);
    await this.rw.readAt(buf, off);
    assertBytes(buf, this.model.subarray(off, off + length), `read of [${off}, ${off + length})`);
  }

  expectAll(): Promise<void> {
    return this.expectRange(0, this.size);
  }

  async rejectsOutOfRange(op: 'read' | 'write', off: number, length: number): Promise<void> {
    const buf = Buffer.alloc(length, 0xee);
    // async wrapper: a synchronous throw counts as a rejection too
    const call = op === 'read' ? async () => this.rw.readAt(buf, off) : async () => this.rw.writeAt(buf, off);
    await assert.rejects(call, { code: 'ERR_OUT_OF_RANGE' }, `${op} of ${length} bytes at ${off} (size ${this.size})`);
  }
}

/** Eight distinct, uneven, non-empty slices of [off, off + length); needs length >= 16. */
function eightSlices(off: number, length: number): Array<[number, number]> {
  const edges: number[] = [];
  for (let k = 0; k <= 8; k++) edges.push(off + Math.round((k * length) / 8) + (k % 2 === 1 ? 1 : 0));
  return edges.slice(0, 8).map((start, k): [number, number] => [start, edges[k + 1]! - start]);
}

interface SuiteCase {
  readonly name: string;
  run(h: Harness): Promise<void>;
}

const cases: readonly SuiteCase[] = [
  {
    name: 'an aligned whole-chunk write reads back',
    run: async (h) => {
      await h.write(h.c, h.c, 1);
      await h.expectRange(h.c, h.c);
    },
  },
  {
    name: 'a write inside one chunk reads back and leaves the rest of that chunk zero',
    run: async (h) => {
      await h.write(h.c + 3, h.half, 2);
      await h.expectRange(h.c, h.c);
      await h.expectRange(h.c + 3, h.half);
    },
  },
  {
    name: 'a write across a chunk boundary reads back',
    run: async (h) => {
      await h.write(2 * h.c - 5, 10, 3);
      await h.expectRange(2 * h.c - 5, 10);
      await h.expectRange(h.c, 2 * h.c);
    },
  },
  {
    name: 'a write bigger than a chunk reads back',
    run: async (h) => {
      await h.write(h.half + 1, 2 * h.c + 3, 4);
      await h.expectRange(h.half + 1, 2 * h.c + 3);
      await h.expectRange(1, 3 * h.c - 1);
    },
  },
  {
    name: 'the last chunk reads and writes up to the end of the target',
    run: async (h) => {
      const last = h.lastChunkOff;
      await h.write(last, h.size - last, 5);
      await h.expectRange(last, h.size - last);
      await h.write(h.size - 3, 3, 6);
      await h.write(last - 2, Math.min(4, h.size - last + 2), 7);
      await h.expectRange(last - h.c, h.size - (last - h.c));
    },
  },
  {
    name: 'a range past the end rejects with ERR_OUT_OF_RANGE and changes nothing',
    run: async (h) => {
      for (const op of ['read', 'write'] as const) {
        await h.rejectsOutOfRange(op, h.size, 1);
        await h.rejectsOutOfRange(op, h.size - 2, 4); // starts in range, ends past it
        await h.rejectsOutOfRange(op, h.size + h.c, h.c);
        await h.rejectsOutOfRange(op, 0, h.size + 1);
        await h.rejectsOutOfRange(op, -1, 2);
      }
    },
  },
  {
    name: 'a never-written range reads as zeros (or the initial content) even into a dirty buffer, also across chunks',
    run: async (h) => {
      await h.expectRange(0, h.c);
      await h.expectRange(h.half, 2 * h.c);
      await h.expectRange(h.lastChunkOff - 1, h.size - h.lastChunkOff + 1);
    },
  },
  {
    name: 'a never-written chunk between two written chunks reads as zeros',
    run: async (h) => {
      await h.write(0, h.c, 8);
      await h.write(2 * h.c, h.c, 9);
      await h.expectRange(0, 3 * h.c);
      await h.expectRange(1, 3 * h.c - 2);
    },
  },
  {
    name: 'eight concurrent unaligned writers to one chunk all survive',
    run: async (h) => {
      await Promise.all(eightSlices(h.c, h.c).map(([off, len], k) => h.write(off, len, 10 + k)));
      await h.expectRange(h.c, h.c);
      const lastLen = h.size - h.lastChunkOff;
      if (lastLen >= 16) {
        await Promise.all(eightSlices(h.lastChunkOff, lastLen).map(([off, len], k) => h.write(off, len, 20 + k)));
      }
    },
  },
  {
    name: 'concurrent writers straddling chunk boundaries all survive',
    run: async (h) => {
      const writes: Array<Promise<void>> = [];
      for (let b = h.c; b < h.size; b += h.c) {
        writes.push(h.write(b - 3, Math.min(6, h.size - b + 3), b / h.c));
        if (b + 6 <= h.size) writes.push(h.write(b + 4, 2, 100 + b / h.c));
      }
      await Promise.all(writes);
    },
  },
  {
    name: 'many concurrent writers to different chunks all survive',
    run: async (h) => {
      const writes: Array<Promise<void>> = [];
      for (let off = 0, i = 0; off < h.size; off += h.c, i++) {
        const len = Math.min(h.c, h.size - off);
        if (i % 3 === 0 || len <= 5) writes.push(h.write(off, len, 30 + i)); // whole chunk
        else writes.push(h.write(off + (i % 5), Math.min(h.half, len - (i % 5)), 30 + i));
      }
      await Promise.all(writes);
    },
  },
  {
    name: 'an overwrite replaces exactly the bytes it covers',
    run: async (h) => {
      await h.write(h.half, 2 * h.c, 40);
      await h.write(h.c, h.half + 7, 41);
      await h.write(h.half - 1, 1, 42);
      await h.write(h.c, h.c, 43);
      await h.expectRange(0, 3 * h.c);
    },
  },
  {
    name: "changing the caller's buffer after a write settles changes nothing stored",
    run: async (h) => {
      const data = pattern(h.c + 10, 50);
      await h.rw.writeAt(data, h.c - 5);
      data.copy(h.model, h.c - 5);
      data.fill(0xee);
      await h.expectRange(0, 3 * h.c);
    },
  },
];

/** Registers one node:test case per suite case under `describe(name)`. */
export function readWriterAtSuite(name: string, make: () => Promise<SuiteTarget>): void {
  describe(name, () => {
    for (const c of cases) {
      it(c.name, async () => {
        const target = await make();
        try {
          assert.ok(target.chunkSize >= 16 && target.size >= 3 * target.chunkSize, 'suite needs chunkSize >= 16 and size >= 3 * chunkSize');
          const h = new Harness(target);
          await c.run(h);
          await h.expectAll();
        } finally {
          await target.close();
        }
      });
    }
  });
}
