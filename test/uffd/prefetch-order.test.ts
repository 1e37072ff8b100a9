import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { UffdPrefetchOrder } from '../../src/uffd/prefetch-order.js';

const MISSING = 0;
const RESIDENT = 3;

/** Picks until -1, marking each pick resident; `faults` maps a pick count to a fault at a chunk. */
function picks(order: number[], chunks: number, readahead: number, resident: number[] = [], faults: Record<number, number> = {}): number[] {
  const state = new Uint8Array(chunks);
  for (const c of resident) state[c] = RESIDENT;
  const o = new UffdPrefetchOrder(Uint32Array.from(order), chunks, readahead);
  const out: number[] = [];
  for (;;) {
    const fault = faults[out.length];
    if (fault !== undefined) {
      state[fault] = RESIDENT;
      o.faulted(fault);
    }
    const c = o.next(state, MISSING);
    if (c < 0) return out;
    state[c] = RESIDENT;
    out.push(c);
  }
}

describe('UffdPrefetchOrder', () => {
  const cases: { name: string; order: number[]; chunks: number; readahead: number; resident?: number[]; faults?: Record<number, number>; expect: number[] }[] = [
    { name: 'follows the pull order', order: [3, 1, 0, 2], chunks: 4, readahead: 0, expect: [3, 1, 0, 2] },
    { name: 'skips chunks that are already resident', order: [0, 1, 2, 3], chunks: 4, readahead: 2, resident: [1, 2], expect: [0, 3] },
    { name: 'takes the read-ahead window after a fault first', order: [0, 1, 2, 3, 4, 5, 6, 7], chunks: 8, readahead: 2, faults: { 1: 5 }, expect: [0, 6, 7, 1, 2, 3, 4] },
    { name: 'clips the read-ahead window at the last chunk', order: [0, 1, 2, 3], chunks: 4, readahead: 8, faults: { 0: 2 }, expect: [3, 0, 1] },
    { name: 'ignores faults when read-ahead is off', order: [0, 1, 2, 3], chunks: 4, readahead: 0, faults: { 0: 2 }, expect: [0, 1, 3] },
  ];
  for (const c of cases) {
    it(c.name, () => {
      assert.deepEqual(picks(c.order, c.chunks, c.readahead, c.resident, c.faults), c.expect);
    });
  }
});
