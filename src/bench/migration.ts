/**
 * `r3map-bench migration`: the downtime of a live migration (Seeder → Leecher over gRPC on a Unix
 * socket, every Seeder call behind a simulated round trip) against stop-and-copy (suspend, copy
 * everything over the same transport, resume), in the same run. Per size and RTT, and per share of
 * chunks the application dirties during pre-copy, with and without pre-copy rounds:
 *
 * - downtime: from the suspend (the seeder's onSuspend) to the first successful read on the
 *   destination of a chunk the application wrote last (so the read cannot be served from the
 *   pre-copy);
 * - total: from Track to every chunk local; bytes moved from the seeder.
 *
 * The application's writes: once the pre-copy has pulled everything, `dirty` of the chunks are
 * written; with rounds, a round follows and the application writes a tenth of that again before
 * the finalize (it keeps running), so the Sync carries only that tail.
 */
import { randomBytes, randomInt } from 'node:crypto';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { mkdtemp, rm } from 'node:fs/promises';
import { Command, Option } from 'commander';
import { countArg, listArg, sizeArg } from '../util/args.js';
import { MemoryBackend } from '../backends/memory.js';
import { Leecher } from '../migration/leecher.js';
import { Seeder } from '../migration/seeder.js';
import { SeederRemote } from '../migration/seeder-remote.js';
import { GrpcServer } from '../rpc/grpc-server.js';
import type { SeederSource } from '../rpc/seeder-service.js';
import { formatSize } from '../util/size.js';
import { formatNumber, formatTable, machineInfo, type BenchContext, type BenchScenario } from './scenario.js';

const CHUNK = 64 * 1024;
/** Targets of the issue. */
const TARGET_VS_STOP_AND_COPY = 20;
const TARGET_SIZE_GROWTH = 1.1;

interface MigrationBenchOptions {
  sizes: number[];
  rttsMs: number[];
  dirtyShares: number[];
  pullWorkers: number;
  json: boolean;
}

export interface MigrationCase {
  readonly sizeBytes: number;
  readonly rttMs: number;
  readonly dirtyShare: number;
  readonly rounds: boolean;
  readonly downtimeMs: number;
  readonly syncMs: number;
  readonly firstReadMs: number;
  readonly totalMs: number;
  readonly fetchedBytes: number;
  readonly dirtyChunksAtSync: number;
  /** Stop-and-copy's downtime for this size and RTT. */
  readonly stopAndCopyMs: number;
  /** stopAndCopyMs / downtimeMs (target ≥ 20 at 1 GiB). */
  readonly ratio: number;
}

/** Every Seeder call behind `rttMs` (the server side of a simulated round trip). */
function delayed(source: SeederSource, rttMs: number): SeederSource {
  if (rttMs === 0) return source;
  const wait = () => sleep(rttMs);
  return {
    size: source.size,
    readAt: async (buf, off) => { await wait(); await source.readAt(buf, off); },
    track: async () => { await wait(); return source.track(); },
    session: async () => { await wait(); return source.session(); },
    dirty: async (since) => { await wait(); return source.dirty(since); },
    sync: async (since) => { await wait(); return source.sync(since); },
    close: async () => { await wait(); await source.close(); },
  };
}

interface Rig {
  readonly seeder: Seeder;
  readonly uri: string;
  suspendedAt: number;
  stop(): Promise<void>;
}

async function seedRig(dir: string, size: number, rttMs: number, n: number): Promise<Rig> {
  const state = new MemoryBackend({ size, chunkSize: CHUNK });
  const fill = randomBytes(CHUNK);
  for (let off = 0; off < size; off += CHUNK) await state.writeAt(fill, off);
  const rig = { suspendedAt: 0 } as { suspendedAt: number } & Partial<Rig>;
  const seeder = new Seeder({ backend: state, chunkSize: CHUNK, onSuspend: () => void (rig.suspendedAt = performance.now()) });
  const server = new GrpcServer({ backend: seeder.backend, seeder: delayed(seeder.source, rttMs), readOnly: true });
  const uri = await server.listen(`grpc+unix://${path.join(dir, `seed-${n}.sock`)}`);
  return Object.assign(rig, { seeder, uri, stop: async () => { await server.close(); await seeder.close(); } }) as Rig;
}

async function writeChunks(seeder: Seeder, count: number, size: number): Promise<number[]> {
  const chunks = Math.ceil(size / CHUNK);
  const data = randomBytes(CHUNK);
  const written: number[] = [];
  for (let i = 0; i < count; i++) {
    const index = randomInt(chunks);
    await seeder.backend.writeAt(data, index * CHUNK);
    written.push(index);
  }
  return written;
}

async function migrate(dir: string, size: number, rttMs: number, dirtyShare: number, rounds: boolean, pullWorkers: number, n: number): Promise<Omit<MigrationCase, 'stopAndCopyMs' | 'ratio'>> {
  const rig = await seedRig(dir, size, rttMs, n);
  const started = performance.now();
  const leecher = await Leecher.open({ seeder: await SeederRemote.open(rig.uri), chunkSize: CHUNK, pullWorkers });
  try {
    await leecher.untilPulled();
    const chunks = Math.ceil(size / CHUNK);
    let last = await writeChunks(rig.seeder, Math.max(1, Math.round(dirtyShare * chunks)), size);
    if (rounds) {
      await leecher.preCopy({ maxRounds: 1 });
      await leecher.untilPulled();
      last = await writeChunks(rig.seeder, Math.max(1, Math.round((dirtyShare * chunks) / 10)), size);
    }
    const result = await leecher.finalize();
    const unlocked = performance.now();
    const buf = Buffer.allocUnsafe(CHUNK);
    await leecher.backend.readAt(buf, last[last.length - 1]! * CHUNK);
    const firstRead = performance.now();
    await leecher.complete();
    const totalMs = performance.now() - started;
    return {
      sizeBytes: size, rttMs, dirtyShare, rounds,
      downtimeMs: firstRead - rig.suspendedAt,
      syncMs: result.downtimeMs,
      firstReadMs: firstRead - unlocked,
      totalMs,
      fetchedBytes: leecher.fetchedBytes,
      dirtyChunksAtSync: result.dirtyOffsets.length,
    };
  } finally {
    await leecher.close();
    await rig.stop();
  }
}

/** Stop-and-copy: suspend at once, copy every chunk over the same transport, then the first read. */
async function stopAndCopy(dir: string, size: number, rttMs: number, pullWorkers: number, n: number): Promise<number> {
  const rig = await seedRig(dir, size, rttMs, n);
  const leecher = await Leecher.open({ seeder: await SeederRemote.open(rig.uri), chunkSize: CHUNK, pullWorkers: 0 });
  try {
    // the copy starts with the suspend: a Leecher that finalizes at 0 % and pulls everything before resuming
    await leecher.finalize();
    const chunks = Math.ceil(size / CHUNK);
    let next = 0;
    const buf = (): Buffer => Buffer.allocUnsafe(CHUNK);
    await Promise.all(Array.from({ length: Math.max(1, pullWorkers) }, async () => {
      const b = buf();
      while (next < chunks) {
        const i = next++;
        await leecher.backend.readAt(i === chunks - 1 ? b.subarray(0, size - i * CHUNK) : b, i * CHUNK);
      }
    }));
    await leecher.backend.readAt(buf(), 0); // the resumed application's first read
    const downtime = performance.now() - rig.suspendedAt;
    await leecher.complete();
    return downtime;
  } finally {
    await leecher.close();
    await rig.stop();
  }
}

export const migrationScenario: BenchScenario = {
  name: 'migration',
  command: () =>
    new Command('migration')
      .description('live migration downtime (suspend → first read on the destination) against stop-and-copy over the same simulated RTT, same run; with and without pre-copy rounds')
      .addOption(new Option('--sizes <list>', 'state sizes').default(undefined, '64MiB,1GiB; --quick: 64MiB,256MiB').argParser(listArg('--sizes', sizeArg)))
      .addOption(new Option('--rtt <ms,...>', 'simulated round trips in ms').default(undefined, '0,5,25; --quick: 0,5').argParser(listArg('--rtt')))
      .addOption(new Option('--dirty <share,...>', 'share of chunks written during pre-copy (0.01 = 1 %)').default(undefined, '0.01,0.1').argParser(listArg('--dirty')))
      .addOption(new Option('--pull-workers <n>', 'pull workers (and stop-and-copy\'s copy workers)').default(64).argParser(countArg))
      .option('--quick', 'a smaller run: 64MiB and 256MiB, RTT 0 and 5 ms', false)
      .option('--json', 'print one JSON object instead of a table', false),
  async run(raw, ctx: BenchContext) {
    const flags = raw as { sizes?: number[]; rtt?: number[]; dirty?: number[]; pullWorkers: number; quick: boolean; json: boolean };
    const options: MigrationBenchOptions = {
      sizes: flags.sizes ?? (flags.quick ? [64, 256] : [64, 1024]).map((m) => m * 1024 * 1024),
      rttsMs: flags.rtt ?? (flags.quick ? [0, 5] : [0, 5, 25]),
      dirtyShares: flags.dirty ?? [0.01, 0.1],
      pullWorkers: flags.pullWorkers,
      json: flags.json,
    };
    const dir = await mkdtemp(path.join(os.tmpdir(), 'r3map-bench-migration-'));
    const loadBefore = os.loadavg();
    const began = performance.now();
    const cases: MigrationCase[] = [];
    let n = 0;
    try {
      for (const size of options.sizes) {
        for (const rttMs of options.rttsMs) {
          if (ctx.signal.aborted) break;
          const stopAndCopyMs = await stopAndCopy(dir, size, rttMs, options.pullWorkers, ++n);
          ctx.log.info({ size, rttMs, stopAndCopyMs }, 'stop-and-copy measured');
          for (const dirtyShare of options.dirtyShares) {
            for (const rounds of [false, true]) {
              if (ctx.signal.aborted) break;
              const c = await migrate(dir, size, rttMs, dirtyShare, rounds, options.pullWorkers, ++n);
              cases.push({ ...c, stopAndCopyMs, ratio: stopAndCopyMs / c.downtimeMs });
              ctx.log.info(cases[cases.length - 1], 'migration measured');
            }
          }
        }
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
    const growth = sizeGrowth(cases, options.sizes);
    const report = { machine: machineInfo(), loadAverage: { before: loadBefore, after: os.loadavg() }, chunkSize: CHUNK, pullWorkers: options.pullWorkers, cases, sizeGrowth: growth, elapsedSeconds: (performance.now() - began) / 1000 };
    process.stdout.write(options.json ? `${JSON.stringify(report)}\n` : `${renderText(report)}\n`);
  },
};

/** Downtime at the largest size over the smallest, per (RTT, dirty, rounds) (target ≤ 1.1). */
function sizeGrowth(cases: readonly MigrationCase[], sizes: readonly number[]): Array<{ rttMs: number; dirtyShare: number; rounds: boolean; ratio: number }> {
  const small = Math.min(...sizes);
  const large = Math.max(...sizes);
  if (small === large) return [];
  return cases.filter((c) => c.sizeBytes === large).flatMap((c) => {
    const s = cases.find((x) => x.sizeBytes === small && x.rttMs === c.rttMs && x.dirtyShare === c.dirtyShare && x.rounds === c.rounds);
    return s === undefined ? [] : [{ rttMs: c.rttMs, dirtyShare: c.dirtyShare, rounds: c.rounds, ratio: c.downtimeMs / s.downtimeMs }];
  });
}

function renderText(report: { loadAverage: { before: number[]; after: number[] }; cases: readonly MigrationCase[]; sizeGrowth: ReturnType<typeof sizeGrowth>; elapsedSeconds: number }): string {
  const rows = report.cases.map((c) => [
    formatSize(c.sizeBytes), String(c.rttMs), `${(c.dirtyShare * 100).toFixed(0)}%`, c.rounds ? 'yes' : 'no', String(c.dirtyChunksAtSync),
    formatNumber(c.downtimeMs), formatNumber(c.syncMs), formatNumber(c.firstReadMs), formatNumber(c.stopAndCopyMs), `${formatNumber(c.ratio)}×`,
    formatNumber(c.totalMs), formatSize(c.fetchedBytes),
  ]);
  const lines = [
    formatTable(['size', 'rtt ms', 'dirty', 'rounds', 'dirty@sync', 'downtime ms', 'sync ms', '1st read ms', 'stop&copy ms', 'vs s&c', 'total ms', 'fetched'], rows),
    '',
    `target: downtime ≥ ${TARGET_VS_STOP_AND_COPY}× less than stop-and-copy at the largest size; largest-size downtime within ${Math.round((TARGET_SIZE_GROWTH - 1) * 100)} % of the smallest`,
    ...report.sizeGrowth.map((g) => `downtime growth, largest/smallest size, rtt ${g.rttMs} ms, dirty ${(g.dirtyShare * 100).toFixed(0)}%, rounds ${g.rounds ? 'yes' : 'no'}: ${g.ratio.toFixed(2)}×`),
    `load average ${report.loadAverage.before.map((l) => l.toFixed(2)).join(' ')} → ${report.loadAverage.after.map((l) => l.toFixed(2)).join(' ')}; ${report.elapsedSeconds.toFixed(0)} s`,
  ];
  return lines.join('\n');
}
