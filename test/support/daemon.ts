/**
 * The one start/stop launcher shape for the test servers (redis-server, s3rver): spawn, wait for
 * the line that says it is ready (stdout; stderr is kept for the error), then end it with a
 * signal and wait for the exit. A child still running when the test process exits is killed
 * (the product's tracker, src/bench/processes.ts).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { trackChild } from '../../src/bench/processes.js';

export interface DaemonOptions<T> {
  /** Returns what the caller needs once `line` says the server is ready; undefined: not yet. */
  readonly ready: (line: string) => T | undefined;
  readonly timeoutMs: number;
  readonly cwd?: string;
}

export interface Daemon<T> {
  readonly child: ChildProcess;
  /** What `ready` returned. */
  readonly value: T;
  /** True while the process runs (even a paused one). */
  running(): boolean;
  /** SIGCONT (a stopped process cannot handle SIGTERM), then `signal`, SIGKILL after 5 s; waits for the exit. */
  end(signal: NodeJS.Signals): Promise<void>;
  /** SIGSTOP / SIGCONT: connections stay open, nothing answers. */
  pause(): void;
  resume(): void;
}

/** Starts `cmd args` and resolves once it is ready; rejects (the child killed) if it exits first or times out. */
export async function startDaemon<T>(name: string, cmd: string, args: readonly string[], options: DaemonOptions<T>): Promise<Daemon<T>> {
  const child = trackChild(spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], ...(options.cwd !== undefined ? { cwd: options.cwd } : {}) }));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  let output = '';
  const value = await new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${name} did not get ready within ${options.timeoutMs} ms\n${output}`));
    }, options.timeoutMs);
    createInterface({ input: child.stdout! }).on('line', (line) => {
      output = (output + line + '\n').slice(-8000);
      const found = options.ready(line);
      if (found !== undefined) {
        clearTimeout(timer);
        resolve(found);
      }
    });
    child.stderr!.on('data', (d: Buffer) => (output = (output + d.toString()).slice(-8000)));
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`${name} exited with ${code} before it was ready\n${output}`));
    });
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
  const running = (): boolean => child.exitCode === null && child.signalCode === null;
  return {
    child,
    value,
    running,
    end: async (signal) => {
      if (!running()) return;
      child.kill('SIGCONT');
      child.kill(signal);
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(timer);
    },
    pause: () => void child.kill('SIGSTOP'),
    resume: () => void child.kill('SIGCONT'),
  };
}
