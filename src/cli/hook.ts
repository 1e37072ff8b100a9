/**
 * Hook commands (--on-suspend 'CMD', --on-resume 'CMD', …): run with /bin/sh -c, stdin closed,
 * stdout and stderr to our stderr (our stdout is for machine-readable lines), extra variables in
 * the environment (R3MAP_DEVICE, R3MAP_DIRTY_CHUNKS, …). A hook that exits non-zero, is killed or
 * runs past its timeout fails with a MigrationError that names it; the caller decides what fails.
 */
import { spawn } from 'node:child_process';
import { MigrationError } from '../errors.js';
import type { Logger } from '../log.js';

export interface HookOptions {
  /** The flag that gave it, for messages: '--on-suspend'. */
  readonly flag: string;
  readonly timeoutMs: number;
  readonly log: Logger;
}

export type HookEnv = Readonly<Record<string, string>>;

/** A function that runs `command` (or does nothing when it is undefined). */
export function hook(command: string | undefined, options: HookOptions): (env?: HookEnv) => Promise<void> {
  if (command === undefined || command.trim() === '') return () => Promise.resolve();
  return (env = {}) => runHook(command, env, options);
}

function runHook(command: string, env: HookEnv, { flag, timeoutMs, log }: HookOptions): Promise<void> {
  const started = performance.now();
  return new Promise<void>((resolve, reject) => {
    const child = spawn('/bin/sh', ['-c', command], { stdio: ['ignore', process.stderr, process.stderr], env: { ...process.env, ...env } });
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    timer.unref();
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(new MigrationError(`${flag} '${command}' could not start: ${err.message}`, { cause: err }));
    });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      const ms = performance.now() - started;
      if (code === 0) {
        log.info({ hook: flag, ms }, `${flag} done`);
        resolve();
        return;
      }
      const how = signal !== null ? (ms >= timeoutMs ? `ran past ${timeoutMs} ms and was killed` : `was killed by ${signal}`) : `exited ${code}`;
      reject(new MigrationError(`${flag} '${command}' ${how}`));
    });
  });
}
