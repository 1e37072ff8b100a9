import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { BackendError, UsageError } from '../../src/errors.js';
import { mapReader } from '../../src/uffd/map.js';
import { READERS_MODULE } from './support-readers.js';
import { patternBuffer } from '../../src/bench/uffd-source.js';
import { MADV_DONTNEED, madvise } from '../../src/kernel/ffi.js';
import { memory, MiB, PAGE, requireUserfaultfd, touchInThread, waitFor, within, withRegion } from './support.js';

const FATAL_CHILD = fileURLToPath(new URL('./support-fatal-child.js', import.meta.url));

describe('mapReader prefetch, failures and teardown', () => {
  it('prefetches every chunk without a single touch', async (t) => {
    if (!requireUserfaultfd(t)) return;
    await withRegion(memory(4 * MiB, 8), 4 * MiB, { chunkSize: 64 * 1024, prefetchWorkers: 3, prefetchPriority: 'descending' }, async (region) => {
      await waitFor(() => region.stats.residentChunks === 64, 'every chunk to be prefetched');
      assert.equal(region.stats.faults, 0);
      assert.equal(region.stats.prefetchedChunks, 64);
      assert.equal(region.stats.prefetchedBytes, 4 * MiB);
      assert.ok(region.buffer.equals(patternBuffer(4 * MiB, 8)));
    });
  });

  it('fetches a page again after MADV_DONTNEED dropped it, leaving the rest of its chunk alone', async (t) => {
    if (!requireUserfaultfd(t)) return;
    await withRegion(memory(MiB, 15), MiB, { chunkSize: 16 * PAGE }, (region) => {
      const expected = patternBuffer(MiB, 15);
      assert.ok(region.buffer.equals(expected));
      region.buffer[6 * PAGE] = expected[6 * PAGE]! ^ 0xff; // a local write in the same chunk
      expected[6 * PAGE] = region.buffer[6 * PAGE]!;
      const base = region.address;
      madvise(base + BigInt(5 * PAGE), PAGE, MADV_DONTNEED);
      madvise(base + BigInt(40 * PAGE), 2 * PAGE, MADV_DONTNEED);
      assert.ok(region.buffer.equals(expected), 'the dropped pages are back and the written page kept its write');
      assert.equal(region.stats.refaults, 2);
      assert.equal(region.stats.residentChunks, region.stats.chunks);
    });
  });

  it('retries a failing reader and serves the fault once it recovers', async (t) => {
    if (!requireUserfaultfd(t)) return;
    const source = { module: READERS_MODULE, exportName: 'openFlakyPattern', args: [MiB, 6, 3] };
    await withRegion(source, MiB, { retry: { baseDelayMs: 1, maxDelayMs: 5 } }, (region) => {
      assert.ok(region.buffer.equals(patternBuffer(MiB, 6)));
      assert.equal(region.stats.fetchRetries, 3);
    });
  });

  it('marks the region failed with an error event when prefetch fails past its deadline', async (t) => {
    if (!requireUserfaultfd(t)) return;
    const source = { module: READERS_MODULE, exportName: 'openFailingReader', args: [MiB] };
    await withRegion(source, MiB, { prefetchWorkers: 1, deadlineMs: 50, retry: { baseDelayMs: 1, maxDelayMs: 10 } }, async (region) => {
      const err = await within(new Promise<Error>((resolve) => region.events.once('error', resolve)), 10_000, 'the error event');
      assert.ok(err instanceof BackendError, `got ${String(err)}`);
      assert.equal(region.failed, err);
      assert.ok(region.stats.fetchRetries > 0);
    });
  });

  it('kills the process loudly when a fault cannot be served past the deadline, instead of hanging', async (t) => {
    if (!requireUserfaultfd(t)) return;
    const child = spawn(process.execPath, [FATAL_CHILD], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, R3MAP_LOG_LEVEL: 'silent' } });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
    const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve) => child.once('exit', (c, s) => resolve([c, s])));
    clearTimeout(timer);
    assert.equal(signal, 'SIGKILL', `exit code ${code}, stderr: ${stderr}`);
    assert.match(stderr, /r3map: FATAL: userfaultfd region .*could not be served/);
    assert.doesNotMatch(stderr, /touched/, 'the faulting read never returned');
  });

  it('closes without hanging while threads are blocked on faults, letting their copies finish', async (t) => {
    if (!requireUserfaultfd(t)) return;
    const region = await mapReader(memory(4 * MiB, 13, 1000), 4 * MiB, { chunkSize: MiB });
    const touches = [0, 1, 2].map((i) => touchInThread(region.address, 4 * MiB, 13, Uint32Array.of(i * (MiB / PAGE) + 5)));
    await waitFor(() => region.stats.faults >= 3, 'three blocked faults');
    t.diagnostic(`resident chunks when close() began: ${region.stats.residentChunks} of 3 faulted`);
    await region.close();
    const results = await Promise.all(touches);
    assert.deepEqual(results.map((r) => r.mismatches), [[], [], []]);
    await region.close(); // idempotent
  });

  it('rejects a reader module that does not build a ReaderAt, and cleans up', async (t) => {
    if (!requireUserfaultfd(t)) return;
    await assert.rejects(mapReader({ module: READERS_MODULE, exportName: 'openNotAReader' }, MiB), /did not return a ReaderAt/);
    await assert.rejects(mapReader({ module: READERS_MODULE, exportName: 'noSuchExport' }, MiB), /no function export/);
    await assert.rejects(mapReader('file:///nonexistent/r3map-uffd.img', MiB), /ENOENT/);
  });

  const bad = [
    { name: 'a chunk size that is not a multiple of the page size', size: MiB, options: { chunkSize: PAGE + 512 } },
    { name: 'a chunk size below the page size', size: MiB, options: { chunkSize: 512 } },
    { name: 'a size of zero', size: 0, options: {} },
    { name: 'a negative prefetch worker count', size: MiB, options: { prefetchWorkers: -1 } },
    { name: 'an unknown prefetch priority', size: MiB, options: { prefetchWorkers: 1, prefetchPriority: 'sideways' as 'ascending' } },
  ];
  for (const b of bad) {
    it(`refuses ${b.name} with a UsageError`, async () => {
      await assert.rejects(mapReader(memory(MiB, 1), b.size, b.options), UsageError);
    });
  }

  it('refuses a relative reader module path with a UsageError', async () => {
    await assert.rejects(mapReader({ module: './readers.js' }, MiB), UsageError);
  });
});
