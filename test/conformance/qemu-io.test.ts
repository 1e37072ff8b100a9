// qemu-io (QEMU's NBD client, strict about the handshake and replies) against r3map-serve.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { describeRun, requireTool, runTool, serveFixture } from '../support/tools.js';

/** Runs qemu-io commands in one connection; every command must succeed and every pattern match. */
async function qemuIo(uri: string, commands: readonly string[]): Promise<string> {
  const args = ['-f', 'raw', uri, ...commands.flatMap((c) => ['-c', c])];
  const r = await runTool('qemu-io', args, { timeoutMs: 60_000 });
  const what = describeRun('qemu-io', args, r);
  assert.equal(r.code, 0, what);
  assert.doesNotMatch(r.stdout + r.stderr, /failed|error|mismatch/i, what);
  return r.stdout;
}

const cases = [
  {
    name: 'a 1 MiB pattern write reads back with the same pattern',
    commands: ['write -P 0xab 0 1M', 'read -P 0xab 0 1M'],
  },
  {
    name: 'unaligned writes across sector boundaries read back exactly',
    commands: ['write -P 0x11 1000 3000', 'read -P 0x11 1000 3000', 'read -P 0xab 0 1000', 'read -P 0xab 4000 96'],
  },
  {
    name: 'a write at the very end of the export reads back',
    commands: ['write -P 0x5c 67104768 4096', 'read -P 0x5c 67104768 4096'],
  },
  {
    name: 'flush succeeds',
    commands: ['write -P 0x22 2M 64k', 'flush', 'read -P 0x22 2M 64k'],
  },
  {
    name: 'a discarded range reads as zeros',
    commands: ['write -P 0x33 4M 128k', 'discard 4M 64k', 'read -P 0 4M 64k', 'read -P 0x33 4160k 64k'],
  },
  {
    name: 'write -z zeroes a range',
    commands: ['write -P 0x44 6M 128k', 'write -z 6M 64k', 'read -P 0 6M 64k', 'read -P 0x44 6208k 64k'],
  },
  {
    name: 'a FUA write reads back',
    commands: ['write -f -P 0x55 8M 64k', 'read -P 0x55 8M 64k'],
  },
  {
    name: 'many parallel asynchronous writes all land',
    commands: [
      ...Array.from({ length: 16 }, (_, i) => `aio_write -P ${0x60 + i} ${10 * 1024 * 1024 + i * 65536} 64k`),
      'aio_flush',
      ...Array.from({ length: 16 }, (_, i) => `read -P ${0x60 + i} ${10 * 1024 * 1024 + i * 65536} 64k`),
    ],
  },
];

describe('qemu-io against a memory export', { timeout: 120_000 }, () => {
  const serve = serveFixture(['--backend', 'memory', '--size', '64MiB']);

  for (const kind of ['tcp', 'unix'] as const) {
    for (const c of cases) {
      test(`over ${kind}, ${c.name}`, async (t) => {
        if (!requireTool(t, 'qemu-io')) return;
        await qemuIo(serve.targets().find((x) => x.kind === kind)!.uri, c.commands);
      });
    }
  }

  test('a read past the end fails without breaking the next connection', async (t) => {
    if (!requireTool(t, 'qemu-io')) return;
    const uri = serve.targets()[0]!.uri;
    const args = ['-f', 'raw', uri, '-c', 'read 67108864 512'];
    const r = await runTool('qemu-io', args, { timeoutMs: 30_000 });
    // qemu checks the range itself; either way it must not be a success with data.
    assert.match(r.stdout + r.stderr, /(out of range|Input\/output error|Invalid argument|Request|beyond)/i, describeRun('qemu-io', args, r));
    await qemuIo(uri, ['read -P 0xab 0 1000']);
  });
});
