import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { pageOrder, patternBuffer } from '../../src/bench/uffd-source.js';
import { makeTempDir, removeDir } from '../support/tools.js';
import { badPages, memory, MiB, PAGE, requireUserfaultfd, touchInThread, withRegion } from './support.js';

const SIZE = 64 * MiB;
const PAGES = SIZE / PAGE;

describe('mapReader', () => {
  let dir: string;
  let fileUri: string;
  before(async () => {
    dir = await makeTempDir('r3map-uffd-');
    const file = path.join(dir, 'pattern.img');
    await writeFile(file, patternBuffer(SIZE, 11));
    fileUri = pathToFileURL(file).href;
  });
  after(() => removeDir(dir));

  const cases = [
    { name: 'a file backend, read in order', source: () => fileUri, seed: 11, order: 'seq' },
    { name: 'a file backend, read in random page order', source: () => fileUri, seed: 11, order: 'rand' },
    { name: 'a pre-filled memory backend, read in order', source: () => memory(SIZE, 5), seed: 5, order: 'seq' },
    { name: 'a pre-filled memory backend, read in random page order', source: () => memory(SIZE, 5), seed: 5, order: 'rand' },
  ] as const;
  for (const c of cases) {
    it(`reads back every byte of a 64 MiB region backed by ${c.name}`, async (t) => {
      if (!requireUserfaultfd(t)) return;
      await withRegion(c.source(), SIZE, {}, (region) => {
        assert.equal(region.buffer.length, SIZE);
        assert.deepEqual(badPages(region.buffer, c.seed, pageOrder(PAGES, c.order === 'rand', 3)), []);
        assert.ok(region.buffer.equals(patternBuffer(SIZE, c.seed)), 'a second pass over resident pages agrees');
        const stats = region.stats;
        assert.equal(stats.residentChunks, stats.chunks);
        assert.equal(stats.fetchedBytes, SIZE, 'each chunk was fetched once');
        assert.equal(stats.faultedChunks, stats.chunks);
      });
    });
  }

  it('serves two regions at once, each from its own reader', async (t) => {
    if (!requireUserfaultfd(t)) return;
    await withRegion(fileUri, SIZE, { chunkSize: 16 * PAGE }, async (a) => {
      await withRegion(memory(8 * MiB, 9), 8 * MiB, { chunkSize: PAGE }, (b) => {
        const order = pageOrder(PAGES, true, 1);
        const bad: number[] = [];
        for (let i = 0; i < order.length; i++) {
          bad.push(...badPages(a.buffer, 11, [order[i]!]));
          if (order[i]! < b.buffer.length / PAGE) bad.push(...badPages(b.buffer, 9, [order[i]!]).map((p) => -p - 1));
        }
        assert.deepEqual(bad.slice(0, 8), []);
        assert.equal(b.stats.residentChunks, 8 * MiB / PAGE);
      });
    });
  });

  it('serves reads from several worker threads at once, interleaved on the same chunks', async (t) => {
    if (!requireUserfaultfd(t)) return;
    const size = 32 * MiB;
    await withRegion(memory(size, 5), size, {}, async (region) => {
      const threads = 4;
      const shares = Array.from({ length: threads }, (_, i) => pageOrder(size / PAGE, true, 100 + i).filter((p) => p % threads === i));
      const results = await Promise.all(shares.map((pages) => touchInThread(region.address, size, 5, pages)));
      assert.deepEqual(results.map((r) => r.mismatches), [[], [], [], []]);
      assert.equal(results.reduce((n, r) => n + r.checked, 0), size / PAGE);
      assert.ok(region.buffer.equals(patternBuffer(size, 5)));
    });
  });

  const sizes = [
    { name: 'one byte', size: 1, chunkSize: PAGE },
    { name: 'a partial last page', size: MiB + 1234, chunkSize: 64 * 1024 },
    { name: 'a partial last chunk', size: 3 * 64 * 1024 + 5 * PAGE, chunkSize: 64 * 1024 },
    { name: 'chunks larger than the region', size: 5 * PAGE, chunkSize: 1024 * 1024 },
  ];
  for (const s of sizes) {
    it(`reads back ${s.name} (size ${s.size}, chunkSize ${s.chunkSize}) up to its last byte`, async (t) => {
      if (!requireUserfaultfd(t)) return;
      await withRegion(memory(s.size, 21), s.size, { chunkSize: s.chunkSize }, (region) => {
        assert.equal(region.buffer.length, s.size);
        const reversed = Array.from({ length: Math.ceil(s.size / PAGE) }, (_, i) => Math.ceil(s.size / PAGE) - 1 - i);
        assert.deepEqual(badPages(region.buffer, 21, reversed), []);
        assert.equal(region.stats.fetchedBytes, s.size);
      });
    });
  }

  it('serves faults taken inside a syscall: write(2) of the untouched region to a file', async (t) => {
    if (!requireUserfaultfd(t)) return;
    await withRegion(memory(4 * MiB, 12), 4 * MiB, {}, async (region) => {
      const out = path.join(dir, 'written.img');
      writeFileSync(out, region.buffer);
      assert.ok((await readFile(out)).equals(patternBuffer(4 * MiB, 12)));
    });
  });

  it('coalesces faults on a chunk into one fetch: each 1 MiB chunk is read once however many pages fault', async (t) => {
    if (!requireUserfaultfd(t)) return;
    await withRegion(memory(8 * MiB, 4, 20), 8 * MiB, { chunkSize: MiB }, async (region) => {
      const pages = Uint32Array.from({ length: 8 * MiB / PAGE }, (_, i) => i);
      const results = await Promise.all([0, 1, 2].map((i) => touchInThread(region.address, 8 * MiB, 4, pageOrder(pages.length, true, 7 + i))));
      assert.deepEqual(results.map((r) => r.mismatches), [[], [], []]);
      assert.equal(region.stats.fetchedBytes, 8 * MiB);
      assert.equal(region.stats.faultedChunks, 8);
    });
  });
});
