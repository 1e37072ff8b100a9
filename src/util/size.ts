import { UsageError } from '../errors.js';

const UNITS: Readonly<Record<string, number>> = Object.freeze({
  '': 1, b: 1,
  k: 1024, kb: 1000, kib: 1024,
  m: 1024 ** 2, mb: 1000 ** 2, mib: 1024 ** 2,
  g: 1024 ** 3, gb: 1000 ** 3, gib: 1024 ** 3,
  t: 1024 ** 4, tb: 1000 ** 4, tib: 1024 ** 4,
});

/**
 * Parses a byte size such as `4096`, `64KiB`, `1GiB`, `1G` (binary) or `1GB` (decimal).
 * Throws a UsageError naming the flag and the accepted forms.
 */
export function parseSize(text: string, what = 'size'): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(text);
  const unit = m ? UNITS[m[2]!.toLowerCase()] : undefined;
  if (!m || unit === undefined) {
    throw new UsageError(`${what}: cannot parse '${text}' (use bytes or a unit: 4096, 64KiB, 1GiB, 1G, 1GB)`);
  }
  const value = Number(m[1]) * unit;
  if (!Number.isSafeInteger(value)) {
    throw new UsageError(`${what}: '${text}' is not a whole number of bytes`);
  }
  return value;
}

/** Parses a duration such as `250ms`, `5s`, `2m` or a bare number of milliseconds. */
export function parseDurationMs(text: string, what = 'duration'): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|us|µs)?\s*$/.exec(text);
  if (!m) throw new UsageError(`${what}: cannot parse '${text}' (use 250ms, 5s, 2m, 1h or milliseconds)`);
  const scale = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, us: 0.001, 'µs': 0.001 }[m[2] ?? 'ms'] ?? 1;
  return Number(m[1]) * scale;
}

/** 1536 -> "1.5 KiB", for logs and tables. */
export function formatSize(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = bytes;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${Number.isInteger(v) ? v : v.toFixed(1)} ${units[i]}`;
}
