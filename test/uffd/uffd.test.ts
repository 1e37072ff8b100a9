import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { KernelError } from '../../src/errors.js';
import { Errno } from '../../src/kernel/errno.js';
import { bufferAddress, MAP_ANONYMOUS, MAP_PRIVATE, mmap, munmap, PROT_READ, PROT_WRITE, viewOf } from '../../src/kernel/ffi.js';
import { addressOf, readU64, Uffd, writeU64 } from '../../src/kernel/uffd.js';
import { UFFD_MSG_BYTES } from '../../src/kernel/uffd-constants.js';
import { PAGE, requireUserfaultfd } from './support.js';

describe('u64 fields', () => {
  for (const value of [0, 1, 2 ** 32 - 1, 2 ** 32, 0x7fff_1234_5000, Number.MAX_SAFE_INTEGER]) {
    it(`round-trips ${value} through writeU64 and readU64`, () => {
      const buf = Buffer.alloc(8);
      writeU64(buf, 0, value);
      assert.equal(readU64(buf, 0), value);
      assert.equal(buf.readBigUInt64LE(0), BigInt(value));
    });
  }
});

/**
 * Every test here resolves pages with UFFDIO_COPY from this thread and never touches a page
 * that is still missing (that would block this thread on its own fault).
 */
describe('Uffd', () => {
  const withRange = (pages: number, fn: (uffd: Uffd, base: number, view: Buffer) => void): void => {
    const uffd = Uffd.create();
    const pointer = mmap(pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
    try {
      const base = addressOf(pointer);
      uffd.register(base, pages * PAGE);
      fn(uffd, base, viewOf(pointer, pages * PAGE));
    } finally {
      uffd.close();
      munmap(pointer, pages * PAGE);
    }
  };
  const source = (pages: number, fill: number): { buf: Buffer; addr: number } => {
    const buf = Buffer.alloc(pages * PAGE, fill);
    return { buf, addr: addressOf(bufferAddress(buf)) };
  };

  it('copies whole pages into a registered range, where they read back', (t) => {
    if (!requireUserfaultfd(t)) return;
    withRange(4, (uffd, base, view) => {
      const src = source(2, 0xab);
      assert.equal(uffd.copy(base, src.addr, 2 * PAGE), 2 * PAGE);
      assert.ok(view.subarray(0, 2 * PAGE).equals(src.buf));
    });
  });

  it('returns -EEXIST for a copy onto a page that is already mapped', (t) => {
    if (!requireUserfaultfd(t)) return;
    withRange(2, (uffd, base) => {
      const src = source(1, 1);
      assert.equal(uffd.copy(base, src.addr, PAGE), PAGE);
      assert.equal(uffd.copy(base, src.addr, PAGE), -Errno.EEXIST);
    });
  });

  it('stops a copy at the first mapped page and returns the bytes copied before it', (t) => {
    if (!requireUserfaultfd(t)) return;
    withRange(4, (uffd, base, view) => {
      const later = source(1, 2);
      assert.equal(uffd.copy(base + 2 * PAGE, later.addr, PAGE), PAGE);
      const src = source(3, 3);
      assert.equal(uffd.copy(base, src.addr, 3 * PAGE), 2 * PAGE);
      assert.ok(view.subarray(0, 2 * PAGE).equals(src.buf.subarray(0, 2 * PAGE)));
      assert.ok(view.subarray(2 * PAGE, 3 * PAGE).equals(later.buf), 'the mapped page is left alone');
    });
  });

  it('reads no message when no thread is waiting on a fault', (t) => {
    if (!requireUserfaultfd(t)) return;
    withRange(1, (uffd) => {
      assert.equal(uffd.readMessages(Buffer.alloc(4 * UFFD_MSG_BYTES)), 0);
    });
  });

  it('lets an untouched page fault in as zeros once the range is unregistered', (t) => {
    if (!requireUserfaultfd(t)) return;
    withRange(2, (uffd, base, view) => {
      uffd.unregister(base, 2 * PAGE);
      assert.ok(view.subarray(PAGE, 2 * PAGE).equals(Buffer.alloc(PAGE)));
    });
  });

  it('refuses to register a range that is not page aligned, with EINVAL', (t) => {
    if (!requireUserfaultfd(t)) return;
    withRange(2, (_uffd, base) => {
      const other = Uffd.create();
      try {
        assert.throws(() => other.register(base + 1, PAGE), (err: unknown) => err instanceof KernelError && err.errno === Errno.EINVAL && err.syscall === 'UFFDIO_REGISTER');
      } finally {
        other.close();
      }
    });
  });
});
