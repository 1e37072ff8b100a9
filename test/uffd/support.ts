/**
 * Shared helpers of the userfaultfd tests: whether userfaultfd works here (root, or
 * unprivileged_userfaultfd = 1), page-order checks, toucher threads and bounded waits.
 */
import { Worker } from 'node:worker_threads';
import type { TestContext } from 'node:test';
import { KernelError } from '../../src/errors.js';
import { withTimeout } from '../../src/util/retry.js';
import { pageSize } from '../../src/kernel/ffi.js';
import { Uffd } from '../../src/kernel/uffd.js';
import { fillPattern } from '../../src/bench/uffd-source.js';
import { strictTools } from '../support/tools.js';
import { TOUCHER_URL, type ToucherData, type ToucherResult } from './support-toucher.js';
import { mapReader, type UffdMap, type UffdReaderSource } from '../../src/uffd/map.js';
import { READERS_MODULE } from './support-readers.js';

export const PAGE = pageSize();
export const MiB = 1024 * 1024;

let available: string | undefined | null = null;

/** Why userfaultfd cannot be used here, or undefined when it can. */
function probe(): string | undefined {
  if (available !== null) return available;
  try {
    Uffd.create().close();
    available = undefined;
  } catch (err) {
    available = err instanceof KernelError ? err.message : String(err);
  }
  return available;
}

/** True when userfaultfd works; otherwise skips the test (or throws under R3MAP_STRICT=1 / CI=true). */
export function requireUserfaultfd(t: TestContext): boolean {
  const why = probe();
  if (why === undefined) return true;
  if (strictTools()) throw new Error(`userfaultfd is not usable here: ${why}`);
  t.skip(`needs userfaultfd (root): ${why}`);
  return false;
}

/** The page indexes of the first `pages` where `region` differs from the pattern (at most 8). */
export function badPages(region: Buffer, seed: number, order: Iterable<number>): number[] {
  const expected = Buffer.alloc(PAGE);
  const bad: number[] = [];
  for (const p of order) {
    const off = p * PAGE;
    const length = Math.min(PAGE, region.length - off);
    fillPattern(expected, seed, off / 4);
    if (!region.subarray(off, off + length).equals(expected.subarray(0, length))) {
      bad.push(p);
      if (bad.length === 8) break;
    }
  }
  return bad;
}

/** Reads the pages of `address`+`size` listed in `pages` from a new worker thread and checks them. */
export function touchInThread(address: bigint, size: number, seed: number, pages: Uint32Array): Promise<ToucherResult> {
  const data: ToucherData & { toucher: true } = { toucher: true, address, size, page: PAGE, seed, pages };
  const worker = new Worker(TOUCHER_URL, { workerData: data });
  return new Promise((resolve, reject) => {
    worker.once('message', (result: ToucherResult) => {
      resolve(result);
      void worker.terminate();
    });
    worker.once('error', reject);
    worker.once('exit', (code) => reject(new Error(`toucher thread exited with code ${code} before reporting`)));
  });
}

/** Polls `condition` every 10 ms until it holds; rejects after `timeoutMs`. */
export async function waitFor(condition: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/**
 * Settles like `promise`, or rejects after `timeoutMs` (util/retry.ts's withTimeout). A ref'd
 * timer also keeps the event loop alive while a test awaits an event of a region (whose thread
 * is unref'd, and withTimeout's timer too).
 */
export async function within<T>(promise: Promise<T>, timeoutMs: number, what: string): Promise<T> {
  const keepAlive = setTimeout(() => undefined, timeoutMs + 1000);
  try {
    return await withTimeout(promise, timeoutMs, `waiting for ${what}`);
  } finally {
    clearTimeout(keepAlive);
  }
}

/** The pattern-filled memory reader of support-readers.ts, built inside the handler thread. */
export function memory(size: number, seed: number, readLatencyMs = 0): UffdReaderSource {
  return { module: READERS_MODULE, exportName: 'openPatternMemory', args: [size, seed, readLatencyMs] };
}

/** Maps, runs `fn`, and always closes. */
export async function withRegion(source: UffdReaderSource, size: number, options: Parameters<typeof mapReader>[2], fn: (region: UffdMap) => Promise<void> | void): Promise<void> {
  const region = await mapReader(source, size, options);
  try {
    await fn(region);
  } finally {
    await region.close();
  }
}
