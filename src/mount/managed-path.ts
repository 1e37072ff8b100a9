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
import { silentLogger, type Logger } from '../log.js';
import { openManagedStack, type AttachDevice, type ManagedMountEvents, type ManagedMountStats, type ManagedStack } from './managed.js';
import { resolveManagedMountOptions, type ManagedMountOptions, type ResolvedManagedMountOptions } from './managed-options.js';
import { PathMount } from './path-mount.js';

export type ManagedPathMountOptions = ManagedMountOptions;

export class ManagedPathMount extends PathMount<ManagedStack> {
  readonly options: ResolvedManagedMountOptions;
  /** 'progress' and 'error' (background failures, already logged). */
  readonly events = new EventEmitter<ManagedMountEvents>();
  readonly #log: Logger;
  readonly #attach: AttachDevice | undefined;

  /** `attach` replaces the device (tests drive the stack without a kernel). */
  constructor(options: ManagedPathMountOptions, attach?: AttachDevice) {
    super('managed path mount');
    this.options = resolveManagedMountOptions(options);
    this.#log = (options.log ?? silentLogger).child({ component: 'managed-mount' });
    this.#attach = attach;
  }

  stats(): ManagedMountStats {
    return this.stack().stats();
  }

  /** onBeforeSync, fsync of the device, push every dirty chunk; resolves when the remote has them. */
  async sync(): Promise<void> {
    this.assertNotClosing();
    return this.stack().sync();
  }

  /** Opens the remote and the cache, starts pulling, attaches the device. */
  protected openStack(): Promise<ManagedStack> {
    return openManagedStack(this.options, this.#log, this.events, this.#attach);
  }

  /** Final sync, onBeforeClose, detach, stop workers, close cache and remote. */
  protected closeStack(stack: ManagedStack): Promise<void> {
    return stack.close();
  }
}
