/**
 * ManagedFileMount: a managed mount opened as a file handle on its device. Its onBeforeSync
 * fsyncs the handle (before the caller's own hook), and its onBeforeClose syncs and closes the
 * handle before the device is detached (after the caller's own hook).
 *
 * The handle's I/O runs on the libuv threadpool, and so does a file cache's: keep the calls in
 * flight on the handle below UV_THREADPOOL_SIZE (default 4), as with DirectFileMount.
 */
import type { FileHandle } from 'node:fs/promises';
import { ClosedError } from '../errors.js';
import type { AttachDevice, ManagedMountStats } from './managed.js';
import type { ManagedMountOptions } from './managed-options.js';
import { ManagedPathMount } from './managed-path.js';
import { openDeviceFile } from './open-device-file.js';

export interface ManagedFileMountOptions extends ManagedMountOptions {
  /** Open the device with O_DIRECT (aligned buffers only); default false. */
  readonly oDirect?: boolean;
}

export class ManagedFileMount {
  readonly oDirect: boolean;
  readonly #mount: ManagedPathMount;
  #opening: Promise<FileHandle> | undefined;
  #handle: FileHandle | undefined;
  #closing: Promise<void> | undefined;

  constructor(options: ManagedFileMountOptions, attach?: AttachDevice) {
    const { onBeforeSync, onBeforeClose } = options;
    this.oDirect = options.oDirect ?? false;
    this.#mount = new ManagedPathMount({
      ...options,
      onBeforeSync: async () => {
        await onBeforeSync?.();
        if (this.#handle !== undefined && !this.#mount.options.readOnly) await this.#handle.sync();
      },
      onBeforeClose: async () => {
        await onBeforeClose?.();
        const handle = this.#handle;
        this.#handle = undefined;
        await handle?.close();
      },
    }, attach);
  }

  get events(): ManagedPathMount['events'] {
    return this.#mount.events;
  }

  /** Opens the mount and the device; resolves with the handle when it is ready. */
  open(): Promise<FileHandle> {
    if (this.#closing !== undefined) return Promise.reject(new ClosedError('managed file mount'));
    this.#opening ??= this.#open();
    return this.#opening;
  }

  async #open(): Promise<FileHandle> {
    this.#handle = await openDeviceFile(this.#mount, this.#mount.options.readOnly, this.oDirect, () => undefined /* the open error is the one to report */);
    return this.#handle;
  }

  get path(): string {
    return this.#mount.path;
  }

  get closed(): Promise<Error | undefined> {
    return this.#mount.closed;
  }

  stats(): ManagedMountStats {
    return this.#mount.stats();
  }

  /** fsync on the handle (onBeforeSync), then the managed sync: the remote holds every write. */
  sync(): Promise<void> {
    return this.#mount.sync();
  }

  /** Final sync, closes the handle, detaches; idempotent. */
  close(): Promise<void> {
    this.#closing ??= this.#opening === undefined ? this.#mount.close() : this.#opening.then(() => this.#mount.close(), () => this.#mount.close());
    return this.#closing;
  }
}
