/**
 * The worker-thread side of ConnectionWorkers: serves the transmission phase of connections the
 * main thread handed over (their descriptors; a worker shares the process's descriptor table)
 * over a backend it attaches from a SharedBackendHandle, once per store. Tells the main thread
 * when each connection has closed; 'shutdown' drains one as NbdServer.close() does, and 'exit'
 * closes what the worker attached and ends it. Log lines go
 * to the main thread, which writes them through the server's logger.
 */
import { closeSync } from 'node:fs';
import { Socket } from 'node:net';
import { parentPort } from 'node:worker_threads';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import type { Logger } from '../log.js';
import type { Backend, SharedBackendHandle } from '../pipeline/types.js';
import { Transmission, type TransmissionOptions } from './transmission.js';

/** Everything a Transmission needs that survives postMessage. */
export type WorkerTransmissionParams = Omit<TransmissionOptions, 'backend' | 'log' | 'userBuffers'>;

export type ToWorker =
  | { readonly type: 'serve'; readonly conn: number; readonly fd: number; readonly handle: SharedBackendHandle; readonly params: WorkerTransmissionParams; readonly remainder: Uint8Array | undefined; readonly logLevel: string }
  | { readonly type: 'shutdown'; readonly conn: number }
  /** Attach a store ahead of its first connection (a failure is retried by that connection). */
  | { readonly type: 'attach'; readonly handle: SharedBackendHandle }
  /** Every connection has closed: close what was attached and exit. */
  | { readonly type: 'exit' };

export type FromWorker =
  | { readonly type: 'closed'; readonly conn: number }
  | { readonly type: 'failed'; readonly conn: number; readonly message: string }
  | { readonly type: 'log'; readonly lines: string };

const port = parentPort;
/** pino writes JSON lines here; the main thread logs them (connection-workers.ts). */
const toMain = new Writable({
  write(chunk: Buffer, _encoding, callback) {
    port?.postMessage({ type: 'log', lines: chunk.toString() } satisfies FromWorker);
    callback();
  },
});
const loggers = new Map<string, Logger>();
const backends = new Map<string, Promise<Backend>>();
const transmissions = new Map<number, Transmission>();

/** One attached Backend per shared store (keyed by what names it). */
function attach(handle: SharedBackendHandle): Promise<Backend> {
  const key = `${handle.module} ${JSON.stringify(handle.data, (_k, v: unknown) => (v instanceof SharedArrayBuffer ? undefined : v))}`;
  let backend = backends.get(key);
  if (backend === undefined) {
    backend = import(handle.module).then((m: { attachShared(data: unknown): Backend | Promise<Backend> }) => m.attachShared(handle.data));
    backends.set(key, backend);
    backend.catch(() => backends.delete(key)); // the next connection tries again
  }
  return backend;
}

async function serve(msg: Extract<ToWorker, { type: 'serve' }>): Promise<void> {
  let root = loggers.get(msg.logLevel);
  if (root === undefined) loggers.set(msg.logLevel, (root = pino({ level: msg.logLevel, base: null, timestamp: false }, toMain)));
  const log = root.child({ conn: msg.conn, thread: 'worker' });
  let socket: Socket;
  let backend: Backend;
  try {
    backend = await attach(msg.handle);
    socket = new Socket({ fd: msg.fd, readable: true, writable: true, allowHalfOpen: true });
  } catch (err) {
    closeSync(msg.fd); // the connection was ours to close
    throw err;
  }
  socket.on('error', (err) => log.debug({ err }, 'socket error'));
  const transmission = new Transmission(socket, { ...msg.params, backend, log, userBuffers: true });
  transmissions.set(msg.conn, transmission);
  transmission.start(msg.remainder === undefined ? undefined : Buffer.from(msg.remainder.buffer, msg.remainder.byteOffset, msg.remainder.byteLength));
  await transmission.closed;
}

/**
 * Closes every attached backend (their errors are the main thread's to hear), then closes the
 * port: with no connection left, the thread then ends by itself, its last messages delivered.
 */
async function exit(): Promise<void> {
  const attached = await Promise.allSettled(backends.values());
  const closed = await Promise.allSettled(attached.flatMap((r) => (r.status === 'fulfilled' ? [r.value.close()] : [])));
  for (const r of closed) if (r.status === 'rejected') port?.postMessage({ type: 'failed', conn: 0, message: `closing a backend: ${(r.reason as Error).message}` } satisfies FromWorker);
  port?.close();
}

port?.on('message', (msg: ToWorker) => {
  if (msg.type === 'exit') {
    void exit();
    return;
  }
  if (msg.type === 'shutdown') {
    void transmissions.get(msg.conn)?.shutdown();
    return;
  }
  if (msg.type === 'attach') {
    attach(msg.handle).catch(() => undefined);
    return;
  }
  serve(msg).then(
    () => port.postMessage({ type: 'closed', conn: msg.conn } satisfies FromWorker),
    (err: unknown) => port.postMessage({ type: 'failed', conn: msg.conn, message: (err as Error).message } satisfies FromWorker),
  ).finally(() => transmissions.delete(msg.conn));
});
