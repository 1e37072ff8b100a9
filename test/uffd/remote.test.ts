import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { mapReader, type UffdMapOptions } from '../../src/uffd/map.js';
import { startR3mapServe, type Server } from '../../src/bench/processes.js';
import { pageOrder, patternBuffer } from '../../src/bench/uffd-source.js';
import { makeTempDir, removeDir } from '../support/tools.js';
import { READERS_MODULE } from './support-readers.js';
import { badPages, MiB, PAGE, requireUserfaultfd } from './support.js';

const SIZE = 8 * MiB;
const SEED = 17;
const CHUNK = 64 * 1024;
const LATENCY_MS = 5;

const TRANSPORTS = [
  { name: 'gRPC', listen: ['--listen', 'grpc://127.0.0.1:0', '--insecure'] },
  { name: 'NBD', listen: ['--nbd-listen', '127.0.0.1:0'] },
] as const;

/**
 * The region's reader is a remote backend (grpc:// or nbd://) of an r3map-serve in another
 * process, opened inside the handler thread behind a LatencyBackend (a simulated round trip on
 * every read).
 */
for (const transport of TRANSPORTS) {
  describe(`mapReader over r3map-serve (${transport.name} on 127.0.0.1) with a simulated round trip`, () => {
    let dir: string | undefined;
    let server: Server | undefined;
    before(async () => {
      dir = await makeTempDir('r3map-uffd-remote-');
      const file = path.join(dir, 'pattern.img');
      await writeFile(file, patternBuffer(SIZE, SEED));
      server = await startR3mapServe(['--backend', pathToFileURL(file).href, '--read-only', ...transport.listen]);
    });
    after(async () => {
      try {
        if (server !== undefined) assert.equal(await server.stop(), 0, 'r3map-serve exits 0 after SIGTERM');
      } finally {
        await removeDir(dir);
      }
    });

    const map = (options: UffdMapOptions): ReturnType<typeof mapReader> =>
      mapReader({ module: READERS_MODULE, exportName: 'openUriWithLatency', args: [server!.uri, SIZE, LATENCY_MS] }, SIZE, { chunkSize: CHUNK, ...options });

    it('reads back every byte in random page order', async (t) => {
      if (!requireUserfaultfd(t)) return;
      const region = await map({});
      try {
        assert.deepEqual(badPages(region.buffer, SEED, pageOrder(SIZE / PAGE, true, 2)), []);
        assert.equal(region.stats.fetchedBytes, SIZE);
      } finally {
        await region.close();
      }
    });

    /** Reads the region chunk by chunk, checking each, with a short pause between chunks. */
    async function consume(options: UffdMapOptions): Promise<number> {
      const region = await map(options);
      try {
        const expected = patternBuffer(SIZE, SEED);
        for (let off = 0; off < SIZE; off += CHUNK) {
          assert.ok(region.buffer.subarray(off, off + CHUNK).equals(expected.subarray(off, off + CHUNK)), `chunk at ${off}`);
          await sleep(1);
        }
        return region.stats.faults;
      } finally {
        await region.close();
      }
    }

    it('lets a sequential reader block on fewer faults with prefetch than without', async (t) => {
      if (!requireUserfaultfd(t)) return;
      const without = await consume({});
      const withPrefetch = await consume({ prefetchWorkers: 8 });
      t.diagnostic(`blocking faults: ${without} without prefetch, ${withPrefetch} with 8 prefetch workers`);
      assert.equal(without, SIZE / CHUNK, 'without prefetch, every chunk blocks once');
      assert.ok(withPrefetch < without, `${withPrefetch} faults with prefetch, ${without} without`);
    });
  });
}
