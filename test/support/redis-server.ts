/**
 * Debian's redis-server for tests: 127.0.0.1, a free port, its own temp dir, no RDB snapshots
 * and (unless asked for) no AOF. `stop()`/`start()` restart it on the same port and dir (with
 * `appendOnly` the data survives), `pause()`/`resume()` stall it (SIGSTOP/SIGCONT) with its
 * connections open, `kill()` ends it for good, and `cleanup()` ends it and removes the dir.
 * A server still running when the test process exits is killed.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { startDaemon, type Daemon } from './daemon.js';
import { findTool, freePort, makeTempDir, removeDir, runOk, strictTools } from './tools.js';

export interface RedisServerOptions {
  /** `--appendonly yes --appendfsync always`, so data survives a restart. Default false. */
  readonly appendOnly?: boolean;
  /** `--requirepass`. */
  readonly password?: string;
  /** More arguments, e.g. ['--cluster-enabled', 'yes']. */
  readonly args?: readonly string[];
  /** Bound on start-up. Default 10000 ms. */
  readonly timeoutMs?: number;
}

export interface RedisServerHandle {
  readonly host: '127.0.0.1';
  readonly port: number;
  /** redis://127.0.0.1:port (with the password when there is one). */
  readonly url: string;
  readonly dir: string;
  /** True while a redis-server process runs (even a paused one). */
  running(): boolean;
  /** SIGTERM and wait for the exit. */
  stop(): Promise<void>;
  /** Starts it again on the same port and dir. */
  start(): Promise<void>;
  /** SIGKILL and wait for the exit. */
  kill(): Promise<void>;
  pause(): void;
  resume(): void;
  /** Ends the server (if running) and removes its dir. */
  cleanup(): Promise<void>;
}

/** True when redis-server is installed; throws under R3MAP_STRICT=1/CI when it is not. */
export function haveRedisServer(): boolean {
  if (findTool('redis-server') !== undefined) return true;
  if (strictTools()) throw new Error('redis-server is not installed (R3MAP_STRICT/CI: run scripts/install-test-tools.sh)');
  return false;
}

export async function startRedisServer(options: RedisServerOptions = {}): Promise<RedisServerHandle> {
  const dir = await makeTempDir('r3map-redis-');
  const port = await freePort();
  const args = [
    '--bind', '127.0.0.1', '--port', String(port), '--dir', dir, '--save', '',
    '--daemonize', 'no', '--logfile', '', '--databases', '4',
    ...(options.appendOnly === true ? ['--appendonly', 'yes', '--appendfsync', 'always'] : ['--appendonly', 'no']),
    ...(options.password === undefined ? [] : ['--requirepass', options.password]),
    ...(options.args ?? []),
  ];
  let daemon: Daemon<true> | undefined;

  const start = async (): Promise<void> => {
    daemon = await startDaemon('redis-server', findTool('redis-server') ?? 'redis-server', args, {
      cwd: dir,
      timeoutMs: options.timeoutMs ?? 10_000,
      ready: (line) => (line.includes('Ready to accept connections') ? true : undefined),
    });
  };

  const end = async (signal: NodeJS.Signals): Promise<void> => {
    await daemon?.end(signal);
  };

  await start();
  const auth = options.password === undefined ? '' : `:${encodeURIComponent(options.password)}@`;
  return {
    host: '127.0.0.1',
    port,
    url: `redis://${auth}127.0.0.1:${port}`,
    dir,
    running: () => daemon?.running() ?? false,
    stop: () => end('SIGTERM'),
    start,
    kill: () => end('SIGKILL'),
    pause: () => daemon?.pause(),
    resume: () => daemon?.resume(),
    cleanup: async () => {
      await end('SIGKILL');
      await removeDir(dir);
    },
  };
}

export interface RedisClusterHandle {
  readonly nodes: readonly RedisServerHandle[];
  /** redis://127.0.0.1:port of the first node (a seed for the cluster client). */
  readonly url: string;
  cleanup(): Promise<void>;
}

/** `count` cluster-enabled redis-servers joined by `redis-cli --cluster create` (no replicas), state ok. */
export async function startRedisCluster(count = 3, timeoutMs = 20_000): Promise<RedisClusterHandle> {
  const nodes: RedisServerHandle[] = [];
  const cleanup = async (): Promise<void> => {
    await Promise.all(nodes.map((n) => n.cleanup()));
  };
  try {
    for (let i = 0; i < count; i++) {
      nodes.push(await startRedisServer({
        args: ['--cluster-enabled', 'yes', '--cluster-config-file', 'nodes.conf', '--cluster-node-timeout', '2000'],
      }));
    }
    const cli = findTool('redis-cli') ?? 'redis-cli';
    await runOk(cli, ['--cluster', 'create', ...nodes.map((n) => `127.0.0.1:${n.port}`), '--cluster-replicas', '0', '--cluster-yes'], { timeoutMs });
    const deadline = Date.now() + timeoutMs;
    for (const node of nodes) {
      for (;;) {
        const info = await runOk(cli, ['-h', '127.0.0.1', '-p', String(node.port), 'cluster', 'info'], { timeoutMs: 5000 });
        if (info.stdout.includes('cluster_state:ok')) break;
        if (Date.now() > deadline) throw new Error(`redis cluster on port ${node.port} is not ok: ${info.stdout}`);
        await sleep(50);
      }
    }
  } catch (err) {
    await cleanup();
    throw err;
  }
  return { nodes, url: `redis://127.0.0.1:${nodes[0]!.port}`, cleanup };
}
