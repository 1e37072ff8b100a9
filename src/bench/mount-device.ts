/**
 * `r3map-bench device`: the block device r3map-mount gives (memory backend; /dev/nbdN, or
 * /dev/loopN through fuse-loop where the kernel has no nbd) against a raw loop device over a
 * tmpfs file of the same size, in the same run. fio (libaio, direct=1): 1M sequential write and
 * read, 4k random write and read, each run on ours, then on the peer. The write runs come first so
 * the reads see written data on both.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { Command, Option } from 'commander';
import { durationArg, sizeArg } from '../util/args.js';
import { TimeoutError } from '../errors.js';
import { TRANSPORTS, type Transport } from '../mount/transport.js';
import { formatSize } from '../util/size.js';
import { runProcess, toolVersion } from './processes.js';
import { compare, formatNumber, formatTable, machineInfo, type BenchContext, type BenchScenario, type Comparison } from './scenario.js';

/** bin/r3map-mount.js, from dist/src/bench/. */
const MOUNT_BIN = fileURLToPath(new URL('../../../bin/r3map-mount.js', import.meta.url));

interface DeviceBenchOptions {
  size: number;
  runtime: number;
  json: boolean;
  dir: string;
  transport: Transport;
}

const FIO = Object.freeze({ seqBs: '1M', seqIodepth: 8, randBs: '4k', randIodepth: 32, rampSeconds: 1, ioengine: 'libaio', direct: 1 });

const TESTS = [
  { name: `fio ${FIO.seqBs} seq write qd${FIO.seqIodepth}`, rw: 'write', bs: FIO.seqBs, iodepth: FIO.seqIodepth, side: 'write', unit: 'MB/s' },
  { name: `fio ${FIO.seqBs} seq read qd${FIO.seqIodepth}`, rw: 'read', bs: FIO.seqBs, iodepth: FIO.seqIodepth, side: 'read', unit: 'MB/s' },
  { name: `fio ${FIO.randBs} randwrite qd${FIO.randIodepth}`, rw: 'randwrite', bs: FIO.randBs, iodepth: FIO.randIodepth, side: 'write', unit: 'IOPS' },
  { name: `fio ${FIO.randBs} randread qd${FIO.randIodepth}`, rw: 'randread', bs: FIO.randBs, iodepth: FIO.randIodepth, side: 'read', unit: 'IOPS' },
] as const;

export const deviceScenario: BenchScenario = {
  name: 'device',
  command: () =>
    new Command('device')
      .description('r3map-mount (memory) against a raw loop device on a tmpfs file of the same size: fio libaio direct=1, 1M seq and 4k random, read and write')
      .addOption(new Option('--size <bytes>', 'size of both devices').default(256 * 1024 ** 2, '256MiB').argParser(sizeArg))
      .addOption(new Option('--runtime <duration>', 'length of each fio run').default(5000, '5s').argParser(durationArg))
      .addOption(new Option('--transport <kind>', 'r3map-mount --transport').choices(TRANSPORTS).default('auto'))
      .option('--dir <path>', 'a tmpfs directory for the peer\'s backing file', '/dev/shm')
      .option('--json', 'print one JSON object instead of a table', false),
  run: (options, ctx) => runDeviceBench(options as unknown as DeviceBenchOptions, ctx),
};

interface Device {
  readonly path: string;
  /** Loop direct I/O as sysfs reports it, when the device is a loop device. */
  readonly loopDirectIo: boolean | undefined;
  stop(): Promise<void>;
}

async function runDeviceBench(options: DeviceBenchOptions, { log, signal }: BenchContext): Promise<number> {
  const tools = { fio: await toolVersion('fio'), losetup: await toolVersion('losetup'), nbdfuse: await toolVersion('nbdfuse') };
  if (tools.fio === 'missing' || tools.losetup === 'missing') throw new Error('fio and losetup are needed (run scripts/install-test-tools.sh)');
  const dir = await mkdtemp(path.join(options.dir, 'r3map-bench-device-'));
  const devices: Device[] = [];
  try {
    const ours = await startMount(options, signal);
    devices.push(ours);
    const peer = await attachTmpfsLoop(path.join(dir, 'peer.img'), options.size);
    devices.push(peer);
    log.info({ ours: ours.path, peer: peer.path, size: options.size }, 'benchmarking');
    const seconds = Math.max(1, Math.round(options.runtime / 1000));
    const comparisons: Comparison[] = [];
    for (const t of TESTS) {
      const measure = async (device: string): Promise<number> => {
        signal.throwIfAborted();
        const side = (await fio(device, t.rw, t.bs, t.iodepth, seconds, signal))[t.side];
        return t.unit === 'IOPS' ? side.iops : side.bw_bytes / 1e6;
      };
      const mine = await measure(ours.path);
      comparisons.push(compare(t.name, t.unit, mine, await measure(peer.path)));
    }
    const report = {
      scenario: 'device',
      machine: machineInfo(tools),
      parameters: {
        sizeBytes: options.size, fioRuntimeSeconds: seconds, ...FIO, ours: `r3map-mount --backend memory (${ours.path})`,
        oursLoopDirectIo: ours.loopDirectIo, peer: `loop device on a tmpfs file (${peer.path})`, peerLoopDirectIo: peer.loopDirectIo,
      },
      results: comparisons,
    };
    process.stdout.write(options.json ? `${JSON.stringify(report)}\n` : `${renderText(report, options, seconds)}\n`);
    return 0;
  } finally {
    for (const device of devices.reverse()) await device.stop().catch((err: unknown) => log.error({ err, device: device.path }, 'cleanup failed'));
    await rm(dir, { recursive: true, force: true });
  }
}

function renderText(report: { machine: ReturnType<typeof machineInfo>; parameters: Record<string, unknown>; results: readonly Comparison[] }, options: DeviceBenchOptions, seconds: number): string {
  const { machine, parameters: p } = report;
  const head = [
    `r3map-bench device: ${p.ours} vs ${p.peer}, ${formatSize(options.size)} each, fio ${FIO.ioengine} direct=${FIO.direct}, ${seconds} s per run`,
    `loop direct I/O: ours ${String(p.oursLoopDirectIo ?? 'n/a')}, peer ${String(p.peerLoopDirectIo)}`,
    `node ${machine.node}, kernel ${machine.kernel}, ${machine.cpus}x ${machine.cpu}, ${formatSize(machine.memoryBytes)} RAM`,
    `${machine.tools.fio}, ${machine.tools.nbdfuse}`,
    '',
  ];
  const table = formatTable(
    ['test', 'unit', 'r3map', 'tmpfs loop', 'ratio'],
    report.results.map((c) => [c.test, c.unit, formatNumber(c.ours), formatNumber(c.peer), `${c.ratio.toFixed(2)}x`]),
  );
  return `${head.join('\n')}\n${table}\n(ratio: r3map / tmpfs loop; higher is better)`;
}

async function loopDirectIo(device: string): Promise<boolean | undefined> {
  if (!/^\/dev\/loop\d+$/.test(device)) return undefined;
  return (await readFile(`/sys/block/${path.basename(device)}/loop/dio`, 'utf8').catch(() => '')).trim() === '1';
}

/** Starts r3map-mount and waits for the device path it prints (node alone takes tens of seconds to start in an emulated VM). */
async function startMount(options: DeviceBenchOptions, signal: AbortSignal, timeoutMs = 300_000): Promise<Device> {
  const args = [MOUNT_BIN, '--backend', 'memory', '--size', String(options.size), '--transport', options.transport];
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, R3MAP_LOG_LEVEL: process.env.R3MAP_LOG_LEVEL ?? 'warn' } });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => void (stderr = (stderr + d.toString()).slice(-8000)));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    const code = await exited.finally(() => clearTimeout(timer));
    if (code !== 0) throw new Error(`r3map-mount exited with ${code} after SIGTERM: ${stderr}`);
  };
  const onAbort = (): void => void child.kill('SIGTERM');
  signal.addEventListener('abort', onAbort, { once: true });
  try {
    const device = await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new TimeoutError(`r3map-mount printed no device within ${timeoutMs} ms: ${stderr}`)), timeoutMs);
      createInterface({ input: child.stdout }).once('line', (line) => {
        clearTimeout(timer);
        resolve(line.trim());
      });
      void exited.then((code) => {
        clearTimeout(timer);
        reject(new Error(`r3map-mount exited with ${code} before it was ready: ${stderr}`));
      });
    });
    return { path: device, loopDirectIo: await loopDirectIo(device), stop };
  } catch (err) {
    await stop().catch(() => undefined);
    throw err;
  } finally {
    signal.removeEventListener('abort', onAbort);
  }
}

/**
 * A loop device over a sparse tmpfs file (the peer); the write runs fill it before the reads.
 * Loop direct I/O where the kernel allows it on tmpfs (6.6+); older kernels refuse it (EINVAL),
 * and the peer then runs without (the report says which).
 */
async function attachTmpfsLoop(file: string, size: number): Promise<Device> {
  await writeFile(file, '');
  await truncate(file, size);
  const r = await runProcess('losetup', ['--find', '--show', '--direct-io=on', file])
    .catch(() => runProcess('losetup', ['--find', '--show', file]));
  const device = r.stdout.trim();
  return {
    path: device,
    loopDirectIo: await loopDirectIo(device),
    stop: async () => {
      await runProcess('losetup', ['-d', device]);
    },
  };
}

interface FioSide {
  iops: number;
  bw_bytes: number;
}

async function fio(device: string, rw: string, bs: string, iodepth: number, seconds: number, signal: AbortSignal): Promise<{ read: FioSide; write: FioSide }> {
  const r = await runProcess('fio', [
    '--name=bench', `--filename=${device}`, `--ioengine=${FIO.ioengine}`, `--direct=${FIO.direct}`, `--rw=${rw}`, `--bs=${bs}`,
    `--iodepth=${iodepth}`, '--time_based', `--runtime=${seconds}`, `--ramp_time=${FIO.rampSeconds}`, '--output-format=json',
  ], { signal, timeoutMs: (seconds + 60) * 1000 });
  const json = JSON.parse(r.stdout.slice(r.stdout.indexOf('{'))) as { jobs: { error: number; read: FioSide; write: FioSide }[] };
  const job = json.jobs[0]!;
  if (job.error !== 0) throw new Error(`fio ${rw} on ${device} failed with error ${job.error}`);
  return job;
}
