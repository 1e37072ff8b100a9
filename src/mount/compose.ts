/**
 * The one place a backend that only takes whole blocks (Backend.blockSize > 1: a chunk store) is
 * made to take any range. Backends deliver what they natively accept and declare it; a caller
 * that needs any (off, length) inside [0, size) opens through `openComposed` (openBackend + this
 * wrapping) or wraps an opened backend with `composeBackend`.
 *
 * Guarantees of the composed backend (what ChunkStoreBackend guaranteed before the split):
 * - Any (off, length) inside [0, size) is split into whole blocks by ArbitraryReadWriterAt:
 *   partial-block writes are read-modify-write under that block's lock; outside the range rejects
 *   with OutOfRangeError before the backend is touched.
 * - trim/zero of any range (present when the backend has them): whole blocks reach the backend's
 *   trim/zero, under the same block lock as an RMW of that block; partial blocks get zeros written
 *   (RMW). One block per worker at a time, the backend's `maxInFlight` workers (16 when 0).
 * - Writes, trim and zero reject with ReadOnlyError when the backend is read-only, before any
 *   read; every call after close() rejects with ClosedError; close() waits for the calls in
 *   flight (a whole RMW included), then closes the backend; idempotent.
 * - size, readOnly, maxInFlight and canMultiConn are the backend's; blockSize is 1.
 * A backend with blockSize undefined or 1 is returned as it is.
 */
import { ChunkStoreBackend } from '../backends/chunk-store.js';
import { openBackend, type OpenBackendOptions } from '../backends/open.js';
import { OutOfRangeError, ReadOnlyError } from '../errors.js';
import { ArbitraryReadWriterAt } from '../pipeline/arbitrary.js';
import type { Backend, BackendExtent, ReadWriterAt } from '../pipeline/types.js';
import { CallGate } from '../util/call-gate.js';
import { settleAll } from '../util/settle-all.js';

/** Opens the backend a URI names so that it takes any range (openBackend, then composeBackend). */
export async function openComposed(uri: string, options: OpenBackendOptions = {}): Promise<Backend> {
  return composeBackend(await openBackend(uri, options));
}

/** `backend` taking any range: wrapped in ArbitraryReadWriterAt when its blockSize is above 1. */
export function composeBackend(backend: Backend): Backend {
  const blockSize = backend.blockSize ?? 1;
  return blockSize > 1 ? new ComposedBackend(backend, blockSize) : backend;
}

/** How errors name the backend ('redis backend', …), as the backend itself names it. */
function describe(backend: Backend): string {
  return backend instanceof ChunkStoreBackend ? `${backend.store.name} backend` : 'backend';
}

/** A block-granular backend behind ArbitraryReadWriterAt, with trim/zero split the same way. */
export class ComposedBackend implements Backend {
  readonly size: number;
  readonly readOnly: boolean;
  readonly maxInFlight: number;
  readonly canMultiConn: boolean;
  readonly fastZero: boolean;
  readonly blockSize = 1;
  /** Bytes per block of the backend underneath. */
  readonly innerBlockSize: number;
  trim?: (off: number, length: number) => Promise<void>;
  zero?: (off: number, length: number) => Promise<void>;
  extents?: (off: number, length: number) => Promise<readonly BackendExtent[]>;
  readonly #inner: Backend;
  readonly #arbitrary: ArbitraryReadWriterAt;
  readonly #gate: CallGate;
  /** Whole-block writes whose bytes live in these (all-zero) buffers are trims / zeroes. */
  #trimMarker: Buffer | undefined;
  #zeroMarker: Buffer | undefined;

  constructor(inner: Backend, blockSize: number) {
    this.#inner = inner;
    this.innerBlockSize = blockSize;
    this.size = inner.size;
    this.readOnly = inner.readOnly ?? false;
    this.maxInFlight = inner.maxInFlight ?? 0;
    this.canMultiConn = inner.canMultiConn ?? false;
    this.fastZero = inner.fastZero ?? false;
    this.#gate = new CallGate(describe(inner));
    const next: ReadWriterAt = {
      readAt: (buf, off) => inner.readAt(buf, off),
      writeAt: (buf, off) => {
        if (this.#trimMarker !== undefined && buf.buffer === this.#trimMarker.buffer) return inner.trim!(off, buf.length);
        if (this.#zeroMarker !== undefined && buf.buffer === this.#zeroMarker.buffer) return inner.zero!(off, buf.length);
        return inner.writeAt(buf, off);
      },
    };
    this.#arbitrary = new ArbitraryReadWriterAt(next, { chunkSize: blockSize, size: inner.size });
    if (inner.trim !== undefined) this.trim = (off, length) => this.#discard(off, length, 'trim');
    if (inner.zero !== undefined) this.zero = (off, length) => this.#discard(off, length, 'zero');
    if (inner.extents !== undefined) this.extents = (off, length) => this.#extents(off, length);
  }

  /** Block status passes through (the backend reports any range at its own granularity). */
  async #extents(off: number, length: number): Promise<readonly BackendExtent[]> {
    this.#enter(false);
    try {
      return await this.#inner.extents!(off, length);
    } finally {
      this.#gate.leave();
    }
  }

  /** The backend underneath (for tests and diagnostics). */
  get inner(): Backend {
    return this.#inner;
  }

  async readAt(buf: Buffer, off: number): Promise<void> {
    this.#enter(false);
    try {
      await this.#arbitrary.readAt(buf, off);
    } finally {
      this.#gate.leave();
    }
  }

  async writeAt(buf: Buffer, off: number): Promise<void> {
    this.#enter(true);
    try {
      await this.#arbitrary.writeAt(buf, off);
    } finally {
      this.#gate.leave();
    }
  }

  async sync(): Promise<void> {
    this.#enter(false);
    try {
      await this.#inner.sync();
    } finally {
      this.#gate.leave();
    }
  }

  close(): Promise<void> {
    return this.#gate.close(() => this.#inner.close());
  }

  async #discard(off: number, length: number, op: 'trim' | 'zero'): Promise<void> {
    this.#enter(true);
    try {
      if (!Number.isSafeInteger(off) || !Number.isSafeInteger(length) || off < 0 || length < 0 || off + length > this.size) {
        throw new OutOfRangeError(off, length, this.size);
      }
      const marker = op === 'trim' ? (this.#trimMarker ??= Buffer.alloc(this.innerBlockSize)) : (this.#zeroMarker ??= Buffer.alloc(this.innerBlockSize));
      const end = off + length;
      const blockSize = this.innerBlockSize;
      let next = off;
      let failed = false;
      const worker = async (): Promise<void> => {
        while (next < end && !failed) {
          const pos = next;
          const stop = Math.min(end, (Math.floor(pos / blockSize) + 1) * blockSize);
          next = stop;
          try {
            await this.#arbitrary.writeAt(marker.subarray(0, stop - pos), pos);
          } catch (err) {
            failed = true;
            throw err;
          }
        }
      };
      const workers = Math.max(1, Math.min(this.maxInFlight || 16, Math.ceil(length / blockSize)));
      await settleAll(Array.from({ length: workers }, worker));
    } finally {
      this.#gate.leave();
    }
  }

  #enter(write: boolean): void {
    this.#gate.assertOpen();
    if (write && this.readOnly) throw new ReadOnlyError(this.#gate.what);
    this.#gate.enter();
  }
}
