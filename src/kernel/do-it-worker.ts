/**
 * The body of a worker thread that sits in NBD_DO_IT (driven by do-it-thread.ts; never import it
 * elsewhere). It blocks every signal in its own thread once, at start (a signal delivered to the
 * thread in NBD_DO_IT makes the kernel drop the connection). Then, for each request, it reports its
 * thread id and calls NBD_DO_IT synchronously: the call returns only once the device disconnects.
 * The fd stays the caller's. One request at a time; the thread is reused for the next device.
 */
import { parentPort } from 'node:worker_threads';
import { KernelError } from '../errors.js';
import { blockAllSignals, gettid, ioctl } from './ffi.js';
import { NBD_DO_IT } from './nbd-ioctl.js';

export interface DoItRequest {
  /** The /dev/nbdX fd on which NBD_SET_SOCK succeeded. */
  readonly fd: number;
  readonly device: string;
}

export type DoItMessage =
  | { readonly type: 'started'; readonly tid: number }
  | { readonly type: 'returned' }
  | { readonly type: 'failed'; readonly errno: number };

if (parentPort === null) throw new Error('do-it-worker.js runs only as a worker thread');
const port = parentPort;

blockAllSignals();
const tid = gettid();

port.on('message', ({ fd, device }: DoItRequest) => {
  port.postMessage({ type: 'started', tid } satisfies DoItMessage);
  let done: DoItMessage;
  try {
    ioctl(fd, NBD_DO_IT, 0, 'NBD_DO_IT', device);
    done = { type: 'returned' };
  } catch (err) {
    if (!(err instanceof KernelError)) throw err;
    done = { type: 'failed', errno: err.errno };
  }
  port.postMessage(done);
});
