/**
 * ConnectionWorkers: worker threads (connection-worker.ts) that serve the transmission phase of
 * connections whose backend can be shared across threads (Backend.share: a memfd-backed memory
 * store), so several connections (nbdcopy and the kernel open four with multi-conn) are served on
 * several cores instead of one event loop. The main thread keeps the listeners and handshakes.
 *
 * - A connection is handed over as a duplicate of its descriptor (takeDescriptor); the main
 *   thread's socket is then closed without a shutdown. Bytes that followed the handshake go along.
 *   A TLS socket, one with anything still buffered in Node, or one without a descriptor, stays.
 * - Connections go to the threads in turn. `serve` resolves when the worker has closed the
 *   connection (or the worker died: its connections are gone with it, logged once).
 * - Threads start with the server's first listener where an export is shareable (`start`), else
 *   at the first hand-over, and are unref'd: they never keep the process alive.
 * - Their log lines come back as messages and are written through the server's logger.
 */
import type { Socket } from 'node:net';
import { Worker } from 'node:worker_threads';
import { pino } from 'pino';
import type { Logger } from '../log.js';
import type { SharedBackendHandle } from '../pipeline/types.js';
import type { FromWorker, ToWorker, WorkerTransmissionParams } from './connection-worker.js';
import { takeDescriptor } from './user-buffer-socket.js';

/** How long a thread may take to close its backends and exit before it is terminated. */
const EXIT_GRACE_MS = 5000;

interface Thread {
  readonly worker: Worker;
  readonly conns: Map<number, () => void>;
}

export class ConnectionWorkers {
  readonly #count: number;
  readonly #log: Logger;
  readonly #threads: Thread[] = [];
  #next = 0;

  constructor(count: number, log: Logger) {
    this.#count = count;
    this.#log = log;
  }

  /**
   * Hands the connection on `socket` to a worker; resolves once the worker closed it. Returns
   * undefined, leaving the socket untouched, when it cannot be handed over.
   */
  serve(socket: Socket, conn: number, handle: SharedBackendHandle, params: WorkerTransmissionParams, remainder: Buffer | undefined): Promise<void> | undefined {
    if (this.#count <= 0) return undefined;
    const copy = takeDescriptor(socket);
    if (copy === undefined) return undefined;
    const thread = this.#thread();
    const closed = new Promise<void>((resolve) => thread.conns.set(conn, resolve));
    const message: ToWorker = {
      type: 'serve', conn, fd: copy, handle, params, logLevel: this.#log.level,
      remainder: remainder === undefined ? undefined : new Uint8Array(remainder),
    };
    thread.worker.postMessage(message);
    socket.destroy();
    return closed;
  }

  /**
   * Starts every thread now and has each attach `handles` (a thread takes tens of milliseconds to
   * start and to attach a store): the first clients do not wait for either.
   */
  start(handles: readonly SharedBackendHandle[]): void {
    while (this.#threads.length < this.#count) {
      const thread = this.#spawn();
      for (const handle of handles) thread.worker.postMessage({ type: 'attach', handle } satisfies ToWorker);
    }
  }

  /** Drains one handed-over connection (server close). */
  shutdown(conn: number): void {
    for (const thread of this.#threads) if (thread.conns.has(conn)) thread.worker.postMessage({ type: 'shutdown', conn } satisfies ToWorker);
  }

  /**
   * Ends the threads once their connections have closed: each closes what it attached and exits
   * (terminated if it has not within EXIT_GRACE_MS).
   */
  async close(): Promise<void> {
    const threads = this.#threads.splice(0);
    await Promise.all(threads.map(async ({ worker }) => {
      const exited = new Promise<void>((resolve) => worker.once('exit', () => resolve()));
      worker.postMessage({ type: 'exit' } satisfies ToWorker);
      const timer = setTimeout(() => void worker.terminate(), EXIT_GRACE_MS);
      await exited;
      clearTimeout(timer);
    }));
  }

  /** A worker's pino lines, written again through the server's logger (its fields kept). */
  #relay(lines: string): void {
    for (const line of lines.split('\n')) {
      if (line === '') continue;
      try {
        const { level, msg, ...fields } = JSON.parse(line) as { level: number; msg?: string };
        const label = pino.levels.labels[level] as 'info' | undefined;
        if (label !== undefined) this.#log[label](fields, msg);
      } catch {
        this.#log.warn({ line }, 'unreadable log line from an NBD worker thread');
      }
    }
  }

  #thread(): Thread {
    if (this.#threads.length < this.#count) this.#spawn();
    return this.#threads[this.#next++ % this.#threads.length]!;
  }

  #spawn(): Thread {
    const worker = new Worker(new URL('./connection-worker.js', import.meta.url));
    worker.unref();
    const thread: Thread = { worker, conns: new Map() };
    worker.on('message', (msg: FromWorker) => {
      if (msg.type === 'log') return this.#relay(msg.lines);
      if (msg.type === 'failed') this.#log.warn(msg.conn === 0 ? {} : { conn: msg.conn }, `on an NBD worker thread: ${msg.message}`);
      thread.conns.get(msg.conn)?.();
      thread.conns.delete(msg.conn);
    });
    const gone = (why: string): void => {
      if (thread.conns.size > 0) this.#log.error({ connections: thread.conns.size }, `an NBD worker thread ${why}; its connections are closed`);
      for (const resolve of thread.conns.values()) resolve();
      thread.conns.clear();
      const at = this.#threads.indexOf(thread);
      if (at >= 0) this.#threads.splice(at, 1);
    };
    worker.on('error', (err) => gone(`failed (${err.message})`));
    worker.on('exit', (code) => gone(`exited with code ${code}`));
    this.#threads.push(thread);
    return thread;
  }
}
