/**
 * ManagedPathMount: a remote as a block device path, served from a local cache that a puller
 * fills in the background and a pusher writes back (managed.ts has the stages). `open()` resolves
 * with the device path once the device is ready (and, with pullFirst, once every chunk is local);
 * subscribe to `events` before open() to see the pull progress from the start.
 *
 * The NBD server runs on this thread's event loop: use the device from other processes, or
 * asynchronously from this one (never with synchronous I/O from this thread).
 */
import { EventEmitter } from 'node:events';
import { ClosedError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import { openManagedStack, type AttachDevice, type ManagedMountEvents, type ManagedMountStats, type ManagedStack } from './managed.js';
import { resolveManagedMountOptions, type ManagedMountOptions, type ResolvedManagedMountOptions } from './managed-options.js';
import type { ResolvedTransport } from './transport.js';

export type ManagedPathMountOptions = ManagedMountOptions;

export class ManagedPathMount {
  readonly options: ResolvedManagedMountOptions;
  /** 'progress' and 'error' (background failures, already logged). */
  readonly events = new EventEmitter<ManagedMountEvents>();
  readonly #log: Logger;
  readonly #attach: AttachDevice | undefined;
  #opening: Promise<ManagedStack> | undefined;
  #stack: ManagedStack | undefined;
  #closing: Promise<void> | undefined;

  /** `attach` replaces the device (tests drive the stack without a kernel). */
  constructor(options: ManagedPathMountOptions, attach?: AttachDevice) {
    this.options = resolveManagedMountOptions(options);
    this.#log = (options.log ?? silentLogger).child({ component: 'managed-mount' });
    this.#attach = attach;
  }

  /** Opens the remote and the cache, starts pulling, attaches the device; resolves with its path. */
  async open(): Promise<string> {
    if (this.#closing !== undefined) throw new ClosedError('managed path mount');
    this.#opening ??= openManagedStack(this.options, this.#log, this.events, this.#attach).then((stack) => (this.#stack = stack));
    return (await this.#opening).path;
  }

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

  stats(): ManagedMountStats {
    return this.#need().stats();
  }

  /** onBeforeSync, fsync of the device, push every dirty chunk; resolves when the remote has them. */
  sync(): Promise<void> {
    if (this.#closing !== undefined) return Promise.reject(new ClosedError('managed path mount'));
    return this.#need().sync();
  }

  /** Final sync, onBeforeClose, detach, stop workers, close cache and remote; idempotent. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      const stack = await this.#opening?.catch(() => undefined);
      await stack?.close();
    })();
    return this.#closing;
  }

  #need(): ManagedStack {
    if (this.#stack === undefined) throw new ClosedError('managed path mount (not open)');
    return this.#stack;
  }
}
