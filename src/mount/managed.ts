/**
 * Managed mounts, composed in one place. `openManagedStack()` lists the stages top-down, as the
 * requests travel (the remote is opened first, the device attached last):
 *
 *   device (/dev/nbdN through the kernel NBD client, or /dev/loopN through fuse-loop)
 *     → NBD server with one export (direct.ts: openDeviceStack)
 *     → ManagedBackend: FLUSH = file cache: save the cache state (cache fdatasync, then the state);
 *                              memory cache: push every dirty chunk (nothing else survives a crash)
 *     → ArbitraryReadWriterAt: any range → whole chunks; partial writes are RMW under a chunk lock
 *     → WriteMarks: every write is pushed (and, with a file cache, gated by the cache state)
 *     → SyncedReadWriterAt ◄── Puller (pullWorkers, pullPriority; started before the device)
 *         onChunkIsLocal: pusher.markPushable + the caller's hook + progress, push on or off
 *     → Pusher (pushWorkers, pushIntervalMs; absent with 0 push workers)
 *     → local cache (MemoryBackend, or FileBackend + CacheState in `<cache>.r3map-state`)
 *   and, for remote reads and pushes:
 *     → RemoteStage (pulled/pushed bytes; chunks pushed but not yet remote-synced)
 *     → LatencyBackend (latencyMs > 0, tests and benchmarks)
 *     → remote (the caller's Backend, or opened from remoteUri)
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
import { openBackend } from '../backends/open.js';
import { redactUri } from '../backends/uri.js';
import { ArbitraryReadWriterAt } from '../pipeline/arbitrary.js';
import { LatencyBackend } from '../pipeline/latency.js';
import { Puller } from '../pipeline/puller.js';
import type { PullPriority } from '../pipeline/pull-priority.js';
import { Pusher } from '../pipeline/pusher.js';
import { SyncedReadWriterAt } from '../pipeline/synced.js';
import type { Backend } from '../pipeline/types.js';
import { BLOCK_SIZE, fsyncDevice, openDeviceStack, resolveDirectMountOptions } from './direct.js';
import { CacheState } from './cache-state.js';
import { hotRangesPriority, loadHotRanges } from './hot-ranges.js';
import type { ResolvedManagedMountOptions } from './managed-options.js';
import { ManagedBackend, RemoteStage, WriteMarks } from './managed-stages.js';
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

interface UndoStep {
  readonly what: string;
  readonly run: () => Promise<unknown>;
}

/** The stages, top-down (see the file comment); `attach` is the device, last. */
export async function openManagedStack(options: ResolvedManagedMountOptions, log: Logger, events: EventEmitter<ManagedMountEvents>, attach: AttachDevice = attachDevice): Promise<ManagedStack> {
  const { chunkSize, readOnly } = options;
  const undo: UndoStep[] = [];
  const report = (err: unknown): void => void (events.listenerCount('error') > 0 && events.emit('error', err));
  try {
    const opened = options.remote ?? (await openBackend(options.remoteUri!, { ...(options.size !== undefined ? { size: options.size } : {}), log }));
    undo.unshift({ what: 'close the remote', run: () => opened.close() });
    const size = checkRemote(opened, options);
    const remote = options.latencyMs > 0 ? new LatencyBackend(opened, { readLatencyMs: options.latencyMs, writeLatencyMs: options.latencyMs }) : opened;
    const remoteStage = new RemoteStage(remote, chunkSize);
    const remoteId = options.remoteId ?? (options.remoteUri !== undefined ? redactUri(options.remoteUri) : '');
    const state = options.cache === 'memory' ? undefined : await CacheState.load(options.cache, { size, chunkSize, remoteId }, {
      reset: options.resetCache, intervalMs: options.stateIntervalMs, onError: report, log,
    });
    const local = options.cache === 'memory' ? new MemoryBackend({ size, chunkSize }) : await FileBackend.open(options.cache, { size, create: true });
    undo.unshift({ what: 'close the cache', run: () => local.close() });
    const pusher = options.pushWorkers > 0 ? new Pusher(local, remoteStage, { chunkSize, size, workers: options.pushWorkers, intervalMs: options.pushIntervalMs, log }) : undefined;
    const onChunkIsLocal = (off: number): void => {
      pusher?.markPushable(off);
      state?.noteChange();
      options.onChunkIsLocal?.(off);
      if (events.listenerCount('progress') > 0) events.emit('progress', { localChunks: synced.localCount, totalChunks: puller.totalChunks, pulledBytes: remoteStage.pulledBytes });
    };
    const synced = new SyncedReadWriterAt(remoteStage, pusher ?? local, { chunkSize, size, onChunkIsLocal, onError: report });
    const marks = new WriteMarks(synced, { chunkSize, size, pusher, state });
    const arbitrary = new ArbitraryReadWriterAt(marks, { chunkSize, size });
    const puller = new Puller(synced, { chunkSize, size, workers: options.pullWorkers, priority: await pullPriority(options), log });
    const restored = state?.restored;
    if (restored !== undefined && !restored.fresh) {
      const localOffsets = restored.local.map((i) => i * chunkSize);
      synced.markAsLocal(localOffsets);
      if (pusher !== undefined) {
        for (const off of localOffsets) pusher.markPushable(off);
        pusher.markDirty(restored.dirty.map((i) => i * chunkSize));
      } else {
        marks.markWritten(restored.dirty);
      }
    }
    if (state !== undefined) {
      await state.open({
        fillLocal: (bytes) => {
          for (let i = 0; i < bytes.length; i++) if (synced.isLocal(i * chunkSize)) bytes[i] = 1;
        },
        fillDirty: (bytes) => {
          if (pusher !== undefined) for (const off of pusher.dirtyOffsets()) bytes[off / chunkSize] = 1;
          remoteStage.fillUnsynced(bytes);
          marks.fillWritten(bytes);
        },
        syncCache: () => local.sync(),
      });
      undo.unshift({ what: 'close the cache state', run: () => state.close() });
    }
    if (pusher !== undefined) {
      pusher.on('push', () => state?.noteChange());
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
    const device = await attach(new ManagedBackend(arbitrary, size, readOnly, flush), options, log);
    const parts = { options, log, events, remote: opened, remoteStage, local, state, pusher, synced, marks, puller, device };
    return new ManagedStack(parts, remoteStage.pulledBytes, restored?.local.length ?? 0);
  } catch (err) {
    const failures = await runSteps(undo, log);
    if (failures.length === 0) throw err;
    throw new AggregateError([err, ...failures], `${(err as Error).message} (and ${failures.length} cleanup step(s) failed)`, { cause: err });
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

async function runSteps(steps: readonly UndoStep[], log: Logger): Promise<unknown[]> {
  const failures: unknown[] = [];
  for (const step of steps) {
    try {
      await step.run();
    } catch (err) {
      log.error({ err }, `managed mount: failed to ${step.what}: ${(err as Error).message}`);
      failures.push(...(err instanceof AggregateError ? err.errors : [err]));
    }
  }
  return failures;
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
  readonly synced: SyncedReadWriterAt;
  readonly marks: WriteMarks;
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
    const { synced, pusher, marks, remoteStage, puller, options } = this.#p;
    return Object.freeze({
      size: this.size,
      chunkSize: options.chunkSize,
      totalChunks: puller.totalChunks,
      localChunks: synced.localCount,
      dirtyChunks: pusher !== undefined ? pusher.dirtyOffsets().length : marks.writtenChunks,
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
    const failures = await runSteps(steps, log);
    if (failures.length > 0) {
      throw new AggregateError(failures, `closing the managed mount of ${this.path}: ${failures.map((e) => (e as Error).message).join('; ')}`);
    }
    log.info({ device: this.path, ...this.stats() }, 'managed mount closed');
  }

  #report(err: unknown, message: string | undefined): void {
    if (message !== undefined) this.#p.log.error({ err }, message);
    if (this.#p.events.listenerCount('error') > 0) this.#p.events.emit('error', err);
  }
}
