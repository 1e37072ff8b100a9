/**
 * The body of the worker thread that serves one userfaultfd region (started by
 * uffd/map.ts; never import it elsewhere). The thread that touches the region blocks while
 * a page is missing and runs no JS meanwhile, so it can never serve itself: this thread does,
 * with a UffdFaultHandler (fault-handler.ts).
 *
 * - It opens its own reader: `(await import(module))[exportName](...args)` with the
 *   structured-cloneable spec from the main thread (which turns a backend URI into
 *   mount/compose.js `openComposed(uri, …)`). A reader living in the faulting thread could never
 *   run, so a reader never crosses threads.
 * - The fatal path: a fetch that a blocked thread waits on failed past its deadline, or this
 *   thread crashed (uncaught exception, unhandled rejection). A thread stopped on a page fault
 *   can never resume and the process would hang unseen, so it writes one line to stderr and
 *   kills the whole process with SIGKILL (exit status 137): loud, immediate, and no core dump of
 *   a huge mapping. SIGKILL rather than an error event because the main thread may be the one
 *   that is blocked, and then no JS of it ever runs again.
 * - Protocol (plain objects over parentPort, types in protocol.ts): worker → main: ready |
 *   open-failed | failed | drained | stopped; main → worker: drain. A byte on the stop pipe ends
 *   the poll loop; the reader is closed and the thread exits.
 */
import { writeSync } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import { createLogger } from '../log.js';
import { UffdFaultHandler, type UffdReader } from './fault-handler.js';
import { serializeError, type UffdHandlerData, type UffdHandlerReply, type UffdHandlerRequest, type UffdReaderSpec } from './protocol.js';

if (parentPort === null) throw new Error('uffd/handler-worker.js runs only as a worker thread');
const port = parentPort;
const data = workerData as UffdHandlerData;
const log = createLogger({ level: data.logLevel }).child({ component: 'uffd-handler', region: data.label });
let stopping = false;

/** Says why on stderr and kills the process; synchronous from start to end. */
function fatal(reason: string, err: unknown): never {
  const detail = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
  const stack = err instanceof Error && err.stack !== undefined ? `\n${err.stack.split('\n').slice(1, 6).join('\n')}` : '';
  const line = `r3map: FATAL: userfaultfd region ${data.label}: ${reason}: ${detail}. ` +
    `A thread blocked on a page fault of this region can never resume, so the process is killed (SIGKILL).${stack}\n`;
  try {
    log.fatal({ err }, reason);
    writeSync(2, line);
  } finally {
    process.kill(process.pid, 'SIGKILL');
  }
  throw new Error('unreachable: SIGKILL did not end the process');
}

function onCrash(err: unknown): void {
  if (stopping) log.error({ err }, 'the fault handler failed while stopping');
  else fatal('the fault handler crashed', err);
}
process.on('uncaughtException', onCrash);
process.on('unhandledRejection', onCrash);

function post(msg: UffdHandlerReply): void {
  port.postMessage(msg);
}

async function openReader(spec: UffdReaderSpec): Promise<UffdReader> {
  const mod = (await import(spec.module)) as Record<string, unknown>;
  const factory = mod[spec.exportName];
  if (typeof factory !== 'function') throw new TypeError(`${spec.module} has no function export '${spec.exportName}'`);
  const reader = (await (factory as (...args: unknown[]) => unknown)(...spec.args)) as Partial<UffdReader & { size: number }> | null;
  if (reader === null || typeof reader !== 'object' || typeof reader.readAt !== 'function') {
    throw new TypeError(`${spec.exportName}() from ${spec.module} did not return a ReaderAt`);
  }
  if (typeof reader.size === 'number' && reader.size < data.size) {
    await reader.close?.();
    throw new RangeError(`the reader has ${reader.size} bytes, fewer than the region's ${data.size}`);
  }
  return reader as UffdReader;
}

async function main(): Promise<void> {
  let reader: UffdReader;
  try {
    reader = await openReader(data.reader);
  } catch (err) {
    post({ type: 'open-failed', error: serializeError(err) });
    port.close();
    return;
  }
  const handler = new UffdFaultHandler(data, reader, { log, fatal, post });
  port.on('message', (msg: UffdHandlerRequest) => {
    if (msg.type === 'drain') handler.drain();
  });
  post({ type: 'ready' });
  await handler.run();
  stopping = true;
  handler.stop();
  try {
    await reader.close?.();
  } catch (err) {
    log.error({ err }, 'closing the reader failed');
  }
  post({ type: 'stopped' });
  port.close();
}

void main();
