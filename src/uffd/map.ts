/**
 * mapReader: any reader as memory. An anonymous private mapping is registered with
 * userfaultfd in MISSING mode and handed out as a Buffer (no copy); the first touch of a page
 * blocks the touching thread until the fault handler has fetched the chunk around it from the
 * reader and installed it with UFFDIO_COPY. Pages never go back: the region is a read-mostly
 * post-copy of the reader (writes land in the private pages and are not written back).
 *
 * Where the reader lives: a thread blocked on a page fault runs no JS, so a reader living in the
 * thread that touches the memory could never serve it (the main thread would wait on itself).
 * The handler runs in a worker thread (uffd/handler-worker.ts) and opens its own reader
 * there, from a description that crosses threads:
 *   - a backend URI (`file:///img`, `grpc://host:1337`, `nbd://…`, `redis://…`, `s3://…`,
 *     `dir://…`): the worker calls backends/open.js `openBackend(uri, { size, readOnly: true })`
 *     (`memory:` works but reads zeros: the worker's memory is not yours);
 *   - `{ module, exportName, args }`: the worker imports the module and awaits
 *     `module[exportName](...args)`, which returns a ReaderAt (with an optional size and close()).
 *     This is how a test or an application builds a composed reader (a pre-filled memory backend,
 *     a LatencyBackend in front of a remote, …) inside the worker.
 * Other threads (worker_threads) may touch the buffer too: the mapping is per process, so pass
 * `address` and `size` and view it there with kernel/ffi.js `viewOf`.
 *
 * Failure: reader errors are retried with backoff and logged; past `deadlineMs` a failed
 * prefetch marks the region failed (`failed`, an 'error' event on `events`, which like any
 * EventEmitter 'error' is thrown when nobody listens), and a failed fetch that a thread is
 * blocked on kills the process with SIGKILL after one line on stderr (see the worker).
 *
 * close(): stops prefetch and lets the copies in flight finish (up to `closeTimeoutMs`), keeps
 * serving faults for CLOSE_GRACE_MS more (a thread that a copy woke must still run the access it
 * faulted on, and the scheduler may not have let it yet: tearing down at once would kill the
 * process with SIGSEGV under load), stops the handler, makes the region inaccessible (PROT_NONE), unregisters it (a thread still blocked
 * then dies with SIGSEGV instead of reading zeros), closes the userfaultfd and unmaps. Touching
 * the buffer after close() kills the process (SIGSEGV).
 */
import { EventEmitter } from 'node:events';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import type { LevelWithSilent } from 'pino';
import { BackendError, R3mapError, UsageError, type R3mapErrorCode } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import { close, MAP_ANONYMOUS, MAP_NORESERVE, MAP_PRIVATE, mmap, mprotect, munmap, O_CLOEXEC, O_NONBLOCK, pageSize, pipe2, PROT_NONE, PROT_READ, PROT_WRITE, viewOf, write, type Pointer } from '../kernel/ffi.js';
import { addressOf, Uffd } from '../kernel/uffd.js';
import { UFFD_STAT, UFFD_STAT_COUNT, type SerializedError, type UffdHandlerData, type UffdHandlerReply, type UffdHandlerRequest, type UffdReaderSpec } from './protocol.js';
import { pullOrder, pullPriorityByName, type PullPriority, type PullPriorityName } from '../pipeline/pull-priority.js';
import { checkChunkSize, DEFAULT_CHUNK_SIZE } from '../util/chunks.js';

/** What the handler thread reads from: a backend URI, or a module export that builds a ReaderAt. */
export type UffdReaderSource =
  | string
  | { readonly uri: string }
  | { readonly module: string | URL; readonly exportName?: string; readonly args?: readonly unknown[] };

export interface UffdMapOptions {
  /** Bytes fetched and installed per fault: a multiple of the page size. Default 64 KiB. */
  readonly chunkSize?: number;
  /** Background fetches pulling untouched chunks; 0 (default) = no prefetch. */
  readonly prefetchWorkers?: number;
  /** Prefetch order (a pull priority name or function). Default 'ascending'. */
  readonly prefetchPriority?: PullPriorityName | PullPriority;
  /** Chunks after the latest fault that prefetch takes first; default 2 × prefetchWorkers, 0 = none. */
  readonly readaheadChunks?: number;
  /** Backoff between reader retries (doubling from baseDelayMs up to maxDelayMs). Default 50 / 2000 ms. */
  readonly retry?: { readonly baseDelayMs?: number; readonly maxDelayMs?: number };
  /** How long one chunk's reads are retried before the region fails; default 30 s, 0 = forever. */
  readonly deadlineMs?: number;
  /** How long close() lets faults in flight finish before it tears down anyway; default 10 s. */
  readonly closeTimeoutMs?: number;
  readonly log?: Logger;
}

export interface ResolvedUffdMapOptions {
  readonly chunkSize: number;
  readonly prefetchWorkers: number;
  readonly prefetchPriority: PullPriority;
  readonly readaheadChunks: number;
  readonly retryBaseDelayMs: number;
  readonly retryMaxDelayMs: number;
  readonly deadlineMs: number;
  readonly closeTimeoutMs: number;
}

export interface UffdStats {
  readonly chunks: number;
  readonly residentChunks: number;
  /** Page-fault messages: each is a thread that blocked on a missing page. */
  readonly faults: number;
  /** Faults on a chunk whose fetch was already in flight (no second fetch). */
  readonly coalescedFaults: number;
  /** Faults on a chunk that was already resident (a page was dropped, or a harmless race). */
  readonly refaults: number;
  /** Chunks fetched because a thread faulted on them. */
  readonly faultedChunks: number;
  readonly prefetchedChunks: number;
  readonly prefetchedBytes: number;
  /** Every byte read from the reader (faults and prefetch). */
  readonly fetchedBytes: number;
  readonly fetchRetries: number;
  /** From reading a fault's message to its chunk's UFFDIO_COPY (faults that started a fetch). */
  readonly faultLatencyMeanMs: number;
  readonly faultLatencyMaxMs: number;
}

/** The default chunk of a map: the one default chunk size (util/chunks.ts). */
export const DEFAULT_UFFD_CHUNK_SIZE = DEFAULT_CHUNK_SIZE;
/** Longest async poll (it holds a threadpool thread) while the handler has work in flight. */
const POLL_TIMEOUT_MS = 250;
/** Longest the idle handler's event loop waits between turns (its plain poll). */
const SYNC_POLL_MS = 50;
const STOP_TIMEOUT_MS = 5000;
/** After the last copy at close(), how long faults are still served before the teardown (ms). */
const CLOSE_GRACE_MS = 50;
const OPEN_BACKEND_MODULE = new URL('../mount/compose.js', import.meta.url).href;

function count(value: number | undefined, fallback: number, name: string): number {
  const n = value ?? fallback;
  if (!Number.isSafeInteger(n) || n < 0) throw new UsageError(`${name} must be an integer >= 0, got ${n}`);
  return n;
}

export function resolveUffdMapOptions(options: UffdMapOptions, page: number): ResolvedUffdMapOptions {
  const chunkSize = options.chunkSize ?? DEFAULT_UFFD_CHUNK_SIZE;
  checkChunkSize(chunkSize, 'chunkSize');
  if (chunkSize % page !== 0) {
    throw new UsageError(`chunkSize must be a multiple of the page size (${page}) up to 1 GiB, got ${chunkSize}`);
  }
  const prefetchWorkers = count(options.prefetchWorkers, 0, 'prefetchWorkers');
  const priority = options.prefetchPriority ?? 'ascending';
  return Object.freeze({
    chunkSize,
    prefetchWorkers,
    prefetchPriority: typeof priority === 'function' ? priority : pullPriorityByName(priority),
    readaheadChunks: prefetchWorkers === 0 ? 0 : count(options.readaheadChunks, 2 * prefetchWorkers, 'readaheadChunks'),
    retryBaseDelayMs: count(options.retry?.baseDelayMs, 50, 'retry.baseDelayMs'),
    retryMaxDelayMs: count(options.retry?.maxDelayMs, 2000, 'retry.maxDelayMs'),
    deadlineMs: count(options.deadlineMs, 30_000, 'deadlineMs'),
    closeTimeoutMs: count(options.closeTimeoutMs, 10_000, 'closeTimeoutMs'),
  });
}

function readerSpec(source: UffdReaderSource, size: number): UffdReaderSpec {
  const uri = typeof source === 'string' ? source : 'uri' in source ? source.uri : undefined;
  if (uri !== undefined) return { module: OPEN_BACKEND_MODULE, exportName: 'openComposed', args: [uri, { size, readOnly: true }] };
  const m = source as Exclude<UffdReaderSource, string | { uri: string }>;
  let module: string;
  if (m.module instanceof URL) module = m.module.href;
  else if (path.isAbsolute(m.module)) module = pathToFileURL(m.module).href;
  else if (/^[a-z][a-z0-9+.-]*:/i.test(m.module)) module = m.module;
  else throw new UsageError(`reader module must be an absolute path or a URL, got '${m.module}'`);
  return { module, exportName: m.exportName ?? 'default', args: [...(m.args ?? [])] };
}

function deserializeError(e: SerializedError): Error {
  if (e.off !== undefined) return new BackendError({ backend: 'uffd reader', op: 'readAt', off: e.off, length: e.length ?? 0 }, e.message);
  if (e.code === 'ERR_USAGE') return new UsageError(e.message);
  if (e.code?.startsWith('ERR_') === true) return new R3mapError(e.code as R3mapErrorCode, e.message);
  const err = new Error(e.message);
  err.name = e.name;
  return err;
}

/** Maps `size` bytes of `reader` into memory; resolves once the handler thread serves faults. */
export function mapReader(reader: UffdReaderSource, size: number, options: UffdMapOptions = {}): Promise<UffdMap> {
  return UffdMap.open(reader, size, options);
}

export class UffdMap {
  /** The region: reading a byte fetches its chunk on first touch. Valid until close(). */
  readonly buffer: Buffer;
  /** Where the region starts (for viewOf in other threads). */
  readonly address: Pointer;
  readonly size: number;
  readonly chunkSize: number;
  /** 'error' (Error): the region failed (a prefetch past its deadline, or the handler thread died). */
  readonly events = new EventEmitter();
  readonly #uffd: Uffd;
  readonly #worker: Worker;
  readonly #stopFds: readonly [number, number];
  readonly #mappedLength: number;
  readonly #stats: Float64Array;
  readonly #chunks: number;
  readonly #closeTimeoutMs: number;
  readonly #log: Logger;
  #failed: Error | undefined;
  #onDrained: (() => void) | undefined;
  #closing: Promise<void> | undefined;

  private constructor(init: { uffd: Uffd; worker: Worker; stopFds: [number, number]; address: Pointer; size: number; mappedLength: number; chunkSize: number; stats: SharedArrayBuffer; closeTimeoutMs: number; log: Logger }) {
    this.#uffd = init.uffd;
    this.#worker = init.worker;
    this.#stopFds = init.stopFds;
    this.address = init.address;
    this.size = init.size;
    this.chunkSize = init.chunkSize;
    this.#mappedLength = init.mappedLength;
    this.#stats = new Float64Array(init.stats);
    this.#chunks = Math.ceil(init.mappedLength / init.chunkSize);
    this.#closeTimeoutMs = init.closeTimeoutMs;
    this.#log = init.log;
    this.buffer = viewOf(init.address, init.size);
    init.worker.on('message', (msg: UffdHandlerReply) => this.#onMessage(msg));
    init.worker.on('error', (err) => this.#fail(err));
    init.worker.on('exit', (code) => {
      if (this.#closing === undefined) this.#fail(new Error(`the userfaultfd handler thread exited (code ${code})`));
    });
    init.worker.unref();
  }

  static async open(reader: UffdReaderSource, size: number, options: UffdMapOptions): Promise<UffdMap> {
    const page = pageSize();
    const o = resolveUffdMapOptions(options, page);
    if (!Number.isSafeInteger(size) || size <= 0) throw new UsageError(`size must be a positive number of bytes, got ${size}`);
    const log = (options.log ?? silentLogger).child({ component: 'uffd-map' });
    const mappedLength = Math.ceil(size / page) * page;
    const chunks = Math.ceil(mappedLength / o.chunkSize);
    if (chunks >= 2 ** 32) throw new UsageError(`${chunks} chunks of ${o.chunkSize} bytes are too many; use a larger chunkSize`);
    const spec = readerSpec(reader, size);
    const order = o.prefetchWorkers > 0 ? pullOrder(chunks, o.prefetchPriority) : new Uint32Array(0);
    const undo: (() => void)[] = [];
    try {
      const uffd = Uffd.create();
      undo.push(() => uffd.close());
      const address = mmap(mappedLength, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE);
      undo.push(() => munmap(address, mappedLength));
      const base = addressOf(address);
      uffd.register(base, mappedLength);
      const stopFds = pipe2(O_CLOEXEC | O_NONBLOCK);
      undo.push(() => close(stopFds[0]), () => close(stopFds[1]));
      const stats = new SharedArrayBuffer(UFFD_STAT_COUNT * Float64Array.BYTES_PER_ELEMENT);
      const label = `0x${address.toString(16)}+${size}`;
      const data: UffdHandlerData = {
        uffd: uffd.fd, stopFd: stopFds[0], base, size, mappedLength, pageSize: page, chunkSize: o.chunkSize, reader: spec,
        prefetchWorkers: o.prefetchWorkers, prefetchOrder: order, readaheadChunks: o.readaheadChunks,
        retryBaseDelayMs: o.retryBaseDelayMs, retryMaxDelayMs: o.retryMaxDelayMs, deadlineMs: o.deadlineMs,
        pollTimeoutMs: POLL_TIMEOUT_MS, syncPollMs: SYNC_POLL_MS, stats, logLevel: log.level as LevelWithSilent, label,
      };
      const worker = new Worker(new URL('./handler-worker.js', import.meta.url), { workerData: data });
      undo.push(() => void worker.terminate());
      await handlerReady(worker);
      log.info({ region: label, chunkSize: o.chunkSize, prefetchWorkers: o.prefetchWorkers }, 'userfaultfd region mapped');
      return new UffdMap({ uffd, worker, stopFds, address, size, mappedLength, chunkSize: o.chunkSize, stats, closeTimeoutMs: o.closeTimeoutMs, log: log.child({ region: label }) });
    } catch (err) {
      for (const step of undo.reverse()) {
        try {
          step();
        } catch (undoErr) {
          log.error({ err: undoErr }, 'cleanup after a failed mapReader failed');
        }
      }
      throw err;
    }
  }

  /** The error the region failed with, if it did. */
  get failed(): Error | undefined {
    return this.#failed;
  }

  /** A snapshot of the handler's counters (live: read again for fresh numbers). */
  get stats(): UffdStats {
    const s = this.#stats;
    const faultedChunks = s[UFFD_STAT.faultedChunks]!;
    return Object.freeze({
      chunks: this.#chunks,
      residentChunks: s[UFFD_STAT.residentChunks]!,
      faults: s[UFFD_STAT.faults]!,
      coalescedFaults: s[UFFD_STAT.coalescedFaults]!,
      refaults: s[UFFD_STAT.refaults]!,
      faultedChunks,
      prefetchedChunks: s[UFFD_STAT.prefetchedChunks]!,
      prefetchedBytes: s[UFFD_STAT.prefetchedBytes]!,
      fetchedBytes: s[UFFD_STAT.fetchedBytes]!,
      fetchRetries: s[UFFD_STAT.fetchRetries]!,
      faultLatencyMeanMs: faultedChunks > 0 ? s[UFFD_STAT.faultLatencyTotalMs]! / faultedChunks : 0,
      faultLatencyMaxMs: s[UFFD_STAT.faultLatencyMaxMs]!,
    });
  }

  #onMessage(msg: UffdHandlerReply): void {
    if (msg.type === 'failed') this.#fail(deserializeError(msg.error));
    else if (msg.type === 'drained') this.#onDrained?.();
  }

  #fail(err: Error): void {
    if (this.#failed !== undefined) return;
    this.#failed = err;
    this.#log.error({ err }, 'userfaultfd region failed');
    this.events.emit('error', err);
  }

  /** Tears the region down (see the file comment); idempotent. Rejects with every step that failed. */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    const worker = this.#worker;
    worker.ref();
    const exited = new Promise<void>((resolve) => worker.once('exit', () => resolve()));
    const alive = worker.threadId !== -1;
    if (alive && !(await this.#drain())) this.#log.warn({ closeTimeoutMs: this.#closeTimeoutMs }, 'faults still in flight at close; tearing down anyway');
    if (alive) await sleep(CLOSE_GRACE_MS); // the woken threads finish their access (see the file comment)
    const errors: unknown[] = [];
    const attempt = (what: string, fn: () => void): void => {
      try {
        fn();
      } catch (err) {
        this.#log.error({ err }, `closing the userfaultfd region: ${what} failed`);
        errors.push(err);
      }
    };
    if (alive) {
      attempt('stopping the handler', () => write(this.#stopFds[1], Buffer.from([1])));
      const stopped = await Promise.race([exited.then(() => true), sleep(STOP_TIMEOUT_MS).then(() => false)]);
      if (!stopped) {
        this.#log.warn('the handler thread did not stop in time; terminating it');
        await worker.terminate();
      }
    }
    const base = addressOf(this.address);
    attempt('mprotect', () => mprotect(this.address, this.#mappedLength, PROT_NONE));
    attempt('UFFDIO_UNREGISTER', () => this.#uffd.unregister(base, this.#mappedLength));
    attempt('closing the userfaultfd', () => this.#uffd.close());
    attempt('munmap', () => munmap(this.address, this.#mappedLength));
    attempt('closing the stop pipe', () => close(this.#stopFds[0]));
    attempt('closing the stop pipe', () => close(this.#stopFds[1]));
    if (errors.length > 0) throw new AggregateError(errors, `closing the userfaultfd region: ${errors.map((e) => (e as Error).message).join('; ')}`);
  }

  /** Asks the handler to stop prefetching and waits until nothing is in flight; false on timeout. */
  #drain(): Promise<boolean> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), this.#closeTimeoutMs);
      this.#onDrained = () => {
        clearTimeout(timer);
        resolve(true);
      };
      this.#worker.once('exit', () => {
        clearTimeout(timer);
        resolve(true);
      });
      this.#worker.postMessage({ type: 'drain' } satisfies UffdHandlerRequest);
    });
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}

function handlerReady(worker: Worker): Promise<void> {
  return new Promise((resolve, reject) => {
    const onMessage = (msg: UffdHandlerReply): void => {
      if (msg.type === 'ready') done(undefined);
      else if (msg.type === 'open-failed') done(deserializeError(msg.error));
    };
    const onError = (err: Error): void => done(err);
    const onExit = (code: number): void => done(new Error(`the userfaultfd handler thread exited (code ${code}) before it was ready`));
    const done = (err: Error | undefined): void => {
      worker.off('message', onMessage).off('error', onError).off('exit', onExit);
      if (err === undefined) resolve();
      else reject(err);
    };
    worker.on('message', onMessage).on('error', onError).on('exit', onExit);
  });
}
