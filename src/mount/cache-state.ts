/**
 * CacheState: the crash-safety record of a managed mount's file cache, kept next to it in
 * `<cache>.r3map-state`. It records which chunks the cache holds (local) and which ones the remote
 * may not hold durably (dirty), so that a mount restarted after `kill -9` or a power cut with the
 * same cache pulls no chunk it already has and pushes every write a FLUSH acknowledged. The design
 * and its argument are in docs/managed-mounts.md ("Crash safety").
 *
 * File: two slots of equal length (a multiple of 4096); a save writes the slot the newest valid
 * one is not in, then fdatasyncs, so a torn save leaves the other slot intact. A slot (LE):
 *
 *   0  magic "R3MAPCS1"       8  version u32 (1)     12 header bytes u32 (80)
 *   16 size u64 (lo, hi u32)  24 chunkSize u32      28 chunks u32
 *   32 sequence u64 (lo, hi)  40 sha256(remote id)  72 bitmap bytes u32   76 epoch u32
 *   80 local bitmap, dirty bitmap (bit i = chunk i, LSB first), then sha256 of everything before
 *
 * It saves and loads the stack's ChunkTable, nothing else: local = the `state` column is LOCAL;
 * dirty = the `dirty` bit, or a push not yet remote-synced (`unsynced`), or a write under way
 * (`writing`). Rules kept here:
 * - A chunk is saved as local only after a cache fdatasync that began after it became local
 *   ('full' saves). 'intent' saves keep the last saved local bits and only raise dirty bits;
 *   'forget' saves (a leecher's finalize) keep them minus the chunks no longer local, so they
 *   need no cache fdatasync.
 * - A chunk saved as local and clean promises "the cache holds what the remote durably holds", so
 *   a write may not change such a chunk before a save has raised its dirty bit: `beginWrite()`
 *   returns a promise to wait for in that case (grouped: one save serves every waiting write).
 * - On load, a chunk is restored local iff its local bit is set, and dirty iff both bits are set;
 *   a dirty bit without the local bit was a write never flushed to a chunk the cache did not
 *   hold yet: the chunk is pulled again and that write is dropped, as the NBD contract allows.
 * - Saves never overlap; a save requested during one runs after it with a fresh snapshot.
 * - `epoch` (0 for managed mounts) is a leecher's: the seeder epoch its last pre-copy round
 *   covered. It is read with the table's snapshot, in the same synchronous step, so a saved state
 *   never pairs an epoch with local bits older than the round that produced it.
 */
import { createHash } from 'node:crypto';
import { open, readFile, rename, rm, stat, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { UsageError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import { ChunkState } from '../pipeline/chunk-state.js';
import { RemoteSync, type ChunkTable } from '../pipeline/chunk-table.js';
import type { WriteGate } from '../pipeline/write-marks.js';
import { chunkCount } from '../util/chunks.js';

const MAGIC = Buffer.from('R3MAPCS1', 'latin1');
const VERSION = 1;
const HEADER_BYTES = 80;
const HASH_BYTES = 32;
const SLOT_ALIGN = 4096;
const RESET_HINT = 'resetCache / --reset-cache discards the state and pulls everything again (writes not yet pushed are lost)';
const noop = (): void => {};

export interface CacheStateIdentity {
  readonly size: number;
  readonly chunkSize: number;
  /** Names the remote; only its SHA-256 is stored. */
  readonly remoteId: string;
}

export interface CacheStateOptions {
  /** Delete any state first: the cache's content is then unknown and everything is pulled. */
  readonly reset?: boolean;
  /** Save local bits every intervalMs when something changed; 0 = only on explicit saves. */
  readonly intervalMs?: number;
  /** Receives failures of interval saves (they are logged too). */
  readonly onError?: (err: unknown) => void;
  readonly log?: Logger;
}

export interface RestoredChunks {
  /** No usable state existed (new cache, reset, or a state without a cache). */
  readonly fresh: boolean;
  /** Chunk indexes the cache holds. */
  readonly local: readonly number[];
  /** Chunk indexes (a subset of local) to push. */
  readonly dirty: readonly number[];
  /** Chunks dropped because an unflushed write to them never had their data local. */
  readonly discarded: number;
  /** The `epoch` saved with them (0 when fresh). */
  readonly epoch: number;
}

/**
 * 'full': fdatasync the cache, then record the table's local and dirty bits. 'forget': no cache
 * fdatasync; the saved local bits lose every chunk that is no longer local (claiming less is
 * always safe) and the current epoch is recorded with them. 'intent': only dirty bits are raised.
 */
export type SaveKind = 'full' | 'forget' | 'intent';
const LEVEL: Readonly<Record<SaveKind, number>> = { intent: 0, forget: 1, full: 2 };

export class CacheState implements WriteGate {
  readonly path: string;
  readonly chunks: number;
  readonly restored: RestoredChunks;
  /** Saved with every later snapshot (a leecher's last round; see the file comment). A u32. */
  epoch = 0;
  readonly #identity: CacheStateIdentity;
  readonly #idHash: Buffer;
  readonly #log: Logger;
  readonly #onError: ((err: unknown) => void) | undefined;
  readonly #intervalMs: number;
  readonly #slot: Buffer;
  #table: ChunkTable | undefined;
  #syncCache: (() => Promise<void>) | undefined;
  #savedChanges = 0;
  #handle: FileHandle | undefined;
  #sequence: number;
  #durableLocal: Uint8Array;
  #durableDirty: Uint8Array;
  #spareLocal: Uint8Array;
  #spareDirty: Uint8Array;
  #savingLocal: Uint8Array | undefined;
  #savingDirty: Uint8Array | undefined;
  #tail: Promise<unknown> = Promise.resolve();
  #queued: Promise<void> | undefined;
  #want = 0;
  #interval: NodeJS.Timeout | undefined;
  #closed = false;
  #durableEpoch = 0;

  /** `<cache>.r3map-state` */
  static pathFor(cachePath: string): string {
    return `${cachePath}.r3map-state`;
  }

  /**
   * Reads the state next to `cachePath` (before the cache is opened: a missing cache matters).
   * Throws a UsageError when it belongs to another remote, size or chunk size, or is unreadable.
   */
  static async load(cachePath: string, identity: CacheStateIdentity, options: CacheStateOptions = {}): Promise<CacheState> {
    const statePath = CacheState.pathFor(cachePath);
    const log = (options.log ?? silentLogger).child({ component: 'cache-state', path: statePath });
    if (options.reset === true) await rm(statePath, { force: true });
    const text = await readFile(statePath).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return undefined;
      throw new UsageError(`cannot read the cache state ${statePath}: ${err.message}`, { cause: err });
    });
    const state = new CacheState(statePath, identity, options, log);
    const cacheExists = await stat(cachePath).then(() => true, () => false);
    if (text === undefined) {
      if (cacheExists) log.warn({ cache: cachePath }, 'the cache has no state next to it: its content is not trusted, every chunk is pulled');
      return state;
    }
    const slot = state.#newestSlot(text);
    const bits = slot.subarray(HEADER_BYTES);
    const bytes = Math.ceil(state.chunks / 8);
    let dirtyCount = 0;
    for (let i = 0; i < state.chunks; i++) dirtyCount += bit(bits, bytes, i) & bit(bits, 0, i);
    if (!cacheExists) {
      if (dirtyCount > 0) {
        throw new UsageError(`the cache ${cachePath} is missing, but its state says ${dirtyCount} chunk(s) hold writes not yet pushed; ${RESET_HINT}`);
      }
      log.warn('the state has no cache next to it: starting fresh');
      return state;
    }
    state.#restore(slot);
    return state;
  }

  private constructor(statePath: string, identity: CacheStateIdentity, options: CacheStateOptions, log: Logger) {
    this.path = statePath;
    this.#identity = Object.freeze({ ...identity });
    this.#idHash = createHash('sha256').update(identity.remoteId).digest();
    this.chunks = chunkCount(identity.size, identity.chunkSize);
    if (this.chunks > 0xffffffff) throw new UsageError(`${this.chunks} chunks are too many for a cache state; use a larger chunk size`);
    this.#log = log;
    this.#onError = options.onError;
    this.#intervalMs = options.intervalMs ?? 0;
    const used = HEADER_BYTES + 2 * Math.ceil(this.chunks / 8) + HASH_BYTES;
    this.#slot = Buffer.alloc(Math.ceil(used / SLOT_ALIGN) * SLOT_ALIGN);
    this.#durableLocal = new Uint8Array(this.chunks);
    this.#durableDirty = new Uint8Array(this.chunks);
    this.#spareLocal = new Uint8Array(this.chunks);
    this.#spareDirty = new Uint8Array(this.chunks);
    this.#sequence = 0;
    this.restored = Object.freeze({ fresh: true, local: [], dirty: [], discarded: 0, epoch: 0 });
  }

  /** Sets the restored chunks in the table: LOCAL, and dirty where saved so (before any stage runs). */
  restoreInto(table: ChunkTable): void {
    this.#checkTable(table);
    for (const i of this.restored.local) table.setState(i, ChunkState.LOCAL);
    for (const i of this.restored.dirty) table.markDirty(i);
  }

  /**
   * Opens the state for saving `table`; `syncCache` fdatasyncs the cache. A fresh state is created whole
   * (temp file, fdatasync, rename); either way the directory is fsynced, so the cache file
   * (opened before this) and the state are both durable names.
   */
  async open(table: ChunkTable, syncCache: () => Promise<void>): Promise<void> {
    this.#checkTable(table);
    this.#table = table;
    this.#syncCache = syncCache;
    this.#savedChanges = table.changes;
    if (this.restored.fresh) {
      const tmp = `${this.path}.tmp`;
      const handle = await open(tmp, 'w', 0o644);
      try {
        this.#sequence = 1;
        this.#encode(this.#durableLocal, this.#durableDirty, this.#sequence, this.epoch);
        await handle.truncate(2 * this.#slot.length);
        await handle.write(this.#slot, 0, this.#slot.length, (this.#sequence % 2) * this.#slot.length);
        await handle.datasync();
      } finally {
        await handle.close();
      }
      await rename(tmp, this.path);
    }
    this.#handle = await open(this.path, 'r+');
    await syncDirectory(path.dirname(this.path));
    if (this.#intervalMs > 0) this.#interval = setInterval(this.#tick, this.#intervalMs).unref();
  }

  /**
   * Call before a write to chunk `index` reaches the cache, with the table's `writing` bit set
   * (WriteMarks does both). Returns a promise to wait for before writing when the chunk is saved
   * as local and clean; undefined when the write may go ahead at once.
   */
  beginWrite(index: number): Promise<void> | undefined {
    if (this.#mayChange(index)) return undefined;
    return this.save('intent');
  }

  /** Saves a snapshot taken after this call (see SaveKind); saves asked for meanwhile share one. */
  save(kind: SaveKind = 'full'): Promise<void> {
    if (this.#closed) return Promise.resolve();
    this.#want = Math.max(this.#want, LEVEL[kind]);
    if (this.#queued !== undefined) return this.#queued;
    const run = this.#tail.then(() => {
      this.#queued = undefined;
      const level = this.#want;
      this.#want = 0;
      return this.#run(level);
    });
    this.#queued = run;
    this.#tail = run.then(noop, noop);
    return run;
  }

  /** Stops the interval and waits for saves under way; the caller saves a last time first. */
  async close(): Promise<void> {
    this.#closed = true;
    clearInterval(this.#interval);
    await this.#tail;
    await this.#handle?.close();
    this.#handle = undefined;
  }

  readonly #tick = (): void => {
    const table = this.#table;
    if (table === undefined || table.changes === this.#savedChanges || this.#queued !== undefined) return;
    this.#savedChanges = table.changes;
    this.save('full').catch((err: unknown) => {
      this.#log.error({ err }, 'saving the cache state failed; the next flush retries');
      this.#savedChanges = -1;
      this.#onError?.(err);
    });
  };

  /** True unless some saved (or being saved) snapshot says "local and clean" for the chunk. */
  #mayChange(index: number): boolean {
    if (this.#durableLocal[index] === 1 && this.#durableDirty[index] === 0) return false;
    return this.#savingLocal === undefined || this.#savingLocal[index] === 0 || this.#savingDirty![index] === 1;
  }

  async #run(level: number): Promise<void> {
    const full = level === LEVEL.full;
    const table = this.#table;
    if (this.#handle === undefined || table === undefined) throw new Error('cache state is not open');
    const dirty = this.#spareDirty;
    for (let i = 0; i < this.chunks; i++) {
      dirty[i] = table.dirty[i]! | table.writing[i]! | (table.unsynced[i] !== RemoteSync.CLEAN ? 1 : 0);
    }
    let local = this.#durableLocal;
    const snapshot = level >= LEVEL.forget;
    if (snapshot) {
      local = this.#spareLocal;
      for (let i = 0; i < this.chunks; i++) {
        const now = table.state[i] === ChunkState.LOCAL ? 1 : 0;
        local[i] = full ? now : this.#durableLocal[i]! & now; // forget: only ever fewer
      }
    }
    const epoch = snapshot ? this.epoch : this.#durableEpoch; // with the local bits it belongs to
    this.#savingLocal = local;
    this.#savingDirty = dirty;
    try {
      if (full) await this.#syncCache!();
      const sequence = this.#sequence + 1;
      this.#encode(local, dirty, sequence, epoch);
      await this.#handle.write(this.#slot, 0, this.#slot.length, (sequence % 2) * this.#slot.length);
      await this.#handle.datasync();
      this.#sequence = sequence; // only now: a failed save rewrites the same slot, never the good one
    } finally {
      this.#savingLocal = this.#savingDirty = undefined;
    }
    this.#spareDirty = this.#durableDirty;
    this.#durableDirty = dirty;
    if (snapshot) {
      this.#spareLocal = this.#durableLocal;
      this.#durableLocal = local;
      this.#durableEpoch = epoch;
    }
  }

  #checkTable(table: ChunkTable): void {
    table.checkGeometry(this.#identity.chunkSize, this.#identity.size, `cache state ${this.path}`);
  }

  #encode(local: Uint8Array, dirty: Uint8Array, sequence: number, epoch: number): void {
    const slot = this.#slot.fill(0);
    const bytes = Math.ceil(this.chunks / 8);
    MAGIC.copy(slot, 0);
    slot.writeUInt32LE(VERSION, 8);
    slot.writeUInt32LE(HEADER_BYTES, 12);
    writeU64(slot, 16, this.#identity.size);
    slot.writeUInt32LE(this.#identity.chunkSize, 24);
    slot.writeUInt32LE(this.chunks, 28);
    writeU64(slot, 32, sequence);
    this.#idHash.copy(slot, 40);
    slot.writeUInt32LE(bytes, 72);
    slot.writeUInt32LE(epoch, 76);
    for (let i = 0; i < this.chunks; i++) {
      if (local[i] === 1) slot[HEADER_BYTES + (i >> 3)]! |= 1 << (i & 7);
      if (dirty[i] === 1) slot[HEADER_BYTES + bytes + (i >> 3)]! |= 1 << (i & 7);
    }
    const end = HEADER_BYTES + 2 * bytes;
    createHash('sha256').update(slot.subarray(0, end)).digest().copy(slot, end);
  }

  /** The valid slot with the highest sequence that matches our identity; throws otherwise. */
  #newestSlot(file: Buffer): Buffer {
    const half = file.length / 2;
    const slots = [file.subarray(0, half), file.subarray(half)].filter((s) => Number.isInteger(half) && isValidSlot(s));
    if (slots.length === 0) {
      const newer = [0, half].find((at) => Number.isInteger(at) && file.length >= at + 12 && file.subarray(at, at + 8).equals(MAGIC) && file.readUInt32LE(at + 8) > VERSION);
      const why = newer !== undefined ? `was written by a newer r3map (format ${file.readUInt32LE(newer + 8)}; this one reads ${VERSION})` : 'is corrupt (no valid slot)';
      throw new UsageError(`the cache state ${this.path} ${why}; ${RESET_HINT}`);
    }
    const newest = slots.reduce((a, b) => (readU64(b, 32) > readU64(a, 32) ? b : a));
    const { size, chunkSize } = this.#identity;
    const was = { size: readU64(newest, 16), chunkSize: newest.readUInt32LE(24) };
    if (was.size !== size) throw new UsageError(`the cache state ${this.path} is for a remote of ${was.size} bytes, but this remote has ${size}; ${RESET_HINT}`);
    if (was.chunkSize !== chunkSize) throw new UsageError(`the cache state ${this.path} uses chunk size ${was.chunkSize}, not ${chunkSize}: pass chunkSize ${was.chunkSize}, or ${RESET_HINT}`);
    if (!newest.subarray(40, 72).equals(this.#idHash)) {
      throw new UsageError(`the cache state ${this.path} was written for another remote (its remote id differs): pass the same remoteId / --remote-id as before, or ${RESET_HINT}`);
    }
    this.#sequence = readU64(newest, 32);
    return newest;
  }

  #restore(slot: Buffer): void {
    const bits = slot.subarray(HEADER_BYTES);
    const bytes = Math.ceil(this.chunks / 8);
    const local: number[] = [];
    const dirty: number[] = [];
    let discarded = 0;
    for (let i = 0; i < this.chunks; i++) {
      const l = bit(bits, 0, i);
      const d = bit(bits, bytes, i);
      if (l === 1) local.push(i);
      if (l === 1 && d === 1) dirty.push(i);
      if (l === 0 && d === 1) discarded++;
      this.#durableLocal[i] = l;
      this.#durableDirty[i] = d & l;
    }
    const epoch = slot.readUInt32LE(76);
    this.epoch = this.#durableEpoch = epoch;
    (this as { restored: RestoredChunks }).restored = Object.freeze({ fresh: false, local, dirty, discarded, epoch });
    this.#log.info({ local: local.length, dirty: dirty.length, discarded, chunks: this.chunks }, 'cache state restored');
  }
}

function isValidSlot(slot: Buffer): boolean {
  if (slot.length < HEADER_BYTES + HASH_BYTES || !slot.subarray(0, 8).equals(MAGIC)) return false;
  if (slot.readUInt32LE(8) !== VERSION || slot.readUInt32LE(12) !== HEADER_BYTES) return false;
  const end = HEADER_BYTES + 2 * slot.readUInt32LE(72);
  if (end + HASH_BYTES > slot.length || slot.readUInt32LE(72) !== Math.ceil(slot.readUInt32LE(28) / 8)) return false;
  return createHash('sha256').update(slot.subarray(0, end)).digest().equals(slot.subarray(end, end + HASH_BYTES));
}

function bit(bits: Buffer, base: number, i: number): number {
  return (bits[base + (i >> 3)]! >> (i & 7)) & 1;
}

function writeU64(buf: Buffer, off: number, value: number): void {
  buf.writeUInt32LE(value % 2 ** 32, off);
  buf.writeUInt32LE(Math.floor(value / 2 ** 32), off + 4);
}

function readU64(buf: Buffer, off: number): number {
  return buf.readUInt32LE(off + 4) * 2 ** 32 + buf.readUInt32LE(off);
}

async function syncDirectory(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
