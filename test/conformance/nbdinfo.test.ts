// nbdinfo (libnbd) against r3map-serve: what the handshake advertises, and NBD_OPT_LIST.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { describeRun, requireTool, runTool, serveFixture } from '../support/tools.js';

const SIZE = 64 * 1024 * 1024;

interface NbdinfoExport {
  'export-name': string;
  description?: string;
  'export-size': number;
  is_read_only: boolean;
  can_flush: boolean;
  can_fua: boolean;
  can_trim: boolean;
  can_zero: boolean;
  can_multi_conn: boolean;
  block_size_minimum?: number;
  block_size_preferred?: number;
  block_size_maximum?: number;
}

async function nbdinfoJson(args: readonly string[]): Promise<{ protocol: string; exports: NbdinfoExport[] }> {
  const r = await runTool('nbdinfo', ['--json', ...args], { timeoutMs: 30_000 });
  assert.equal(r.code, 0, describeRun('nbdinfo', ['--json', ...args], r));
  return JSON.parse(r.stdout) as { protocol: string; exports: NbdinfoExport[] };
}

describe('nbdinfo --json on a writable memory export', { timeout: 60_000 }, () => {
  const serve = serveFixture(['--backend', 'memory', '--size', '64MiB', '--description', 'r3map conformance disk']);

  for (const kind of ['tcp', 'unix'] as const) {
    test(`over ${kind}, it reports the size, name, description, block sizes and the write flags`, async (t) => {
      if (!requireTool(t, 'nbdinfo')) return;
      const target = serve.targets().find((x) => x.kind === kind)!;
      const info = await nbdinfoJson([target.uri]);
      assert.equal(info.protocol, 'newstyle-fixed');
      assert.equal(info.exports.length, 1);
      const e = info.exports[0]!;
      assert.equal(e['export-name'], 'default');
      assert.equal(e.description, 'r3map conformance disk');
      assert.equal(e['export-size'], SIZE);
      assert.deepEqual(
        { ro: e.is_read_only, flush: e.can_flush, fua: e.can_fua, trim: e.can_trim, zero: e.can_zero },
        { ro: false, flush: true, fua: true, trim: true, zero: true },
      );
      assert.equal(e.block_size_maximum, 32 * 1024 * 1024);
      assert.ok(e.block_size_minimum !== undefined && e.block_size_minimum >= 1);
    });
  }

  test('the empty export name reaches the default export', async (t) => {
    if (!requireTool(t, 'nbdinfo')) return;
    const tcp = serve.targets().find((x) => x.kind === 'tcp')!;
    const info = await nbdinfoJson([tcp.uri.replace(/\/default$/, '/')]);
    assert.equal(info.exports[0]!['export-size'], SIZE);
  });
});

describe('nbdinfo --json on a --read-only export', { timeout: 60_000 }, () => {
  const serve = serveFixture(['--backend', 'memory', '--size', '64MiB', '--read-only']);

  for (const kind of ['tcp', 'unix'] as const) {
    test(`over ${kind}, it reports is_read_only and no trim or zero`, async (t) => {
      if (!requireTool(t, 'nbdinfo')) return;
      const target = serve.targets().find((x) => x.kind === kind)!;
      const e = (await nbdinfoJson([target.uri])).exports[0]!;
      assert.equal(e.is_read_only, true);
      assert.equal(e.can_trim, false);
      assert.equal(e.can_zero, false);
      assert.equal(e['export-size'], SIZE);
    });
  }
});

describe('nbdinfo --list with several exports', { timeout: 60_000 }, () => {
  const serve = serveFixture([
    '--backend', 'memory:?size=64MiB', '--description', 'the main disk',
    '--export', 'extra=memory:?size=1MiB',
    '--export', 'third=memory:?size=2MiB',
  ]);

  for (const kind of ['tcp', 'unix'] as const) {
    test(`over ${kind}, it lists every export with its own size`, async (t) => {
      if (!requireTool(t, 'nbdinfo')) return;
      const target = serve.targets().find((x) => x.kind === kind)!;
      const info = await nbdinfoJson(['--list', target.uri]);
      const got = info.exports.map((e) => ({ name: e['export-name'], size: e['export-size'] })).sort((a, b) => a.name.localeCompare(b.name));
      assert.deepEqual(got, [
        { name: 'default', size: SIZE },
        { name: 'extra', size: 1024 * 1024 },
        { name: 'third', size: 2 * 1024 * 1024 },
      ]);
      assert.equal(info.exports.find((e) => e['export-name'] === 'default')!.description, 'the main disk');
    });
  }

  test('a named export is reachable by its name', async (t) => {
    if (!requireTool(t, 'nbdinfo')) return;
    const tcp = serve.targets().find((x) => x.kind === 'tcp')!;
    const info = await nbdinfoJson([tcp.uri.replace(/\/default$/, '/extra')]);
    assert.equal(info.exports[0]!['export-size'], 1024 * 1024);
  });

  test('a missing export makes nbdinfo fail', async (t) => {
    if (!requireTool(t, 'nbdinfo')) return;
    const tcp = serve.targets().find((x) => x.kind === 'tcp')!;
    const r = await runTool('nbdinfo', [tcp.uri.replace(/\/default$/, '/missing')], { timeoutMs: 30_000 });
    assert.notEqual(r.code, 0, describeRun('nbdinfo', [], r));
  });
});
