/**
 * `r3map-bench uffd`: page-in through a userfaultfd region (mapReader over an in-memory pattern
 * source, built in the handler thread) against a native C handler doing the same work
 * (scripts/uffd-native/handler.c, built with the system `cc` on first use into a cache dir), in
 * the same run. For each chunk size and touch order (one byte of every page, sequential or
 * shuffled), with and without prefetch: page-in throughput (MB/s over the whole touch loop) and
 * first-touch latency (the touch of each chunk's first page, p50/p99), then every byte is
 * verified. Each case runs `--runs` times on both sides, alternating, and keeps each side's best
 * run (the machine may be shared).
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile, rename } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Command, Option } from 'commander';
import { sizeArg, countArg } from '../util/args.js';
import { UsageError } from '../errors.js';
import { pageSize } from '../kernel/ffi.js';
import { mapReader } from '../uffd/map.js';
import { formatSize, parseSize } from '../util/size.js';
import { runProcess, toolVersion } from './processes.js';
import { formatNumber, formatTable, machineInfo, type BenchContext, type BenchScenario } from './scenario.js';
import { pageOrder, patternBuffer } from './uffd-source.js';

const NATIVE_SOURCE = fileURLToPath(new URL('../../../scripts/uffd-native/handler.c', import.meta.url));
const PATTERN_MODULE = new URL('./uffd-source.js', import.meta.url).href;
const SEED = 7;
/** The target for 64 KiB chunks: ours ≥ 0.5 × native. */
const TARGET_RATIO_64K = 0.5;

interface UffdBenchOptions {
  size: number;
  chunkSizes: string;
  orders: string;
  prefetchWorkers: number;
  runs: number;
  reader: 'view' | 'copy';
  cacheDir: string;
  json: boolean;
}

interface Side {
  readonly mbps: number;
  readonly firstTouchP50Us: number;
  readonly firstTouchP99Us: number;
  readonly faults: number;
  readonly verified: boolean;
}

export interface UffdBenchCase {
  readonly chunkSize: number;
  readonly order: 'seq' | 'rand';
  readonly prefetchWorkers: number;
  readonly ours: Side;
  readonly native: Side;
  /** ours.mbps / native.mbps */
  readonly ratio: number;
  readonly target: number | undefined;
  readonly verified: boolean;
}

function defaultCacheDir(): string {
  return path.join(process.env.XDG_CACHE_HOME ?? path.join(os.homedir(), '.cache'), 'r3map');
}

export const uffdScenario: BenchScenario = {
  name: 'uffd',
  command: () =>
    new Command('uffd')
      .description('userfaultfd page-in (mapReader over an in-memory source) against a native C handler, same run: MB/s and first-touch latency per chunk size, order and prefetch')
      .addOption(new Option('--size <bytes>', 'region size').default(256 * 1024 ** 2, '256MiB').argParser(sizeArg))
      .option('--chunk-sizes <list>', 'comma-separated chunk sizes', '4KiB,64KiB,1MiB')
      .option('--orders <list>', 'touch orders: seq, rand', 'seq,rand')
      .addOption(new Option('--prefetch-workers <n>', 'prefetch workers of the "with prefetch" cases (0: only run without)').default(4).argParser(countArg))
      .addOption(new Option('--runs <n>', 'runs per case and side; the best counts').default(3).argParser(countArg))
      .addOption(new Option('--reader <kind>', 'view: the source offers viewAt (one copy, as native); copy: every chunk goes through readAt into a staging buffer').choices(['view', 'copy']).default('view'))
      .option('--cache-dir <path>', 'where the native handler is built', defaultCacheDir())
      .option('--json', 'print one JSON object instead of a table', false),
  run: (options, ctx) => runUffdBench(options as unknown as UffdBenchOptions, ctx),
};

function parseList<T extends string>(text: string, what: string, allowed?: readonly T[]): T[] {
  const items = text.split(',').map((s) => s.trim()).filter((s) => s !== '');
  if (items.length === 0) throw new UsageError(`--${what} is empty`);
  for (const item of items) if (allowed !== undefined && !allowed.includes(item as T)) throw new UsageError(`--${what}: '${item}' is not one of ${allowed.join(', ')}`);
  return items as T[];
}

/** Compiles handler.c into the cache dir once per source version; returns the binary's path. */
async function buildNative(cacheDir: string): Promise<string> {
  const source = await readFile(NATIVE_SOURCE);
  const binary = path.join(cacheDir, `uffd-native-${createHash('sha256').update(source).digest('hex').slice(0, 16)}`);
  if (existsSync(binary)) return binary;
  await mkdir(cacheDir, { recursive: true });
  const tmp = `${binary}.${process.pid}.tmp`;
  await runProcess('cc', ['-O2', '-pthread', '-o', tmp, NATIVE_SOURCE], { timeoutMs: 120_000 });
  await rename(tmp, binary);
  return binary;
}

function percentile(sorted: Float64Array, p: number): number {
  return sorted.length === 0 ? 0 : sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))]!;
}

async function runNative(binary: string, size: number, chunkSize: number, order: string, signal: AbortSignal): Promise<Side> {
  const r = await runProcess(binary, [String(size), String(chunkSize), order, String(SEED)], { signal, timeoutMs: 300_000 });
  return JSON.parse(r.stdout) as Side;
}

/** Touches one byte of every page in `order`, timing the first touch of each chunk. */
function touchPages(buf: Buffer, page: number, chunkSize: number, order: Uint32Array): { touchMs: number; latencyUs: Float64Array; sum: number } {
  const touched = new Uint8Array(Math.ceil(buf.length / chunkSize));
  const latencyUs = new Float64Array(touched.length);
  let measured = 0;
  let sum = 0;
  const start = performance.now();
  for (let i = 0; i < order.length; i++) {
    const off = order[i]! * page;
    const chunk = Math.floor(off / chunkSize);
    if (touched[chunk] === 0) {
      const t0 = performance.now();
      sum += buf[off]!;
      latencyUs[measured++] = (performance.now() - t0) * 1000;
      touched[chunk] = 1;
    } else {
      sum += buf[off]!;
    }
  }
  return { touchMs: performance.now() - start, latencyUs: latencyUs.subarray(0, measured).sort(), sum };
}

async function runOurs(size: number, chunkSize: number, prefetchWorkers: number, order: Uint32Array, expected: Buffer, page: number, zeroCopy: boolean): Promise<Side> {
  const source = { module: PATTERN_MODULE, exportName: 'openPatternSource', args: [size, SEED, zeroCopy] };
  const region = await mapReader(source, size, { chunkSize, prefetchWorkers });
  let failed: Error | undefined;
  region.events.on('error', (err: Error) => (failed = err));
  try {
    const { touchMs, latencyUs } = touchPages(region.buffer, page, chunkSize, order);
    const verified = region.buffer.equals(expected) && failed === undefined;
    return {
      mbps: size / 1e6 / (touchMs / 1000),
      firstTouchP50Us: percentile(latencyUs, 0.5),
      firstTouchP99Us: percentile(latencyUs, 0.99),
      faults: region.stats.faults,
      verified,
    };
  } finally {
    await region.close();
  }
}

function best(runs: readonly Side[]): Side {
  const top = runs.reduce((a, b) => (b.mbps > a.mbps ? b : a));
  return { ...top, verified: runs.every((r) => r.verified) };
}

async function runUffdBench(options: UffdBenchOptions, { log, signal }: BenchContext): Promise<number> {
  const page = pageSize();
  const size = Math.ceil(options.size / page) * page;
  const chunkSizes = parseList(options.chunkSizes, 'chunk-sizes').map((s) => parseSize(s, 'chunk size'));
  const orders = parseList(options.orders, 'orders', ['seq', 'rand'] as const);
  const prefetchVariants = options.prefetchWorkers > 0 ? [0, options.prefetchWorkers] : [0];
  const runs = Math.max(1, options.runs);
  const binary = await buildNative(options.cacheDir);
  const expected = patternBuffer(size, SEED);
  const loadBefore = os.loadavg();
  const cases: UffdBenchCase[] = [];
  for (const chunkSize of chunkSizes) {
    for (const order of orders) {
      const touchOrder = pageOrder(size / page, order === 'rand', SEED);
      for (const prefetchWorkers of prefetchVariants) {
        const ours: Side[] = [];
        const native: Side[] = [];
        for (let run = 0; run < runs; run++) {
          signal.throwIfAborted();
          native.push(await runNative(binary, size, chunkSize, order, signal));
          ours.push(await runOurs(size, chunkSize, prefetchWorkers, touchOrder, expected, page, options.reader === 'view'));
        }
        const o = best(ours);
        const n = best(native);
        const c: UffdBenchCase = {
          chunkSize, order, prefetchWorkers, ours: o, native: n, ratio: n.mbps > 0 ? o.mbps / n.mbps : 0,
          target: chunkSize === 64 * 1024 ? TARGET_RATIO_64K : undefined, verified: o.verified && n.verified,
        };
        log.info({ chunkSize, order, prefetchWorkers, ours: o.mbps, native: n.mbps }, 'case done');
        cases.push(c);
      }
    }
  }
  const report = {
    scenario: 'uffd',
    machine: { ...machineInfo({ cc: await toolVersion('cc') }), loadAverage: { before: loadBefore, after: os.loadavg() } },
    parameters: {
      sizeBytes: size, pageSize: page, runs, seed: SEED, reader: options.reader,
      ours: `mapReader over an in-memory pattern source (worker thread, koffi; ${options.reader === 'view' ? 'viewAt: UFFDIO_COPY from the source' : 'readAt into a staging buffer, then UFFDIO_COPY'})`, peer: 'scripts/uffd-native/handler.c (pthread, UFFDIO_COPY from the source)' },
    cases,
  };
  process.stdout.write(options.json ? `${JSON.stringify(report)}\n` : `${renderText(report, size)}\n`);
  return cases.every((c) => c.verified) ? 0 : 1;
}

function renderText(report: { machine: ReturnType<typeof machineInfo> & { loadAverage: { before: number[]; after: number[] } }; parameters: { runs: number; reader: string }; cases: readonly UffdBenchCase[] }, size: number): string {
  const m = report.machine;
  const load = (l: number[]): string => l.map((v) => v.toFixed(2)).join(' ');
  const head = [
    `r3map-bench uffd: ${formatSize(size)} region, one byte per page, best of ${report.parameters.runs} runs per side, reader: ${report.parameters.reader}`,
    `node ${m.node}, kernel ${m.kernel}, ${m.cpus}x ${m.cpu}, ${formatSize(m.memoryBytes)} RAM, ${m.tools.cc}`,
    `load average before ${load(m.loadAverage.before)}, after ${load(m.loadAverage.after)}`,
    '',
  ];
  const table = formatTable(
    ['chunk', 'order', 'prefetch', 'r3map MB/s', 'native MB/s', 'ratio', 'r3map p50/p99 µs', 'native p50/p99 µs', 'faults', 'verified'],
    report.cases.map((c) => [
      formatSize(c.chunkSize), c.order, String(c.prefetchWorkers), formatNumber(c.ours.mbps), formatNumber(c.native.mbps),
      `${c.ratio.toFixed(2)}x${c.target !== undefined ? (c.ratio >= c.target ? ' ok' : ' LOW') : ''}`,
      `${formatNumber(c.ours.firstTouchP50Us)}/${formatNumber(c.ours.firstTouchP99Us)}`,
      `${formatNumber(c.native.firstTouchP50Us)}/${formatNumber(c.native.firstTouchP99Us)}`,
      `${c.ours.faults}/${c.native.faults}`, c.verified ? 'yes' : 'NO',
    ]),
  );
  return `${head.join('\n')}\n${table}\n(ratio: r3map / native MB/s, target ≥ ${TARGET_RATIO_64K} at 64 KiB; faults: r3map/native blocking faults)`;
}
