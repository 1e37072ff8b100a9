/**
 * The servers `r3map-bench backends` measures against, each in its own process on 127.0.0.1 and
 * always stopped again: redis-server (Debian), s3rver (npm, a dev dependency), r3map-serve (NBD
 * and gRPC listeners at once) and the CQL test server (compiled under dist/test/support/, present
 * in a development checkout only). A server that cannot start is "not available", never fatal.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { SERVE_BIN, TOOL_PATH, freePort, trackChild } from './processes.js';

export interface BenchServer {
  /** What a client needs: URIs or host:port, by name ('redis', 'nbd', 'grpc', 's3', 'cql'). */
  readonly endpoints: Readonly<Record<string, string>>;
  stop(): Promise<void>;
}

export { freePort };

/**
 * Spawns `cmd args` and waits until `ready(line)` has returned endpoints for every line it
 * needs (stdout and stderr are both scanned); SIGTERM (then SIGKILL) on stop.
 */
function startChild(
  name: string,
  cmd: string,
  args: readonly string[],
  ready: (line: string, found: Record<string, string>) => boolean,
  env: NodeJS.ProcessEnv = {},
  timeoutMs = 30_000,
): Promise<BenchServer> {
  const child = trackChild(spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, PATH: TOOL_PATH, ...env } }));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    const kill = setTimeout(() => child.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(kill);
  };
  let output = '';
  const found: Record<string, string> = {};
  return new Promise<BenchServer>((resolve, reject) => {
    const timer = setTimeout(() => fail(new Error(`${name} did not get ready within ${timeoutMs} ms: ${output.slice(-2000)}`)), timeoutMs);
    const fail = (err: Error): void => {
      clearTimeout(timer);
      void stop().then(() => reject(err));
    };
    const onLine = (line: string): void => {
      output = `${output}${line}\n`.slice(-8000);
      if (ready(line, found)) {
        clearTimeout(timer);
        resolve({ endpoints: Object.freeze({ ...found }), stop });
      }
    };
    createInterface({ input: child.stdout! }).on('line', onLine);
    createInterface({ input: child.stderr! }).on('line', onLine);
    child.once('error', fail);
    child.once('exit', (code) => fail(new Error(`${name} exited with ${code} before it was ready: ${output.slice(-2000)}`)));
  });
}

export async function startRedis(dir: string): Promise<BenchServer> {
  const port = await freePort();
  return startChild('redis-server', 'redis-server', [
    '--bind', '127.0.0.1', '--port', String(port), '--dir', dir, '--save', '', '--appendonly', 'no', '--daemonize', 'no', '--logfile', '',
  ], (line, found) => {
    if (!line.includes('Ready to accept connections')) return false;
    found.redis = `127.0.0.1:${port}`;
    return true;
  });
}

/** s3rver with the bucket `bucket`, storing under `dir`; undefined when the package is missing. */
export function startS3rver(dir: string, bucket: string): Promise<BenchServer> | undefined {
  let bin: string;
  try {
    bin = createRequire(import.meta.url).resolve('s3rver/bin/s3rver.js');
  } catch {
    return undefined;
  }
  return startChild('s3rver', process.execPath, [bin, '-d', dir, '-a', '127.0.0.1', '-p', '0', '-s', '--configure-bucket', bucket], (line, found) => {
    const m = /listening on ([\d.]+):(\d+)/.exec(line);
    if (m === null) return false;
    found.s3 = `http://${m[1]}:${m[2]}`;
    return true;
  });
}

/** r3map-serve over memory with an NBD listener, and a gRPC one when `grpc` (needs its --listen flag). */
export function startServe(size: number, grpc: boolean): Promise<BenchServer> {
  const args = ['--backend', 'memory', '--size', String(size), '--nbd-listen', '127.0.0.1:0', ...(grpc ? ['--listen', 'grpc://127.0.0.1:0', '--insecure'] : [])];
  return startChild('r3map-serve', process.execPath, [SERVE_BIN, ...args], (line, found) => {
    const uri = line.trim();
    if (uri.startsWith('nbd://')) found.nbd = uri;
    if (uri.startsWith('grpc://')) found.grpc = uri;
    return found.nbd !== undefined && (!grpc || found.grpc !== undefined);
  }, { R3MAP_LOG_LEVEL: process.env.R3MAP_LOG_LEVEL ?? 'warn' });
}

/** dist/test/support/cql-server/server.js next to this build, or undefined. */
export function cqlServerModule(): string | undefined {
  const file = fileURLToPath(new URL('../../test/support/cql-server/server.js', import.meta.url));
  return existsSync(file) ? file : undefined;
}

/** The CQL test server in a child process (so it does not share the bench's event loop). */
export function startCqlServer(module: string): Promise<BenchServer> {
  const script = `import { CqlTestServer } from ${JSON.stringify(module)};
const s = await CqlTestServer.start();
process.on('SIGTERM', () => s.stop().then(() => process.exit(0)));
console.log('cql ' + s.host + ':' + s.port);`;
  return startChild('CQL test server', process.execPath, ['--input-type=module', '-e', script], (line, found) => {
    if (!line.startsWith('cql ')) return false;
    found.cql = line.slice(4).trim();
    return true;
  });
}

/**
 * A gRPC server over memory in a child process, straight from dist/src/rpc (for builds where
 * r3map-serve has no gRPC listener yet).
 */
export function startGrpcChild(size: number): Promise<BenchServer> {
  const rpc = fileURLToPath(new URL('../rpc/grpc-server.js', import.meta.url));
  const memory = fileURLToPath(new URL('../backends/memory.js', import.meta.url));
  const script = `import { GrpcServer } from ${JSON.stringify(rpc)};
import { MemoryBackend } from ${JSON.stringify(memory)};
const server = new GrpcServer({ backend: new MemoryBackend({ size: ${size} }), insecure: true });
const uri = await server.listen('grpc://127.0.0.1:0');
process.on('SIGTERM', () => server.close().then(() => process.exit(0)));
console.log(uri);`;
  return startChild('gRPC server', process.execPath, ['--input-type=module', '-e', script], (line, found) => {
    if (!line.startsWith('grpc://')) return false;
    found.grpc = line.trim();
    return true;
  });
}
