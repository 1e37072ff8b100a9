/**
 * Direct mounts, composed in one place. `openDeviceStack()` lists the stages top-down:
 *
 *   backend (opened from its URI through compose.ts, or the caller's)
 *     → LatencyBackend (latencyMs > 0: a simulated round trip, tests and benchmarks)
 *     → whole chunks (ArbitraryReadWriterAt; only with a chunk size, default 'none')
 *     → NBD server with one export
 *     → transport: the kernel NBD client (/dev/nbdN) or nbdfuse + losetup (/dev/loopN)
 *     → device path
 *
 * The stack owns everything it opened, including a backend the caller passed in: `close()`
 * detaches the device, closes the server (which syncs the backend) and closes the backend, in
 * that order, and reports every failure in one AggregateError. When a stage fails during open,
 * the stages below it are closed before the error is thrown, so nothing stays attached.
 *
 * The frontends (direct-path.ts, direct-file.ts, direct-slice.ts) add what they do with the
 * device; direct-slice runs this stack in a worker thread.
 */
import { open } from 'node:fs/promises';
import { UsageError } from '../errors.js';
import type { Logger } from '../log.js';
import { attachNbdDevice } from '../kernel/nbd-device.js';
import { NbdServer } from '../nbd/server.js';
import { ArbitraryReadWriterAt } from '../pipeline/arbitrary.js';
import { LatencyBackend } from '../pipeline/latency.js';
import type { Backend } from '../pipeline/types.js';
import { checkChunkSize } from '../util/chunks.js';
import { runStepsOrThrow, undoAndThrow, type UndoStep } from '../util/undo.js';
import { composeBackend, openComposed } from './compose.js';
import { attachFuseLoop } from './fuse-loop.js';
import { chooseTransport, resolveTransport, type AttachedDevice, type ResolvedTransport, type Transport } from './transport.js';

/** The device's logical block size; the size of a direct mount must be a multiple of it. */
export const BLOCK_SIZE = 4096;
const EXPORT_NAME = 'r3map';
/**
 * How long a new /dev/nbdN may take to show its size. Milliseconds on hardware; under emulation
 * (the kernel test VM on a loaded host) attachNbdDevice's 10 s default was seen to run out.
 */
const NBD_READY_TIMEOUT_MS = 60_000;

export interface DirectMountOptions {
  /** What to mount, as a backend URI (memory, file:///..., dir:///...). Give this or `backend`. */
  readonly backendUri?: string;
  /** An opened backend; the mount takes it over and closes it on close(). */
  readonly backend?: Backend;
  /** Bytes; needed for memory and new files. A multiple of 4096. */
  readonly size?: number;
  readonly readOnly?: boolean;
  /**
   * The unit the mount reads and writes the backend in, as in a managed mount: the backend only
   * sees whole, aligned chunks of this many bytes. 'none' (the default): no chunking layer, the
   * backend sees the requests as they come.
   */
  readonly chunkSize?: number | 'none';
  /** Add this many milliseconds to every backend call (a simulated round trip); default 0. */
  readonly latencyMs?: number;
  /** Default 'auto': nbd where the kernel has the driver, fuse-loop otherwise. */
  readonly transport?: Transport;
  /** A specific /dev/nbdN or /dev/loopN instead of the first free one. */
  readonly device?: string;
  /** fuse-loop only: ask for loop direct I/O; default true. */
  readonly loopDirectIo?: boolean;
  readonly log?: Logger;
}

export interface ResolvedDirectMountOptions {
  readonly backendUri: string | undefined;
  readonly backend: Backend | undefined;
  readonly size: number | undefined;
  readonly readOnly: boolean;
  readonly chunkSize: number | 'none';
  readonly latencyMs: number;
  readonly transport: Transport;
  readonly device: string | undefined;
  readonly loopDirectIo: boolean;
}

/** Validates and freezes the options (never touches the caller's object). */
export function resolveDirectMountOptions(options: DirectMountOptions): ResolvedDirectMountOptions {
  if ((options.backendUri === undefined) === (options.backend === undefined)) {
    throw new UsageError('a direct mount needs exactly one of backendUri and backend');
  }
  const chunkSize = options.chunkSize ?? 'none';
  if (chunkSize === 0) throw new UsageError("a chunk size of 0 is not a size: say 'none' (--chunk-size none) for no chunking layer");
  if (chunkSize !== 'none') checkChunkSize(chunkSize, 'the chunk size of a direct mount');
  const latencyMs = options.latencyMs ?? 0;
  if (!Number.isFinite(latencyMs) || latencyMs < 0) throw new UsageError(`latencyMs must be a number of milliseconds >= 0, got ${String(latencyMs)}`);
  if (options.size !== undefined) checkSize(options.size);
  const transport = resolveTransport(options.transport);
  return Object.freeze({
    backendUri: options.backendUri,
    backend: options.backend,
    size: options.size,
    readOnly: options.readOnly ?? options.backend?.readOnly ?? false,
    chunkSize,
    latencyMs,
    transport,
    device: options.device,
    loopDirectIo: options.loopDirectIo ?? true,
  });
}

function checkSize(size: number): void {
  if (!Number.isSafeInteger(size) || size <= 0 || size % BLOCK_SIZE !== 0) {
    throw new UsageError(`size ${size} is not a positive multiple of the block size ${BLOCK_SIZE}`);
  }
}

export interface DeviceStack {
  /** /dev/nbdN or /dev/loopN, ready for I/O. */
  readonly path: string;
  readonly transport: ResolvedTransport;
  readonly size: number;
  /** Resolves with an Error when the device goes away without close(), undefined after close(). */
  readonly closed: Promise<Error | undefined>;
  /** Makes every write the backend has seen durable (backend.sync()). */
  sync(): Promise<void>;
  /** Detaches, closes the server and the backend; idempotent; every failure in one AggregateError. */
  close(): Promise<void>;
}

/** The stages, top-down. */
export async function openDeviceStack(options: ResolvedDirectMountOptions, log: Logger): Promise<DeviceStack> {
  const transport = chooseTransport(options.transport, log, options.device);
  const undo: UndoStep[] = [];
  try {
    const backend = options.backend !== undefined ? composeBackend(options.backend) : await openComposed(options.backendUri!, { ...(options.size !== undefined ? { size: options.size } : {}), readOnly: options.readOnly });
    undo.unshift({ what: 'close the backend', run: () => backend.close() });
    checkSize(backend.size);
    if (options.size !== undefined && backend.size !== options.size) {
      throw new UsageError(`the backend has ${backend.size} bytes, not the ${options.size} asked for`);
    }
    const slowed = options.latencyMs > 0 ? withLatency(backend, options.latencyMs, log) : backend;
    const next = options.chunkSize !== 'none' ? wholeChunks(slowed, options.chunkSize) : slowed;
    const server = new NbdServer({ exports: [{ name: EXPORT_NAME, backend: next, readOnly: options.readOnly }], log });
    undo.unshift({ what: 'close the NBD server', run: () => server.close() });
    const device = await attach(transport, server, backend.size, options, log);
    undo.unshift({ what: `detach ${device.path}`, run: () => device.detach() });
    log.info({ device: device.path, transport, size: backend.size, chunkSize: options.chunkSize, readOnly: options.readOnly }, `direct mount ready on ${device.path}`);
    return new OpenStack(device.path, transport, backend, device.closed, undo, log);
  } catch (err) {
    return undoAndThrow(err, undo, log, 'direct mount');
  }
}

/** The backend behind a simulated round trip on every call (its close() closes the backend). */
function withLatency(backend: Backend, latencyMs: number, log: Logger): Backend {
  log.info({ latencyMs }, `simulated backend latency: ${latencyMs} ms per call`);
  return new LatencyBackend(backend, { readLatencyMs: latencyMs, writeLatencyMs: latencyMs });
}

function attach(transport: ResolvedTransport, server: NbdServer, size: number, options: ResolvedDirectMountOptions, log: Logger): Promise<AttachedDevice> {
  const device = options.device !== undefined ? { device: options.device } : {};
  if (transport === 'fuse-loop') {
    return attachFuseLoop(server, { size, readOnly: options.readOnly, exportName: EXPORT_NAME, directIo: options.loopDirectIo, ...device, log });
  }
  return attachNbdDevice((socket) => server.serveAttached(socket, EXPORT_NAME), {
    size,
    blockSize: BLOCK_SIZE,
    transmissionFlags: server.transmissionFlagsOf(EXPORT_NAME),
    readyTimeoutMs: NBD_READY_TIMEOUT_MS,
    ...device,
    log,
  });
}

/** The backend seen through ArbitraryReadWriterAt: any range in, whole chunks out. */
function wholeChunks(backend: Backend, chunkSize: number): Backend {
  const chunks = new ArbitraryReadWriterAt(backend, { chunkSize, size: backend.size });
  return {
    size: backend.size,
    readOnly: backend.readOnly ?? false,
    maxInFlight: backend.maxInFlight ?? 0,
    canMultiConn: backend.canMultiConn ?? false,
    readAt: (buf, off) => chunks.readAt(buf, off),
    writeAt: (buf, off) => chunks.writeAt(buf, off),
    sync: () => backend.sync(),
    close: () => backend.close(),
  };
}

class OpenStack implements DeviceStack {
  readonly path: string;
  readonly transport: ResolvedTransport;
  readonly size: number;
  readonly closed: Promise<Error | undefined>;
  readonly #backend: Backend;
  readonly #undo: readonly UndoStep[];
  readonly #log: Logger;
  #closing: Promise<void> | undefined;

  constructor(path: string, transport: ResolvedTransport, backend: Backend, deviceClosed: Promise<Error | undefined>, undo: readonly UndoStep[], log: Logger) {
    this.path = path;
    this.transport = transport;
    this.size = backend.size;
    this.#backend = backend;
    this.#undo = [...undo];
    this.#log = log;
    this.closed = deviceClosed;
  }

  sync(): Promise<void> {
    return this.#backend.sync();
  }

  close(): Promise<void> {
    this.#closing ??= runStepsOrThrow(this.#undo, this.#log, 'direct mount', `closing the mount of ${this.path}`).then(() => {
      this.#log.info({ device: this.path }, 'direct mount closed');
    });
    return this.#closing;
  }
}

/** fsync(2) on the device: the kernel writes its dirty pages and sends a flush down the transport. */
export async function fsyncDevice(path: string): Promise<void> {
  const handle = await open(path, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
