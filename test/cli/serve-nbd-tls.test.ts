/**
 * r3map-serve --nbd-tls: NBD STARTTLS from the command line, with outside clients as referees
 * (nbdinfo, nbdcopy): required TLS refuses plaintext, mutual TLS refuses a stranger's certificate,
 * optional TLS serves both, and the flags are checked before anything is opened.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { cp, mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { makeTestCerts, type TestCerts } from '../support/nbd-certs.js';
import { makeTempDir, removeDir, requireTool, runTool, SERVE_BIN, startServe } from '../support/tools.js';

const MiB = 1024 * 1024;

describe('r3map-serve --nbd-tls', () => {
  let dir: string;
  let certs: TestCerts | undefined;
  /** A libnbd ?tls-certificates= directory with the stranger's client certificate. */
  let strangerDir: string;

  before(async () => {
    dir = await makeTempDir('r3map-serve-nbd-tls-');
  });
  after(async () => {
    await removeDir(certs?.dir);
    await removeDir(dir);
  });

  /** The test PKI, made once (openssl is needed for every case but the flag checks). */
  async function pki(): Promise<TestCerts> {
    if (certs !== undefined) return certs;
    certs = await makeTestCerts(await makeTempDir('r3map-serve-nbd-certs-'));
    strangerDir = path.join(dir, 'stranger');
    await mkdir(strangerDir);
    await cp(certs.ca, path.join(strangerDir, 'ca-cert.pem'));
    await cp(certs.strangerCert, path.join(strangerDir, 'client-cert.pem'));
    await cp(certs.strangerKey, path.join(strangerDir, 'client-key.pem'));
    return certs;
  }

  it('require: nbdinfo and nbdcopy over nbds:// work, plaintext and a stranger certificate are refused', async (t) => {
    if (!requireTool(t, 'openssl') || !requireTool(t, 'nbdinfo') || !requireTool(t, 'nbdcopy')) return;
    const c = await pki();
    const serve = await startServe(['--backend', 'memory', '--size', '8MiB', '--nbd-tls', 'require',
      '--tls-cert', c.serverCert, '--tls-key', c.serverKey, '--tls-client-ca', c.ca], { dir, listen: ['tcp'] });
    try {
      const uri = serve.targets[0]!.uri;
      assert.match(uri, /^nbds:\/\/127\.0\.0\.1:\d+\/default$/);
      const secure = `${uri}?tls-certificates=${c.dir}`;
      const info = await runTool('nbdinfo', ['--json', secure], { timeoutMs: 20_000 });
      assert.equal(info.code, 0, info.stderr);
      assert.equal(JSON.parse(info.stdout).exports[0]['export-size'], 8 * MiB);
      const data = randomBytes(8 * MiB);
      const input = path.join(dir, 'in.img');
      const output = path.join(dir, 'out.img');
      await writeFile(input, data);
      const copyIn = await runTool('nbdcopy', [input, secure], { timeoutMs: 30_000 });
      assert.equal(copyIn.code, 0, copyIn.stderr);
      const copyOut = await runTool('nbdcopy', [secure, output], { timeoutMs: 30_000 });
      assert.equal(copyOut.code, 0, copyOut.stderr);
      assert.ok((await readFile(output)).equals(data), 'what went in over TLS comes back');
      const plain = await runTool('nbdinfo', [uri.replace(/^nbds:/, 'nbd:')], { timeoutMs: 20_000 });
      assert.notEqual(plain.code, 0, 'a plaintext client is refused');
      const stranger = await runTool('nbdinfo', [`${uri}?tls-certificates=${strangerDir}`], { timeoutMs: 20_000 });
      assert.notEqual(stranger.code, 0, 'a certificate from another CA is refused');
    } finally {
      assert.equal(await serve.stop(), 0, serve.stderr());
    }
  });

  it('on: TLS is offered and plaintext clients are served too', async (t) => {
    if (!requireTool(t, 'openssl') || !requireTool(t, 'nbdinfo')) return;
    const c = await pki();
    const serve = await startServe(['--backend', 'memory', '--size', '1MiB', '--nbd-tls', 'on', '--tls-cert', c.serverCert, '--tls-key', c.serverKey],
      { dir, listen: ['tcp'] });
    try {
      const uri = serve.targets[0]!.uri;
      assert.match(uri, /^nbd:\/\//);
      const plain = await runTool('nbdinfo', ['--size', uri], { timeoutMs: 20_000 });
      assert.equal(plain.stdout.trim(), String(MiB), plain.stderr);
      const secure = await runTool('nbdinfo', ['--size', `${uri.replace(/^nbd:/, 'nbds:')}?tls-certificates=${c.dir}`], { timeoutMs: 20_000 });
      assert.equal(secure.stdout.trim(), String(MiB), secure.stderr);
    } finally {
      assert.equal(await serve.stop(), 0, serve.stderr());
    }
  });

  it('refuses --nbd-tls without a certificate, and a mode it does not know, with one line and exit 2', async () => {
    for (const [args, text] of [
      [['--nbd-tls', 'require'], /--nbd-tls require needs --tls-cert and --tls-key/],
      [['--nbd-tls', 'maybe'], /--nbd-tls.*maybe.*(on|require)/],
    ] as const) {
      const r = await runTool(process.execPath, [SERVE_BIN, '--backend', 'memory', '--size', '1MiB', ...args], { timeoutMs: 20_000 });
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, text);
      assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
    }
  });
});
