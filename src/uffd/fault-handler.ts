/**
 * UffdFaultHandler: serves the page faults of one userfaultfd region from a reader. It runs in
 * the handler worker thread (handler-worker.ts builds it) and never touches the region.
 *
 * - Chunks are aligned to the region base. A fault fetches its whole chunk into a staging slot
 *   and installs it with one UFFDIO_COPY (the last chunk clipped to the region, a partial last
 *   page zero-padded). A page that is already mapped (EEXIST) is skipped and the copy goes on.
 * - A reader that holds the bytes in memory may offer `viewAt(off, length)`: a Buffer aliasing
 *   them, valid until it returns. The chunk is then installed straight from it, synchronously:
 *   one copy, as a native handler makes.
 * - Per-chunk state (missing, fetching, fetching with a blocked thread, resident) in one
 *   Uint8Array: faults on a chunk whose fetch is in flight are coalesced, faults on different
 *   chunks are fetched concurrently.
 * - Prefetch: up to `prefetchWorkers` fetches at once, started from setImmediate so faults are
 *   polled in between: first the `readaheadChunks` after the latest fault, then the pull order.
 * - Reader errors are retried with capped exponential backoff until `deadlineMs`. Then a chunk
 *   a thread is blocked on is fatal (`host.fatal`), any other marks the region failed.
 */
import type { Logger } from '../log.js';
import type { ReaderAt } from '../pipeline/types.js';
import { KernelError } from '../errors.js';
import { Errno } from '../kernel/errno.js';
import { bufferAddress, POLLERR, POLLHUP, POLLIN, POLLNVAL, pollAsync, pollBuffer, pollFds, reventsOf } from '../kernel/ffi.js';
import { addressOf, Uffd } from '../kernel/uffd.js';
import { UFFD_EVENT_PAGEFAULT, UFFD_MSG_BYTES } from '../kernel/uffd-constants.js';
import { serializeError, UFFD_STAT, type UffdHandlerData, type UffdHandlerReply } from './protocol.js';
import { UffdPrefetchOrder } from './prefetch-order.js';
import { UffdStagingPool } from './staging.js';

/** A ReaderAt, optionally with a zero-copy view of bytes it holds in memory. */
export interface UffdReader extends ReaderAt {
  viewAt?(off: number, length: number): Buffer | undefined;
  close?(): Promise<void>;
}

export interface UffdHandlerHost {
  readonly log: Logger;
  /** Ends the process: a blocked thread can never be served. */
  fatal(reason: string, err: unknown): never;
  post(msg: UffdHandlerReply): void;
}

const MISSING = 0;
const FETCHING = 1;
/** Fetching, and a thread is blocked on it. */
const FETCHING_WAITED = 2;
const RESIDENT = 3;

const MESSAGES_PER_READ = 64;
/** The longest the handler goes without yielding a whole event-loop turn while faults stream in. */
const FAIRNESS_MS = 10;

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export class UffdFaultHandler {
  readonly #data: UffdHandlerData;
  readonly #reader: UffdReader;
  readonly #host: UffdHandlerHost;
  readonly #uffd: Uffd;
  readonly #chunks: number;
  readonly #state: Uint8Array;
  readonly #stats: Float64Array;
  readonly #messages = Buffer.alloc(MESSAGES_PER_READ * UFFD_MSG_BYTES);
  readonly #pollFds: Buffer;
  readonly #staging: UffdStagingPool;
  readonly #prefetchOrder: UffdPrefetchOrder;
  /** Address of each ArrayBuffer viewAt has returned views of. */
  readonly #viewBases = new WeakMap<ArrayBufferLike, number>();
  #inFlight = 0;
  #prefetching = 0;
  #draining = false;
  #failed = false;
  #stopping = false;
  #prefetchExhausted = false;
  #pumpScheduled = false;
  #yieldedAt = 0;
  #turnScheduled = false;
  #waiter: (() => void) | undefined = undefined;
  #waiterMayResolveEarly = false;

  constructor(data: UffdHandlerData, reader: UffdReader, host: UffdHandlerHost) {
    this.#data = data;
    this.#reader = reader;
    this.#host = host;
    this.#uffd = Uffd.fromFd(data.uffd);
    this.#chunks = Math.ceil(data.mappedLength / data.chunkSize);
    this.#state = new Uint8Array(this.#chunks);
    this.#stats = new Float64Array(data.stats);
    this.#pollFds = pollFds([{ fd: data.uffd, events: POLLIN }, { fd: data.stopFd, events: POLLIN }]);
    this.#staging = new UffdStagingPool(data.chunkSize);
    this.#prefetchOrder = new UffdPrefetchOrder(data.prefetchOrder, this.#chunks, data.readaheadChunks);
  }

  /**
   * Serves faults until a byte arrives on the stop pipe.
   * - Idle (nothing in flight, no prefetch pending): waits in a plain poll for up to
   *   `syncPollMs`, sleeping in the kernel, then gives the event loop one turn (messages,
   *   timers, the reader's background I/O) and waits again. A stream of faults costs one
   *   wake-up each, as in a native handler, and an idle region holds no threadpool thread.
   * - Busy (fetches in flight or prefetch pending): waits in the async poll, which holds one
   *   libuv threadpool thread and leaves the event loop free for the reader's I/O.
   */
  async run(): Promise<void> {
    const fds = this.#pollFds;
    this.#schedulePump();
    for (;;) {
      if (this.#inFlight === 0 && !this.#prefetchPending()) {
        if (pollBuffer(fds, this.#data.syncPollMs) === 0) {
          await this.#nextTurn(false);
          continue;
        }
      } else {
        await pollAsync(fds, this.#data.pollTimeoutMs);
        this.#yieldedAt = performance.now();
      }
      if (reventsOf(fds, 1) !== 0) return;
      const revents = reventsOf(fds, 0);
      if ((revents & (POLLERR | POLLHUP | POLLNVAL)) !== 0) throw new Error(`poll on the userfaultfd reported revents 0x${revents.toString(16)}`);
      if ((revents & POLLIN) === 0) continue;
      this.#drainMessages();
      const settling = this.#settle();
      if (settling !== undefined) await settling;
    }
  }

  /** Stops prefetching; posts 'drained' once nothing is in flight. */
  drain(): void {
    this.#draining = true;
    this.#maybeDrained();
  }

  /** After run(): fetches still in flight are dropped when they settle; staging is unmapped once none is. */
  stop(): void {
    this.#stopping = true;
    if (this.#inFlight === 0) this.#staging.release();
  }

  /**
   * Lets the fetches just started settle: resolves as soon as nothing is in flight (a memory
   * reader settles within microtasks) or at the next turn of the event loop, whichever comes
   * first; undefined when there is nothing to wait for. At least every FAIRNESS_MS it waits for
   * a whole turn, so messages, timers and the reader's I/O are never starved by a fault stream.
   */
  #settle(): Promise<void> | undefined {
    const fair = performance.now() - this.#yieldedAt < FAIRNESS_MS;
    if (this.#inFlight === 0 && fair) return undefined;
    return this.#nextTurn(fair);
  }

  /** The next turn of the event loop, or sooner (when `mayResolveEarly`) once nothing is in flight. */
  #nextTurn(mayResolveEarly: boolean): Promise<void> {
    return new Promise((resolve) => {
      this.#waiter = resolve;
      this.#waiterMayResolveEarly = mayResolveEarly;
      if (this.#turnScheduled) return;
      this.#turnScheduled = true;
      setImmediate(this.#onTurn);
    });
  }

  readonly #onTurn = (): void => {
    this.#turnScheduled = false;
    this.#yieldedAt = performance.now();
    this.#wake();
  };

  #wake(): void {
    const waiter = this.#waiter;
    this.#waiter = undefined;
    waiter?.();
  }

  #drainMessages(): void {
    const messages = this.#messages;
    for (;;) {
      const n = this.#uffd.readMessages(messages);
      for (let i = 0; i < n; i++) {
        const event = Uffd.eventOf(messages, i);
        if (event === UFFD_EVENT_PAGEFAULT) this.#onFault(Uffd.faultAddressOf(messages, i));
        else this.#host.log.error({ event }, 'unexpected userfaultfd event (none was asked for)');
      }
      if (n < MESSAGES_PER_READ) return;
    }
  }

  #onFault(address: number): void {
    const stats = this.#stats;
    stats[UFFD_STAT.faults]!++;
    const chunk = Math.floor((address - this.#data.base) / this.#data.chunkSize);
    if (chunk < 0 || chunk >= this.#chunks) {
      this.#host.log.error({ address }, 'page fault outside the registered region');
      return;
    }
    const state = this.#state[chunk]!;
    if (state === FETCHING || state === FETCHING_WAITED) {
      this.#state[chunk] = FETCHING_WAITED;
      stats[UFFD_STAT.coalescedFaults]!++;
      return;
    }
    // RESIDENT: a page of the chunk is missing again (MADV_DONTNEED) or the message raced its
    // copy; serving again is always right (mapped pages turn into EEXIST and are skipped).
    if (state === RESIDENT) stats[UFFD_STAT.refaults]!++;
    if (!this.#draining && !this.#failed && this.#prefetchOrder.faulted(chunk)) this.#prefetchExhausted = false;
    if (!this.#serveFromView(chunk, performance.now())) void this.#serve(chunk, performance.now());
    this.#schedulePump();
  }

  #prefetchPending(): boolean {
    return this.#data.prefetchWorkers > 0 && !this.#draining && !this.#failed && !this.#prefetchExhausted;
  }

  /** Starts prefetches on the next turn of the event loop, so faults are polled in between. */
  #schedulePump(): void {
    if (this.#pumpScheduled || !this.#prefetchPending()) return;
    this.#pumpScheduled = true;
    setImmediate(this.#pump);
  }

  /** Starts up to prefetchWorkers fetches (synchronous view installs count against the same budget per turn). */
  readonly #pump = (): void => {
    this.#pumpScheduled = false;
    let budget = this.#data.prefetchWorkers;
    while (budget > 0 && this.#prefetching < this.#data.prefetchWorkers && this.#prefetchPending()) {
      const chunk = this.#prefetchOrder.next(this.#state, MISSING);
      if (chunk < 0) {
        this.#prefetchExhausted = true;
        return;
      }
      budget--;
      if (this.#serveFromView(chunk, -1)) continue;
      this.#prefetching++;
      void this.#serve(chunk, -1);
    }
    if (budget === 0) this.#schedulePump();
  };

  /**
   * Installs a whole chunk straight from the reader's memory when it offers a view of it;
   * false when it does not (the caller fetches it instead). `faultedAt` is -1 for a prefetch.
   */
  #serveFromView(chunk: number, faultedAt: number): boolean {
    if (this.#reader.viewAt === undefined) return false;
    const data = this.#data;
    const off = chunk * data.chunkSize;
    const length = Math.min(data.chunkSize, data.size - off);
    if (length !== Math.min(data.chunkSize, data.mappedLength - off)) return false;
    let view: Buffer | undefined;
    try {
      view = this.#reader.viewAt(off, length);
    } catch {
      return false; // readAt retries and reports
    }
    if (view === undefined || view.length !== length) return false;
    const waited = faultedAt >= 0 || this.#state[chunk] === FETCHING_WAITED;
    this.#count(chunk, faultedAt, length);
    try {
      this.#install(data.base + off, this.#viewAddress(view), length);
    } catch (err) {
      this.#stats[UFFD_STAT.residentChunks]!--;
      this.#state[chunk] = waited ? FETCHING_WAITED : FETCHING;
      this.#fetchFailed(chunk, err, off, length);
      return true;
    }
    this.#recordLatency(faultedAt);
    return true;
  }

  #viewAddress(view: Buffer): number {
    let base = this.#viewBases.get(view.buffer);
    if (base === undefined) {
      base = addressOf(bufferAddress(view.buffer));
      this.#viewBases.set(view.buffer, base);
    }
    return base + view.byteOffset;
  }

  /** Fetches and installs one chunk; `faultedAt` is the performance.now() of its fault, -1 for a prefetch. */
  async #serve(chunk: number, faultedAt: number): Promise<void> {
    const data = this.#data;
    const isFault = faultedAt >= 0;
    if (this.#state[chunk] === RESIDENT) this.#stats[UFFD_STAT.residentChunks]!--;
    this.#state[chunk] = isFault ? FETCHING_WAITED : FETCHING;
    this.#inFlight++;
    const slot = this.#staging.take();
    const off = chunk * data.chunkSize;
    const length = Math.min(data.chunkSize, data.size - off);
    const copyLength = Math.min(data.chunkSize, data.mappedLength - off);
    try {
      await this.#fetch(length === data.chunkSize ? slot.buf : slot.buf.subarray(0, length), off);
      if (this.#stopping) return;
      if (length < copyLength) slot.buf.fill(0, length, copyLength);
      const waited = this.#state[chunk] === FETCHING_WAITED;
      this.#count(chunk, faultedAt, length);
      try {
        this.#install(data.base + off, slot.addr, copyLength);
      } catch (err) {
        this.#stats[UFFD_STAT.residentChunks]!--;
        this.#state[chunk] = waited ? FETCHING_WAITED : FETCHING;
        throw err;
      }
      this.#recordLatency(faultedAt);
    } catch (err) {
      this.#fetchFailed(chunk, err, off, length);
    } finally {
      this.#staging.give(slot);
      this.#inFlight--;
      if (!isFault) this.#prefetching--;
      if (this.#stopping) this.stop();
      else if (!isFault) this.#schedulePump();
      if (this.#inFlight === 0 && this.#waiterMayResolveEarly) this.#wake();
      this.#maybeDrained();
    }
  }

  /**
   * Counts a chunk as fetched and resident, just BEFORE its UFFDIO_COPY: the copy wakes the
   * faulting threads, which may read the stats at once.
   */
  #count(chunk: number, faultedAt: number, length: number): void {
    const stats = this.#stats;
    if (this.#state[chunk] !== RESIDENT) stats[UFFD_STAT.residentChunks]!++;
    this.#state[chunk] = RESIDENT;
    stats[UFFD_STAT.fetchedBytes]! += length;
    if (faultedAt >= 0) {
      stats[UFFD_STAT.faultedChunks]!++;
    } else {
      stats[UFFD_STAT.prefetchedChunks]!++;
      stats[UFFD_STAT.prefetchedBytes]! += length;
    }
  }

  #recordLatency(faultedAt: number): void {
    if (faultedAt < 0) return;
    const stats = this.#stats;
    const latencyMs = performance.now() - faultedAt;
    stats[UFFD_STAT.faultLatencyTotalMs]! += latencyMs;
    if (latencyMs > stats[UFFD_STAT.faultLatencyMaxMs]!) stats[UFFD_STAT.faultLatencyMaxMs] = latencyMs;
  }

  #fetchFailed(chunk: number, err: unknown, off: number, length: number): void {
    if (this.#stopping) return;
    const waited = this.#state[chunk] === FETCHING_WAITED;
    this.#state[chunk] = MISSING;
    if (waited) this.#host.fatal(`the page fault at offset ${off} (chunk of ${length} bytes) could not be served`, err);
    this.#failed = true;
    this.#host.log.error({ err, off, length }, 'prefetch failed past the deadline; the region is marked failed and prefetch stops');
    this.#host.post({ type: 'failed', error: serializeError(err, off, length) });
  }

  /** Reads all of `buf` at `off`, retrying with backoff until `deadlineMs` has passed. */
  async #fetch(buf: Buffer, off: number): Promise<void> {
    const data = this.#data;
    const started = performance.now();
    for (let attempt = 0; ; attempt++) {
      try {
        await this.#reader.readAt(buf, off);
        return;
      } catch (err) {
        const elapsedMs = performance.now() - started;
        if (this.#stopping || (data.deadlineMs > 0 && elapsedMs >= data.deadlineMs)) throw err;
        const ceilingMs = Math.min(data.retryMaxDelayMs, data.retryBaseDelayMs * 2 ** Math.min(attempt, 30));
        let delayMs = Math.round(ceilingMs / 2 + (Math.random() * ceilingMs) / 2);
        if (data.deadlineMs > 0) delayMs = Math.max(0, Math.min(delayMs, data.deadlineMs - elapsedMs));
        this.#stats[UFFD_STAT.fetchRetries]!++;
        this.#host.log.warn({ err, off, length: buf.length, attempt: attempt + 1, delayMs }, 'reader failed; retrying');
        await sleep(delayMs);
      }
    }
  }

  /** UFFDIO_COPY of [dst, dst+length) from src, skipping pages that are already mapped. */
  #install(dst: number, src: number, length: number): void {
    const page = this.#data.pageSize;
    let done = 0;
    let busy = 0;
    while (done < length) {
      const copied = this.#uffd.copy(dst + done, src + done, length - done);
      if (copied > 0) {
        done += copied;
      } else if (copied === -Errno.EEXIST) {
        this.#uffd.wake(dst + done, page);
        done += page;
      } else if (++busy > 1000) {
        throw new KernelError({ syscall: 'UFFDIO_COPY', errno: Errno.EAGAIN, errnoName: 'EAGAIN' }, 'the address space kept changing');
      }
    }
  }

  #maybeDrained(): void {
    if (!this.#draining || this.#inFlight !== 0) return;
    this.#draining = false;
    this.#host.post({ type: 'drained' });
  }
}
