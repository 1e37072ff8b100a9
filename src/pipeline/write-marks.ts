/**
 * WriteMarks: the stage that makes every write count, between ArbitraryReadWriterAt and
 * SyncedReadWriterAt (whole chunks, one write per chunk at a time: Arbitrary holds the chunk's
 * lock across the call).
 *
 * For each write to chunk i: the table's `writing` bit and `gate.beginWrite(i)` (a file cache's
 * CacheState: it may first have to save that the chunk is about to change), then the write, then
 * `table.markDirty(i)` — after the data landed, so a push that read the chunk before the write is
 * never taken for one that read it after — and only then is the write acknowledged. A write that
 * fails is marked too (it may have changed part of the chunk). The Pusher
 * pushes what is dirty; without one, the dirty bits are what a later mount pushes.
 * Reads pass through untouched. `writev` hands the pieces on as they are when `next` has it.
 */
import type { ChunkTable } from './chunk-table.js';
import type { ReadWriterAt, ScatterWriter } from './types.js';

/** Crash safety around a write to a chunk (CacheState implements it). */
export interface WriteGate {
  /**
   * Called before the write, with the chunk's `writing` bit already set; a promise returned must
   * settle before the write may start.
   */
  beginWrite(index: number): Promise<void> | undefined;
}

export interface WriteMarksOptions {
  readonly table: ChunkTable;
  readonly gate?: WriteGate;
}

export class WriteMarks implements ReadWriterAt, Required<ScatterWriter> {
  readonly #next: ReadWriterAt & ScatterWriter;
  readonly #table: ChunkTable;
  readonly #gate: WriteGate | undefined;

  constructor(next: ReadWriterAt & ScatterWriter, options: WriteMarksOptions) {
    this.#next = next;
    this.#table = options.table;
    this.#gate = options.gate;
  }

  readAt(buf: Buffer, off: number): Promise<void> {
    return this.#next.readAt(buf, off);
  }

  writeAt(buf: Buffer, off: number): Promise<void> {
    return this.#write(off, () => this.#next.writeAt(buf, off));
  }

  writev(bufs: readonly Buffer[], off: number): Promise<void> {
    const next = this.#next;
    if (next.writev === undefined) return this.writeAt(Buffer.concat(bufs), off);
    return this.#write(off, () => next.writev!(bufs, off));
  }

  async #write(off: number, write: () => Promise<void>): Promise<void> {
    const table = this.#table;
    const index = Math.floor(off / table.chunkSize);
    table.writing[index] = 1;
    let started = false;
    try {
      const wait = this.#gate?.beginWrite(index);
      if (wait !== undefined) await wait;
      started = true;
      await write();
    } finally {
      // A failed write may have changed part of the chunk: dirty too, so cache and remote agree.
      if (started) table.markDirty(index);
      table.writing[index] = 0;
    }
  }
}
