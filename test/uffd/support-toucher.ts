/**
 * A worker thread that reads pages of a userfaultfd region mapped by another thread of this
 * process (the mapping is per process: it views the same address) and checks each against the
 * pattern. workerData: { address (bigint), size, page, seed, pages: Uint32Array (page indexes to
 * read, in order) }. Posts { checked, mismatches: first few bad page indexes }.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { viewOf } from '../../src/kernel/ffi.js';
import { fillPattern } from '../../src/bench/uffd-source.js';

export interface ToucherData {
  readonly address: bigint;
  readonly size: number;
  readonly page: number;
  readonly seed: number;
  readonly pages: Uint32Array;
}

export interface ToucherResult {
  readonly checked: number;
  readonly mismatches: readonly number[];
}

export const TOUCHER_URL = new URL('./support-toucher.js', import.meta.url);

if (parentPort !== null && (workerData as { toucher?: boolean } | null)?.toucher === true) {
  const { address, size, page, seed, pages } = workerData as ToucherData;
  const region = viewOf(address, size);
  const expected = Buffer.alloc(page);
  const mismatches: number[] = [];
  for (const p of pages) {
    const off = p * page;
    const length = Math.min(page, size - off);
    // Copy the page out first: the region may be torn down soon after the last fault is served.
    const got = Buffer.from(region.subarray(off, off + length));
    fillPattern(expected, seed, off / 4);
    if (!got.equals(expected.subarray(0, length)) && mismatches.length < 8) mismatches.push(p);
  }
  parentPort.postMessage({ checked: pages.length, mismatches } satisfies ToucherResult);
}
