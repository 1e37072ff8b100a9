/**
 * What the main thread (uffd/map.ts) and the fault handler thread
 * (uffd/handler-worker.ts) exchange: the worker's start data, the messages both ways,
 * the slots of the shared stats array and the error form that crosses the thread boundary.
 * Kept apart from the worker so that importing it never starts a handler.
 */
import type { LevelWithSilent } from 'pino';

/** A reader built inside the worker: `(await import(module))[exportName](...args)`. */
export interface UffdReaderSpec {
  /** A module URL (file://…) the worker can import. */
  readonly module: string;
  readonly exportName: string;
  /** Structured-cloneable arguments. */
  readonly args: readonly unknown[];
}

export interface UffdHandlerData {
  readonly uffd: number;
  readonly stopFd: number;
  readonly base: number;
  /** Bytes the reader serves. */
  readonly size: number;
  /** size rounded up to whole pages: what is mapped and registered. */
  readonly mappedLength: number;
  readonly pageSize: number;
  readonly chunkSize: number;
  readonly reader: UffdReaderSpec;
  readonly prefetchWorkers: number;
  /** Chunk indexes in prefetch order (empty when prefetch is off). */
  readonly prefetchOrder: Uint32Array;
  readonly readaheadChunks: number;
  readonly retryBaseDelayMs: number;
  readonly retryMaxDelayMs: number;
  /** 0: retry forever. */
  readonly deadlineMs: number;
  /** Longest wait in the async poll used while work is in flight (it holds a libuv threadpool thread). */
  readonly pollTimeoutMs: number;
  /** Longest wait in the plain poll used while idle (the event loop waits meanwhile, then gets a turn). */
  readonly syncPollMs: number;
  /** Float64Array over UFFD_STAT_COUNT slots, written here, read by the main thread. */
  readonly stats: SharedArrayBuffer;
  readonly logLevel: LevelWithSilent;
  /** Names the region in logs and in the fatal message. */
  readonly label: string;
}

export interface SerializedError {
  readonly name: string;
  readonly message: string;
  readonly code: string | undefined;
  readonly off: number | undefined;
  readonly length: number | undefined;
}

export type UffdHandlerReply =
  | { readonly type: 'ready' }
  | { readonly type: 'open-failed'; readonly error: SerializedError }
  | { readonly type: 'failed'; readonly error: SerializedError }
  | { readonly type: 'drained' }
  | { readonly type: 'stopped' };

export type UffdHandlerRequest = { readonly type: 'drain' };

/** Slots of the shared stats array. */
export const UFFD_STAT = Object.freeze({
  faults: 0,
  coalescedFaults: 1,
  faultedChunks: 2,
  prefetchedChunks: 3,
  prefetchedBytes: 4,
  fetchedBytes: 5,
  fetchRetries: 6,
  residentChunks: 7,
  faultLatencyTotalMs: 8,
  faultLatencyMaxMs: 9,
  refaults: 10,
} as const);
export const UFFD_STAT_COUNT = 11;

export function serializeError(err: unknown, off?: number, length?: number): SerializedError {
  const e = err instanceof Error ? err : new Error(String(err));
  const code = (e as { code?: unknown }).code;
  return { name: e.name, message: e.message, code: typeof code === 'string' ? code : undefined, off, length };
}
