/**
 * DoItThread: a worker thread (do-it-worker.ts) that runs one NBD_DO_IT at a time. NBD_DO_IT
 * blocks for the device's whole life, so it never runs on the libuv threadpool (it would starve
 * it) nor on the main thread. Starting a worker costs ~100 ms on hardware and seconds under
 * emulation, so idle threads are pooled (at most MAX_IDLE) and reused. A thread is ref'd only
 * while its NBD_DO_IT runs: an idle pool never keeps the process alive.
 */
import { Worker } from 'node:worker_threads';
import { KernelError } from '../errors.js';
import type { DoItMessage, DoItRequest } from './do-it-worker.js';
import { errnoName } from './errno.js';

const MAX_IDLE = 2;
const idle: DoItThread[] = [];

interface Running {
  readonly request: DoItRequest;
  readonly onStarted: (tid: number) => void;
  readonly resolve: (err: Error | undefined) => void;
}

export class DoItThread {
  readonly #worker: Worker;
  #running: Running | undefined = undefined;
  #dead: Error | undefined = undefined;

  /** An idle pooled thread, or a new one (starting it in the background). */
  static acquire(): DoItThread {
    return idle.pop() ?? new DoItThread();
  }

  private constructor() {
    this.#worker = new Worker(new URL('./do-it-worker.js', import.meta.url));
    this.#worker.unref();
    this.#worker.on('message', (msg: DoItMessage) => this.#onMessage(msg));
    this.#worker.on('error', (err: unknown) => this.#die(err instanceof Error ? err : new Error(String(err))));
    this.#worker.on('exit', (code) => this.#die(new Error(`the NBD_DO_IT worker thread exited with code ${code}`)));
  }

  /**
   * Runs NBD_DO_IT on `request.fd` in the thread. Resolves when it returns: with undefined, or
   * with the KernelError it failed with, or the error that ended the thread.
   */
  run(request: DoItRequest, onStarted: (tid: number) => void = () => undefined): Promise<Error | undefined> {
    if (this.#running !== undefined) throw new Error('DoItThread.run: NBD_DO_IT is already running in this thread');
    if (this.#dead !== undefined) return Promise.resolve(this.#dead);
    this.#worker.ref();
    return new Promise((resolve) => {
      this.#running = { request, onStarted, resolve };
      this.#worker.postMessage(request);
    });
  }

  /** Gives the thread back once run() has resolved (or was never called). */
  release(): void {
    if (this.#running !== undefined || this.#dead !== undefined) return;
    this.#worker.unref();
    if (idle.length < MAX_IDLE) idle.push(this);
    else void this.#worker.terminate();
  }

  #onMessage(msg: DoItMessage): void {
    const running = this.#running;
    if (running === undefined) return;
    if (msg.type === 'started') {
      running.onStarted(msg.tid);
      return;
    }
    const { device } = running.request;
    this.#finish(msg.type === 'returned' ? undefined : new KernelError({ syscall: 'NBD_DO_IT', errno: msg.errno, errnoName: errnoName(msg.errno), device }));
  }

  #finish(err: Error | undefined): void {
    const running = this.#running;
    this.#running = undefined;
    if (this.#dead === undefined) this.#worker.unref();
    running?.resolve(err);
  }

  #die(err: Error): void {
    if (this.#dead !== undefined) return;
    this.#dead = err;
    const at = idle.indexOf(this);
    if (at >= 0) idle.splice(at, 1);
    if (this.#running !== undefined) this.#finish(err);
  }
}
