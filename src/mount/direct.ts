/**
 * Direct mounts, composed in one place. `openDeviceStack()` lists the stages top-down:
 *
 *   backend (opened from its URI, or the caller's)
 *     → whole chunks (ArbitraryReadWriterAt, only when chunkSize > 0)
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
import { openBackend } from '../backends/open.js';
import { attachNbdDevice } from '../kernel/nbd-device.js';
import { NbdServer } from '../nbd/server.js';
import { ArbitraryReadWriterAt } from '../pipeline/arbitrary.js';
import type { Backend } from '../pipeline/types.js';
import { attachFuseLoop } from './fuse-loop.js';
import { chooseTransport, isTransport, type ResolvedTransport, type Transport } from './transport.js';

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
  /** > 0: the backend only sees whole chunks of this many bytes; 0 (default): no chunking layer. */
  readonly chunkSize?: number;
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
  readonly chunkSize: number;
  readonly transport: Transport;
  readonly device: string | undefined;
  readonly loopDirectIo: boolean;
}

/** Validates and freezes the options (never touches the caller's object). */
export function resolveDirectMountOptions(options: DirectMountOptions): ResolvedDirectMountOptions {
  if ((options.backendUri === undefined) === (options.backend === undefined)) {
    throw new UsageError('a direct mount needs exactly one of backendUri and backend');
  }
  const chunkSize = options.chunkSize ?? 0;
  if (!Number.isSafeInteger(chunkSize) || chunkSize < 0) throw new UsageError(`chunk size ${chunkSize} must be a whole number of bytes (0 = no chunking)`);
  if (options.size !== undefined) checkSize(options.size);
  const transport = options.transport ?? 'auto';
  if (!isTransport(transport)) throw new UsageError(`transport '${String(transport)}' is not one of nbd, fuse-loop, auto`);
  return Object.freeze({
    backendUri: options.backendUri,
    backend: options.backend,
    size: options.size,
    readOnly: options.readOnly ?? options.backend?.readOnly ?? false,
    chunkSize,
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

interface UndoStep {
  readonly what: string;
  readonly run: () => Promise<void>;
}

interface Attached {
  readonly path: string;
  readonly closed: Promise<Error | undefined>;
  detach(): Promise<void>;
}

/** The stages, top-down. */
export async function openDeviceStack(options: ResolvedDirectMountOptions, log: Logger): Promise<DeviceStack> {
  const transport = chooseTransport(options.transport, log, options.device);
  const undo: UndoStep[] = [];
  try {
    const backend = options.backend ?? (await openBackend(options.backendUri!, { ...(options.size !== undefined ? { size: options.size } : {}), readOnly: options.readOnly }));
    undo.unshift({ what: 'close the backend', run: () => backend.close() });
    checkSize(backend.size);
    if (options.size !== undefined && backend.size !== options.size) {
      throw new UsageError(`the backend has ${backend.size} bytes, not the ${options.size} asked for`);
    }
    const next = options.chunkSize > 0 ? wholeChunks(backend, options.chunkSize) : backend;
    const server = new NbdServer({ exports: [{ name: EXPORT_NAME, backend: next, readOnly: options.readOnly }], log });
    undo.unshift({ what: 'close the NBD server', run: () => server.close() });
    const device = await attach(transport, server, backend.size, options, log);
    undo.unshift({ what: `detach ${device.path}`, run: () => device.detach() });
    log.info({ device: device.path, transport, size: backend.size, chunkSize: options.chunkSize, readOnly: options.readOnly }, `direct mount ready on ${device.path}`);
    return new OpenStack(device.path, transport, backend, device.closed, undo, log);
  } catch (err) {
    const failures = await runUndo(undo, log);
    if (failures.length === 0) throw err;
    throw new AggregateError([err, ...failures], `${(err as Error).message} (and ${failures.length} cleanup step(s) failed)`, { cause: err });
  }
}

function attach(transport: ResolvedTransport, server: NbdServer, size: number, options: ResolvedDirectMountOptions, log: Logger): Promise<Attached> {
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

async function runUndo(undo: readonly UndoStep[], log: Logger): Promise<unknown[]> {
  const failures: unknown[] = [];
  for (const step of undo) {
    try {
      await step.run();
    } catch (err) {
      log.error({ err }, `direct mount: failed to ${step.what}: ${(err as Error).message}`);
      failures.push(err);
    }
  }
  return failures;
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
    this.#closing ??= runUndo(this.#undo, this.#log).then((failures) => {
      if (failures.length > 0) {
        throw new AggregateError(failures, `closing the mount of ${this.path}: ${failures.map((e) => (e as Error).message).join('; ')}`);
      }
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
