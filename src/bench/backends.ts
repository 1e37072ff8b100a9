/**
 * `r3map-bench backends`: writes then reads `--size` bytes through each remote backend (NBD
 * remote and gRPC against r3map-serve, Redis against redis-server, S3 against s3rver, Cassandra
 * against the CQL test server) with 1 and 16 requests in flight at 64 KiB and 1 MiB, next to the
 * raw client ceiling measured in the same run with the same pattern: raw ioredis SET/GET, raw S3
 * PutObject/GetObject, and raw Node sockets (raw-socket.ts) for NBD and gRPC. Every server runs
 * in its own process. A backend whose server, package or module is missing is skipped with a
 * note. Each direction of each cell stops after `--max-seconds` (then it is marked "capped").
 * Every 16th read is compared with what was written; a mismatch is reported, not hidden.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Command, Option } from 'commander';
import { openComposed } from '../mount/compose.js';
import { durationArg, sizeArg } from '../util/args.js';
import type { Backend } from '../pipeline/types.js';
import { formatSize } from '../util/size.js';
import { cqlServerModule, startCqlServer, startGrpcChild, startRedis, startS3rver, startServe, type BenchServer } from './backend-servers.js';
import { toolVersion } from './processes.js';
import { RawSocketClient, startRawPeer } from './raw-socket.js';
import { formatNumber, formatTable, machineInfo, type BenchContext, type BenchScenario } from './scenario.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const CHUNK_SIZES = [64 * KiB, MiB] as const;
const IN_FLIGHT = [1, 16] as const;
const ALL = ['nbd', 'grpc', 'redis', 's3', 'cassandra'] as const;
/** The targets: a ratio against the raw client, or MB/s outright (at 16 in flight). */
const TARGETS: Readonly<Record<string, { readonly ratio?: number; readonly mbps?: number; readonly chunkSize?: number }>> = Object.freeze({
  redis: { ratio: 0.7 },
  grpc: { mbps: 500, chunkSize: MiB },
  nbd: { mbps: 1000, chunkSize: MiB },
});

interface Options {
  size: number;
  maxSeconds: number;
  json: boolean;
  only: string;
  dir: string;
}

interface Rate {
  readonly mbps: number;
  readonly capped: boolean;
  readonly wrong: number;
}

/** One request: request number `i` of `chunkSize` bytes, `buf` is the worker's buffer. */
type Op = (i: number, buf: Buffer) => Promise<void>;
interface Pair {
  readonly write: Op;
  readonly read: Op;
}

export interface CellResult {
  readonly backend: string;
  readonly chunkSize: number;
  readonly inFlight: number;
  readonly writeMBps: number;
  readonly readMBps: number;
  readonly ceiling: string;
  readonly rawWriteMBps: number | undefined;
  readonly rawReadMBps: number | undefined;
  readonly writeRatio: number | undefined;
  readonly readRatio: number | undefined;
  readonly target: string | undefined;
  readonly met: boolean | undefined;
  readonly capped: boolean;
  readonly wrongReads: number;
}

export const backendsScenario: BenchScenario = {
  name: 'backends',
  command: () =>
    new Command('backends')
      .description('each remote backend (NBD, gRPC, Redis, S3, Cassandra test server) against its raw client, 1 and 16 in flight, 64 KiB and 1 MiB')
      .addOption(new Option('--size <bytes>', 'bytes written, then read, per backend and cell').default(256 * MiB, '256MiB').argParser(sizeArg))
      .addOption(new Option('--max-seconds <duration>', 'cap on each direction of each cell').default(10_000, '10s').argParser(durationArg))
      .option('--only <list>', `comma-separated backends to run (${ALL.join(',')})`, ALL.join(','))
      .option('--json', 'print one JSON object instead of a table', false)
      .option('--dir <path>', 'where server data (s3rver, redis) goes', os.tmpdir()),
  run: (options, ctx) => runBackendsBench(options as unknown as Options, ctx),
};

class Bench {
  readonly results: CellResult[] = [];
  readonly skipped: { backend: string; reason: string }[] = [];
  readonly block = randomBytes(MiB);
  readonly #servers: BenchServer[] = [];
  constructor(readonly options: Options, readonly ctx: BenchContext, readonly dir: string) {}

  async server(start: Promise<BenchServer>): Promise<BenchServer> {
    const s = await start;
    this.#servers.push(s);
    return s;
  }

  async stopServers(): Promise<void> {
    await Promise.allSettled(this.#servers.splice(0).map((s) => s.stop()));
  }

  /** Runs `pair` with `inFlight` workers: writes, then reads, each bounded by --max-seconds. */
  async measure(pair: Pair, chunkSize: number, inFlight: number): Promise<{ write: Rate; read: Rate }> {
    const count = Math.floor(this.options.size / chunkSize);
    const write = await this.#phase(pair.write, count, chunkSize, inFlight, false);
    const read = await this.#phase(pair.read, write.done, chunkSize, inFlight, true);
    return { write: write.rate, read: read.rate };
  }

  async #phase(op: Op, count: number, chunkSize: number, inFlight: number, verify: boolean): Promise<{ rate: Rate; done: number }> {
    const expected = this.block.subarray(0, chunkSize);
    const started = performance.now();
    const stopAt = started + this.options.maxSeconds;
    let next = 0;
    let done = 0;
    let wrong = 0;
    const worker = async (): Promise<void> => {
      const buf = verify ? Buffer.alloc(chunkSize) : expected;
      while (next < count && performance.now() < stopAt && !this.ctx.signal.aborted) {
        const i = next++;
        if (verify) buf.fill(0);
        await op(i, buf);
        if (verify && i % 16 === 0 && !buf.equals(expected)) wrong++;
        done++;
      }
    };
    await Promise.all(Array.from({ length: inFlight }, worker));
    const seconds = (performance.now() - started) / 1000;
    return { rate: { mbps: (done * chunkSize) / 1e6 / seconds, capped: done < count, wrong }, done };
  }

  record(backend: string, chunkSize: number, inFlight: number, ours: { write: Rate; read: Rate }, ceiling: string, raw: { write: Rate; read: Rate } | undefined): void {
    const t = TARGETS[backend];
    let target: string | undefined;
    let met: boolean | undefined;
    const ratio = (a: number, b: number | undefined): number | undefined => (b === undefined || b === 0 ? undefined : a / b);
    const writeRatio = ratio(ours.write.mbps, raw?.write.mbps);
    const readRatio = ratio(ours.read.mbps, raw?.read.mbps);
    if (t !== undefined && inFlight === 16 && (t.chunkSize === undefined || t.chunkSize === chunkSize)) {
      if (t.ratio !== undefined && writeRatio !== undefined && readRatio !== undefined) {
        target = `>=${t.ratio}x raw`;
        met = Math.min(writeRatio, readRatio) >= t.ratio;
      } else if (t.mbps !== undefined) {
        target = `>=${t.mbps} MB/s`;
        met = Math.min(ours.write.mbps, ours.read.mbps) >= t.mbps;
      }
    }
    this.results.push(Object.freeze({
      backend, chunkSize, inFlight, ceiling, target, met, writeRatio, readRatio,
      writeMBps: ours.write.mbps, readMBps: ours.read.mbps,
      rawWriteMBps: raw?.write.mbps, rawReadMBps: raw?.read.mbps,
      capped: ours.write.capped || ours.read.capped,
      wrongReads: ours.read.wrong,
    }));
    this.ctx.log.info({ backend, chunkSize, inFlight, write: ours.write.mbps, read: ours.read.mbps }, 'measured');
  }

  /** Every cell for one backend: `open(chunkSize)` gives the backend for that chunk size. */
  async cells(name: string, open: (chunkSize: number) => Promise<Backend>, ceiling: string, raw: ((chunkSize: number) => Pair) | undefined, rawCache?: Map<string, { write: Rate; read: Rate }>): Promise<void> {
    for (const chunkSize of CHUNK_SIZES) {
      const backend = await open(chunkSize);
      try {
        for (const inFlight of IN_FLIGHT) {
          this.ctx.signal.throwIfAborted();
          const key = `${chunkSize}/${inFlight}`;
          let rawRate = rawCache?.get(key);
          if (rawRate === undefined && raw !== undefined) {
            rawRate = await this.measure(raw(chunkSize), chunkSize, inFlight);
            rawCache?.set(key, rawRate);
          }
          const ours = await this.measure(backendPair(backend, chunkSize), chunkSize, inFlight);
          this.record(name, chunkSize, inFlight, ours, ceiling, rawRate);
        }
      } finally {
        await backend.close();
      }
    }
  }
}

function backendPair(backend: Backend, chunkSize: number): Pair {
  return { write: (i, buf) => backend.writeAt(buf, i * chunkSize), read: (i, buf) => backend.readAt(buf, i * chunkSize) };
}

async function runBackendsBench(options: Options, ctx: BenchContext): Promise<number> {
  const only = options.only.split(',').map((s) => s.trim()).filter(Boolean);
  for (const name of only) if (!(ALL as readonly string[]).includes(name)) throw new Error(`--only: unknown backend '${name}' (${ALL.join(', ')})`);
  const dir = await mkdtemp(path.join(options.dir, 'r3map-bench-backends-'));
  const bench = new Bench(options, ctx, dir);
  const loadBefore = os.loadavg();
  const started = Date.now();
  try {
    const steps: Record<string, () => Promise<void>> = { nbd: () => nbdAndGrpc(bench, only), redis: () => redis(bench), s3: () => s3(bench), cassandra: () => cassandra(bench) };
    for (const name of ['nbd', 'redis', 's3', 'cassandra']) {
      if (!only.includes(name) && !(name === 'nbd' && only.includes('grpc'))) continue;
      try {
        await steps[name]!();
      } catch (err) {
        if (ctx.signal.aborted) throw err;
        bench.skipped.push({ backend: name, reason: (err as Error).message.split('\n')[0]! });
        ctx.log.warn({ err, backend: name }, 'backend skipped');
      } finally {
        await bench.stopServers();
      }
    }
  } finally {
    await bench.stopServers();
    await rm(dir, { recursive: true, force: true });
  }
  const report = {
    scenario: 'backends',
    machine: machineInfo({ 'redis-server': await toolVersion('redis-server') }),
    loadAverage: { before: loadBefore, after: os.loadavg() },
    elapsedSeconds: (Date.now() - started) / 1000,
    parameters: { sizeBytes: options.size, maxSecondsPerDirection: options.maxSeconds / 1000, chunkSizes: CHUNK_SIZES, inFlight: IN_FLIGHT, transport: 'TCP 127.0.0.1, every server in its own process' },
    results: bench.results,
    skipped: bench.skipped,
  };
  process.stdout.write(options.json ? `${JSON.stringify(report)}\n` : `${renderText(report)}\n`);
  return bench.results.some((r) => r.wrongReads > 0) ? 1 : 0;
}

async function nbdAndGrpc(bench: Bench, only: readonly string[]): Promise<void> {
  const size = Math.max(bench.options.size, MiB);
  let serve: BenchServer;
  let grpcUri: string | undefined;
  try {
    serve = await bench.server(startServe(size, true));
    grpcUri = serve.endpoints.grpc;
  } catch (err) {
    bench.ctx.log.warn({ err }, 'r3map-serve with a gRPC listener did not start; gRPC from dist/src/rpc in its own process instead');
    serve = await bench.server(startServe(size, false));
    if (only.includes('grpc')) {
      try {
        grpcUri = (await bench.server(startGrpcChild(size))).endpoints.grpc;
      } catch (again) {
        bench.skipped.push({ backend: 'grpc', reason: `no gRPC server: ${(again as Error).message.split('\n')[0]}` });
      }
    }
  }
  const peer = await startRawPeer();
  const rawCache = new Map<string, { write: Rate; read: Rate }>();
  const clients: RawSocketClient[] = [];
  const raw = (): Pair => {
    const pending = RawSocketClient.connect(peer.address).then((c) => (clients.push(c), c));
    return { write: async (_i, buf) => (await pending).write(buf), read: async (_i, buf) => (await pending).read(buf) };
  };
  try {
    if (only.includes('nbd')) await bench.cells('nbd', () => openComposed(serve.endpoints.nbd!), 'raw TCP', raw, rawCache);
    if (only.includes('grpc') && grpcUri !== undefined) await bench.cells('grpc', () => openComposed(grpcUri), 'raw TCP', raw, rawCache);
  } finally {
    for (const c of clients) c.close();
    peer.stop();
  }
}

async function redis(bench: Bench): Promise<void> {
  if ((await toolVersion('redis-server')) === 'missing') throw new Error('redis-server is not installed (scripts/install-test-tools.sh)');
  const server = await bench.server(startRedis(bench.dir));
  const [host, port] = server.endpoints.redis!.split(':') as [string, string];
  const { Redis } = await import('ioredis');
  const client = new Redis({ host, port: Number(port), lazyConnect: true, maxRetriesPerRequest: 1 });
  await client.connect();
  try {
    const raw = (chunkSize: number): Pair => ({
      write: async (i, buf) => void (await client.set(`raw-${chunkSize}-${i}`, buf)),
      read: async (i, buf) => void (await client.getBuffer(`raw-${chunkSize}-${i}`))?.copy(buf),
    });
    const size = bench.options.size;
    await bench.cells('redis', async (chunkSize) => {
      await client.flushall();
      return openComposed(`redis://${host}:${port}/0?prefix=bench-${chunkSize}&chunk-size=${chunkSize}&size=${size}`);
    }, 'raw ioredis SET/GET', raw);
  } finally {
    client.disconnect();
  }
}

async function s3(bench: Bench): Promise<void> {
  const bucket = 'r3map-bench';
  const start = startS3rver(path.join(bench.dir, 's3rver'), bucket);
  if (start === undefined) throw new Error('s3rver is not installed (a dev dependency: npm install)');
  const server = await bench.server(start);
  const endpoint = server.endpoints.s3!;
  // s3rver accepts its own well-known key pair; the backend takes credentials from the SDK chain.
  process.env.AWS_ACCESS_KEY_ID ??= 'S3RVER';
  process.env.AWS_SECRET_ACCESS_KEY ??= 'S3RVER';
  const sdk = await import('@aws-sdk/client-s3');
  const client = new sdk.S3Client({ endpoint, region: 'us-east-1', forcePathStyle: true });
  try {
    const raw = (chunkSize: number): Pair => ({
      write: async (i, buf) => void (await client.send(new sdk.PutObjectCommand({ Bucket: bucket, Key: `raw-${chunkSize}-${i}`, Body: buf }))),
      read: async (i, buf) => {
        const r = await client.send(new sdk.GetObjectCommand({ Bucket: bucket, Key: `raw-${chunkSize}-${i}` }));
        Buffer.from(await r.Body!.transformToByteArray()).copy(buf);
      },
    });
    const size = bench.options.size;
    await bench.cells('s3', (chunkSize) => openComposed(`s3://${bucket}/bench-${chunkSize}?endpoint=${endpoint}&region=us-east-1&chunk-size=${chunkSize}&size=${size}`), 'raw S3 Put/GetObject', raw);
  } finally {
    client.destroy();
  }
}

async function cassandra(bench: Bench): Promise<void> {
  const module = cqlServerModule();
  if (module === undefined) throw new Error('not available: the CQL test server is built only in a development checkout (dist/test/support/cql-server)');
  const server = await bench.server(startCqlServer(module));
  const size = bench.options.size;
  await bench.cells('cassandra', (chunkSize) => openComposed(`cassandra://${server.endpoints.cql!}/r3map_bench/c${chunkSize}?chunk-size=${chunkSize}&size=${size}&dc=datacenter1`), 'none (CQL test server)', undefined);
}

function renderText(report: { machine: ReturnType<typeof machineInfo>; loadAverage: { before: number[]; after: number[] }; parameters: { sizeBytes: number; maxSecondsPerDirection: number }; results: readonly CellResult[]; skipped: readonly { backend: string; reason: string }[]; elapsedSeconds: number }): string {
  const m = report.machine;
  const load = (l: number[]): string => l.map((x) => x.toFixed(2)).join(' ');
  const head = [
    `r3map-bench backends: ${formatSize(report.parameters.sizeBytes)} written then read per cell (at most ${report.parameters.maxSecondsPerDirection} s each way), TCP on 127.0.0.1, each server in its own process`,
    `node ${m.node}, kernel ${m.kernel}, ${m.cpus}x ${m.cpu}, ${formatSize(m.memoryBytes)} RAM; load average ${load(report.loadAverage.before)} before, ${load(report.loadAverage.after)} after; ${report.elapsedSeconds.toFixed(0)} s`,
    '',
  ];
  const n = (v: number | undefined): string => (v === undefined ? '-' : formatNumber(v));
  const x = (v: number | undefined): string => (v === undefined ? '-' : `${v.toFixed(2)}x`);
  const table = formatTable(
    ['backend', 'chunk', 'in flight', 'write MB/s', 'raw', 'ratio', 'read MB/s', 'raw', 'ratio', 'ceiling', 'target'],
    report.results.map((r) => [
      r.backend, formatSize(r.chunkSize), String(r.inFlight),
      `${n(r.writeMBps)}${r.capped ? '*' : ''}`, n(r.rawWriteMBps), x(r.writeRatio),
      n(r.readMBps), n(r.rawReadMBps), x(r.readRatio), r.ceiling,
      r.target === undefined ? '' : `${r.met === true ? 'ok' : 'MISS'} ${r.target}`,
    ]),
  );
  const notes = [
    '(ratio: backend / raw client in the same run; * = stopped at --max-seconds before the whole size)',
    ...report.results.filter((r) => r.wrongReads > 0).map((r) => `WRONG DATA: ${r.backend} ${formatSize(r.chunkSize)} x${r.inFlight}: ${r.wrongReads} sampled reads differ from what was written`),
    ...report.skipped.map((s) => `skipped ${s.backend}: ${s.reason}`),
  ];
  return `${head.join('\n')}\n${table}\n${notes.join('\n')}`;
}
