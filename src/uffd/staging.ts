/**
 * UffdStagingPool: chunk-sized buffers whose addresses UFFDIO_COPY can take as its source,
 * mapped by slab (1 MiB, or one chunk when chunks are larger), page aligned, and reused: a fault
 * costs no allocation once the pool has grown to the number of fetches in flight. One thread
 * owns a pool; release() unmaps everything and must only run once no slot is in use.
 */
import { MAP_ANONYMOUS, MAP_PRIVATE, mmap, munmap, PROT_READ, PROT_WRITE, viewOf, type Pointer } from '../kernel/ffi.js';
import { addressOf } from '../kernel/uffd.js';

const SLAB_BYTES = 1024 * 1024;

export interface StagingSlot {
  /** The address of buf's first byte. */
  readonly addr: number;
  readonly buf: Buffer;
}

export class UffdStagingPool {
  readonly #chunkSize: number;
  readonly #free: StagingSlot[] = [];
  readonly #slabs: { readonly pointer: Pointer; readonly length: number }[] = [];

  constructor(chunkSize: number) {
    this.#chunkSize = chunkSize;
  }

  take(): StagingSlot {
    const slot = this.#free.pop();
    if (slot !== undefined) return slot;
    const count = Math.max(1, Math.floor(SLAB_BYTES / this.#chunkSize));
    const length = count * this.#chunkSize;
    const pointer = mmap(length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
    this.#slabs.push({ pointer, length });
    const addr = addressOf(pointer);
    const all = viewOf(pointer, length);
    for (let i = count - 1; i > 0; i--) {
      this.#free.push({ addr: addr + i * this.#chunkSize, buf: all.subarray(i * this.#chunkSize, (i + 1) * this.#chunkSize) });
    }
    return { addr, buf: all.subarray(0, this.#chunkSize) };
  }

  give(slot: StagingSlot): void {
    this.#free.push(slot);
  }

  /** Unmaps every slab; the slots' buffers must never be touched again. */
  release(): void {
    for (const slab of this.#slabs.splice(0)) munmap(slab.pointer, slab.length);
    this.#free.length = 0;
  }
}
