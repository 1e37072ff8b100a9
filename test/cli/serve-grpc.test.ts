/**
 * r3map-serve with gRPC listeners: one backend over gRPC and NBD at once, SIGTERM exits 0 after
 * syncing, TLS + mutual TLS + token from the command line, and plaintext TCP without --insecure
 * is a usage error (exit 2).
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { GrpcBackend } from '../../src/backends/grpc.js';
import { NbdClient } from '../../src/nbd-client/client.js';
import { BackendError } from '../../src/errors.js';
import { pattern } from '../support/rwat-suite.js';
import { makeTempDir, removeDir, requireTool, runTool, SERVE_BIN } from '../support/tools.js';
import { makeTestCerts } from '../support/nbd-certs.js';
import { makeExpiredClientCert } from '../support/expired-cert.js';

const MiB = 1024 * 1024;

interface Running {
  readonly uris: string[];
  stderr(): string;
  stop(): Promise<number | null>;
}

/** Starts r3map-serve and waits until it printed `lines` URIs (bounded). */
async function start(args: readonly string[], lines: number): Promise<Running> {
  const child = spawn(process.execPath, [SERVE_BIN, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, R3MAP_LOG_LEVEL: 'warn' },
  });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const uris: string[] = [];
  const kill = setTimeout(() => child.kill('SIGKILL'), 20_000);
  await new Promise<void>((resolve, reject) => {
    createInterface({ input: child.stdout }).on('line', (line) => {
      uris.push(line.trim());
      if (uris.length === lines) resolve();
    });
    void exited.then((code) => reject(new Error(`r3map-serve exited with ${code}\nstderr: ${stderr}`)));
  });
  clearTimeout(kill);
  return {
    uris,
    stderr: () => stderr,
    stop: async () => {
      child.kill('SIGTERM');
      const hard = setTimeout(() => child.kill('SIGKILL'), 15_000);
      try {
        return await exited;
      } finally {
        clearTimeout(hard);
      }
    },
  };
}

describe('r3map-serve with gRPC', () => {
  let dir: string | undefined;
  before(async () => {
    dir = await makeTempDir('r3map-serve-grpc-');
    await writeFile(path.join(dir, 'token'), 'serve-token\n');
  });
  after(() => removeDir(dir));

  it('serves one backend over gRPC and NBD at once and exits 0 on SIGTERM', async () => {
    const socket = path.join(dir!, 'serve.sock');
    const serve = await start([
      '--backend', 'memory:?size=4MiB', '--listen', 'grpc://127.0.0.1:0', '--insecure',
      '--listen', `grpc+unix://${socket}`, '--token-file', path.join(dir!, 'token'), '--nbd-listen', '127.0.0.1:0',
    ], 3);
    try {
      const [tcp, unix, nbd] = serve.uris;
      assert.match(tcp!, /^grpc:\/\/127\.0\.0\.1:\d+$/);
      assert.equal(unix, `grpc+unix://${socket}`);
      assert.match(nbd!, /^nbd:\/\/127\.0\.0\.1:\d+\/default$/);
      const tokenFile = path.join(dir!, 'token');
      const grpc = await GrpcBackend.open({ target: { host: '127.0.0.1', port: Number(new URL(tcp!).port) }, tokenFile });
      const local = await GrpcBackend.open({ target: { path: socket }, tokenFile });
      const url = new URL(nbd!);
      const client = await NbdClient.connect({ host: '127.0.0.1', port: Number(url.port) }, { exportName: 'default' });
      try {
        assert.equal(grpc.size, 4 * MiB);
        await grpc.writeAt(pattern(MiB + 3, 1), 100);
        const viaNbd = Buffer.alloc(MiB + 3);
        await client.readAt(viaNbd, 100);
        assert.deepEqual(viaNbd, pattern(MiB + 3, 1), 'NBD reads what gRPC wrote');
        await client.writeAt(pattern(5000, 2), 3 * MiB);
        await client.flush();
        const viaGrpc = Buffer.alloc(5000);
        await local.readAt(viaGrpc, 3 * MiB);
        assert.deepEqual(viaGrpc, pattern(5000, 2), 'gRPC reads what NBD wrote');
      } finally {
        await client.close();
        await grpc.close();
        await local.close();
      }
    } finally {
      const code = await serve.stop();
      assert.equal(code, 0, `exit code after SIGTERM\nstderr: ${serve.stderr()}`);
    }
  });

  it('serves grpcs with mutual TLS and a token from its flags, and refuses what it should', async (t) => {
    if (!requireTool(t, 'openssl')) return;
    const certs = await makeTestCerts(await makeTempDir('r3map-serve-certs-'));
    const expired = await makeExpiredClientCert(certs);
    const wrongToken = path.join(dir!, 'wrong-token');
    await writeFile(wrongToken, 'not-the-token\n');
    const serve = await start([
      '--backend', 'memory:?size=1MiB', '--listen', 'grpcs://127.0.0.1:0', '--tls-cert', certs.serverCert, '--tls-key', certs.serverKey,
      '--tls-client-ca', certs.ca, '--token-file', path.join(dir!, 'token'),
    ], 1);
    try {
      assert.match(serve.uris[0]!, /^grpcs:\/\/127\.0\.0\.1:\d+$/);
      const target = { host: '127.0.0.1', port: Number(new URL(serve.uris[0]!).port) };
      const tls = { ca: certs.ca, cert: certs.clientCert, key: certs.clientKey };
      const good = await GrpcBackend.open({ target, tls, tokenFile: path.join(dir!, 'token') });
      await good.writeAt(pattern(4096, 3), 0);
      await good.close();
      const refused = [
        { name: 'a wrong token', options: { tls, tokenFile: wrongToken }, text: /refused our token \(wrong token\?\)/ },
        { name: 'no client certificate', options: { tls: { ca: certs.ca }, tokenFile: path.join(dir!, 'token') }, text: /cannot reach the server/ },
        { name: 'an unknown CA', options: { tls: { ca: certs.ca, cert: certs.strangerCert, key: certs.strangerKey }, tokenFile: path.join(dir!, 'token') }, text: /cannot reach the server/ },
        { name: 'an expired certificate', options: { tls: { ca: certs.ca, ...expired }, tokenFile: path.join(dir!, 'token') }, text: /cannot reach the server/ },
      ];
      for (const c of refused) {
        await assert.rejects(GrpcBackend.open({ target, connectTimeoutMs: 3000, ...c.options }),
          (err: Error) => err instanceof BackendError && c.text.test(err.message), c.name);
      }
    } finally {
      const code = await serve.stop();
      assert.equal(code, 0, `exit code after SIGTERM\nstderr: ${serve.stderr()}`);
      await removeDir(certs.dir);
    }
  });

  const usage = [
    { name: 'plaintext gRPC on TCP without --insecure', args: ['--listen', 'grpc://127.0.0.1:0'], text: /refusing to serve plaintext gRPC on grpc:\/\/127\.0\.0\.1:0: pass --insecure/ },
    { name: 'grpcs without a certificate', args: ['--listen', 'grpcs://127.0.0.1:0'], text: /needs a certificate: pass --tls-cert and --tls-key/ },
    { name: 'a listen URI of the wrong scheme', args: ['--listen', 'nbd://127.0.0.1:0'], text: /unknown scheme "nbd"/ },
    { name: 'a certificate without its key', args: ['--listen', 'grpcs://127.0.0.1:0', '--tls-cert', '/nonexistent.pem'], text: /--tls-cert and --tls-key go together/ },
  ];
  for (const c of usage) {
    it(`exits 2 and says why for ${c.name}`, async () => {
      const r = await runTool(process.execPath, [SERVE_BIN, '--backend', 'memory:?size=1MiB', ...c.args], { timeoutMs: 20_000 });
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, c.text);
      assert.equal(r.stdout, '');
    });
  }
});
