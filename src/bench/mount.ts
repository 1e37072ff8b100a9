/**
 * `r3map-bench mount`: direct against managed mounts as the simulated round-trip time (RTT) to
 * the remote grows; the thesis' claim is that direct mounts collapse with latency and managed
 * mounts do not.
 *
 * What runs: the library stacks of r3map-mount, with a userspace NbdClient in place of the kernel
 * (no kernel NBD here, and no FUSE hop that would cap both sides): the remote is one in-memory
 * resource filled with incompressible data, behind the LatencyBackend stage (`--latency`) —
 *   direct:  remote → LatencyBackend → NbdServer (Unix socket) → NbdClient
 *   managed: ManagedPathMount (memory cache, latencyMs = RTT, its own stack from managed.ts)
 *            whose device is an NbdServer on a Unix socket → NbdClient
 * Per cell, right after the mount is ready: the first read of [0, block) (first-chunk latency),
 * then the demand read: the LAST block, which an ascending pull has not started yet while its
 * workers are busy with the rest (the read must jump ahead of them: at most 1 RTT + 1 ms),
 * then sequential reads, then sequential writes (block bytes, iodepth requests in flight), each
 * phase capped by --cell-time and by the size, then a FLUSH (sync: a managed mount pushes every
 * dirty chunk). Throughput is bytes moved / time, so capped cells stay comparable.
 * Last, the pull heuristic: the first read of the LAST block right after a managed mount is ready,
 * with the order that fits that read (descending) and the inverted one (ascending).
 */
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Command, Option } from 'commander';
import { countArg, durationArg, listArg, sizeArg } from '../util/args.js';
import { UsageError } from '../errors.js';
import type { Logger } from '../log.js';
import { MemoryBackend } from '../backends/memory.js';
import type { ManagedDevice } from '../mount/managed.js';
import { MANAGED_DEFAULTS } from '../mount/managed-options.js';
import { ManagedPathMount } from '../mount/managed-path.js';
import { NbdClient } from '../nbd-client/client.js';
import { NbdServer } from '../nbd/server.js';
import { LatencyBackend } from '../pipeline/latency.js';
import type { PullPriorityName } from '../pipeline/pull-priority.js';
import type { Backend } from '../pipeline/types.js';
import { formatSize } from '../util/size.js';
import { formatNumber, formatTable, machineInfo, type BenchContext, type BenchScenario } from './scenario.js';

interface MountBenchFlags {
  size?: number;
  rtt?: number[];
  pullWorkers: number[];
  blockSize: number;
  iodepth: number;
  cellTime?: number;
  heuristicDelay: number;
  pullMaxQueue: number;
  quick: boolean;
  json: boolean;
}

interface Settings {
  readonly size: number;
  readonly rttsMs: readonly number[];
  readonly pullWorkers: readonly number[];
  readonly blockSize: number;
  readonly iodepth: number;
  readonly cellTimeMs: number;
  readonly heuristicDelayMs: number;
  readonly pullMaxQueueMs: number;
}

export interface MountCell {
  readonly mode: 'direct' | 'managed';
  readonly rttMs: number;
  /** 0 for direct mounts. */
  readonly pullWorkers: number;
  readonly firstReadMs: number;
  /** The last block, read right after the first one, ahead of the pulls still queued. */
  readonly demandReadMs: number;
  readonly readBytes: number;
  readonly readMBps: number;
  readonly writeBytes: number;
  readonly writeMBps: number;
  /** The FLUSH after the writes; a managed mount pushes every dirty chunk in it. */
  readonly syncMs: number;
}

export interface HeuristicCell {
  readonly rttMs: number;
  readonly priority: PullPriorityName;
  /** descending fits a first read at the end; ascending is the inverted order. */
  readonly fits: boolean;
  /** How long after the mount was ready the read was issued. */
  readonly delayMs: number;
  readonly lastBlockFirstReadMs: number;
}

const HEURISTIC_WORKERS = 64;
const MB = 1e6;

export const mountScenario: BenchScenario = {
  name: 'mount',
  command: () =>
    new Command('mount')
      .description('direct vs managed mounts at simulated RTTs: read/write MB/s and first-read latency through the NBD server (userspace NbdClient, no kernel), plus the pull heuristic on the last block')
      .addOption(new Option('--size <bytes>', 'the remote resource').default(undefined, '512MiB; --quick: 256MiB').argParser(sizeArg))
      .addOption(new Option('--rtt <ms,...>', 'simulated round trips in ms').default(undefined, '0,1,5,10,25; --quick: 0,5,10').argParser(listArg('--rtt')))
      .addOption(new Option('--pull-workers <n,...>', 'managed: pull worker counts').default([1, 64, 512], '1,64,512').argParser(listArg('--pull-workers')))
      .addOption(new Option('--block-size <bytes>', 'bytes per read/write request (128KiB: a sequential read with the kernel\'s default readahead)').default(128 * 1024, '128KiB').argParser(sizeArg))
      .addOption(new Option('--iodepth <n>', 'requests in flight').default(1).argParser(countArg))
      .addOption(new Option('--cell-time <duration>', 'cap on each read and write phase').default(undefined, '5s; --quick: 2s').argParser(durationArg))
      .addOption(new Option('--heuristic-delay <duration>', 'pull heuristic: also read the last block this long after the mount is ready (the time a kernel attach, a filesystem mount or an app start takes)').default(50, '50ms').argParser(durationArg))
      .addOption(new Option('--pull-max-queue <duration>', 'managed: the queueing the background pull may add in front of reads (r3map-mount --pull-max-queue); 0 = every worker in flight').default(MANAGED_DEFAULTS.pullMaxQueueMs, '1ms').argParser(durationArg))
      .option('--quick', 'a smaller run: 256MiB, RTT 0,5,10, 2 s phases', false)
      .option('--json', 'print one JSON object instead of a table', false),
  run: (options, ctx) => runMountBench(options as unknown as MountBenchFlags, ctx),
};

function settings(flags: MountBenchFlags): Settings {
  const s = Object.freeze({
    size: flags.size ?? (flags.quick ? 256 : 512) * 1024 * 1024,
    rttsMs: flags.rtt ?? (flags.quick ? [0, 5, 10] : [0, 1, 5, 10, 25]),
    pullWorkers: flags.pullWorkers,
    blockSize: flags.blockSize,
    iodepth: flags.iodepth,
    cellTimeMs: flags.cellTime ?? (flags.quick ? 2000 : 5000),
    heuristicDelayMs: flags.heuristicDelay,
    pullMaxQueueMs: flags.pullMaxQueue,
  });
  if (s.size % s.blockSize !== 0 || s.blockSize % 4096 !== 0) throw new UsageError(`--size ${s.size} must be a multiple of --block-size ${s.blockSize}, itself a multiple of 4096`);
  if (!Number.isSafeInteger(s.iodepth) || s.iodepth < 1) throw new UsageError(`--iodepth must be at least 1, got ${s.iodepth}`);
  if (s.pullWorkers.some((w) => !Number.isSafeInteger(w) || w < 1)) throw new UsageError('--pull-workers: whole numbers >= 1');
  return s;
}

async function runMountBench(flags: MountBenchFlags, { log, signal }: BenchContext): Promise<number> {
  const s = settings(flags);
  const loadBefore = os.loadavg();
  const dir = await mkdtemp(path.join(os.tmpdir(), 'r3map-bench-mount-'));
  const remote = await filledRemote(s.size);
  // The mounts log warnings and errors only (one info line per cell would drown the progress).
  const quiet = log.isLevelEnabled('info') ? log.child({ component: 'bench-mount' }, { level: 'warn' }) : log;
  try {
    await warmUp(remote, dir, quiet);
    const cells: MountCell[] = [];
    for (const rttMs of s.rttsMs) {
      for (const pullWorkers of [0, ...s.pullWorkers]) {
        signal.throwIfAborted();
        const cell = await measureCell(remote, s, rttMs, pullWorkers, dir, quiet, signal);
        log.info(cell, 'cell done');
        cells.push(cell);
      }
    }
    const heuristic: HeuristicCell[] = [];
    for (const rttMs of s.rttsMs) {
      for (const delayMs of [0, s.heuristicDelayMs]) {
        for (const priority of ['descending', 'ascending'] as const) {
          signal.throwIfAborted();
          const lastBlockFirstReadMs = await lastBlockFirstRead(remote, s, rttMs, priority, delayMs, dir, quiet);
          heuristic.push({ rttMs, priority, fits: priority === 'descending', delayMs, lastBlockFirstReadMs });
        }
      }
    }
    const report = {
      scenario: 'mount',
      machine: machineInfo(),
      loadAverage: { before: loadBefore, after: os.loadavg() },
      parameters: {
        sizeBytes: s.size, blockSize: s.blockSize, iodepth: s.iodepth, cellTimeMs: s.cellTimeMs, rttsMs: s.rttsMs, pullWorkers: s.pullWorkers,
        heuristicPullWorkers: HEURISTIC_WORKERS, heuristicDelayMs: s.heuristicDelayMs, pullMaxQueueMs: s.pullMaxQueueMs,
        chunkSize: MANAGED_DEFAULTS.chunkSize, pushWorkers: MANAGED_DEFAULTS.pushWorkers, pushIntervalMs: MANAGED_DEFAULTS.pushIntervalMs, cache: 'memory',
        via: 'library stacks, NbdServer on a Unix socket, userspace NbdClient in the same process (no kernel)', remote: 'memory, random data, LatencyBackend',
      },
      results: cells,
      heuristic,
      targets: targets(cells, s),
    };
    process.stdout.write(flags.json ? `${JSON.stringify(report)}\n` : `${render(report, s)}\n`);
    return 0;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** The remote: memory filled with a random 1 MiB block over and over (reads copy real data). */
async function filledRemote(size: number): Promise<Backend> {
  const memory = new MemoryBackend({ size });
  const block = randomBytes(1024 * 1024);
  for (let off = 0; off < size; off += block.length) await memory.writeAt(block.subarray(0, Math.min(block.length, size - off)), off);
  return memory;
}

/** The shared remote as each mount sees it: the mount closes what it is given, this stays open. */
function borrowed(remote: Backend): Backend {
  return {
    size: remote.size,
    readOnly: false,
    readAt: (buf, off) => remote.readAt(buf, off),
    writeAt: (buf, off) => remote.writeAt(buf, off),
    sync: () => remote.sync(),
    close: () => Promise.resolve(),
  };
}

/** NbdServer serving `backend` on a Unix socket, and our client connected to it. */
async function serve(backend: Backend, socket: string, log: Logger): Promise<{ client: NbdClient; close(): Promise<void> }> {
  const server = new NbdServer({ exports: [{ name: 'bench', backend }], log });
  await server.listen({ path: socket });
  const client = await NbdClient.connect({ path: socket }, { exportName: 'bench', log });
  return {
    client,
    close: async () => {
      await client.close();
      await server.close();
    },
  };
}

interface Opened {
  readonly client: NbdClient;
  sync(): Promise<void>;
  close(): Promise<void>;
}

let socketSeq = 0;

async function openMount(remote: Backend, rttMs: number, pullWorkers: number, priority: PullPriorityName, pullMaxQueueMs: number, dir: string, log: Logger): Promise<Opened> {
  const socket = path.join(dir, `nbd-${++socketSeq}.sock`);
  if (pullWorkers === 0) {
    const served = await serve(new LatencyBackend(borrowed(remote), { readLatencyMs: rttMs, writeLatencyMs: rttMs }), socket, log);
    return { client: served.client, sync: () => served.client.flush(), close: () => served.close() };
  }
  let client: NbdClient | undefined;
  const attach = async (backend: Backend): Promise<ManagedDevice> => {
    const served = await serve(backend, socket, log);
    client = served.client;
    return { path: socket, transport: 'nbd', closed: served.client.closed(), flush: () => served.client.flush(), close: () => served.close() };
  };
  const mount = new ManagedPathMount({ remote: borrowed(remote), cache: 'memory', pullWorkers, pullPriority: priority, pullMaxQueueMs, latencyMs: rttMs, log }, attach);
  mount.events.on('error', (err) => log.error({ err }, 'managed mount background failure'));
  await mount.open();
  return { client: client!, sync: () => mount.sync(), close: () => mount.close() };
}

async function measureCell(remote: Backend, s: Settings, rttMs: number, pullWorkers: number, dir: string, log: Logger, signal: AbortSignal): Promise<MountCell> {
  const m = await openMount(remote, rttMs, pullWorkers, 'ascending', s.pullMaxQueueMs, dir, log);
  try {
    const first = Buffer.allocUnsafe(s.blockSize);
    let t = performance.now();
    await m.client.readAt(first, 0);
    const firstReadMs = performance.now() - t;
    t = performance.now();
    await m.client.readAt(first, s.size - s.blockSize);
    const demandReadMs = performance.now() - t;
    const read = await sequential(m.client, 'read', s, s.blockSize, signal);
    const write = await sequential(m.client, 'write', s, 0, signal);
    t = performance.now();
    await m.sync();
    const syncMs = performance.now() - t;
    return Object.freeze({
      mode: pullWorkers === 0 ? 'direct' : 'managed', rttMs, pullWorkers, firstReadMs, demandReadMs,
      readBytes: read.bytes, readMBps: read.bytes / MB / (read.ms / 1000),
      writeBytes: write.bytes, writeMBps: write.bytes / MB / (write.ms / 1000), syncMs,
    });
  } finally {
    await m.close();
  }
}

/** Sequential requests of blockSize from `from` to the end, iodepth in flight, until the cell time is up. */
async function sequential(client: NbdClient, op: 'read' | 'write', s: Settings, from: number, signal: AbortSignal): Promise<{ bytes: number; ms: number }> {
  const start = performance.now();
  const deadline = start + s.cellTimeMs;
  const data = randomBytes(s.blockSize);
  let next = from;
  let bytes = 0;
  const lane = async (): Promise<void> => {
    const buf = op === 'read' ? Buffer.allocUnsafe(s.blockSize) : data;
    while (next < s.size && performance.now() < deadline && !signal.aborted) {
      const off = next;
      next += s.blockSize;
      if (op === 'read') await client.readAt(buf, off);
      else await client.writeAt(buf, off);
      bytes += s.blockSize;
    }
  };
  await Promise.all(Array.from({ length: s.iodepth }, lane));
  return { bytes, ms: performance.now() - start };
}

/** Not measured: the first cell would otherwise pay for JIT warm-up and lazy module state. */
async function warmUp(remote: Backend, dir: string, log: Logger): Promise<void> {
  const m = await openMount(remote, 0, 0, 'ascending', MANAGED_DEFAULTS.pullMaxQueueMs, dir, log);
  try {
    const buf = Buffer.allocUnsafe(128 * 1024);
    for (let off = 0; off + buf.length <= Math.min(remote.size, 32 * 1024 * 1024); off += buf.length) await m.client.readAt(buf, off);
  } finally {
    await m.close();
  }
}

async function lastBlockFirstRead(remote: Backend, s: Settings, rttMs: number, priority: PullPriorityName, delayMs: number, dir: string, log: Logger): Promise<number> {
  const m = await openMount(remote, rttMs, HEURISTIC_WORKERS, priority, s.pullMaxQueueMs, dir, log);
  try {
    if (delayMs > 0) await sleep(delayMs);
    const buf = Buffer.allocUnsafe(s.blockSize);
    const t = performance.now();
    await m.client.readAt(buf, s.size - s.blockSize);
    return performance.now() - t;
  } finally {
    await m.close();
  }
}

interface Target {
  readonly name: string;
  readonly value: number;
  readonly target: number;
  /** 'x': a ratio that must reach the target; 'ms': a latency that must stay at or under it. */
  readonly unit: 'x' | 'ms';
  readonly ok: boolean;
}

/** The issue's bound on a demand read: one round trip (a direct mount's read) plus 1 ms, at any pull worker count. */
const DEMAND_SLACK_MS = 1;

/** The issue's targets on read MB/s, per pull worker count, where the run has the RTTs they need. */
function targets(cells: readonly MountCell[], s: Settings): Target[] {
  const read = (rttMs: number, pullWorkers: number): number | undefined => cells.find((c) => c.rttMs === rttMs && c.pullWorkers === pullWorkers)?.readMBps;
  const out: Target[] = [];
  for (const w of s.pullWorkers) {
    const [m0, m5, m10, d5] = [read(0, w), read(5, w), read(10, w), read(5, 0)];
    if (m0 !== undefined && m10 !== undefined) out.push({ name: `managed w=${w} read: 10 ms / 0 ms`, value: m10 / m0, target: 0.8, unit: 'x', ok: m10 / m0 >= 0.8 });
    if (m5 !== undefined && d5 !== undefined) out.push({ name: `managed w=${w} / direct read at 5 ms`, value: m5 / d5, target: 5, unit: 'x', ok: m5 / d5 >= 5 });
  }
  for (const c of cells) {
    if (c.mode !== 'managed') continue;
    // One round trip of this stack is what the direct mount's read of the same block took (the
    // simulated RTT plus the timers' and the NBD hop's own time); the bound is that plus 1 ms.
    const direct = cells.find((d) => d.mode === 'direct' && d.rttMs === c.rttMs);
    const bound = Math.round(((direct?.demandReadMs ?? c.rttMs) + DEMAND_SLACK_MS) * 100) / 100;
    out.push({ name: `managed w=${c.pullWorkers} demand read at ${c.rttMs} ms (direct + ${DEMAND_SLACK_MS} ms)`, value: c.demandReadMs, target: bound, unit: 'ms', ok: c.demandReadMs <= bound });
  }
  return out;
}

function render(report: { machine: ReturnType<typeof machineInfo>; loadAverage: { before: number[]; after: number[] }; results: readonly MountCell[]; heuristic: readonly HeuristicCell[]; targets: readonly Target[] }, s: Settings): string {
  const { machine } = report;
  const load = (l: number[]): string => l.map((v) => v.toFixed(2)).join(' ');
  const head = [
    `r3map-bench mount: direct vs managed, ${formatSize(s.size)} remote (memory + LatencyBackend), ${formatSize(s.blockSize)} requests, iodepth ${s.iodepth}, phases capped at ${s.cellTimeMs} ms`,
    `through NbdServer on a Unix socket and the userspace NbdClient (no kernel); managed: memory cache, 64 KiB chunks, ascending pull, pull max queue ${s.pullMaxQueueMs} ms`,
    `node ${machine.node}, kernel ${machine.kernel}, ${machine.cpus}x ${machine.cpu}; load average before ${load(report.loadAverage.before)}, after ${load(report.loadAverage.after)}`,
    '',
  ];
  const table = formatTable(
    ['mount', 'RTT ms', 'first read ms', 'demand read ms', 'read MB/s', 'read MiB', 'write MB/s', 'write MiB', 'sync ms'],
    report.results.map((c) => [
      c.mode === 'direct' ? 'direct' : `managed w=${c.pullWorkers}`, String(c.rttMs), formatNumber(c.firstReadMs), formatNumber(c.demandReadMs), formatNumber(c.readMBps),
      formatNumber(c.readBytes / 2 ** 20), formatNumber(c.writeMBps), formatNumber(c.writeBytes / 2 ** 20), formatNumber(c.syncMs),
    ]),
  );
  const rtts = [...new Set(report.heuristic.map((h) => h.rttMs))];
  const columns = [0, s.heuristicDelayMs].flatMap((delayMs) => (['descending', 'ascending'] as const).map((priority) => ({ delayMs, priority })));
  const heuristic = formatTable(
    ['RTT ms', ...columns.map((c) => `${c.priority === 'descending' ? 'descending (fits)' : 'ascending (inverted)'} ${c.delayMs === 0 ? 'at ready' : `+${c.delayMs} ms`}`)],
    rtts.map((r) => [String(r), ...columns.map((c) => formatNumber(report.heuristic.find((h) => h.rttMs === r && h.priority === c.priority && h.delayMs === c.delayMs)!.lastBlockFirstReadMs))]),
  );
  const goals = report.targets.map((g) => `${g.ok ? 'ok  ' : 'MISS'} ${g.name} = ${g.value.toFixed(2)}${g.unit === 'x' ? 'x (target >= ' : ' ms (target <= '}${g.target}${g.unit === 'x' ? 'x' : ' ms'})`);
  return [...head, table, '', `pull heuristic: first read of the last ${formatSize(s.blockSize)} (ms) of a managed mount (w=${HEURISTIC_WORKERS}), issued when it is ready and ${s.heuristicDelayMs} ms later:`, heuristic, '', ...goals].join('\n');
}
