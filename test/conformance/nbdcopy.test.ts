// nbdcopy (libnbd, several connections, many requests in flight) copies a random image in and out.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { open, readFile } from 'node:fs/promises';
import path from 'node:path';
import { makeTempDir, removeDir, requireTool, runOk, serveFixture, startServe } from '../support/tools.js';

const SIZE = 64 * 1024 * 1024;

/** A random image with a few all-zero holes (so sparse handling is exercised too). */
async function writeRandomImage(file: string): Promise<void> {
  const fh = await open(file, 'w');
  try {
    const block = 4 * 1024 * 1024;
    for (let off = 0; off < SIZE; off += block) {
      const data = (off / block) % 5 === 3 ? Buffer.alloc(block) : randomBytes(block);
      await fh.write(data, 0, block, off);
    }
  } finally {
    await fh.close();
  }
}

async function assertSameFile(actual: string, expected: string): Promise<void> {
  const [a, b] = await Promise.all([readFile(actual), readFile(expected)]);
  assert.equal(a.length, b.length, `${actual} is ${a.length} bytes, ${expected} is ${b.length}`);
  assert.ok(a.equals(b), `${actual} differs from ${expected}`);
}

describe('nbdcopy into and out of a memory export', { timeout: 120_000 }, () => {
  const serve = serveFixture(['--backend', 'memory', '--size', '64MiB']);
  let image = '';
  before(async () => {
    image = path.join(serve.dir(), 'random.img');
    await writeRandomImage(image);
  });

  for (const kind of ['tcp', 'unix'] as const) {
    test(`over ${kind}, a random 64 MiB image copied in and back out is byte-identical`, async (t) => {
      if (!requireTool(t, 'nbdcopy')) return;
      const target = serve.targets().find((x) => x.kind === kind)!;
      const out = path.join(serve.dir(), `out-${kind}.img`);
      await runOk('nbdcopy', [image, target.uri], { timeoutMs: 60_000 });
      await runOk('nbdcopy', [target.uri, out], { timeoutMs: 60_000 });
      await assertSameFile(out, image);
    });
  }
});

describe('nbdcopy into a file-backed export', { timeout: 120_000 }, () => {
  let dir: string | undefined;
  before(async () => {
    dir = await makeTempDir('r3map-conf-');
  });
  after(async () => {
    await removeDir(dir);
  });

  test('the backing file holds exactly the copied bytes after a clean shutdown', async (t) => {
    if (!requireTool(t, 'nbdcopy')) return;
    const image = path.join(dir!, 'random.img');
    const disk = path.join(dir!, 'disk.img');
    await writeRandomImage(image);
    const serve = await startServe(['--backend', `file://${disk}`, '--size', '64MiB'], { dir: dir!, listen: ['unix'] });
    let stopped = false;
    try {
      const target = serve.targets[0]!;
      await runOk('nbdcopy', [image, target.uri], { timeoutMs: 60_000 });
      const out = path.join(dir!, 'out.img');
      await runOk('nbdcopy', [target.uri, out], { timeoutMs: 60_000 });
      await assertSameFile(out, image);
      const code = await serve.stop();
      stopped = true;
      assert.equal(code, 0, serve.stderr());
      await assertSameFile(disk, image);
    } finally {
      if (!stopped) await serve.stop();
    }
  });
});
