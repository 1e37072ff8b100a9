/**
 * NBD_CMD_CACHE, block status and NBD_CMD_FLAG_FAST_ZERO with nbdsh and nbdinfo as referees, on
 * the library's NbdServer: a managed mount pulls the chunks a CACHE names (before it answers) and
 * reports the remote's holes for chunks not pulled yet, and a backend without a native zero fails
 * FAST_ZERO at once with ENOTSUP while a plain WRITE_ZEROES still works.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { MemoryBackend } from '../../src/backends/memory.js';
import { ManagedPathMount } from '../../src/mount/managed-path.js';
import { NbdServer } from '../../src/nbd/server.js';
import type { Backend } from '../../src/pipeline/types.js';
import { nbdsh } from '../support/nbdsh.js';
import { makeTempDir, removeDir, requireTool, runTool } from '../support/tools.js';

const MiB = 1024 * 1024;
let dir: string;
let n = 0;

before(async () => {
  dir = await makeTempDir('r3map-nbd-cache-');
});
after(() => removeDir(dir));

async function serve(backend: Backend): Promise<{ uri: string; close(): Promise<void> }> {
  const socket = path.join(dir, `nbd-${++n}.sock`);
  const server = new NbdServer({ exports: [{ name: 'x', backend }] });
  await server.listen({ path: socket });
  return { uri: `nbd+unix:///x?socket=${socket}`, close: () => server.close() };
}

describe('NBD_CMD_CACHE and FAST_ZERO (nbdsh)', { timeout: 60_000 }, () => {
  test('a CACHE on a managed mount pulls the chunks of its range before it answers', async (t) => {
    if (!requireTool(t, 'nbdsh')) return;
    let served: { uri: string; close(): Promise<void> } | undefined;
    const mount = new ManagedPathMount({ remote: new MemoryBackend({ size: 16 * MiB }), cache: 'memory', pullWorkers: 0 }, async (backend) => {
      served = await serve(backend);
      return { path: served.uri, transport: 'nbd', closed: new Promise(() => {}), flush: () => Promise.resolve(), close: () => served!.close() };
    });
    await mount.open();
    try {
      assert.equal(mount.stats().localChunks, 0);
      const out = await nbdsh(dir, served!.uri, 'cache-managed', `
h = nbd.NBD()
h.connect_uri(uri)
out['can_cache'] = h.can_cache()
h.cache(2 * 1048576 + 1, 1048576)
h.shutdown()
`);
      assert.deepEqual(out, { can_cache: true });
      assert.equal(mount.stats().localChunks, (2 * MiB) / (64 * 1024) + 1, 'the chunks of [1 MiB, 3 MiB] are local');
    } finally {
      await mount.close();
    }
  });

  test('block status of a managed mount: local chunks are data, the rest is what the remote says (its holes stay holes)', async (t) => {
    if (!requireTool(t, 'nbdinfo')) return;
    const remote = new MemoryBackend({ size: 16 * MiB });
    await remote.writeAt(Buffer.alloc(MiB, 7), 8 * MiB); // the remote's only data: [8 MiB, 9 MiB)
    let served: { uri: string; close(): Promise<void> } | undefined;
    const mount = new ManagedPathMount({ remote, cache: 'memory', pullWorkers: 0 }, async (backend) => {
      served = await serve(backend);
      return { path: served.uri, transport: 'nbd', closed: new Promise(() => {}), flush: () => Promise.resolve(), close: () => served!.close() };
    });
    await mount.open();
    try {
      const map = await runTool('nbdinfo', ['--map', '--json', served!.uri], { timeoutMs: 30_000 });
      assert.equal(map.code, 0, map.stderr);
      const extents = (JSON.parse(map.stdout) as { offset: number; length: number; type: number }[]).map((e) => [e.offset, e.length, e.type]);
      assert.deepEqual(extents, [[0, 8 * MiB, 3], [8 * MiB, MiB, 0], [9 * MiB, 7 * MiB, 3]]);
      const out = await nbdsh(dir, served!.uri, 'managed-local', `
h = nbd.NBD()
h.connect_uri(uri)
h.cache(65536, 0)
h.shutdown()
`);
      assert.deepEqual(out, {});
      const again = await runTool('nbdinfo', ['--map', '--json', served!.uri], { timeoutMs: 30_000 });
      const first = (JSON.parse(again.stdout) as { offset: number; length: number; type: number }[])[0]!;
      assert.deepEqual([first.offset, first.length, first.type], [0, 65536, 0], 'a chunk pulled into the cache is data');
    } finally {
      await mount.close();
    }
  });

  test('FAST_ZERO on a backend without a native zero is ENOTSUP at once; WRITE_ZEROES without it works', async (t) => {
    if (!requireTool(t, 'nbdsh')) return;
    const memory = new MemoryBackend({ size: 4 * MiB });
    const slowZero: Backend = { size: memory.size, readAt: (b, o) => memory.readAt(b, o), writeAt: (b, o) => memory.writeAt(b, o), sync: () => memory.sync(), close: () => memory.close() };
    const served = await serve(slowZero);
    try {
      const out = await nbdsh(dir, served.uri, 'fast-zero', `
h = nbd.NBD()
h.connect_uri(uri)
out['can_fast_zero'] = h.can_fast_zero()
h.pwrite(b'\\x5a' * 8192, 65536)
out['fast'] = err(lambda: h.zero(8192, 65536, nbd.CMD_FLAG_FAST_ZERO))
out['kept'] = h.pread(8192, 65536) == b'\\x5a' * 8192
h.zero(8192, 65536)
out['zeroed'] = h.pread(8192, 65536) == bytes(8192)
h.shutdown()
`);
      assert.deepEqual(out, { can_fast_zero: true, fast: 'ENOTSUP', kept: true, zeroed: true });
    } finally {
      await served.close();
    }
  });
});
