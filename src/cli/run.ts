import { Command, CommanderError } from 'commander';
import { createLogger, type Logger } from '../log.js';
import { R3mapError } from '../errors.js';

/** Exit codes shared by every command. */
export const EXIT = Object.freeze({ OK: 0, FAILURE: 1, USAGE: 2 } as const);

export interface CommandContext {
  readonly log: Logger;
  /** Aborted on the first SIGINT/SIGTERM; a second signal exits at once. */
  readonly signal: AbortSignal;
}

/**
 * Runs one command: parses argv with commander, creates the root logger on stderr, maps errors to
 * exit codes (0 ok, 1 failure, 2 usage) and turns the first SIGINT/SIGTERM into an abort signal
 * that the command answers by closing cleanly; a second signal exits at once with 130.
 * This is the only place that decides exit codes.
 */
export async function runCommand(
  program: Command,
  action: (ctx: CommandContext) => Promise<number | void>,
  argv: readonly string[] = process.argv,
): Promise<never> {
  const log = createLogger();
  const controller = new AbortController();
  const onSignal = (sig: NodeJS.Signals): void => {
    if (controller.signal.aborted) {
      log.warn({ signal: sig }, 'second signal: exiting now');
      process.exit(130);
    }
    log.info({ signal: sig }, 'shutting down');
    controller.abort(new Error(`received ${sig}`));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  program.exitOverride();
  program.configureOutput({ writeErr: (s) => process.stderr.write(s) });
  let code: number;
  try {
    await program.parseAsync(argv as string[]);
    code = (await action({ log, signal: controller.signal })) ?? EXIT.OK;
  } catch (err) {
    code = exitCodeOf(err, program.name(), log);
  }
  process.off('SIGINT', onSignal);
  process.off('SIGTERM', onSignal);
  log.flush?.();
  process.exit(code);
}

/** The exit code of a command that failed with `err`: 2 for bad input (usage), 1 for everything else. */
export function exitCodeFor(err: unknown): number {
  if (err instanceof CommanderError) return err.exitCode === 0 ? EXIT.OK : EXIT.USAGE;
  return err instanceof R3mapError && err.code === 'ERR_USAGE' ? EXIT.USAGE : EXIT.FAILURE;
}

function exitCodeOf(err: unknown, name: string, log: Logger): number {
  // --help and --version end here with exitCode 0; commander already printed its message.
  if (err instanceof CommanderError) return exitCodeFor(err);
  if (exitCodeFor(err) === EXIT.USAGE) {
    process.stderr.write(`${name}: ${(err as Error).message}\n`);
    return EXIT.USAGE;
  }
  const message = err instanceof Error ? err.message : String(err);
  log.error({ err }, message);
  process.stderr.write(`${name}: ${message}\n`);
  return EXIT.FAILURE;
}
