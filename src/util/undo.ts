/**
 * Undo steps: what a composed stack runs, in order, when its opening fails half-way or when it is
 * closed. Every step runs even when an earlier one failed; each failure is logged once, and the
 * failures come back flat (a step that failed with an AggregateError contributes its errors).
 */
import type { Logger } from '../log.js';

export interface UndoStep {
  /** Completes "failed to …" in the log line, e.g. "close the backend". */
  readonly what: string;
  readonly run: () => Promise<unknown>;
}

/** Runs every step in order; resolves with the failures, flattened (never rejects). */
export async function runSteps(steps: readonly UndoStep[], log: Logger, who: string): Promise<unknown[]> {
  const failures: unknown[] = [];
  for (const step of steps) {
    try {
      await step.run();
    } catch (err) {
      log.error({ err }, `${who}: failed to ${step.what}: ${(err as Error).message}`);
      failures.push(...(err instanceof AggregateError ? err.errors : [err]));
    }
  }
  return failures;
}

/** Runs the steps and throws one AggregateError naming `what` when any failed. */
export async function runStepsOrThrow(steps: readonly UndoStep[], log: Logger, who: string, what: string): Promise<void> {
  const failures = await runSteps(steps, log, who);
  if (failures.length > 0) {
    throw new AggregateError(failures, `${what}: ${failures.map((e) => (e as Error).message).join('; ')}`);
  }
}

/**
 * After `err` broke an opening half-way: runs the undo steps, then throws `err` itself when they
 * all succeeded, else one AggregateError with `err` first (and as its cause).
 */
export async function undoAndThrow(err: unknown, steps: readonly UndoStep[], log: Logger, who: string): Promise<never> {
  const failures = await runSteps(steps, log, who);
  if (failures.length === 0) throw err;
  throw new AggregateError([err, ...failures], `${(err as Error).message} (and ${failures.length} cleanup step(s) failed)`, { cause: err });
}
