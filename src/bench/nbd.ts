/**
 * `r3map-bench nbd`: our NBD server against nbdkit's memory plugin (no filters, the peer nbdkit's
 * BENCHMARKING recommends), both serving memory of the same size on their own Unix sockets in the
 * same run. For each: nbdcopy a file in and out (null:), fio 4k random reads at depth 32, and fio
 * 1M sequential reads and writes; then a sparse export of `--sparse-size` copied out with nbdcopy
 * and qemu-img convert (nbd-sparse.ts). The servers are measured one after the other, test by test.
 */
import { mkdtemp, open, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { Command, Option } from 'commander';
import { durationArg, sizeArg } from '../util/args.js';
import { formatSize } from '../util/size.js';
import { compare, median, formatNumber, formatTable, machineInfo, type BenchContext, type BenchScenario, type Comparison } from './scenario.js';
import { sparseRows } from './nbd-sparse.js';
import { runProcess, startNbdkit, startR3mapServe, toolVersion, type Server } from './processes.js';

interface NbdBenchOptions {
  size: number;
  runtime: number;
  json: boolean;
  dir: string;
  cpuProf?: string;
  sparseSize: number;
}

/** Fixed parameters, recorded with every result. */
const FIO = Object.freeze({ randBs: '4k', randIodepth: 32, seqBs: '1M', seqIodepth: 8, rampSeconds: 1 });

/** nbdcopy runs per peer and direction; the median is reported. */
const NBDCOPY_REPEATS = 3;

/** What the issue asks of us, as ours/nbdkit ratios. */
const TARGETS = Object.freeze({ nbdcopyIn: 1.0, nbdcopyOut: 1.0, seqRead: 1.0, seqWrite: 1.0, randRead: 1.5 });

interface PeerResult {
  nbdcopyInMBps: number;
  nbdcopyOutMBps: number;
  randReadIops: number;
  randReadP50Us: number;
  randReadP99Us: number;
  seqReadMBps: number;
  seqWriteMBps: number;
}

type PeerName = 'r3map' | 'nbdkit';

export const nbdScenario: BenchScenario = {
  name: 'nbd',
  command: () =>
    new Command('nbd')
      .description('r3map-serve (memory) against nbdkit memory of the same size: nbdcopy, fio 4k randread qd32, fio 1M seq read/write')
      .addOption(new Option('--size <bytes>', 'size of both exports and of the nbdcopy image').default(1024 ** 3, '1GiB').argParser(sizeArg))
      .addOption(new Option('--runtime <duration>', 'length of each fio run').default(10_000, '10s').argParser(durationArg))
      .option('--json', 'print one JSON object instead of a table', false)
      .option('--dir <path>', 'where the sockets and the nbdcopy image go', os.tmpdir())
      .option('--cpu-prof <dir>', 'run r3map-serve under node --cpu-prof, writing the profile to <dir>')
      .addOption(new Option('--sparse-size <bytes>', 'size of the 1 %-allocated exports the sparse rows copy out (0 skips them)').default(1024 ** 3, '1GiB').argParser(sizeArg)),
  run: (options, ctx) => runNbdBench(options as unknown as NbdBenchOptions, ctx),
};

async function runNbdBench(options: NbdBenchOptions, { log, signal }: BenchContext): Promise<number> {
  const dir = await mkdtemp(path.join(options.dir, 'r3map-bench-nbd-'));
  const servers: Server[] = [];
  try {
    const tools = {
      nbdkit: await toolVersion('nbdkit'),
      fio: await toolVersion('fio'),
      nbdcopy: await toolVersion('nbdcopy'),
      'qemu-img': await toolVersion('qemu-img'),
    };
    for (const [tool, version] of Object.entries(tools)) {
      if (version === 'missing') throw new Error(`${tool} is not installed (run scripts/install-test-tools.sh)`);
    }
    const image = path.join(dir, 'image.raw');
    await writeImage(image, options.size);
    const nodeArgs = options.cpuProf !== undefined ? ['--cpu-prof', `--cpu-prof-dir=${path.resolve(options.cpuProf)}`] : [];
    const ours = await startR3mapServe(['--backend', 'memory', '--size', String(options.size), '--nbd-listen', `unix:${path.join(dir, 'r3map.sock')}`], nodeArgs);
    servers.push(ours);
    const peer = await startNbdkit(path.join(dir, 'nbdkit.sock'), ['memory', String(options.size)]);
    servers.push(peer);
    const uris: Record<PeerName, string> = { r3map: ours.uri, nbdkit: peer.uri };
    log.info({ uris, size: options.size, runtimeMs: options.runtime }, 'benchmarking');

    const results: Record<PeerName, Partial<PeerResult>> = { r3map: {}, nbdkit: {} };
    const each = async (step: (uri: string, into: Partial<PeerResult>) => Promise<void>): Promise<void> => {
      for (const name of ['r3map', 'nbdkit'] as const) {
        signal.throwIfAborted();
        await step(uris[name], results[name]);
      }
    };
    const seconds = Math.max(1, Math.round(options.runtime / 1000));
    // A copy of the image takes a fraction of a second: the median of NBDCOPY_REPEATS, peers interleaved.
    const copies: Record<PeerName, { in: number[]; out: number[] }> = { r3map: { in: [], out: [] }, nbdkit: { in: [], out: [] } };
    for (let round = 0; round < NBDCOPY_REPEATS; round++) {
      for (const name of ['r3map', 'nbdkit'] as const) {
        signal.throwIfAborted();
        copies[name].in.push(await nbdcopy(image, uris[name], options.size, signal));
        copies[name].out.push(await nbdcopy(uris[name], 'null:', options.size, signal));
      }
    }
    for (const name of ['r3map', 'nbdkit'] as const) {
      results[name].nbdcopyInMBps = median(copies[name].in);
      results[name].nbdcopyOutMBps = median(copies[name].out);
    }
    await each(async (uri, r) => {
      const job = await fio(uri, ['--rw=randread', `--bs=${FIO.randBs}`, `--iodepth=${FIO.randIodepth}`], seconds, signal);
      r.randReadIops = job.read.iops;
      r.randReadP50Us = (job.read.clat_ns.percentile?.['50.000000'] ?? 0) / 1000;
      r.randReadP99Us = (job.read.clat_ns.percentile?.['99.000000'] ?? 0) / 1000;
    });
    await each(async (uri, r) => {
      r.seqReadMBps = (await fio(uri, ['--rw=read', `--bs=${FIO.seqBs}`, `--iodepth=${FIO.seqIodepth}`], seconds, signal)).read.bw_bytes / 1e6;
    });
    await each(async (uri, r) => {
      r.seqWriteMBps = (await fio(uri, ['--rw=write', `--bs=${FIO.seqBs}`, `--iodepth=${FIO.seqIodepth}`], seconds, signal)).write.bw_bytes / 1e6;
    });

    const o = results.r3map as PeerResult;
    const p = results.nbdkit as PeerResult;
    const comparisons = [
      compare('nbdcopy in', 'MB/s', o.nbdcopyInMBps, p.nbdcopyInMBps, TARGETS.nbdcopyIn),
      compare('nbdcopy out', 'MB/s', o.nbdcopyOutMBps, p.nbdcopyOutMBps, TARGETS.nbdcopyOut),
      compare(`fio ${FIO.randBs} randread qd${FIO.randIodepth}`, 'IOPS', o.randReadIops, p.randReadIops, TARGETS.randRead),
      compare(`fio ${FIO.randBs} randread qd${FIO.randIodepth} p50`, 'µs', o.randReadP50Us, p.randReadP50Us, undefined, true),
      compare(`fio ${FIO.randBs} randread qd${FIO.randIodepth} p99`, 'µs', o.randReadP99Us, p.randReadP99Us, undefined, true),
      compare(`fio ${FIO.seqBs} seq read qd${FIO.seqIodepth}`, 'MB/s', o.seqReadMBps, p.seqReadMBps, TARGETS.seqRead),
      compare(`fio ${FIO.seqBs} seq write qd${FIO.seqIodepth}`, 'MB/s', o.seqWriteMBps, p.seqWriteMBps, TARGETS.seqWrite),
    ];
    // The main exports are done with: stop them before the sparse pair starts (memory, CPU).
    const stopped = await Promise.all(servers.splice(0).map((s) => s.stop()));
    if (stopped[0] !== undefined && stopped[0] !== 0) log.warn({ code: stopped[0] }, 'r3map-serve did not exit cleanly');
    if (options.sparseSize > 0) comparisons.push(...(await sparseRows(dir, options.sparseSize, signal)));
    const report = {
      scenario: 'nbd',
      machine: machineInfo(tools),
      parameters: { sizeBytes: options.size, sparseSizeBytes: options.sparseSize, fioRuntimeSeconds: seconds, ...FIO, transport: 'unix socket', nbdcopyRepeats: NBDCOPY_REPEATS, peer: 'nbdkit memory (no filters)', nbdcopyOut: 'null:' },
      results: comparisons,
    };
    process.stdout.write(options.json ? `${JSON.stringify(report)}\n` : `${renderText(report.machine, options, seconds, comparisons)}\n`);
    return 0;
  } finally {
    await Promise.all(servers.map((s) => s.stop()));
    if (options.cpuProf !== undefined) log.info({ dir: path.resolve(options.cpuProf) }, 'r3map-serve CPU profile written (open it in Chrome DevTools)');
    await rm(dir, { recursive: true, force: true });
  }
}

function renderText(machine: ReturnType<typeof machineInfo>, options: NbdBenchOptions, seconds: number, rows: readonly Comparison[]): string {
  const head = [
    `r3map-bench nbd: r3map-serve vs nbdkit memory, ${formatSize(options.size)} each, Unix sockets, fio ${seconds} s per run`,
    `node ${machine.node}, kernel ${machine.kernel}, ${machine.cpus}x ${machine.cpu}, ${formatSize(machine.memoryBytes)} RAM`,
    `${machine.tools.nbdkit}, ${machine.tools.fio}, ${machine.tools.nbdcopy}, ${machine.tools['qemu-img']}`,
    '',
  ];
  const table = formatTable(
    ['test', 'unit', 'r3map', 'nbdkit', 'ratio', 'target'],
    rows.map((c) => [
      c.test, c.unit, formatNumber(c.ours), formatNumber(c.peer), `${c.ratio.toFixed(2)}x`,
      c.target === undefined ? '' : `${c.ratio >= c.target ? 'ok' : 'MISS'} >=${c.target.toFixed(1)}x`,
    ]),
  );
  return `${head.join('\n')}\n${table}\n(ratio: r3map/nbdkit for MB/s and IOPS, nbdkit/r3map for latency; higher is better)`;
}

/** An image of incompressible, non-zero data (a random 1 MiB block repeated). */
async function writeImage(file: string, size: number): Promise<void> {
  const block = randomBytes(1024 * 1024);
  const fh = await open(file, 'w');
  try {
    for (let off = 0; off < size; off += block.length) await fh.write(block, 0, Math.min(block.length, size - off), off);
  } finally {
    await fh.close();
  }
}

async function nbdcopy(src: string, dst: string, size: number, signal: AbortSignal): Promise<number> {
  const r = await runProcess('nbdcopy', [src, dst], { signal });
  return size / 1e6 / (r.elapsedMs / 1000);
}

interface FioSide {
  iops: number;
  bw_bytes: number;
  clat_ns: { percentile?: Record<string, number> };
}

async function fio(uri: string, args: readonly string[], seconds: number, signal: AbortSignal): Promise<{ read: FioSide; write: FioSide }> {
  const r = await runProcess('fio', [
    '--name=bench', '--ioengine=nbd', `--uri=${uri}`, '--time_based', `--runtime=${seconds}`, `--ramp_time=${FIO.rampSeconds}`,
    '--output-format=json', ...args,
  ], { signal, timeoutMs: (seconds + 60) * 1000 });
  // The nbd engine prints a line before the JSON.
  const json = JSON.parse(r.stdout.slice(r.stdout.indexOf('{'))) as { jobs: { error: number; read: FioSide; write: FioSide }[] };
  const job = json.jobs[0]!;
  if (job.error !== 0) throw new Error(`fio ${args.join(' ')} against ${uri} failed with error ${job.error}`);
  return job;
}
