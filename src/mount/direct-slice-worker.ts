/**
 * The worker thread behind DirectSliceMount: it opens the backend from its URI, runs the NBD
 * server and attaches the device (openDeviceStack), so the thread that touches the mapping never
 * serves it. Protocol with the main thread (plain objects over parentPort):
 *   worker → main: { type: 'ready', path, size, transport } | { type: 'failed', error }
 *                  | { type: 'device-closed', error } | { type: 'done', id, error? }
 *   main → worker: { type: 'sync' | 'close', id }
 * After 'close' is answered the worker lets its event loop drain and exits.
 */
import { parentPort, workerData } from 'node:worker_threads';
import type { LevelWithSilent } from 'pino';
import { createLogger } from '../log.js';
import { openDeviceStack, resolveDirectMountOptions, type DeviceStack, type DirectMountOptions } from './direct.js';

export interface SliceWorkerData {
  readonly options: Omit<DirectMountOptions, 'backend' | 'log'> & { readonly backendUri: string };
  readonly logLevel: LevelWithSilent;
}

export interface SerializedError {
  readonly name: string;
  readonly message: string;
  readonly code: string | undefined;
}

export type SliceWorkerReply =
  | { readonly type: 'ready'; readonly path: string; readonly size: number; readonly transport: string }
  | { readonly type: 'failed'; readonly error: SerializedError }
  | { readonly type: 'device-closed'; readonly error: SerializedError | undefined }
  | { readonly type: 'done'; readonly id: number; readonly error?: SerializedError };

export type SliceWorkerRequest = { readonly type: 'sync' | 'close'; readonly id: number };

export function serializeError(err: unknown): SerializedError {
  const e = err instanceof Error ? err : new Error(String(err));
  const code = (e as { code?: unknown }).code;
  return { name: e.name, message: e.message, code: typeof code === 'string' ? code : undefined };
}

async function main(): Promise<void> {
  const port = parentPort!;
  const data = workerData as SliceWorkerData;
  const log = createLogger({ level: data.logLevel }).child({ thread: 'slice-worker' });
  let stack: DeviceStack;
  try {
    stack = await openDeviceStack(resolveDirectMountOptions(data.options), log);
  } catch (err) {
    port.postMessage({ type: 'failed', error: serializeError(err) } satisfies SliceWorkerReply);
    port.close();
    return;
  }
  void stack.closed.then((error) => port.postMessage({ type: 'device-closed', error: error && serializeError(error) } satisfies SliceWorkerReply));
  port.on('message', (msg: SliceWorkerRequest) => {
    const op = msg.type === 'sync' ? stack.sync() : stack.close();
    op.then(
      () => port.postMessage({ type: 'done', id: msg.id } satisfies SliceWorkerReply),
      (err: unknown) => port.postMessage({ type: 'done', id: msg.id, error: serializeError(err) } satisfies SliceWorkerReply),
    ).finally(() => {
      if (msg.type === 'close') port.close();
    });
  });
  port.postMessage({ type: 'ready', path: stack.path, size: stack.size, transport: stack.transport } satisfies SliceWorkerReply);
}

void main();
