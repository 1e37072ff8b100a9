/**
 * DirectoryBackend: one file per chunk in a directory, named by the chunk's byte offset in
 * decimal ("0", "65536", …).
 *
 * Guarantees: any offset and length inside [0, size) is split per chunk and the pieces run
 * concurrently. Writes are positional writes into the chunk file, so no read-modify-write is
 * needed and concurrent writes to different ranges of one chunk both survive. A chunk file is
 * created on its first write; a missing chunk, or the part of a chunk past its file's end,
 * reads as zeros, and reads never create files. Open handles are capped by an LRU (FdCache,
 * `maxOpenFiles`, 0 = no cap) that only closes idle handles. `sync()` fsyncs every chunk file
 * written since the last sync, then the directory once if files were created or removed.
 * `trim`/`zero` remove whole chunk files (or truncate them to empty while another call holds
 * the file) and write zeros over partial ones; a missing chunk is left missing. `extents` (NBD
 * block status) lists the directory once per call: a chunk without a file is a hole of zeros.
 */
import { constants, type FileHandle, mkdir, open, readdir, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { appendExtent } from '../pipeline/extents.js';
import { EXTENT_HOLE, EXTENT_ZERO, type Backend, type BackendExtent } from '../pipeline/types.js';
import { BackendError, OutOfRangeError, ReadOnlyError, UsageError } from '../errors.js';
import { CallGate } from '../util/call-gate.js';
import { DEFAULT_CHUNK_SIZE, checkChunkSize } from '../util/chunks.js';
import { settleAll } from '../util/settle-all.js';
import { FdCache, type FdLease } from './fd-cache.js';

export interface DirectoryBackendOptions {
  /** Size in bytes. */
  readonly size: number;
  /** Bytes per chunk file, 1 byte to 1 GiB; default DEFAULT_CHUNK_SIZE (64 KiB). */
  readonly chunkSize?: number;
  /** Cap on open chunk files; default 512, 0 = no cap. */
  readonly maxOpenFiles?: number;
  /** Refuse writes; the directory must exist. */
  readonly readOnly?: boolean;
}

interface ResolvedDirectoryBackendOptions {
  readonly size: number;
  readonly chunkSize: number;
  readonly maxOpenFiles: number;
  readonly readOnly: boolean;
}

const Op = { read: 'read', write: 'write', trim: 'trim', zero: 'zero' } as const;
type Op = (typeof Op)[keyof typeof Op];

const ZEROS = Buffer.alloc(64 * 1024);
const THREAD_POOL_SIZE = Number(process.env.UV_THREADPOOL_SIZE) || 4;

export class DirectoryBackend implements Backend {
  readonly dir: string;
  readonly size: number;
  readonly chunkSize: number;
  readonly readOnly: boolean;
  readonly maxInFlight = THREAD_POOL_SIZE;
  readonly canMultiConn = true;
  readonly options: ResolvedDirectoryBackendOptions;
  readonly #dirHandle: FileHandle;
  readonly #cache: FdCache<FileHandle>;
  /** Chunk files written since the last sync. */
  #dirty = new Set<string>();
  #dirChanged = false;
  readonly #gate = new CallGate('directory backend');

  private constructor(dir: string, dirHandle: FileHandle, options: ResolvedDirectoryBackendOptions) {
    this.dir = dir;
    this.#dirHandle = dirHandle;
    this.options = options;
    this.size = options.size;
    this.chunkSize = options.chunkSize;
    this.readOnly = options.readOnly;
    this.#cache = new FdCache<FileHandle>((name, create) => this.#openChunk(name, create), options.maxOpenFiles);
  }

  static async open(dir: string, options: DirectoryBackendOptions): Promise<DirectoryBackend> {
    const { size, chunkSize = DEFAULT_CHUNK_SIZE, maxOpenFiles = 512, readOnly = false } = options;
    if (!Number.isSafeInteger(size) || size < 0) {
      throw new UsageError(`directory backend size is out of range (0..2^53-1): ${size}`);
    }
    checkChunkSize(chunkSize, 'directory backend chunkSize');
    if (!Number.isSafeInteger(maxOpenFiles) || maxOpenFiles < 0) {
      throw new UsageError(`directory backend maxOpenFiles is out of range (0 = no cap, or more): ${maxOpenFiles}`);
    }
    try {
      if (!readOnly) await mkdir(dir, { recursive: true });
      const dirHandle = await open(dir, constants.O_RDONLY | constants.O_DIRECTORY);
      return new DirectoryBackend(dir, dirHandle, Object.freeze({ size, chunkSize, maxOpenFiles, readOnly }));
    } catch (err) {
      throw new BackendError({ backend: 'directory', op: 'open' }, `${dir}: ${(err as Error).message}`, { cause: err });
    }
  }

  /** Chunk files open now (for tests and diagnostics), and the most ever open at once. */
  get openFiles(): { readonly now: number; readonly peak: number } {
    return { now: this.#cache.openCount, peak: this.#cache.peakOpenCount };
  }

  readAt(buf: Buffer, off: number): Promise<void> {
    return this.#run(Op.read, buf, off, buf.length);
  }

  writeAt(buf: Buffer, off: number): Promise<void> {
    return this.#run(Op.write, buf, off, buf.length);
  }

  trim(off: number, length: number): Promise<void> {
    return this.#run(Op.trim, undefined, off, length);
  }

  zero(off: number, length: number): Promise<void> {
    return this.#run(Op.zero, undefined, off, length);
  }

  /** Block status: chunks with a file are data, the others holes of zeros (one readdir per call). */
  async extents(off: number, length: number): Promise<readonly BackendExtent[]> {
    this.#check(Op.read, off, length);
    this.#gate.enter();
    try {
      let names: string[];
      try {
        names = await readdir(this.dir);
      } catch (err) {
        throw this.#wrap(err, 'extents', off, length);
      }
      const end = off + length;
      const from = Math.floor(off / this.chunkSize) * this.chunkSize;
      const held: number[] = [];
      for (const name of names) {
        if (!/^\d+$/.test(name)) continue;
        const start = Number(name);
        if (start >= from && start < end) held.push(start);
      }
      held.sort((a, b) => a - b);
      // Walk the chunks that have files (not every chunk: a huge sparse range costs nothing).
      const out: { length: number; flags: number }[] = [];
      const push = (n: number, flags: number): void => appendExtent(out, n, flags);
      let pos = off;
      for (const start of held) {
        if (start > pos) push(start - pos, EXTENT_HOLE | EXTENT_ZERO);
        const stop = Math.min(end, start + this.chunkSize);
        if (stop > pos) push(stop - Math.max(pos, start), 0);
        pos = Math.max(pos, stop);
      }
      if (pos < end) push(end - pos, EXTENT_HOLE | EXTENT_ZERO);
      return out;
    } finally {
      this.#gate.leave();
    }
  }

  async sync(): Promise<void> {
    this.#gate.enter();
    const names = this.#dirty;
    this.#dirty = new Set();
    const dirChanged = this.#dirChanged;
    this.#dirChanged = false;
    try {
      const evictionErrors = this.#cache.takeErrors();
      if (evictionErrors.length > 0) throw new AggregateError(evictionErrors, 'closing evicted chunk files failed');
      for (const name of names) {
        const lease = await this.#cache.acquire(name, false);
        if (lease === undefined) continue; // removed by trim since
        try {
          await lease.handle.datasync();
        } finally {
          this.#cache.release(lease);
        }
        names.delete(name);
      }
      if (dirChanged) await this.#dirHandle.sync();
    } catch (err) {
      for (const name of names) this.#dirty.add(name); // retry them on the next sync
      if (dirChanged) this.#dirChanged = true;
      throw this.#wrap(err, 'sync');
    } finally {
      this.#gate.leave();
    }
  }

  close(): Promise<void> {
    return this.#gate.close(() => this.#close());
  }

  async #close(): Promise<void> {
    const results = await Promise.allSettled([this.#cache.close(), this.#dirHandle.close()]);
    const errors = results.flatMap((r) => (r.status === 'rejected' ? [r.reason as Error] : []));
    if (errors.length > 0) throw this.#wrap(new AggregateError(errors, errors.map((e) => e.message).join('; ')), 'close');
  }

  async #run(op: Op, buf: Buffer | undefined, off: number, length: number): Promise<void> {
    this.#check(op, off, length);
    this.#gate.enter();
    try {
      if (length === 0) return;
      const chunkSize = this.chunkSize;
      const first = Math.floor(off / chunkSize);
      const last = Math.floor((off + length - 1) / chunkSize);
      if (first === last) return await this.#piece(op, buf, 0, first * chunkSize, off - first * chunkSize, length);
      if (op === Op.trim || op === Op.zero) {
        // Unbounded in length: one chunk at a time keeps handles and promises bounded.
        for (let pos = off; pos < off + length; ) {
          const chunkOff = Math.floor(pos / chunkSize) * chunkSize;
          const n = Math.min(chunkOff + chunkSize, off + length) - pos;
          await this.#piece(op, buf, 0, chunkOff, pos - chunkOff, n);
          pos += n;
        }
        return;
      }
      const pending: Promise<void>[] = [];
      for (let index = first, done = 0; index <= last; index++) {
        const chunkOff = index * chunkSize;
        const inChunk = off + done - chunkOff;
        const n = Math.min(chunkSize - inChunk, length - done);
        pending.push(this.#piece(op, buf, done, chunkOff, inChunk, n));
        done += n;
      }
      await settleAll(pending); // every piece, failed or not: none may touch `buf` after we settle
    } catch (err) {
      throw this.#wrap(err, op, off, length);
    } finally {
      this.#gate.leave();
    }
  }

  /** One chunk's part of a call: `n` bytes at `inChunk` of the chunk at `chunkOff`, `bufOff` into `buf`. */
  async #piece(op: Op, buf: Buffer | undefined, bufOff: number, chunkOff: number, inChunk: number, n: number): Promise<void> {
    const name = String(chunkOff);
    const chunkLength = Math.min(this.chunkSize, this.size - chunkOff);
    if ((op === Op.trim || op === Op.zero) && n === chunkLength) {
      const removed = await this.#cache.discard(name, () => unlink(join(this.dir, name)));
      if (removed) this.#dirChanged = true;
      else await this.#truncate(name);
      return;
    }
    const lease = await this.#cache.acquire(name, op === Op.write);
    if (lease === undefined) {
      if (op === Op.read) (buf as Buffer).fill(0, bufOff, bufOff + n);
      return; // trim/zero of a missing chunk: already zeros
    }
    try {
      if (op === Op.read) await readFull(lease, buf as Buffer, bufOff, n, inChunk);
      else if (op === Op.write) await writeFull(lease, buf as Buffer, bufOff, n, inChunk);
      else await zeroFull(lease, n, inChunk);
    } finally {
      this.#cache.release(lease);
    }
    if (op !== Op.read) this.#dirty.add(name);
  }

  /** A whole-chunk trim while another call holds the file: empty it instead of removing it. */
  async #truncate(name: string): Promise<void> {
    const lease = await this.#cache.acquire(name, false);
    if (lease === undefined) return;
    try {
      await lease.handle.truncate(0);
    } finally {
      this.#cache.release(lease);
    }
    this.#dirty.add(name);
  }

  async #openChunk(name: string, create: boolean): Promise<FileHandle | undefined> {
    const path = join(this.dir, name);
    try {
      return await open(path, this.readOnly ? constants.O_RDONLY : constants.O_RDWR);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      if (!create) return undefined;
    }
    const handle = await open(path, constants.O_RDWR | constants.O_CREAT, 0o644);
    this.#dirChanged = true;
    return handle;
  }

  #check(op: Op, off: number, length: number): void {
    this.#gate.assertOpen();
    if (op !== Op.read && this.readOnly) throw new ReadOnlyError(`directory backend ${this.dir}`);
    if (!Number.isSafeInteger(off) || !Number.isSafeInteger(length) || off < 0 || length < 0 || off + length > this.size) {
      throw new OutOfRangeError(off, length, this.size);
    }
  }

  #wrap(err: unknown, op: string, off?: number, length?: number): BackendError {
    if (err instanceof BackendError) return err;
    const info = off === undefined ? { backend: 'directory', op } : { backend: 'directory', op, off, length };
    return new BackendError(info, `${this.dir}: ${(err as Error).message}`, { cause: err });
  }
}

async function readFull(lease: FdLease<FileHandle>, buf: Buffer, bufOff: number, n: number, pos: number): Promise<void> {
  for (let done = 0; done < n; ) {
    const { bytesRead } = await lease.handle.read(buf, bufOff + done, n - done, pos + done);
    if (bytesRead === 0) {
      buf.fill(0, bufOff + done, bufOff + n); // past the end of a chunk file that was written only in part
      return;
    }
    done += bytesRead;
  }
}

async function writeFull(lease: FdLease<FileHandle>, buf: Buffer, bufOff: number, n: number, pos: number): Promise<void> {
  for (let done = 0; done < n; ) {
    const { bytesWritten } = await lease.handle.write(buf, bufOff + done, n - done, pos + done);
    done += bytesWritten;
  }
}

async function zeroFull(lease: FdLease<FileHandle>, n: number, pos: number): Promise<void> {
  for (let done = 0; done < n; done += ZEROS.length) {
    await writeFull(lease, ZEROS, 0, Math.min(ZEROS.length, n - done), pos + done);
  }
}
