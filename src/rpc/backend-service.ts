/**
 * BackendService: the Backend service's logic over any `Backend`, knowing no transport (as
 * r3map's pkg/services/backend_service.go). grpc-server.ts only translates messages and errors.
 *
 * Validate, act, then reply: a call's length is capped at `maxChunkSize` (r3map's "prevent DoS"
 * limit, 32 MiB by default) and its range checked against the backend's size before the backend
 * sees it. ReadAt reads straight into an already-encoded reply (codec `allocReadAtReply`), so the
 * payload is copied once, by the backend. Calls run concurrently; the backend orders them.
 */
import type { Backend } from '../pipeline/types.js';
import { OutOfRangeError, ReadOnlyError, UsageError } from '../errors.js';
import { allocReadAtReply, EMPTY, type Empty, type ReadAtReply, type SizeReply, type WriteAtReply } from './codec.js';

export const DEFAULT_MAX_CHUNK_SIZE = 32 * 1024 * 1024;

export interface BackendServiceOptions {
  /** Most bytes one ReadAt or WriteAt may move; default 32 MiB. */
  readonly maxChunkSize?: number;
  /** Refuse writes (PERMISSION_DENIED) even when the backend takes them. */
  readonly readOnly?: boolean;
}

export interface ResolvedBackendServiceOptions {
  readonly maxChunkSize: number;
  readonly readOnly: boolean;
}

export function resolveMaxChunkSize(value: number | undefined): number {
  const max = value ?? DEFAULT_MAX_CHUNK_SIZE;
  if (!Number.isSafeInteger(max) || max < 1 || max > 2 ** 31 - 1) {
    throw new UsageError(`max chunk size must be 1 byte .. 2 GiB - 1 (ReadAt's Length is an int32), got ${max}`);
  }
  return max;
}

/**
 * Checks one call's (length, off) against the cap and the size. Lengths come off the wire as
 * int32 and offsets as int64 (maybe negative or above 2^53): both are judged here.
 */
export function checkCall(op: string, length: number, off: number, size: number, maxChunkSize: number): void {
  if (!Number.isSafeInteger(length) || length < 0) throw new UsageError(`${op}: length ${length} is negative`);
  if (length > maxChunkSize) {
    throw new UsageError(`${op}: length ${length} is above this server's limit of ${maxChunkSize} bytes per call (--max-chunk-size)`);
  }
  if (!Number.isSafeInteger(off) || off < 0 || off + length > size) throw new OutOfRangeError(off, length, size);
}

export class BackendService {
  readonly options: ResolvedBackendServiceOptions;
  readonly #backend: Backend;

  constructor(backend: Backend, options: BackendServiceOptions = {}) {
    this.#backend = backend;
    this.options = Object.freeze({
      maxChunkSize: resolveMaxChunkSize(options.maxChunkSize),
      readOnly: options.readOnly ?? backend.readOnly ?? false,
    });
  }

  async readAt(length: number, off: number): Promise<ReadAtReply> {
    checkCall('ReadAt', length, off, this.#backend.size, this.options.maxChunkSize);
    const reply = allocReadAtReply(length);
    if (length > 0) await this.#backend.readAt(reply.p, off);
    return reply;
  }

  /** `p` is only used until the promise settles (it may be a view into the transport's buffer). */
  async writeAt(p: Buffer, off: number): Promise<WriteAtReply> {
    if (this.options.readOnly) throw new ReadOnlyError('this export');
    checkCall('WriteAt', p.length, off, this.#backend.size, this.options.maxChunkSize);
    if (p.length > 0) await this.#backend.writeAt(p, off);
    return { length: p.length };
  }

  async sync(): Promise<Empty> {
    await this.#backend.sync();
    return EMPTY;
  }

  size(): Promise<SizeReply> {
    return Promise.resolve({ size: this.#backend.size });
  }
}
