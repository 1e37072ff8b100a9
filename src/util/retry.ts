/**
 * withRetry: runs `op` again after transient failures, with bounded exponential backoff and
 * jitter, and rethrows the last error once the retries are used up (or at once for an error
 * that is not transient). Each retry is logged once at warn. An aborted `signal` stops the
 * waiting and rethrows the last error.
 *
 *   await withRetry(() => client.get(key), { isTransient: isTransientNetworkError, log, what: 'redis GET' });
 *
 * Resolve the options once per component and reuse the object: the first attempt costs one
 * await and nothing else.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from '../log.js';
import { silentLogger } from '../log.js';
import { TimeoutError } from '../errors.js';

export interface RetryOptions {
  /** Attempts after the first; 0 = no retries. Default 5. */
  readonly retries?: number;
  /** Delay before the first retry; doubled for each further one. Default 50 ms. */
  readonly baseDelayMs?: number;
  /** Cap on one delay. Default 2000 ms. */
  readonly maxDelayMs?: number;
  /** True when `err` may go away on its own (connection refused/reset, timeouts). */
  readonly isTransient?: (err: unknown) => boolean;
  readonly log?: Logger;
  /** Names the operation in the log, e.g. 'redis GET r3map-65536'. */
  readonly what?: string;
  /** Stops retrying (the last error is rethrown) once aborted. */
  readonly signal?: AbortSignal;
}

/** Socket-level error codes that a reconnect may cure. */
const TRANSIENT_CODES: ReadonlySet<string> = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ETIMEDOUT',
  'EPIPE',
  'ENOTCONN',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENETDOWN',
  'EAI_AGAIN',
  'ECONNABORTED',
  'UND_ERR_SOCKET',
  'UND_ERR_CONNECT_TIMEOUT',
]);

/** True when `err` (or an error in its `cause` chain or an AggregateError's list) has a transient socket code. */
export function isTransientNetworkError(err: unknown): boolean {
  for (let e: unknown = err, depth = 0; e instanceof Error && depth < 8; e = e.cause, depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string' && TRANSIENT_CODES.has(code)) return true;
    if (e instanceof AggregateError && e.errors.some((inner) => isTransientNetworkError(inner))) return true;
  }
  return false;
}

/** The delay before retry number `attempt` (0-based): exponential, capped, with "equal jitter". */
export function backoffDelayMs(attempt: number, baseDelayMs: number, maxDelayMs: number): number {
  const ceiling = Math.min(maxDelayMs, baseDelayMs * 2 ** Math.min(attempt, 30));
  return Math.round(ceiling / 2 + Math.random() * (ceiling / 2));
}

export async function withRetry<T>(op: () => Promise<T>, options: RetryOptions = {}): Promise<T> {
  const retries = options.retries ?? 5;
  for (let attempt = 0; ; attempt++) {
    try {
      return await op();
    } catch (err) {
      const transient = (options.isTransient ?? isTransientNetworkError)(err);
      if (!transient || attempt >= retries || options.signal?.aborted === true) throw err;
      const delayMs = backoffDelayMs(attempt, options.baseDelayMs ?? 50, options.maxDelayMs ?? 2000);
      (options.log ?? silentLogger).warn(
        { err, what: options.what, attempt: attempt + 1, retries, delayMs },
        'transient error, retrying',
      );
      try {
        await sleep(delayMs, undefined, options.signal === undefined ? undefined : { signal: options.signal });
      } catch {
        throw err; // aborted while waiting: report the store's error, not the abort
      }
    }
  }
}

/**
 * Settles like `promise`, or rejects with TimeoutError after `timeoutMs` (0 = no bound). The
 * timer is unref'd and cleared; on a timeout `promise` keeps running (cancel it via `onTimeout`).
 */
export function withTimeout<T>(promise: Promise<T>, timeoutMs: number, message: string, onTimeout?: () => void): Promise<T> {
  if (timeoutMs === 0) return promise;
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => {
      onTimeout?.();
      reject(new TimeoutError(`${message}: no answer within ${timeoutMs} ms`));
    }, timeoutMs);
    timer.unref();
    promise.then(
      (value) => {
        clearTimeout(timer);
        resolve(value);
      },
      (err: unknown) => {
        clearTimeout(timer);
        reject(err);
      },
    );
  });
}
