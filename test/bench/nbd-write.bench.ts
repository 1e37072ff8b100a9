/**
 * NBD WRITE-path micro-benchmark (never run by the test glob):
 *
 *   node dist/test/bench/nbd-write.bench.js [--seconds 3] [--repeat 3] [--request 1048576] [--depth 8]
 *
 * This process serves a 256 MiB MemoryBackend (every page allocated up front) with NbdServer on a
 * Unix socket; a child process writes to it sequentially with our NbdClient, `depth` requests in
 * flight. Two server variants, measured in turn in the same run:
 * - scatter: the backend has writev, so a payload that spans socket chunks reaches it as the
 *   chunks' views, copied once (into the pages);
 * - copy: the same backend with writev hidden, so each such payload is first gathered into a
 *   pooled buffer, then copied into the pages (the path before writev existed).
 * It then times the memory backend's page allocation choice for a page a write covers whole:
 * Buffer.alloc (zeroed) against Buffer.allocUnsafeSlow, each page written once.
 *
 * Prints MB/s, the server's CPU per GiB and the load average. The machine may be shared: repeat,
 * and compare CPU per GiB rather than MB/s.
 */
import { fork } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { MemoryBackend } from '../../src/backends/memory.js';
import { NbdClient } from '../../src/nbd-client/client.js';
import { NbdServer } from '../../src/nbd/server.js';
import type { Backend } from '../../src/pipeline/types.js';

const MiB = 1024 * 1024;
const SIZE = 256 * MiB;

const { values } = parseArgs({
  options: {
    client: { type: 'string' },
    seconds: { type: 'string', default: '3' },
    repeat: { type: 'string', default: '3' },
    request: { type: 'string', default: String(MiB) },
    depth: { type: 'string', default: '8' },
  },
});
const seconds = Number(values.seconds);
const request = Number(values.request);
const depth = Number(values.depth);

/** The child: sequential writes with `depth` in flight for `seconds`; prints bytes written. */
async function runClient(path: string): Promise<void> {
  const client = await NbdClient.connect({ path }, { exportName: 'bench' });
  const data = Buffer.alloc(request, 0x5a);
  let off = 0;
  let bytes = 0;
  const deadline = performance.now() + seconds * 1000;
  const lane = async (): Promise<void> => {
    while (performance.now() < deadline) {
      const at = off;
      off = (off + request) % (SIZE - (SIZE % request));
      await client.writeAt(data, at);
      bytes += request;
    }
  };
  await Promise.all(Array.from({ length: depth }, lane));
  await client.close();
  process.send!({ bytes });
}

/** The backend with writev hidden: the server falls back to gathering payloads. */
function withoutWritev(backend: MemoryBackend): Backend {
  return {
    size: backend.size,
    canMultiConn: backend.canMultiConn,
    readAt: (buf, off) => backend.readAt(buf, off),
    writeAt: (buf, off) => backend.writeAt(buf, off),
    sync: () => backend.sync(),
    close: () => backend.close(),
  };
}

async function measure(variant: 'scatter' | 'copy', dir: string): Promise<{ mbps: number; cpuPerGiB: number }> {
  const memory = new MemoryBackend({ size: SIZE });
  await memory.writeAt(Buffer.alloc(SIZE, 1), 0);
  const backend = variant === 'scatter' ? memory : withoutWritev(memory);
  const server = new NbdServer({ exports: [{ name: 'bench', backend }] });
  const path = join(dir, `${variant}.sock`);
  await server.listen({ path });
  try {
    const child = fork(fileURLToPath(import.meta.url), ['--client', path, '--seconds', String(seconds), '--request', String(request), '--depth', String(depth)]);
    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    const { bytes } = await new Promise<{ bytes: number }>((resolve, reject) => {
      child.once('message', (m) => resolve(m as { bytes: number }));
      child.once('exit', (code) => reject(new Error(`client exited with ${code}`)));
    });
    const wallS = (performance.now() - t0) / 1000;
    const cpu = process.cpuUsage(cpu0);
    return { mbps: bytes / 1e6 / wallS, cpuPerGiB: (cpu.user + cpu.system) / 1e6 / (bytes / 1024 ** 3) };
  } finally {
    await server.close();
    await memory.close();
  }
}

function pageAllocation(): { zeroedMiBps: number; unsafeMiBps: number } {
  const src = Buffer.alloc(MiB, 3);
  const time = (alloc: (n: number) => Buffer): number => {
    const pages: Buffer[] = [];
    const t0 = performance.now();
    for (let i = 0; i < 256; i++) {
      const page = alloc(MiB);
      src.copy(page);
      pages.push(page);
    }
    return 256 / ((performance.now() - t0) / 1000);
  };
  return { zeroedMiBps: time((n) => Buffer.alloc(n)), unsafeMiBps: time((n) => Buffer.allocUnsafeSlow(n)) };
}

async function main(): Promise<void> {
  if (values.client !== undefined) return runClient(values.client);
  const dir = mkdtempSync(join(os.tmpdir(), 'r3map-nbd-write-bench-'));
  try {
    console.log(`node ${process.version}, ${os.cpus().length}x ${os.cpus()[0]?.model.trim()}; ${request} B writes, depth ${depth}, ${seconds} s each`);
    for (let r = 0; r < Number(values.repeat); r++) {
      const load = os.loadavg()[0]!.toFixed(1);
      const scatter = await measure('scatter', dir);
      const copy = await measure('copy', dir);
      const pages = pageAllocation();
      console.log(
        `run ${r + 1} (load ${load}): scatter ${scatter.mbps.toFixed(0)} MB/s ${scatter.cpuPerGiB.toFixed(2)} cpu-s/GiB | ` +
          `copy ${copy.mbps.toFixed(0)} MB/s ${copy.cpuPerGiB.toFixed(2)} cpu-s/GiB | ` +
          `new pages: zeroed ${pages.zeroedMiBps.toFixed(0)} MiB/s, unzeroed ${pages.unsafeMiBps.toFixed(0)} MiB/s`,
      );
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
