import { UsageError } from '../errors.js';
import { formatSize } from './size.js';

/** Chunk i covers [i * chunkSize, min((i + 1) * chunkSize, size)); the last chunk may be short. */
export function chunkCount(size: number, chunkSize: number): number {
  return Math.ceil(size / chunkSize);
}

/** The length of the chunk that starts at `off` (short for the last chunk of an unaligned size). */
export function chunkLength(off: number, size: number, chunkSize: number): number {
  return Math.min(chunkSize, size - off);
}

/**
 * The one default chunk size: the unit of chunked backends (dir, redis, s3, cassandra), of a
 * managed mount's pulls, pushes and cache state, and of migration. Every default says this name.
 */
export const DEFAULT_CHUNK_SIZE = 64 * 1024;

/** The largest chunk any backend or mount accepts unless it names a smaller limit: 1 GiB. */
export const CHUNK_SIZE_LIMIT = 1024 ** 3;

/**
 * The one chunk-size check: `value` must be a whole number of bytes from 1 to `max` (default
 * CHUNK_SIZE_LIMIT). Returns `value`; otherwise throws a UsageError that starts with `what`
 * (the URI parameter, flag or option being checked), e.g. "chunk-size must be a whole number of
 * bytes from 1 to 1 GiB, got 0".
 */
export function checkChunkSize(value: number, what: string, max: number = CHUNK_SIZE_LIMIT): number {
  if (!Number.isSafeInteger(value) || value < 1 || value > max) {
    const shown = formatSize(max);
    const limit = shown.includes('.') ? `${max} bytes` : shown;
    throw new UsageError(`${what} must be a whole number of bytes from 1 to ${limit}, got ${String(value)}`);
  }
  return value;
}
