/**
 * gRPC data-path micro-benchmark (never run by the test glob):
 *
 *   node dist/test/bench/grpc.bench.js [--seconds 3] [--channels 4] [--window 33554432] [--repeat 1]
 *                                      [--only read-1024k-16] [--no-raw] [--grpc-js]
 *
 * A child process serves a 256 MiB memory backend with GrpcServer on 127.0.0.1 (so server and
 * client each get a core), plus a raw TCP server that answers each 16-byte request with N bytes,
 * the ceiling for one Node TCP connection measured in the same run. The parent drives GrpcBackend
 * with 1 and 16 calls in flight at 64 KiB and 1 MiB, reads and writes, and prints MB/s next to the
 * raw ceiling, the CPU each process spent per MiB and the load average (the machine may be
 * shared: repeat, and compare ratios and CPU per MiB rather than MB/s).
 *
 * GrpcBackend's client is written on node:http2 (rpc/grpc-http2-client.ts); --grpc-js adds a
 * column for the same calls through grpc-js's client (test/support/grpc-js-client.ts, tuned: same window,
 * channels and message limits), which is why the backend does not use it.
 */
import { fork, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { MemoryBackend } from '../../src/backends/memory.js';
import { GrpcServer } from '../../src/rpc/grpc-server.js';
import { GrpcBackend } from '../../src/backends/grpc.js';
import { backendDefinition } from '../../src/rpc/definitions.js';
import { GrpcClient } from '../support/grpc-js-client.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const SIZE = 256 * MiB;

const { values } = parseArgs({
  options: {
    serve: { type: 'boolean', default: false },
    seconds: { type: 'string', default: '3' },
    channels: { type: 'string', default: '4' },
    window: { type: 'string', default: String(32 * MiB) },
    chunk: { type: 'string', default: String(MiB) },
    repeat: { type: 'string', default: '1' },
    only: { type: 'string', default: '' },
    'no-raw': { type: 'boolean', default: false },
    'grpc-js': { type: 'boolean', default: false },
  },
});

async function serve(): Promise<void> {
  const backend = new MemoryBackend({ size: SIZE });
  await backend.writeAt(Buffer.alloc(SIZE, 7), 0); // every page allocated: reads copy real data
  const server = new GrpcServer({ backend, insecure: true, flowControlWindow: Number(values.window) });
  const grpcUri = await server.listen('grpc://127.0.0.1:0');
  const raw = net.createServer({ noDelay: true }, (socket) => {
    // 16-byte requests: length (u32le) and write flag; a write's payload follows and is skipped.
    const header = Buffer.alloc(16);
    let headerFill = 0;
    let skip = 0;
    socket.on('data', (d: Buffer) => {
      for (let at = 0; at < d.length;) {
        if (skip > 0) {
          const n = Math.min(skip, d.length - at);
          skip -= n;
          at += n;
          if (skip === 0) socket.write(Buffer.alloc(16));
          continue;
        }
        const n = Math.min(16 - headerFill, d.length - at);
        d.copy(header, headerFill, at, at + n);
        headerFill += n;
        at += n;
        if (headerFill < 16) break;
        headerFill = 0;
        const length = header.readUInt32LE(0);
        if (header.readUInt32LE(4) === 1) skip = length;
        else socket.write(payloadOf(length));
      }
    });
  });
  await new Promise<void>((resolve) => raw.listen(0, '127.0.0.1', resolve));
  process.send!({ grpcUri, rawPort: (raw.address() as net.AddressInfo).port });
  process.on('message', () => process.send!(process.cpuUsage()));
  process.on('disconnect', () => process.exit(0));
}

const payloads = new Map<number, Buffer>();
function payloadOf(n: number): Buffer {
  let p = payloads.get(n);
  if (p === undefined) payloads.set(n, (p = Buffer.alloc(n, 7)));
  return p;
}

interface Result {
  /** MB/s (10^6 bytes). */
  readonly mbps: number;
  /** CPU ms per MiB moved, in this process and in the server process. */
  readonly clientCpuMsPerMiB: number;
  readonly serverCpuMsPerMiB: number;
}

let child: ChildProcess;

function childCpuUs(): Promise<number> {
  return new Promise((resolve) => {
    child.once('message', (m) => resolve((m as NodeJS.CpuUsage).user + (m as NodeJS.CpuUsage).system));
    child.send('cpu');
  });
}

/** Runs `op` with `inFlight` loops for `seconds`. */
async function measure(inFlight: number, bytesPerOp: number, seconds: number, op: (slot: number) => Promise<void>): Promise<Result> {
  const warmUntil = Date.now() + 300;
  await Promise.all(Array.from({ length: inFlight }, async (_, slot) => {
    while (Date.now() < warmUntil) await op(slot);
  }));
  let ops = 0;
  const serverCpu0 = await childCpuUs();
  const cpu0 = process.cpuUsage();
  const start = process.hrtime.bigint();
  const until = Date.now() + seconds * 1000;
  await Promise.all(Array.from({ length: inFlight }, async (_, slot) => {
    while (Date.now() < until) {
      await op(slot);
      ops++;
    }
  }));
  const elapsed = Number(process.hrtime.bigint() - start) / 1e9;
  const cpu = process.cpuUsage(cpu0);
  const serverCpu = (await childCpuUs()) - serverCpu0;
  const mib = (ops * bytesPerOp) / MiB;
  return {
    mbps: (ops * bytesPerOp) / elapsed / 1e6,
    clientCpuMsPerMiB: (cpu.user + cpu.system) / 1000 / mib,
    serverCpuMsPerMiB: serverCpu / 1000 / mib,
  };
}

/** One raw TCP connection: request/response with a 16-byte header, pipelined. */
class RawClient {
  readonly #socket: net.Socket;
  readonly #waiters: { bytes: number; resolve: () => void }[] = [];
  #received = 0;

  constructor(socket: net.Socket) {
    this.#socket = socket;
    socket.on('data', (d: Buffer) => {
      this.#received += d.length;
      while (this.#waiters.length > 0 && this.#received >= this.#waiters[0]!.bytes) {
        const w = this.#waiters.shift()!;
        this.#received -= w.bytes;
        w.resolve();
      }
    });
  }

  static async connect(port: number): Promise<RawClient> {
    const socket = net.connect({ port, host: '127.0.0.1', noDelay: true });
    await new Promise<void>((resolve) => socket.once('connect', () => resolve()));
    return new RawClient(socket);
  }

  request(n: number, write: boolean, payload: Buffer): Promise<void> {
    const header = Buffer.alloc(16);
    header.writeUInt32LE(n, 0);
    header.writeUInt32LE(write ? 1 : 0, 4);
    this.#socket.cork();
    this.#socket.write(header);
    if (write) this.#socket.write(payload);
    this.#socket.uncork();
    return new Promise((resolve) => this.#waiters.push({ bytes: write ? 16 : n, resolve }));
  }

  close(): void {
    this.#socket.destroy();
  }
}

async function main(): Promise<void> {
  child = fork(fileURLToPath(import.meta.url), ['--serve', '--window', values.window!], { stdio: 'inherit' });
  const ready = await new Promise<{ grpcUri: string; rawPort: number }>((resolve) => child.once('message', (m) => resolve(m as never)));
  const port = Number(new URL(ready.grpcUri).port);
  const seconds = Number(values.seconds);
  const backend = await GrpcBackend.open({ target: { host: '127.0.0.1', port }, channels: Number(values.channels), chunkSize: Number(values.chunk) });
  const raw = await RawClient.connect(ready.rawPort);
  const grpcJs = values['grpc-js'] === true
    ? new GrpcClient({ target: { host: '127.0.0.1', port }, channels: Number(values.channels), maxPayload: Number(values.chunk), flowControlWindow: Number(values.window) })
    : undefined;
  console.log(`node ${process.version}, ${os.cpus().length} cpus (${os.cpus()[0]?.model}), kernel ${os.release()}`);
  console.log(`grpc: ${values.channels} channels, window ${Number(values.window) / MiB} MiB, chunk ${Number(values.chunk) / KiB} KiB; memory backend ${SIZE / MiB} MiB in a child process`);
  console.log('CPU columns: ms of CPU per MiB moved in the client / server process; "cap" = MB/s if the busier process had a core to itself');
  console.log('op     size     in-flight  grpc MB/s  (cpu c/s ms/MiB, cap)   raw-tcp MB/s  (cpu c/s, cap)        ratio  loadavg');
  for (let r = 0; r < Number(values.repeat); r++) {
    for (const write of [false, true]) {
      for (const size of [64 * KiB, MiB]) {
        for (const inFlight of [1, 16]) {
          const name = `${write ? 'write' : 'read'}-${size / KiB}k-${inFlight}`;
          if (values.only !== '' && !name.includes(values.only!)) continue;
          const bufs = Array.from({ length: inFlight }, () => Buffer.alloc(size, 3));
          const slots = Math.floor(SIZE / size);
          let cursor = 0;
          const grpc = await measure(inFlight, size, seconds, (slot) => {
            const off = ((cursor++ * 7919) % slots) * size;
            return write ? backend.writeAt(bufs[slot]!, off) : backend.readAt(bufs[slot]!, off);
          });
          const ceiling = values['no-raw'] === true
            ? { mbps: NaN, clientCpuMsPerMiB: NaN, serverCpuMsPerMiB: NaN }
            : await measure(inFlight, size, seconds, (slot) => raw.request(size, write, bufs[slot]!));
          const jsResult = grpcJs === undefined ? undefined : await measure(inFlight, size, seconds, async (slot) => {
            const off = ((cursor++ * 7919) % slots) * size;
            if (write) await grpcJs.call(backendDefinition.WriteAt, { off, p: bufs[slot]! }, 60_000);
            else (await grpcJs.call(backendDefinition.ReadAt, { length: size, off }, 60_000)).p.copy(bufs[slot]!);
          });
          const load = os.loadavg()[0]!.toFixed(2);
          const cpu = (r: Result): string => {
            const cap = MiB / 1e6 / (Math.max(r.clientCpuMsPerMiB, r.serverCpuMsPerMiB) / 1000);
            return `(${r.clientCpuMsPerMiB.toFixed(2)}/${r.serverCpuMsPerMiB.toFixed(2)}, ${cap.toFixed(0)})`.padEnd(22);
          };
          console.log(`${(write ? 'write' : 'read').padEnd(6)} ${String(size / KiB).padStart(5)}KiB ${String(inFlight).padStart(9)} ${grpc.mbps.toFixed(0).padStart(10)}  ${cpu(grpc)} ${ceiling.mbps.toFixed(0).padStart(12)}  ${cpu(ceiling)} ${(grpc.mbps / ceiling.mbps).toFixed(2).padStart(6)}  ${load}` +
            (jsResult === undefined ? '' : `   grpc-js client: ${jsResult.mbps.toFixed(0)} MB/s ${cpu(jsResult)}`));
        }
      }
    }
  }
  raw.close();
  grpcJs?.close();
  await backend.close();
  child.disconnect();
}

if (values.serve) await serve();
else await main();
