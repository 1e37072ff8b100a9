/**
 * Readers for the userfaultfd tests, built INSIDE the fault handler thread through mapReader's
 * module reader (`{ module: READERS_MODULE, exportName, args }`): a region's reader can never
 * live in the thread that faults on it. Every pattern is src/bench/uffd-source.ts's.
 */
import { openComposed } from '../../src/mount/compose.js';
import { MemoryBackend } from '../../src/backends/memory.js';
import { LatencyBackend } from '../../src/pipeline/latency.js';
import type { Backend, ReaderAt } from '../../src/pipeline/types.js';
import { patternBuffer } from '../../src/bench/uffd-source.js';

/** This module, for `{ module: READERS_MODULE, … }`. */
export const READERS_MODULE = import.meta.url;

/** A memory backend pre-filled with the pattern, behind `readLatencyMs` of delay when > 0. */
export async function openPatternMemory(size: number, seed: number, readLatencyMs = 0): Promise<Backend> {
  const memory = new MemoryBackend({ size });
  await memory.writeAt(patternBuffer(size, seed), 0);
  return readLatencyMs > 0 ? new LatencyBackend(memory, { readLatencyMs }) : memory;
}

/** A backend URI opened read-only, behind `readLatencyMs` of delay (a simulated round trip). */
export async function openUriWithLatency(uri: string, size: number, readLatencyMs: number): Promise<Backend> {
  const backend = await openComposed(uri, { size, readOnly: true });
  return new LatencyBackend(backend, { readLatencyMs });
}

function connectionReset(): Error {
  return Object.assign(new Error('simulated connection reset'), { code: 'ECONNRESET' });
}

/** The pattern, but the first `failures` reads reject (then every read succeeds). */
export function openFlakyPattern(size: number, seed: number, failures: number): ReaderAt & { size: number } {
  const data = patternBuffer(size, seed);
  let left = failures;
  return {
    size,
    readAt(buf: Buffer, off: number): Promise<void> {
      if (left > 0) {
        left--;
        return Promise.reject(connectionReset());
      }
      data.copy(buf, 0, off, off + buf.length);
      return Promise.resolve();
    },
  };
}

/** Every read rejects. */
export function openFailingReader(size: number): ReaderAt & { size: number } {
  return { size, readAt: () => Promise.reject(connectionReset()) };
}

/** Not a reader at all (mapReader must reject it). */
export function openNotAReader(): unknown {
  return { hello: 'world' };
}
