/**
 * s3rver (from node_modules) for tests, as a child process so a test can kill it: 127.0.0.1,
 * a port the kernel picks (read back from its "listening" line), its own temp dir, and the
 * buckets asked for created at start. Its credentials are s3rver's fixed S3RVER/S3RVER; use
 * `s3rverEnv()` to point the AWS SDK's default credential chain at them. A server still
 * running when the test process exits is killed.
 */
import { createRequire } from 'node:module';
import path from 'node:path';
import { startDaemon } from './daemon.js';
import { makeTempDir, removeDir } from './tools.js';

export interface S3rverOptions {
  /** Buckets created at start-up. Default ['r3map-test']. */
  readonly buckets?: readonly string[];
  /** Bound on start-up. Default 15000 ms. */
  readonly timeoutMs?: number;
}

export interface S3rverHandle {
  /** http://127.0.0.1:port */
  readonly endpoint: string;
  readonly port: number;
  readonly dir: string;
  running(): boolean;
  /** SIGKILL and wait for the exit (the fault test). */
  kill(): Promise<void>;
  /** SIGSTOP / SIGCONT: connections stay open, nothing answers. */
  pause(): void;
  resume(): void;
  /** Ends the server (if running) and removes its dir. */
  cleanup(): Promise<void>;
}

/** s3rver's fixed credentials and a region, for the SDK's default chain (env variables). */
export function s3rverEnv(): void {
  process.env.AWS_ACCESS_KEY_ID = 'S3RVER';
  process.env.AWS_SECRET_ACCESS_KEY = 'S3RVER';
  process.env.AWS_REGION = 'us-east-1';
  delete process.env.AWS_SESSION_TOKEN;
  delete process.env.AWS_PROFILE;
}

/** The s3rver CLI script, or undefined when the dev dependency is not installed. */
export function s3rverBin(): string | undefined {
  try {
    const pkg = createRequire(import.meta.url).resolve('s3rver/package.json');
    return path.join(path.dirname(pkg), 'bin', 's3rver.js');
  } catch {
    return undefined;
  }
}

export async function startS3rver(options: S3rverOptions = {}): Promise<S3rverHandle> {
  const bin = s3rverBin();
  if (bin === undefined) throw new Error('s3rver is not installed (npm install --include=dev)');
  const dir = await makeTempDir('r3map-s3rver-');
  const buckets = options.buckets ?? ['r3map-test'];
  const args = [bin, '-d', dir, '-a', '127.0.0.1', '-p', '0', '--silent', ...buckets.flatMap((b) => ['--configure-bucket', b])];
  const daemon = await startDaemon('s3rver', process.execPath, args, {
    timeoutMs: options.timeoutMs ?? 15_000,
    ready: (line) => {
      const m = /listening on 127\.0\.0\.1:(\d+)/.exec(line);
      return m === null ? undefined : Number(m[1]);
    },
  }).catch(async (err: unknown) => {
    await removeDir(dir);
    throw err;
  });
  const port = daemon.value;
  const kill = (): Promise<void> => daemon.end('SIGKILL'); // SIGKILL works on a stopped process too
  return {
    endpoint: `http://127.0.0.1:${port}`,
    port,
    dir,
    running: daemon.running,
    kill,
    pause: daemon.pause,
    resume: daemon.resume,
    cleanup: async () => {
      await kill();
      await removeDir(dir);
    },
  };
}
