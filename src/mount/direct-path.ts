/**
 * DirectPathMount: a backend as a block device path (/dev/nbdN, or /dev/loopN through fuse-loop).
 * `open()` resolves with the path once the device is ready for I/O; the caller (mkfs, mount, dd)
 * does the rest. The NBD server runs on this thread's event loop: use the device from other
 * processes, or asynchronously from this one (never with synchronous I/O from this thread).
 */
import { silentLogger, type Logger } from '../log.js';
import { fsyncDevice, openDeviceStack, resolveDirectMountOptions, type DeviceStack, type DirectMountOptions, type ResolvedDirectMountOptions } from './direct.js';
import { PathMount } from './path-mount.js';

export type DirectPathMountOptions = DirectMountOptions;

export class DirectPathMount extends PathMount<DeviceStack> {
  readonly options: ResolvedDirectMountOptions;
  readonly #log: Logger;

  constructor(options: DirectPathMountOptions) {
    super('direct path mount');
    this.options = resolveDirectMountOptions(options);
    this.#log = options.log ?? silentLogger;
  }

  /** fsync on the device (its dirty pages reach the backend), then backend.sync(). */
  async sync(): Promise<void> {
    const stack = this.stack();
    if (!this.options.readOnly) await fsyncDevice(stack.path);
    await stack.sync();
  }

  protected openStack(): Promise<DeviceStack> {
    return openDeviceStack(this.options, this.#log);
  }

  /** Flushes, detaches, closes the server and the backend; every failure in one AggregateError. */
  protected async closeStack(stack: DeviceStack): Promise<void> {
    const errors: unknown[] = [];
    if (!this.options.readOnly) {
      await fsyncDevice(stack.path).catch((err: unknown) => {
        this.#log.error({ err, device: stack.path }, 'flushing the device before detaching failed');
        errors.push(err);
      });
    }
    await stack.close().catch((err: unknown) => errors.push(...(err instanceof AggregateError ? err.errors : [err])));
    if (errors.length > 0) throw new AggregateError(errors, `closing ${stack.path}: ${errors.map((e) => (e as Error).message).join('; ')}`);
  }
}
