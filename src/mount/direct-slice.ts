/**
 * DirectSliceMount: a backend as memory. The device is mmap'ed (MAP_SHARED) into a Buffer and
 * locked with mlock, so reads and writes are plain memory accesses; `sync()` is msync.
 *
 * A page fault on the mapping blocks the faulting thread until the NBD server answers, so the
 * server (and the backend, opened from its URI) runs in a worker thread (direct-slice-worker.ts):
 * the thread that touches the memory never serves it. Hence only `backendUri`, not `backend`.
 *
 * The Buffer is valid until close(): touching it afterwards kills the process (SIGSEGV).
 */
import { constants, open, type FileHandle } from 'node:fs/promises';
import { Worker } from 'node:worker_threads';
import { ClosedError, R3mapError, UsageError, type R3mapErrorCode } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import { runStepsOrThrow, type UndoStep } from '../util/undo.js';
import { MAP_SHARED, mlock, mmap, msync, munmap, PROT_READ, PROT_WRITE, viewOf, type Pointer } from '../kernel/ffi.js';
import { resolveDirectMountOptions, type DirectMountOptions } from './direct.js';
import type { SerializedError, SliceWorkerData, SliceWorkerReply, SliceWorkerRequest } from './direct-slice-worker.js';

export interface DirectSliceMountOptions extends Omit<DirectMountOptions, 'backend'> {
  readonly backendUri: string;
  /** mlock the mapping (every page is read in at open); default true. A refusal is logged, see `locked`. */
  readonly lock?: boolean;
}

interface Mapping {
  readonly handle: FileHandle;
  readonly addr: Pointer;
  readonly length: number;
  readonly buffer: Buffer;
}

export class DirectSliceMount {
  readonly options: DirectSliceMountOptions;
  readonly closed: Promise<Error | undefined>;
  readonly #log: Logger;
  #resolveClosed!: (err: Error | undefined) => void;
  #worker: Worker | undefined;
  #path = '';
  #mapping: Mapping | undefined;
  #locked = false;
  #nextId = 1;
  readonly #pending = new Map<number, { resolve: () => void; reject: (err: Error) => void }>();
  #opening: Promise<Buffer> | undefined;
  #closing: Promise<void> | undefined;

  constructor(options: DirectSliceMountOptions) {
    if ((options as DirectMountOptions).backend !== undefined) {
      throw new UsageError('a slice mount opens its backend inside its server thread: pass backendUri, not backend');
    }
    const { log, ...rest } = options;
    resolveDirectMountOptions(rest);
    this.options = Object.freeze({ ...rest });
    this.#log = log ?? silentLogger;
    this.closed = new Promise((resolve) => (this.#resolveClosed = resolve));
  }

  get path(): string {
    return this.#path;
  }

  /** Whether mlock took. */
  get locked(): boolean {
    return this.#locked;
  }

  /** Attaches the device in the worker, maps it, locks it; resolves with the memory. */
  open(): Promise<Buffer> {
    if (this.#closing !== undefined) return Promise.reject(new ClosedError('direct slice mount'));
    this.#opening ??= this.#open();
    return this.#opening;
  }

  async #open(): Promise<Buffer> {
    const { lock, ...options } = this.options;
    const data: SliceWorkerData = { options, logLevel: this.#log.level as SliceWorkerData['logLevel'] };
    const worker = new Worker(new URL('./direct-slice-worker.js', import.meta.url), { workerData: data });
    this.#worker = worker;
    const ready = await new Promise<{ path: string; size: number }>((resolve, reject) => {
      worker.on('message', (msg: SliceWorkerReply) => this.#onMessage(msg, resolve, reject));
      worker.on('error', (err) => {
        this.#log.error({ err }, `the slice mount's server thread failed: ${err.message}`);
        reject(err);
      });
      worker.once('exit', (code) => {
        reject(new Error(`the slice mount's server thread exited (code ${code}) before the device was ready`));
        this.#onWorkerExit(code);
      });
    });
    this.#path = ready.path;
    try {
      this.#mapping = await this.#map(ready.path, ready.size, lock ?? true);
    } catch (err) {
      await this.#request('close').catch((closeErr: unknown) => this.#log.error({ err: closeErr }, 'detaching after a failed mmap failed'));
      throw err;
    }
    return this.#mapping.buffer;
  }

  async #map(path: string, length: number, lock: boolean): Promise<Mapping> {
    const readOnly = this.options.readOnly ?? false;
    const handle = await open(path, readOnly ? constants.O_RDONLY : constants.O_RDWR);
    let addr: Pointer;
    try {
      addr = mmap(length, readOnly ? PROT_READ : PROT_READ | PROT_WRITE, MAP_SHARED, handle.fd, 0, path);
    } catch (err) {
      await handle.close();
      throw err;
    }
    if (lock) {
      try {
        mlock(addr, length);
        this.#locked = true;
      } catch (err) {
        this.#log.warn({ err, device: path }, 'mlock refused (RLIMIT_MEMLOCK?); the mapping stays unlocked');
      }
    }
    this.#log.info({ device: path, length, locked: this.#locked }, 'slice mapped');
    return { handle, addr, length, buffer: viewOf(addr, length) };
  }

  #onMessage(msg: SliceWorkerReply, resolve: (r: { path: string; size: number }) => void, reject: (err: Error) => void): void {
    switch (msg.type) {
      case 'ready':
        resolve(msg);
        return;
      case 'failed':
        reject(deserializeError(msg.error));
        return;
      case 'device-closed':
        if (msg.error !== undefined) this.#log.error({ err: msg.error, device: this.#path }, 'the device went away');
        this.#resolveClosed(msg.error && deserializeError(msg.error));
        return;
      case 'done': {
        const waiter = this.#pending.get(msg.id);
        this.#pending.delete(msg.id);
        if (msg.error === undefined) waiter?.resolve();
        else waiter?.reject(deserializeError(msg.error));
      }
    }
  }

  #onWorkerExit(code: number): void {
    for (const waiter of this.#pending.values()) waiter.reject(new Error(`the slice mount's server thread exited (code ${code})`));
    this.#pending.clear();
    this.#resolveClosed(this.#closing === undefined ? new Error(`the slice mount's server thread exited (code ${code})`) : undefined);
  }

  #request(type: SliceWorkerRequest['type']): Promise<void> {
    const worker = this.#worker;
    if (worker === undefined) return Promise.reject(new ClosedError('direct slice mount (not open)'));
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      worker.postMessage({ type, id } satisfies SliceWorkerRequest);
    });
  }

  /** msync(MS_SYNC) of the whole mapping, then backend.sync() in the worker. */
  async sync(): Promise<void> {
    const m = this.#mapping;
    if (m === undefined) throw new ClosedError('direct slice mount (not open)');
    if (!(this.options.readOnly ?? false)) msync(m.addr, m.length, undefined, this.#path);
    await this.#request('sync');
  }

  /** msync, munmap, close the device, detach and close the backend in the worker; idempotent. */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    await this.#opening?.catch(() => undefined);
    const steps: UndoStep[] = [];
    const m = this.#mapping;
    this.#mapping = undefined;
    if (m !== undefined) {
      if (!(this.options.readOnly ?? false)) steps.push({ what: `msync the mapping of ${this.#path}`, run: async () => msync(m.addr, m.length, undefined, this.#path) });
      steps.push({ what: 'munmap the mapping', run: async () => munmap(m.addr, m.length) });
      steps.push({ what: 'close the device file', run: () => m.handle.close() });
    }
    const worker = this.#worker;
    if (worker !== undefined && this.#path !== '') {
      const exited = new Promise<void>((resolve) => worker.once('exit', () => resolve()));
      steps.push({
        what: 'close the mount in its server thread',
        run: async () => {
          try {
            await this.#request('close');
          } finally {
            await exited;
          }
        },
      });
    }
    await runStepsOrThrow(steps, this.#log, 'slice mount', `closing the slice mount of ${this.#path}`);
  }
}

function deserializeError(error: SerializedError): Error {
  if (error.code !== undefined && error.code.startsWith('ERR_')) {
    const err = error.code === 'ERR_USAGE' ? new UsageError(error.message) : new R3mapError(error.code as R3mapErrorCode, error.message);
    return err;
  }
  const err = new Error(error.message);
  err.name = error.name;
  return err;
}
