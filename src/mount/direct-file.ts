/**
 * DirectFileMount: a backend as an opened block device (a FileHandle), optionally with O_DIRECT
 * (then buffers, offsets and lengths must be multiples of 4096; Node's Buffers usually are not
 * aligned, so O_DIRECT suits callers that bring their own aligned memory).
 *
 * The NBD server runs on this thread's event loop and the handle's I/O runs on the libuv
 * threadpool. A backend that needs the threadpool too (file, dir) can starve: keep the calls in
 * flight on the handle below UV_THREADPOOL_SIZE (default 4), or use DirectSliceMount, whose
 * server runs on its own thread.
 */
import type { FileHandle } from 'node:fs/promises';
import { ClosedError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import { runStepsOrThrow, type UndoStep } from '../util/undo.js';
import { DirectPathMount } from './direct-path.js';
import type { DirectMountOptions } from './direct.js';
import { openDeviceFile } from './open-device-file.js';

export interface DirectFileMountOptions extends DirectMountOptions {
  /** Open the device with O_DIRECT (no page cache); default false. */
  readonly oDirect?: boolean;
}

export class DirectFileMount {
  readonly oDirect: boolean;
  readonly #mount: DirectPathMount;
  readonly #log: Logger;
  #opening: Promise<FileHandle> | undefined;
  #handle: FileHandle | undefined;
  #closing: Promise<void> | undefined;

  constructor(options: DirectFileMountOptions) {
    this.#mount = new DirectPathMount(options);
    this.oDirect = options.oDirect ?? false;
    this.#log = options.log ?? silentLogger;
  }

  /** Attaches the device and opens it; resolves with the handle when it is ready. */
  open(): Promise<FileHandle> {
    if (this.#closing !== undefined) return Promise.reject(new ClosedError('direct file mount'));
    this.#opening ??= this.#open();
    return this.#opening;
  }

  async #open(): Promise<FileHandle> {
    this.#handle = await openDeviceFile(this.#mount, this.#mount.options.readOnly, this.oDirect, (closeErr: unknown) => this.#log.error({ err: closeErr }, 'closing the mount after a failed open failed'));
    return this.#handle;
  }

  get path(): string {
    return this.#mount.path;
  }

  /** Resolves with an Error when the device goes away on its own, with undefined after close(). */
  get closed(): Promise<Error | undefined> {
    return this.#mount.closed;
  }

  /** fsync on the handle, then backend.sync(). */
  async sync(): Promise<void> {
    if (this.#handle === undefined) throw new ClosedError('direct file mount (not open)');
    await this.#handle.sync();
    await this.#mount.sync();
  }

  /** Syncs and closes the handle, then closes the mount; idempotent; every failure in one AggregateError. */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    await this.#opening?.catch(() => undefined);
    const steps: UndoStep[] = [];
    const handle = this.#handle;
    if (handle !== undefined) {
      if (!this.#mount.options.readOnly) steps.push({ what: 'sync the device file', run: () => handle.sync() });
      steps.push({ what: 'close the device file', run: () => handle.close() });
    }
    steps.push({ what: 'close the mount', run: () => this.#mount.close() });
    await runStepsOrThrow(steps, this.#log, 'direct file mount', 'closing the direct file mount');
  }
}
