/**
 * The options of a managed mount, the same names and meanings in the library and on the
 * r3map-mount command line (`--pull-workers` is `pullWorkers`, `--push-interval 5s` is
 * `pushIntervalMs: 5000`); 0 always means "off". Resolved once into a frozen object.
 */
import path from 'node:path';
import { UsageError } from '../errors.js';
import { checkChunkSize, DEFAULT_CHUNK_SIZE } from '../util/chunks.js';
import type { Logger } from '../log.js';
import { pullPriorityByName, type PullPriority, type PullPriorityName } from '../pipeline/pull-priority.js';
import type { Backend } from '../pipeline/types.js';
import { resolveTransport, type Transport } from './transport.js';

/** The built-in names, your own function, or a file listing hot ranges (hot-ranges.ts). */
export type ManagedPullPriority = PullPriorityName | PullPriority | { readonly hotRangesFile: string };

export const MANAGED_DEFAULTS = Object.freeze({
  chunkSize: DEFAULT_CHUNK_SIZE,
  pullWorkers: 64,
  pullMaxQueueMs: 1,
  pushWorkers: 16,
  pushIntervalMs: 5000,
  stateIntervalMs: 1000,
  cache: 'memory',
} as const);

/** Largest chunk: one pull or push moves a whole chunk, and gRPC remotes cap a call at 32 MiB. */
export const MAX_CHUNK_SIZE = 32 * 1024 * 1024;

export interface ManagedMountOptions {
  /** The remote, opened (the mount takes it over and closes it). Give this or `remoteUri`. */
  readonly remote?: Backend;
  /** The remote as a backend URI (grpc://host:1337, nbd+unix:///?socket=…, file:///…). */
  readonly remoteUri?: string;
  /** Bytes, for remotes that need it (memory, a new file); others report their own. */
  readonly size?: number;
  /** Names the remote in the cache state; default: remoteUri (password redacted), '' for `remote`. */
  readonly remoteId?: string;
  /** Bytes per chunk: the unit of pulls, pushes and the cache state. Default 64 KiB. */
  readonly chunkSize?: number;
  /** Background pull workers; 0 = no puller (chunks are fetched when first read). Default 64. */
  readonly pullWorkers?: number;
  /** Pull order; default 'ascending'. */
  readonly pullPriority?: ManagedPullPriority;
  /**
   * The queueing (ms) the background pull may add in front of the device's reads: the puller keeps
   * fewer than pullWorkers in flight when more would only wait (Puller's maxQueueMs). 0 = every
   * worker in flight (most pull throughput; a read of a chunk no pull has reached may then wait
   * behind hundreds of pulls). Default 1.
   */
  readonly pullMaxQueueMs?: number;
  /** open() resolves only when every chunk is local (needs pullWorkers > 0). */
  readonly pullFirst?: boolean;
  /** Push workers; 0 = no pusher: writes stay in the cache and are never pushed. Default 16. */
  readonly pushWorkers?: number;
  /** Push dirty chunks every this many ms; 0 = only on sync() and close(). Default 5000. */
  readonly pushIntervalMs?: number;
  /** A file path (kept across runs, crash-safe) or 'memory' (default). */
  readonly cache?: string;
  /** Discard the cache state first: everything is pulled again; unpushed writes are lost. */
  readonly resetCache?: boolean;
  /** File cache: save the local chunks every this many ms when they changed; 0 = only on flush/sync/close. Default 1000. */
  readonly stateIntervalMs?: number;
  /** Simulated round trip added to every remote call (tests, benchmarks); 0 = none. */
  readonly latencyMs?: number;
  readonly transport?: Transport;
  readonly device?: string;
  readonly readOnly?: boolean;
  /** fuse-loop only: ask for loop direct I/O; default true. */
  readonly loopDirectIo?: boolean;
  readonly log?: Logger;
  /** Runs first in sync() (and so in close()): quiesce the app, fsync, msync. */
  readonly onBeforeSync?: () => unknown;
  /** Runs in close() after the final sync, before the device is detached. */
  readonly onBeforeClose?: () => unknown;
  /** Fires for every chunk that becomes local (pulled, read or written), whether or not push is on. */
  readonly onChunkIsLocal?: (off: number) => unknown;
}

export interface ResolvedManagedMountOptions {
  readonly remote: Backend | undefined;
  readonly remoteUri: string | undefined;
  readonly size: number | undefined;
  readonly remoteId: string | undefined;
  readonly chunkSize: number;
  readonly pullWorkers: number;
  /** A function, or the hot-ranges file still to read at open(). */
  readonly pullPriority: PullPriority | { readonly hotRangesFile: string };
  readonly pullMaxQueueMs: number;
  readonly pullFirst: boolean;
  readonly pushWorkers: number;
  readonly pushIntervalMs: number;
  /** 'memory' or an absolute path. */
  readonly cache: string;
  readonly resetCache: boolean;
  readonly stateIntervalMs: number;
  readonly latencyMs: number;
  readonly transport: Transport;
  readonly device: string | undefined;
  readonly readOnly: boolean;
  readonly loopDirectIo: boolean;
  readonly onBeforeSync: (() => unknown) | undefined;
  readonly onBeforeClose: (() => unknown) | undefined;
  readonly onChunkIsLocal: ((off: number) => unknown) | undefined;
}

function count(name: string, value: number | undefined, fallback: number, max = Number.MAX_SAFE_INTEGER): number {
  const n = value ?? fallback;
  if (!Number.isSafeInteger(n) || n < 0 || n > max) throw new UsageError(`${name} must be a whole number from 0 to ${max} (0 = off), got ${String(n)}`);
  return n;
}

function milliseconds(name: string, value: number | undefined, fallback: number): number {
  const ms = value ?? fallback;
  if (!Number.isFinite(ms) || ms < 0) throw new UsageError(`${name} must be a number of milliseconds >= 0 (0 = off), got ${String(ms)}`);
  return ms;
}

/** Validates and freezes the options (never touches the caller's object). */
export function resolveManagedMountOptions(options: ManagedMountOptions): ResolvedManagedMountOptions {
  if ((options.remote === undefined) === (options.remoteUri === undefined)) {
    throw new UsageError('a managed mount needs exactly one of remote and remoteUri');
  }
  const chunkSize = checkChunkSize(options.chunkSize ?? MANAGED_DEFAULTS.chunkSize, 'the chunk size of a managed mount', MAX_CHUNK_SIZE);
  const pullWorkers = count('pullWorkers', options.pullWorkers, MANAGED_DEFAULTS.pullWorkers, 65536);
  const pullFirst = options.pullFirst ?? false;
  if (pullFirst && pullWorkers === 0) throw new UsageError('pullFirst needs pull workers (pullWorkers > 0)');
  const cache = options.cache ?? MANAGED_DEFAULTS.cache;
  if (cache === '') throw new UsageError("cache must be a file path or 'memory'");
  const transport = resolveTransport(options.transport);
  return Object.freeze({
    remote: options.remote,
    remoteUri: options.remoteUri,
    size: options.size,
    remoteId: options.remoteId,
    chunkSize,
    pullWorkers,
    pullPriority: resolvePullPriority(options.pullPriority ?? 'ascending'),
    pullMaxQueueMs: milliseconds('pullMaxQueueMs', options.pullMaxQueueMs, MANAGED_DEFAULTS.pullMaxQueueMs),
    pullFirst,
    pushWorkers: count('pushWorkers', options.pushWorkers, MANAGED_DEFAULTS.pushWorkers, 65536),
    pushIntervalMs: milliseconds('pushIntervalMs', options.pushIntervalMs, MANAGED_DEFAULTS.pushIntervalMs),
    cache: cache === 'memory' ? cache : path.resolve(cache),
    resetCache: options.resetCache ?? false,
    stateIntervalMs: milliseconds('stateIntervalMs', options.stateIntervalMs, MANAGED_DEFAULTS.stateIntervalMs),
    latencyMs: milliseconds('latencyMs', options.latencyMs, 0),
    transport,
    device: options.device,
    readOnly: options.readOnly ?? false,
    loopDirectIo: options.loopDirectIo ?? true,
    onBeforeSync: options.onBeforeSync,
    onBeforeClose: options.onBeforeClose,
    onChunkIsLocal: options.onChunkIsLocal,
  });
}

function resolvePullPriority(priority: ManagedPullPriority): PullPriority | { readonly hotRangesFile: string } {
  if (typeof priority === 'function') return priority;
  if (typeof priority === 'string') return pullPriorityByName(priority);
  if (typeof priority === 'object' && priority !== null && typeof priority.hotRangesFile === 'string' && priority.hotRangesFile !== '') {
    return Object.freeze({ hotRangesFile: path.resolve(priority.hotRangesFile) });
  }
  throw new UsageError("pullPriority must be 'ascending', 'descending', 'first-and-last', a function or { hotRangesFile }");
}
