/**
 * How a command tells its caller a device is ready, and then waits: the ready file (written
 * atomically, removed on exit), one line on stdout, sd_notify READY=1; then a shutdown signal or
 * the device's loss. Shared by r3map-mount, r3map-seed and r3map-leech.
 */
import { rename, rm, writeFile } from 'node:fs/promises';
import { EXIT, type CommandContext } from './run.js';
import { notifyReady } from './sd-notify.js';

export interface Announced {
  /** Removes the ready file (if one was written); idempotent. */
  withdraw(): Promise<void>;
}

/** Writes the ready file and the stdout line, and notifies systemd. */
export async function announce(path: string, readyFile: string | undefined, { log }: Pick<CommandContext, 'log'>): Promise<Announced> {
  let written = false;
  if (readyFile !== undefined) {
    await writeAtomically(readyFile, `${path}\n`);
    written = true;
  }
  process.stdout.write(`${path}\n`);
  await notifyReady(log);
  return {
    withdraw: async () => {
      if (!written || readyFile === undefined) return;
      written = false;
      await rm(readyFile, { force: true });
    },
  };
}

/**
 * Tells the caller a device is ready (see announce), then waits for a shutdown signal, the
 * device's loss, or `done`; removes the ready file before it returns.
 */
export async function announceAndWait(
  path: string,
  readyFile: string | undefined,
  closed: Promise<Error | undefined>,
  ctx: CommandContext,
  done?: Promise<void>,
): Promise<number> {
  const announced = await announce(path, readyFile, ctx);
  try {
    return await waitForEnd(path, closed, ctx, done);
  } finally {
    await announced.withdraw();
  }
}

/** Waits for a shutdown signal (0), `done` (0) or the device's loss (1, logged). */
export async function waitForEnd(path: string, closed: Promise<Error | undefined>, { log, signal }: CommandContext, done?: Promise<void>): Promise<number> {
  const lost = await Promise.race([untilAborted(signal), closed, ...(done !== undefined ? [done.then(() => undefined)] : [])]);
  if (lost === undefined) return EXIT.OK;
  log.error({ err: lost, device: path }, `the device went away: ${lost.message}`);
  return EXIT.FAILURE;
}

export function untilAborted(signal: AbortSignal): Promise<undefined> {
  if (signal.aborted) return Promise.resolve(undefined);
  return new Promise((resolve) => signal.addEventListener('abort', () => resolve(undefined), { once: true }));
}

export async function writeAtomically(path: string, text: string): Promise<void> {
  const tmp = `${path}.${process.pid}.tmp`;
  await writeFile(tmp, text);
  await rename(tmp, path);
}
