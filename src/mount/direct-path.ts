/**
 * DirectPathMount: a backend as a block device path (/dev/nbdN, or /dev/loopN through fuse-loop).
 * `open()` resolves with the path once the device is ready for I/O; the caller (mkfs, mount, dd)
 * does the rest. The NBD server runs on this thread's event loop: use the device from other
 * processes, or asynchronously from this one (never with synchronous I/O from this thread).
 */
import { ClosedError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import { fsyncDevice, openDeviceStack, resolveDirectMountOptions, type DeviceStack, type DirectMountOptions, type ResolvedDirectMountOptions } from './direct.js';
import type { ResolvedTransport } from './transport.js';

export type DirectPathMountOptions = DirectMountOptions;

export class DirectPathMount {
  readonly options: ResolvedDirectMountOptions;
  readonly #log: Logger;
  #opening: Promise<DeviceStack> | undefined;
  #stack: DeviceStack | undefined;
  #closing: Promise<void> | undefined;

  constructor(options: DirectPathMountOptions) {
    this.options = resolveDirectMountOptions(options);
    this.#log = options.log ?? silentLogger;
  }

  /** Attaches the device; resolves with its path when it is ready. Calling it again returns the same path. */
  async open(): Promise<string> {
    if (this.#closing !== undefined) throw new ClosedError('direct path mount');
    this.#opening ??= openDeviceStack(this.options, this.#log).then((stack) => (this.#stack = stack));
    return (await this.#opening).path;
  }

  /** The device path (after open()). */
  get path(): string {
    return this.#need().path;
  }

  get transport(): ResolvedTransport {
    return this.#need().transport;
  }

  get size(): number {
    return this.#need().size;
  }

  /** Resolves with an Error when the device goes away on its own, with undefined after close(). */
  get closed(): Promise<Error | undefined> {
    return this.#need().closed;
  }

  /** fsync on the device (its dirty pages reach the backend), then backend.sync(). */
  async sync(): Promise<void> {
    const stack = this.#need();
    if (!this.options.readOnly) await fsyncDevice(stack.path);
    await stack.sync();
  }

  /** Flushes, detaches, closes the server and the backend; idempotent; every failure in one AggregateError. */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    const stack = await this.#opening?.catch(() => undefined);
    if (stack === undefined) return;
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

  #need(): DeviceStack {
    if (this.#stack === undefined) throw new ClosedError('direct path mount (not open)');
    return this.#stack;
  }
}
