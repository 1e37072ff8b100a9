/**
 * Structured replies and base:allocation on r3map-serve, with outside clients as referees:
 * nbdinfo --map and qemu-img map see the holes of a sparse memory export, nbdcopy keeps a sparse
 * image sparse both ways, and nbdsh checks BLOCK_STATUS with REQ_ONE, a READ error chunk and a
 * zero-length READ over structured replies.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { open, readFile, stat, truncate } from 'node:fs/promises';
import path from 'node:path';
import { nbdsh } from '../support/nbdsh.js';
import { requireTool, runTool, serveFixture } from '../support/tools.js';

const MiB = 1024 * 1024;

describe('structured replies and block status against r3map-serve', { timeout: 120_000 }, () => {
  const serve = serveFixture(['--backend', 'memory', '--size', '1GiB'], { listen: ['unix'] });
  const uri = (): string => serve.targets()[0]!.uri;

  test('nbdinfo --can structured-reply (and cache, fast-zero, df, multi-conn) answer yes; --json lists base:allocation', async (t) => {
    if (!requireTool(t, 'nbdinfo')) return;
    for (const feature of ['structured-reply', 'cache', 'fast-zero', 'df', 'multi-conn']) {
      const r = await runTool('nbdinfo', ['--can', feature, uri()], { timeoutMs: 30_000 });
      assert.equal(r.code, 0, `nbdinfo --can ${feature}: ${r.stderr}`);
    }
    const no = await runTool('nbdinfo', ['--is', 'read-only', uri()], { timeoutMs: 30_000 });
    assert.equal(no.code, 2, 'a writable export is not read-only: nbdinfo exits 2');
    const json = await runTool('nbdinfo', ['--json', uri()], { timeoutMs: 30_000 });
    assert.equal(json.code, 0, json.stderr);
    const info = JSON.parse(json.stdout) as { exports: { contexts?: string[] }[] };
    assert.deepEqual(info.exports[0]!.contexts, ['base:allocation']);
  });

  test('nbdinfo --map, qemu-img map and nbdcopy out see the holes: a 1 GiB export with 8 MiB written copies to 8 MiB', async (t) => {
    if (!requireTool(t, 'nbdinfo') || !requireTool(t, 'qemu-io') || !requireTool(t, 'qemu-img') || !requireTool(t, 'nbdcopy')) return;
    const write = await runTool('qemu-io', ['-f', 'raw', uri(), '-c', 'write -P 0xcd 100M 8M'], { timeoutMs: 30_000 });
    assert.equal(write.code, 0, write.stderr);
    const map = await runTool('nbdinfo', ['--map', '--json', uri()], { timeoutMs: 30_000 });
    assert.equal(map.code, 0, map.stderr);
    const extents = (JSON.parse(map.stdout) as { offset: number; length: number; type: number }[]).map((e) => [e.offset, e.length, e.type]);
    assert.deepEqual(extents, [[0, 100 * MiB, 3], [100 * MiB, 8 * MiB, 0], [108 * MiB, 1024 * MiB - 108 * MiB, 3]]);
    const qemu = await runTool('qemu-img', ['map', '--output=json', uri()], { timeoutMs: 30_000 });
    assert.equal(qemu.code, 0, qemu.stderr);
    const data = (JSON.parse(qemu.stdout) as { start: number; length: number; data: boolean }[]).filter((e) => e.data).map((e) => [e.start, e.length]);
    assert.deepEqual(data, [[100 * MiB, 8 * MiB]]);
    const out = path.join(serve.dir(), 'out.img');
    const copy = await runTool('nbdcopy', [uri(), out], { timeoutMs: 60_000 });
    assert.equal(copy.code, 0, copy.stderr);
    const st = await stat(out);
    assert.equal(st.size, 1024 * MiB);
    assert.ok(st.blocks * 512 <= 16 * MiB, `the copy is sparse: ${st.blocks * 512} bytes allocated`);
    const handle = await open(out, 'r');
    try {
      const buf = Buffer.alloc(8 * MiB);
      await handle.read(buf, 0, buf.length, 100 * MiB);
      assert.ok(buf.equals(Buffer.alloc(8 * MiB, 0xcd)), 'the data region came across');
    } finally {
      await handle.close();
    }
  });

  test('nbdcopy of a sparse file into the export leaves its holes unallocated', async (t) => {
    if (!requireTool(t, 'nbdinfo') || !requireTool(t, 'nbdcopy')) return;
    const input = path.join(serve.dir(), 'sparse.img');
    await truncate(input, 0).catch(() => undefined);
    const data = randomBytes(MiB);
    const handle = await open(input, 'w');
    try {
      await handle.truncate(1024 * MiB);
      await handle.write(data, 0, data.length, 500 * MiB);
    } finally {
      await handle.close();
    }
    const copy = await runTool('nbdcopy', [input, uri()], { timeoutMs: 60_000 });
    assert.equal(copy.code, 0, copy.stderr);
    const map = await runTool('nbdinfo', ['--map', '--json', uri()], { timeoutMs: 30_000 });
    const extents = (JSON.parse(map.stdout) as { offset: number; length: number; type: number }[]).map((e) => [e.offset, e.length, e.type]);
    assert.deepEqual(extents, [[0, 500 * MiB, 3], [500 * MiB, MiB, 0], [501 * MiB, 1024 * MiB - 501 * MiB, 3]]);
    const back = path.join(serve.dir(), 'back.img');
    assert.equal((await runTool('nbdcopy', [uri(), back], { timeoutMs: 60_000 })).code, 0);
    assert.ok((await readFile(back)).subarray(500 * MiB, 501 * MiB).equals(data));
  });

  test('nbdsh: BLOCK_STATUS with REQ_ONE, a READ error chunk and a zero-length READ over structured replies', async (t) => {
    if (!requireTool(t, 'nbdsh')) return;
    const out = await nbdsh(serve.dir(), uri(), 'block-status', `
h = nbd.NBD()
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_uri(uri)
out['structured'] = h.get_structured_replies_negotiated()
out['meta'] = h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
out['df'] = h.can_df()
seen = []
def cb(metacontext, offset, entries, err):
    seen.append([metacontext, offset, list(entries)])
    return 0
h.block_status(4 * 1048576, 0, cb, nbd.CMD_FLAG_REQ_ONE)
out['one'] = seen
h.pwrite(b'\\x01' * 4096, 0)
chunks = []
def chunk(subbuf, offset, status, error):
    chunks.append([len(subbuf), offset, status == nbd.READ_DATA])
    return 0
got = h.pread_structured(4096, 0, chunk, nbd.CMD_FLAG_DF)
out['read_df'] = [got == b'\\x01' * 4096, chunks]
h.set_strict_mode(0)
out['past_end'] = err(lambda: h.pread(4096, h.get_size() - 512))
out['empty'] = h.pread(0, 0) == b''
h.shutdown()
`);
    assert.deepEqual(out, {
      structured: true,
      meta: true,
      df: true,
      one: [['base:allocation', 0, [4 * MiB, 3]]],
      read_df: [true, [[4096, 0, true]]],
      past_end: 'EINVAL',
      empty: true,
    });
  });
  test('nbdsh: a READ over holes comes as OFFSET_HOLE and OFFSET_DATA chunks, as one data chunk with DF', async (t) => {
    if (!requireTool(t, 'nbdsh')) return;
    const out = await nbdsh(serve.dir(), uri(), 'read-holes', `
h = nbd.NBD()
h.connect_uri(uri)
base = 600 * 1048576
h.pwrite(b'\\x07' * 1048576, base + 2 * 1048576)
def run(flags):
    chunks = []
    def chunk(subbuf, offset, status, error):
        chunks.append([offset - base, len(subbuf), 'data' if status == nbd.READ_DATA else 'hole', bytes(subbuf).count(0) == len(subbuf)])
        return 0
    got = h.pread_structured(4 * 1048576, base + 1048576, chunk, flags)
    return [got == b'\\0' * 1048576 + b'\\x07' * 1048576 + b'\\0' * 2 * 1048576, sorted(chunks)]
out['sparse'] = run(0)
out['df'] = run(nbd.CMD_FLAG_DF)
h.shutdown()
`);
    const M = MiB;
    assert.deepEqual(out, {
      sparse: [true, [[M, M, 'hole', true], [2 * M, M, 'data', false], [3 * M, 2 * M, 'hole', true]]],
      df: [true, [[M, 4 * M, 'data', false]]],
    });
  });
});

describe('block status of a sparse file export', { timeout: 60_000 }, () => {
  const serve = serveFixture((dir) => ['--backend', `file://${path.join(dir, 'sparse-file.img')}`, '--size', '256MiB'], { listen: ['unix'] });

  test('nbdinfo --map shows the holes the filesystem reports (SEEK_DATA / SEEK_HOLE), and FAST_ZERO is refused on a file', async (t) => {
    if (!requireTool(t, 'nbdinfo') || !requireTool(t, 'qemu-io') || !requireTool(t, 'nbdsh')) return;
    const uri = serve.targets()[0]!.uri;
    const write = await runTool('qemu-io', ['-f', 'raw', uri, '-c', 'write -P 0x11 64M 4M', '-c', 'flush'], { timeoutMs: 30_000 });
    assert.equal(write.code, 0, write.stderr);
    const map = await runTool('nbdinfo', ['--map', '--json', uri], { timeoutMs: 30_000 });
    assert.equal(map.code, 0, map.stderr);
    const extents = JSON.parse(map.stdout) as { offset: number; length: number; type: number }[];
    const data = extents.filter((e) => e.type === 0);
    assert.ok(data.length >= 1 && data.every((e) => e.offset >= 60 * MiB && e.offset + e.length <= 72 * MiB), `data only around the write: ${map.stdout}`);
    assert.equal(extents.reduce((n, e) => n + e.length, 0), 256 * MiB);
    const out = await nbdsh(serve.dir(), uri, 'file-fast-zero', `
h = nbd.NBD()
h.connect_uri(uri)
out['fast'] = err(lambda: h.zero(4096, 0, nbd.CMD_FLAG_FAST_ZERO))
h.shutdown()
`);
    assert.deepEqual(out, { fast: 'ENOTSUP' }, 'a file zeroes by writing: no fast zero');
    const read = await nbdsh(serve.dir(), uri, 'file-holes', `
h = nbd.NBD()
h.connect_uri(uri)
chunks = []
def chunk(subbuf, offset, status, error):
    chunks.append([offset, len(subbuf), 'data' if status == nbd.READ_DATA else 'hole'])
    return 0
M = 1048576
got = h.pread_structured(16 * M, 56 * M, chunk, 0)
out['ok'] = got == b'\\0' * (8 * M) + b'\\x11' * (4 * M) + b'\\0' * (4 * M)
out['holes'] = sum(c[1] for c in chunks if c[2] == 'hole')
out['covered'] = sum(c[1] for c in chunks)
h.shutdown()
`);
    assert.equal(read.ok, true);
    assert.equal(read.covered, 16 * MiB);
    assert.ok((read.holes as number) >= 8 * MiB, `the file's holes come as hole chunks: ${JSON.stringify(read)}`);
  });
});


describe('block status of a directory export', { timeout: 60_000 }, () => {
  const serve = serveFixture((dir) => ['--backend', `dir://${path.join(dir, 'chunks')}?chunk-size=1MiB&size=256MiB`], { listen: ['unix'] });

  test('nbdinfo --map shows chunks without a file as holes, and nbdcopy out keeps them sparse', async (t) => {
    if (!requireTool(t, 'nbdinfo') || !requireTool(t, 'qemu-io') || !requireTool(t, 'nbdcopy')) return;
    const uri = serve.targets()[0]!.uri;
    const write = await runTool('qemu-io', ['-f', 'raw', uri, '-c', 'write -P 0x22 32M 3M', '-c', 'flush'], { timeoutMs: 30_000 });
    assert.equal(write.code, 0, write.stderr);
    const map = await runTool('nbdinfo', ['--map', '--json', uri], { timeoutMs: 30_000 });
    assert.equal(map.code, 0, map.stderr);
    const extents = (JSON.parse(map.stdout) as { offset: number; length: number; type: number }[]).map((e) => [e.offset, e.length, e.type]);
    assert.deepEqual(extents, [[0, 32 * MiB, 3], [32 * MiB, 3 * MiB, 0], [35 * MiB, 221 * MiB, 3]]);
    const out = path.join(serve.dir(), 'dir-out.img');
    const copy = await runTool('nbdcopy', [uri, out], { timeoutMs: 60_000 });
    assert.equal(copy.code, 0, copy.stderr);
    const st = await stat(out);
    assert.ok(st.blocks * 512 <= 8 * MiB, `the copy is sparse: ${st.blocks * 512} bytes allocated`);
  });
});
