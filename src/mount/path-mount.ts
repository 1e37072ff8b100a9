/**
 * PathMount: what DirectPathMount and ManagedPathMount share — open once (a second open() returns
 * the same path), the device's facts after open, and an idempotent close() that waits for an open
 * still under way. A subclass names how its stack opens and closes.
 */
import { ClosedError } from '../errors.js';
import type { ResolvedTransport } from './transport.js';

/** What an open stack shows of itself. */
export interface OpenStack {
  readonly path: string;
  readonly transport: ResolvedTransport;
  readonly size: number;
  readonly closed: Promise<Error | undefined>;
}

export abstract class PathMount<S extends OpenStack> {
  readonly #what: string;
  #opening: Promise<S> | undefined;
  #stack: S | undefined;
  #closing: Promise<void> | undefined;

  /** `what` names the mount in ClosedError ('direct path mount', …). */
  protected constructor(what: string) {
    this.#what = what;
  }

  /** Attaches the device; resolves with its path once it is ready. Calling it again returns the same path. */
  async open(): Promise<string> {
    this.assertNotClosing();
    this.#opening ??= this.openStack().then((stack) => (this.#stack = stack));
    return (await this.#opening).path;
  }

  /** The device path (after open()). */
  get path(): string {
    return this.stack().path;
  }

  get transport(): ResolvedTransport {
    return this.stack().transport;
  }

  get size(): number {
    return this.stack().size;
  }

  /** Resolves with an Error when the device goes away on its own, with undefined after close(). */
  get closed(): Promise<Error | undefined> {
    return this.stack().closed;
  }

  /** Closes the stack (waiting for an open under way first); idempotent. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      const stack = await this.#opening?.catch(() => undefined);
      if (stack !== undefined) await this.closeStack(stack);
    })();
    return this.#closing;
  }

  protected abstract openStack(): Promise<S>;
  protected abstract closeStack(stack: S): Promise<void>;

  /** The open stack; ClosedError before open() resolved. */
  protected stack(): S {
    if (this.#stack === undefined) throw new ClosedError(`${this.#what} (not open)`);
    return this.#stack;
  }

  protected assertNotClosing(): void {
    if (this.#closing !== undefined) throw new ClosedError(this.#what);
  }
}
