/**
 * FdCache: a bounded cache of open file handles keyed by name, for DirectoryBackend.
 *
 * Guarantees: at most `maxOpenFiles` handles are open, opening or closing at any moment
 * (0 means no cap). A handle is leased with `acquire` and returned with `release`; only idle
 * handles (no lease) are closed, the least recently released first, so eviction never closes
 * a handle another call is using. Callers that find the cache full wait in FIFO order; every
 * freed slot or idle handle wakes exactly one waiter, and a waiter that does not use it passes
 * it on. Concurrent acquires of one name share a single open. Errors from closing an evicted
 * handle are kept and returned by `takeErrors()`, and by `close()`.
 */
import { ClosedError } from '../errors.js';

export interface Closable {
  close(): Promise<void>;
}

/** Opens `name`; resolves undefined when it is missing and `create` is false. */
export type FdOpener<H> = (name: string, create: boolean) => Promise<H | undefined>;

export interface FdLease<H> {
  readonly name: string;
  readonly handle: H;
}

class Entry<H> {
  readonly name: string;
  handle: H | undefined = undefined;
  ready: Promise<H | undefined> = Promise.resolve(undefined);
  refs = 0;
  constructor(name: string) {
    this.name = name;
  }
}

const toUndefined = (): undefined => undefined;

export class FdCache<H extends Closable> {
  readonly maxOpenFiles: number;
  readonly #opener: FdOpener<H>;
  /** Every entry: opening, leased, idle or being discarded. */
  readonly #entries = new Map<string, Entry<H>>();
  /** Idle entries in release order: the first is the least recently used. */
  readonly #idle = new Map<string, Entry<H>>();
  readonly #closing = new Set<Promise<void>>();
  #waiters: Array<() => void> = [];
  #open = 0;
  #peak = 0;
  #errors: Error[] = [];
  #closed = false;

  constructor(opener: FdOpener<H>, maxOpenFiles: number) {
    this.#opener = opener;
    this.maxOpenFiles = maxOpenFiles;
  }

  /** Handles open, opening or closing now. */
  get openCount(): number {
    return this.#open;
  }

  /** The highest `openCount` seen. */
  get peakOpenCount(): number {
    return this.#peak;
  }

  /** Leases the handle for `name`; undefined when the file is missing and `create` is false. */
  async acquire(name: string, create: boolean): Promise<FdLease<H> | undefined> {
    for (;;) {
      if (this.#closed) throw new ClosedError('file handle cache');
      let entry = this.#entries.get(name);
      if (entry === undefined) {
        if (!this.#reserve()) {
          await new Promise<void>((resolve) => this.#waiters.push(resolve));
          continue;
        }
        entry = new Entry<H>(name);
        entry.ready = this.#openEntry(entry, create);
        this.#entries.set(name, entry);
      } else {
        if (entry.refs === 0) this.#idle.delete(name);
        if (this.#waiters.length > 0) this.#passOn();
      }
      entry.refs++;
      let handle: H | undefined;
      try {
        handle = await entry.ready;
      } catch (err) {
        entry.refs--;
        throw err;
      }
      if (handle !== undefined) return entry as FdLease<H>;
      entry.refs--; // missing, or discarded while we waited
      if (!create) return undefined;
    }
  }

  release(lease: FdLease<H>): void {
    const entry = lease as Entry<H>;
    if (--entry.refs > 0 || this.#entries.get(entry.name) !== entry) return;
    this.#idle.set(entry.name, entry);
    this.#wakeOne();
  }

  /**
   * Closes `name`'s handle and runs `action` (e.g. unlink) while acquirers of `name` wait.
   * Resolves false, doing nothing, when another call holds the handle; true when the action
   * ran or the file is missing.
   */
  async discard(name: string, action: () => Promise<void>): Promise<boolean> {
    const lease = await this.acquire(name, false);
    if (lease === undefined) return true;
    const entry = lease as Entry<H>;
    if (entry.refs > 1) {
      this.release(lease);
      return false;
    }
    const handle = lease.handle;
    entry.handle = undefined;
    const done = this.#closeAndRun(entry, handle, action);
    entry.ready = done.then(toUndefined, toUndefined);
    await done;
    return true;
  }

  /** Errors from closing evicted handles since the last call. */
  takeErrors(): Error[] {
    const errors = this.#errors;
    this.#errors = [];
    return errors;
  }

  /** Closes every handle; the caller ensures nothing is leased. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const closing: Promise<void>[] = [];
    for (const entry of this.#entries.values()) {
      if (entry.handle !== undefined) closing.push(entry.handle.close());
      entry.handle = undefined;
    }
    this.#entries.clear();
    this.#idle.clear();
    for (const wake of this.#waiters.splice(0)) wake();
    const results = await Promise.allSettled(closing);
    this.#open -= closing.length;
    await Promise.allSettled(this.#closing); // evictions in progress count themselves down
    const errors = this.takeErrors();
    for (const result of results) {
      if (result.status === 'rejected') errors.push(result.reason as Error);
    }
    if (errors.length > 0) throw new AggregateError(errors, `closing ${errors.length} file handle(s) failed`);
  }

  async #openEntry(entry: Entry<H>, create: boolean): Promise<H | undefined> {
    let handle: H | undefined;
    try {
      handle = await this.#opener(entry.name, create);
    } catch (err) {
      this.#drop(entry);
      throw err;
    }
    if (handle === undefined) {
      this.#drop(entry);
      return undefined;
    }
    if (this.#closed) {
      this.#drop(entry);
      await handle.close();
      throw new ClosedError('file handle cache');
    }
    entry.handle = handle;
    return handle;
  }

  async #closeAndRun(entry: Entry<H>, handle: H, action: () => Promise<void>): Promise<void> {
    try {
      await handle.close();
      await action();
    } finally {
      entry.refs--;
      this.#drop(entry);
    }
  }

  /** Takes a slot, or starts evicting the least recently used idle handle and returns false. */
  #reserve(): boolean {
    if (this.maxOpenFiles === 0 || this.#open < this.maxOpenFiles) {
      if (++this.#open > this.#peak) this.#peak = this.#open;
      return true;
    }
    const victim = this.#idle.values().next().value;
    if (victim !== undefined) this.#evict(victim);
    return false;
  }

  #evict(entry: Entry<H>): void {
    const handle = entry.handle as H;
    entry.handle = undefined;
    this.#idle.delete(entry.name);
    this.#entries.delete(entry.name);
    const closing: Promise<void> = handle.close().then(
      () => this.#settleEviction(closing),
      (err: unknown) => {
        this.#errors.push(err as Error);
        this.#settleEviction(closing);
      },
    );
    this.#closing.add(closing);
  }

  #settleEviction(closing: Promise<void>): void {
    this.#closing.delete(closing);
    this.#open--;
    this.#wakeOne();
  }

  /** Forgets an entry whose file was missing, failed to open or was discarded: frees its slot. */
  #drop(entry: Entry<H>): void {
    if (this.#entries.get(entry.name) === entry) this.#entries.delete(entry.name);
    this.#open--;
    this.#wakeOne();
  }

  /** A woken waiter joined an existing entry: hand the slot or idle handle to the next one. */
  #passOn(): void {
    if (this.maxOpenFiles === 0 || this.#open < this.maxOpenFiles || this.#idle.size > 0) this.#wakeOne();
  }

  #wakeOne(): void {
    this.#waiters.shift()?.();
  }
}
