/** commander argument parsers shared by every command and r3map-bench (one clear message for a bad flag value). */
import { InvalidArgumentError } from 'commander';
import { parseDurationMs, parseSize } from './size.js';
import { R3mapError, UsageError } from '../errors.js';

/** commander argParser for byte sizes: `--size 1GiB`. */
export function sizeArg(value: string): number {
  try {
    return parseSize(value);
  } catch (err) {
    throw new InvalidArgumentError(err instanceof R3mapError ? err.message : String(err));
  }
}

/** commander argParser for durations: `--push-interval 5s`. */
export function durationArg(value: string): number {
  try {
    return parseDurationMs(value);
  } catch (err) {
    throw new InvalidArgumentError(err instanceof R3mapError ? err.message : String(err));
  }
}

/** commander argParser for counts where 0 means "none". */
export function countArg(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value.trim()) || !Number.isSafeInteger(n)) {
    throw new InvalidArgumentError(`'${value}' is not a whole number (0 means none)`);
  }
  return n;
}

/** commander collector for repeatable flags. */
export function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}

/** commander argParser for a share: `95%`, `95`, `100%` → 0.95, 0.95, 1. */
export function percentArg(value: string): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*%?\s*$/.exec(value);
  const n = match === null ? NaN : Number(match[1]);
  if (!(n >= 0 && n <= 100)) throw new InvalidArgumentError(`'${value}' is not a share from 0% to 100%`);
  return n / 100;
}

/** commander argParser for comma-separated lists of numbers >= 0 (`--rtt 0,5,25`), each through `parse`. */
export function listArg(what: string, parse: (value: string) => number = Number): (value: string) => number[] {
  return (value) => {
    const items = value.split(',').map((v) => parse(v.trim()));
    if (items.length === 0 || items.some((n) => !Number.isFinite(n) || n < 0)) throw new UsageError(`${what}: expected numbers >= 0 separated by commas, got '${value}'`);
    return items;
  };
}
