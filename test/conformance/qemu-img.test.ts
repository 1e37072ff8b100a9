// qemu-img (QEMU's NBD client): info, convert into the export, compare against a golden image.
import { before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { open } from 'node:fs/promises';
import path from 'node:path';
import { describeRun, requireTool, runOk, runTool, serveFixture } from '../support/tools.js';

const SIZE = 64 * 1024 * 1024;

describe('qemu-img against a memory export', { timeout: 120_000 }, () => {
  const serve = serveFixture(['--backend', 'memory', '--size', '64MiB']);
  let golden = '';
  before(async () => {
    golden = path.join(serve.dir(), 'golden.img');
    const fh = await open(golden, 'w');
    try {
      // Data in some 1 MiB blocks, holes in the others, and a last block that ends the image.
      for (let mib = 0; mib < 64; mib += 3) await fh.write(randomBytes(1024 * 1024), 0, 1024 * 1024, mib * 1024 * 1024);
      await fh.truncate(SIZE);
    } finally {
      await fh.close();
    }
  });

  for (const kind of ['tcp', 'unix'] as const) {
    test(`over ${kind}, qemu-img info reports the virtual size`, async (t) => {
      if (!requireTool(t, 'qemu-img')) return;
      const uri = serve.targets().find((x) => x.kind === kind)!.uri;
      const r = await runOk('qemu-img', ['info', '--output=json', uri], { timeoutMs: 30_000 });
      assert.equal((JSON.parse(r.stdout) as { 'virtual-size': number })['virtual-size'], SIZE);
    });

    test(`over ${kind}, an image converted into the export compares identical to the golden image`, async (t) => {
      if (!requireTool(t, 'qemu-img')) return;
      const uri = serve.targets().find((x) => x.kind === kind)!.uri;
      await runOk('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', golden, uri], { timeoutMs: 60_000 });
      const args = ['compare', '-f', 'raw', '-F', 'raw', golden, uri];
      const r = await runTool('qemu-img', args, { timeoutMs: 60_000 });
      assert.equal(r.code, 0, describeRun('qemu-img', args, r));
      assert.match(r.stdout, /Images are identical/);
    });
  }

  test('one changed byte makes qemu-img compare report the offset of the mismatch', async (t) => {
    if (!requireTool(t, 'qemu-img') || !requireTool(t, 'qemu-io')) return;
    const uri = serve.targets()[0]!.uri;
    await runOk('qemu-io', ['-f', 'raw', uri, '-c', 'write -P 0x7e 5000192 1'], { timeoutMs: 30_000 });
    const args = ['compare', '-f', 'raw', '-F', 'raw', golden, uri];
    const r = await runTool('qemu-img', args, { timeoutMs: 60_000 });
    assert.equal(r.code, 1, describeRun('qemu-img', args, r));
    assert.match(r.stdout, /Content mismatch at offset 5000192/);
  });
});
