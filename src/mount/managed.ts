/**
 * Managed mounts, composed in one place. `openManagedStack()` lists the stages top-down, as the
 * requests travel (the remote is opened first, the device attached last):
 *
 *   device (/dev/nbdN through the kernel NBD client, or /dev/loopN through fuse-loop)
 *     → NBD server with one export (direct.ts: openDeviceStack)
 *     → ManagedBackend: FLUSH = file cache: save the cache state (cache fdatasync, then the state);
 *                              memory cache: push every dirty chunk (nothing else survives a crash)
 *     → ArbitraryReadWriterAt: any range → whole chunks; partial writes are RMW under a chunk lock
 *     → WriteMarks: every write marks its chunk dirty once it landed (gated by the cache state)
 *     → SyncedReadWriterAt ◄── Puller (pullWorkers, pullPriority; started before the device)
 *     → local cache (MemoryBackend, or FileBackend + CacheState in `<cache>.r3map-state`)
 *   beside the data path: Pusher (pushWorkers, pushIntervalMs; absent with 0 push workers) pushes
 *   the dirty chunks from the local cache, and for remote reads and pushes:
 *     → RemoteStage (pulled/pushed bytes; chunks pushed but not yet remote-synced)
 *     → LatencyBackend (latencyMs > 0, tests and benchmarks)
 *     → remote (the caller's Backend, or opened from remoteUri through compose.ts)
 *   Every per-chunk fact lives in one ChunkTable the stages share (pipeline/chunk-table.ts);
 *   the CacheState saves and restores that table.
 *
 * Concurrent start: the puller starts before the device is attached, and the bytes it pulled by
 * the time the device was ready are logged and kept in stats().
 * sync(): onBeforeSync, fsync of the device (its FLUSH makes the cache durable), push every dirty
 * chunk, remote.sync(), save the cache state; it resolves when the remote holds every write that
 * completed before the call. close(): sync, onBeforeClose, detach, stop the puller, close the
 * pusher (pushes what landed during detach), save the state, close cache and remote; every
 * failure is reported in one AggregateError.
 */
import { EventEmitter } from 'node:events';
import { ClosedError, UsageError } from '../errors.js';
import type { Logger } from '../log.js';
import { FileBackend } from '../backends/file.js';
import { MemoryBackend } from '../backends/memory.js';
import { redactUri } from '../backends/uri.js';
import { ArbitraryReadWriterAt } from '../pipeline/arbitrary.js';
import { ChunkTable } from '../pipeline/chunk-table.js';
import { LatencyBackend } from '../pipeline/latency.js';
import { Puller } from '../pipeline/puller.js';
import type { PullPriority } from '../pipeline/pull-priority.js';
import { Pusher } from '../pipeline/pusher.js';
import { RemoteStage } from '../pipeline/remote-stage.js';
import { SyncedReadWriterAt } from '../pipeline/synced.js';
import type { Backend } from '../pipeline/types.js';
import { WriteMarks } from '../pipeline/write-marks.js';
import { runStepsOrThrow, undoAndThrow, type UndoStep } from '../util/undo.js';
import { CacheState } from './cache-state.js';
import { composeBackend, openComposed } from './compose.js';
import { BLOCK_SIZE, fsyncDevice, openDeviceStack, resolveDirectMountOptions } from './direct.js';
import { hotRangesPriority, loadHotRanges } from './hot-ranges.js';
import { ManagedBackend } from './managed-backend.js';
import { managedExtents } from './managed-extents.js';
import type { ResolvedManagedMountOptions } from './managed-options.js';
import type { ResolvedTransport } from './transport.js';

export interface ManagedProgress {
  readonly localChunks: number;
  readonly totalChunks: number;
  readonly pulledBytes: number;
}

export interface ManagedMountEvents {
  /** A chunk became local (pulled, read or written). Emitted only while someone listens. */
  progress: [ManagedProgress];
  /** A background failure (pull, interval push, state save); it was logged. Emitted only while someone listens. */
  error: [unknown];
}

export interface ManagedMountStats {
  readonly size: number;
  readonly chunkSize: number;
  readonly totalChunks: number;
  /** Chunks whose data is in the cache. */
  readonly localChunks: number;
  /** Chunks written and not pushed yet (without a pusher: written, never pushed). */
  readonly dirtyChunks: number;
  /** Bytes read from the remote so far. */
  readonly pulledBytes: number;
  /** Bytes written to the remote so far. */
  readonly pushedBytes: number;
  /** Bytes read from the remote before the device was ready (concurrent start). */
  readonly pulledBeforeReadyBytes: number;
  /** Chunks the cache state said were local at open. */
  readonly restoredChunks: number;
  /** Every chunk has been pulled (false with 0 pull workers). */
  readonly pullDone: boolean;
}

/** What the stack needs of a device: the real one (attachDevice) or a test double. */
export interface ManagedDevice {
  readonly path: string;
  readonly transport: ResolvedTransport;
  /** Resolves with an Error when the device goes away without close(). */
  readonly closed: Promise<Error | undefined>;
  /** Makes every write the device has accepted reach the backend and be flushed (fsync). */
  flush(): Promise<void>;
  /** Detaches; the NBD server's close sends a last FLUSH to the backend. */
  close(): Promise<void>;
}

export type AttachDevice = (backend: Backend, options: ResolvedManagedMountOptions, log: Logger) => Promise<ManagedDevice>;

/** The real device: NBD server + kernel NBD client or fuse-loop (direct.ts). */
export async function attachDevice(backend: Backend, options: ResolvedManagedMountOptions, log: Logger): Promise<ManagedDevice> {
  const direct = resolveDirectMountOptions({
    backend, readOnly: options.readOnly, transport: options.transport, loopDirectIo: options.loopDirectIo,
    ...(options.device !== undefined ? { device: options.device } : {}),
  });
  const stack = await openDeviceStack(direct, log);
  return {
    path: stack.path,
    transport: stack.transport,
    closed: stack.closed,
    flush: () => (options.readOnly ? Promise.resolve() : fsyncDevice(stack.path)),
    close: () => stack.close(),
  };
}

/** The stages, top-down (see the file comment); `attach` is the device, last. */
export async function openManagedStack(options: ResolvedManagedMountOptions, log: Logger, events: EventEmitter<ManagedMountEvents>, attach: AttachDevice = attachDevice): Promise<ManagedStack> {
  const { chunkSize, readOnly } = options;
  const undo: UndoStep[] = [];
  const report = (err: unknown): void => void (events.listenerCount('error') > 0 && events.emit('error', err));
  try {
    const opened = options.remote !== undefined ? composeBackend(options.remote)
      : await openComposed(options.remoteUri!, { ...(options.size !== undefined ? { size: options.size } : {}), log });
    undo.unshift({ what: 'close the remote', run: () => opened.close() });
    const size = checkRemote(opened, options);
    const table = new ChunkTable({ chunkSize, size });
    const remote = options.latencyMs > 0 ? new LatencyBackend(opened, { readLatencyMs: options.latencyMs, writeLatencyMs: options.latencyMs }) : opened;
    const remoteStage = new RemoteStage(remote, table);
    const remoteId = options.remoteId ?? (options.remoteUri !== undefined ? redactUri(options.remoteUri) : '');
    const state = options.cache === 'memory' ? undefined : await CacheState.load(options.cache, { size, chunkSize, remoteId }, {
      reset: options.resetCache, intervalMs: options.stateIntervalMs, onError: report, log,
    });
    const local = options.cache === 'memory' ? new MemoryBackend({ size, chunkSize }) : await FileBackend.open(options.cache, { size, create: true });
    undo.unshift({ what: 'close the cache', run: () => local.close() });
    state?.restoreInto(table);
    const onChunkIsLocal = (off: number): void => {
      options.onChunkIsLocal?.(off);
      if (events.listenerCount('progress') > 0) events.emit('progress', { localChunks: table.localCount, totalChunks: table.chunks, pulledBytes: remoteStage.pulledBytes });
    };
    const remoteExtents = remote.extents?.bind(remote);
    const synced = new SyncedReadWriterAt(remoteStage, local, { chunkSize, size, table, onChunkIsLocal, onError: report, ...(remoteExtents !== undefined ? { remoteExtents } : {}) });
    const arbitrary = new ArbitraryReadWriterAt(new WriteMarks(synced, { table, ...(state !== undefined ? { gate: state } : {}) }), { chunkSize, size });
    const puller = new Puller(synced, { chunkSize, size, table, workers: options.pullWorkers, maxQueueMs: options.pullMaxQueueMs, priority: await pullPriority(options), log });
    const pusher = options.pushWorkers > 0 ? new Pusher(table, local, remoteStage, { workers: options.pushWorkers, intervalMs: options.pushIntervalMs, log }) : undefined;
    if (state !== undefined) {
      await state.open(table, () => local.sync());
      undo.unshift({ what: 'close the cache state', run: () => state.close() });
    }
    if (pusher !== undefined) {
      pusher.on('error', report);
      pusher.open();
      undo.unshift({ what: 'close the pusher', run: () => pusher.close() });
    }
    puller.on('error', report);
    puller.start();
    puller.finalize([]);
    undo.unshift({ what: 'stop the puller', run: () => puller.close() });
    if (options.pullFirst) await puller.wait();
    const flush = state !== undefined ? () => state.save('full') : pusher !== undefined ? () => pusher.sync().then(() => undefined) : () => Promise.resolve();
    const cache = (off: number, length: number): Promise<void> => synced.pullRange(off, length);
    const extents = managedExtents(table, opened);
    const device = await attach(new ManagedBackend(arbitrary, size, readOnly, { flush, cache, ...(extents !== undefined ? { extents } : {}) }), options, log);
    const parts = { options, log, events, remote: opened, remoteStage, local, state, pusher, table, puller, device };
    return new ManagedStack(parts, remoteStage.pulledBytes, state?.restored.local.length ?? 0);
  } catch (err) {
    return undoAndThrow(err, undo, log, 'managed mount');
  }
}

function checkRemote(remote: Backend, options: ResolvedManagedMountOptions): number {
  const size = remote.size;
  if (!Number.isSafeInteger(size) || size <= 0 || size % BLOCK_SIZE !== 0) {
    throw new UsageError(`the remote has ${size} bytes: a managed mount needs a positive multiple of ${BLOCK_SIZE}`);
  }
  if (options.size !== undefined && options.size !== size) throw new UsageError(`the remote has ${size} bytes, not the ${options.size} asked for`);
  if (remote.readOnly === true && options.pushWorkers > 0 && !options.readOnly) {
    throw new UsageError('the remote is read-only: mount read-only, or with 0 push workers (writes then stay in the cache)');
  }
  return size;
}

async function pullPriority(options: ResolvedManagedMountOptions): Promise<PullPriority> {
  const priority = options.pullPriority;
  if (typeof priority === 'function') return priority;
  return hotRangesPriority(await loadHotRanges(priority.hotRangesFile), options.chunkSize, priority.hotRangesFile);
}

interface StackParts {
  readonly options: ResolvedManagedMountOptions;
  readonly log: Logger;
  readonly events: EventEmitter<ManagedMountEvents>;
  readonly remote: Backend;
  readonly remoteStage: RemoteStage;
  readonly local: Backend;
  readonly state: CacheState | undefined;
  readonly pusher: Pusher | undefined;
  readonly table: ChunkTable;
  readonly puller: Puller;
  readonly device: ManagedDevice;
}

/** An open managed mount: the device plus every stage, owned and closed in order. */
export class ManagedStack {
  readonly path: string;
  readonly transport: ResolvedTransport;
  readonly size: number;
  readonly closed: Promise<Error | undefined>;
  readonly #p: StackParts;
  readonly #pulledBeforeReady: number;
  readonly #restored: number;
  #pullDone = false;
  #closing: Promise<void> | undefined;

  constructor(parts: StackParts, pulledBeforeReady: number, restored: number) {
    this.#p = parts;
    this.path = parts.device.path;
    this.transport = parts.device.transport;
    this.size = parts.local.size;
    this.closed = parts.device.closed;
    this.#pulledBeforeReady = pulledBeforeReady;
    this.#restored = restored;
    const { log, puller, state, options } = parts;
    log.info({ device: this.path, size: this.size, chunkSize: options.chunkSize, pulledBeforeReadyBytes: pulledBeforeReady, restoredChunks: restored, cache: options.cache },
      `managed mount ready on ${this.path}; ${pulledBeforeReady} bytes were pulled before the device was ready`);
    puller.wait().then(() => {
      if (options.pullWorkers === 0) return;
      this.#pullDone = true;
      log.info({ chunks: puller.totalChunks, pulledBytes: parts.remoteStage.pulledBytes }, 'every chunk is local');
      state?.save('full').catch((err: unknown) => this.#report(err, 'saving the cache state after the pull failed'));
    }, (err: unknown) => {
      if (!(err instanceof ClosedError)) this.#report(err, undefined); // the puller logged it
    });
  }

  stats(): ManagedMountStats {
    const { table, remoteStage, options } = this.#p;
    return Object.freeze({
      size: this.size,
      chunkSize: options.chunkSize,
      totalChunks: table.chunks,
      localChunks: table.localCount,
      dirtyChunks: table.dirtyCount,
      pulledBytes: remoteStage.pulledBytes,
      pushedBytes: remoteStage.pushedBytes,
      pulledBeforeReadyBytes: this.#pulledBeforeReady,
      restoredChunks: this.#restored,
      pullDone: this.#pullDone,
    });
  }

  /** Resolves when the remote holds every write that completed before the call. */
  sync(): Promise<void> {
    if (this.#closing !== undefined) return Promise.reject(new ClosedError('managed mount'));
    return this.#sync();
  }

  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #sync(): Promise<void> {
    const { options, device, pusher, state } = this.#p;
    await options.onBeforeSync?.();
    await device.flush();
    if (pusher !== undefined) await pusher.sync();
    await state?.save('full');
  }

  async #close(): Promise<void> {
    const { options, device, puller, pusher, state, local, remote, log } = this.#p;
    const steps: UndoStep[] = [
      { what: 'sync', run: () => this.#sync() },
      ...(options.onBeforeClose !== undefined ? [{ what: 'run onBeforeClose', run: async () => options.onBeforeClose!() }] : []),
      { what: `detach ${this.path}`, run: () => device.close() },
      { what: 'stop the puller', run: () => puller.close() },
      ...(pusher !== undefined ? [{ what: 'push the last chunks', run: () => pusher.close() }] : []),
      ...(state !== undefined ? [{ what: 'save the cache state', run: () => state.save('full') }, { what: 'close the cache state', run: () => state.close() }] : []),
      { what: 'close the cache', run: () => local.close() },
      { what: 'close the remote', run: () => remote.close() },
    ];
    await runStepsOrThrow(steps, log, 'managed mount', `closing the managed mount of ${this.path}`);
    log.info({ device: this.path, ...this.stats() }, 'managed mount closed');
  }

  #report(err: unknown, message: string | undefined): void {
    if (message !== undefined) this.#p.log.error({ err }, message);
    if (this.#p.events.listenerCount('error') > 0) this.#p.events.emit('error', err);
  }
}
