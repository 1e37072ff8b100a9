/**
 * r3map-seed → r3map-leech as real processes on this host, through fuse-loop (the kernel NBD
 * path is in test/kernel/migrate.test.ts): an ext4 filesystem with a live writer, a chain
 * A → B → C, kill -9 of either side, finalize at 0 %, and bad input.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { spawn } from 'node:child_process';
import { readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { leftoversUnder, requireFuseLoop } from '../support/fuse-loop.js';
import { cleanUpMountDir, mountEnv } from '../support/mount-cli.js';
import { LEECH_BIN, checkRecords, leechSummary, runLeech, runSeed, startLeech, startSeed, waitForLines, liveWriter } from '../support/migrate-cli.js';
import { makeTestCerts } from '../support/nbd-certs.js';
import { makeTempDir, removeDir, requireTool, runOk, runTool } from '../support/tools.js';

const MIB = 1024 * 1024;
let dir: string;
let n = 0;

before(async () => {
  dir = await makeTempDir('r3map-migrate-cli-');
});
after(() => cleanUpMountDir(dir));

const opts = () => ({ env: mountEnv(dir), startTimeoutMs: 60_000, stopTimeoutMs: 30_000 });
const sock = (name: string) => `grpc+unix://${path.join(dir, `${name}-${++n}.sock`)}`;

async function deviceBytes(device: string, length: number): Promise<Buffer> {
  const out = path.join(dir, `read-${++n}.bin`);
  await runOk('dd', [`if=${device}`, `of=${out}`, 'bs=1M', `count=${length / MIB}`, 'iflag=direct', 'status=none']);
  return readFile(out);
}

async function writeDevice(device: string, data: Buffer, offMiB = 0): Promise<void> {
  const file = path.join(dir, `data-${++n}.bin`);
  await writeFile(file, data);
  await runOk('dd', [`if=${file}`, `of=${device}`, 'bs=1M', `seek=${offMiB}`, 'oflag=direct', 'conv=fsync,notrunc', 'status=none']);
}

describe('r3map-seed → r3map-leech through fuse-loop', () => {
  test('an ext4 filesystem with a live writer moves: fsck is clean and every acknowledged record is there', async (t) => {
    if (!requireFuseLoop(t) || !requireTool(t, 'mkfs.ext4') || !requireTool(t, 'fsck.ext4')) return;
    const { mnt, mnt2, ack, onSuspend, start: startWriter } = await liveWriter(dir);
    const seeder = await startSeed(['--backend', `file://${path.join(dir, 'src.img')}`, '--size', '128MiB', '--listen', sock('seed'), '--on-suspend', onSuspend], opts());
    let leecher: Awaited<ReturnType<typeof startLeech>> | undefined;
    try {
      await runOk('mkfs.ext4', ['-q', '-F', seeder.device]);
      await runOk('mount', [seeder.device, mnt]);
      await startWriter();
      leecher = await startLeech(['--from', seeder.uri, '--cache', path.join(dir, 'dst.img'), '--finalize-after-rounds', '3', '--json'], opts());
      await waitForLines(leecher, 2);
      const summary = leechSummary(leecher.stdout());
      assert.equal(summary.bytes, 128 * MIB);
      assert.ok(summary.rounds >= 1, 'pre-copy rounds ran');
      assert.equal(await seeder.stop('SIGCONT'), 0, 'the seeder exits 0 once the leecher has every chunk');
      await runOk('fsck.ext4', ['-fn', leecher.device]);
      await runOk('mount', [leecher.device, mnt2]);
      const { records, acknowledged } = await checkRecords(path.join(mnt2, 'log'), ack);
      assert.ok(records >= acknowledged);
      await runOk('umount', [mnt2]);
    } finally {
      await runTool('umount', [mnt]);
      await runTool('umount', [mnt2]);
      if (leecher !== undefined) assert.equal(await leecher.stop(), 0, leecher.stderr().slice(-3000));
      await seeder.stop();
    }
    assert.deepEqual(await leftoversUnder(dir), []);
  });

  test('A → B → C: B seeds after it has everything; each seeder exits 0 when its leecher is done', async (t) => {
    if (!requireFuseLoop(t) || !requireTool(t, 'dd')) return;
    const data = randomBytes(8 * MIB);
    const a = await startSeed(['--backend', 'memory', '--size', '32MiB', '--listen', sock('a')], opts());
    await writeDevice(a.device, data, 3);
    const b = await startLeech(['--from', a.uri, '--seed-after', '--listen', sock('b')], opts());
    try {
      await waitForLines(b, 2);
      const bUri = b.stdout().split('\n')[1]!;
      assert.match(bUri, /^grpc\+unix:/);
      assert.equal(await a.stop('SIGCONT'), 0, a.stderr().slice(-2000));
      await writeDevice(b.device, data.subarray(0, MIB), 20); // the application at B writes; C must see it
      const c = await startLeech(['--from', bUri, '--finalize-at', '50%'], opts());
      try {
        const got = await deviceBytes(c.device, 32 * MIB);
        assert.deepEqual(got.subarray(3 * MIB, 11 * MIB), data);
        assert.deepEqual(got.subarray(20 * MIB, 21 * MIB), data.subarray(0, MIB));
        assert.equal(await b.stop('SIGCONT'), 0, b.stderr().slice(-2000));
      } finally {
        assert.equal(await c.stop(), 0, c.stderr().slice(-2000));
      }
    } finally {
      await b.stop();
      await a.stop();
    }
    assert.deepEqual(await leftoversUnder(dir), []);
  });

  test('a leecher killed -9 mid-pull: the seeder goes on, and the same command resumes without pulling it all again', async (t) => {
    if (!requireFuseLoop(t) || !requireTool(t, 'dd')) return;
    const size = 256 * MIB;
    const a = await startSeed(['--backend', 'memory', '--size', '256MiB', '--listen', sock('k')], opts());
    const cache = path.join(dir, 'resume.img');
    try {
      const data = randomBytes(4 * MIB);
      await writeDevice(a.device, data);
      const args = ['--from', a.uri, '--cache', cache, '--pull-workers', '1', '--state-interval', '50ms', '--json'];
      const killed = spawn(process.execPath, [LEECH_BIN, ...args, '--finalize-on', 'SIGUSR1'], { stdio: 'ignore', env: mountEnv(dir) });
      const exited = new Promise((resolve) => killed.once('exit', resolve));
      while ((await stat(`${cache}.r3map-state`).catch(() => undefined)) === undefined) await sleep(20);
      await sleep(300);
      killed.kill('SIGKILL');
      await exited;
      assert.deepEqual(await deviceBytes(a.device, 4 * MIB), data, 'the seeder\'s device still works');
      await writeDevice(a.device, data.subarray(0, MIB), 100); // written after the kill: must arrive
      const again = await startLeech(args, opts());
      try {
        await waitForLines(again, 2);
        const summary = leechSummary(again.stdout());
        assert.ok(summary.fetchedBytes < size, `resumed: fetched ${summary.fetchedBytes} of ${size} bytes`);
        const got = await deviceBytes(again.device, 101 * MIB);
        assert.deepEqual(got.subarray(0, 4 * MIB), data);
        assert.deepEqual(got.subarray(100 * MIB, 101 * MIB), data.subarray(0, MIB));
      } finally {
        assert.equal(await again.stop(), 0, again.stderr().slice(-2000));
      }
      assert.equal(await a.stop('SIGCONT'), 0);
    } finally {
      await a.stop();
    }
    assert.deepEqual(await leftoversUnder(dir), []);
  });

  test('a leecher killed -9 after it finalized: the same cache goes on, and what was fsynced on its device is kept', async (t) => {
    if (!requireFuseLoop(t) || !requireTool(t, 'dd')) return;
    const a = await startSeed(['--backend', 'memory', '--size', '32MiB', '--listen', sock('kf')], opts());
    const cache = path.join(dir, 'finalized.img');
    try {
      const data = randomBytes(4 * MIB);
      await writeDevice(a.device, data);
      const first = await startLeech(['--from', a.uri, '--cache', cache, '--finalize-at', '0%', '--pull-workers', '0', '--state-interval', '50ms'], opts());
      const mine = randomBytes(MIB);
      await writeDevice(first.device, mine, 2); // the destination's application, fsynced
      first.child.kill('SIGKILL');
      await first.stop();
      await sleep(500);
      const again = await startLeech(['--from', a.uri, '--cache', cache, '--json'], opts());
      try {
        await waitForLines(again, 2);
        assert.equal(leechSummary(again.stdout()).resumedAfterFinalize, true);
        const got = await deviceBytes(again.device, 4 * MIB);
        assert.deepEqual(got.subarray(0, 2 * MIB), data.subarray(0, 2 * MIB));
        assert.deepEqual(got.subarray(2 * MIB, 3 * MIB), mine, 'the write fsynced before the kill is there');
        assert.deepEqual(got.subarray(3 * MIB), data.subarray(3 * MIB));
      } finally {
        assert.equal(await again.stop(), 0, again.stderr().slice(-2000));
      }
      assert.equal(await a.stop('SIGCONT'), 0, 'the seeder exits 0 once the resumed leecher is done');
    } finally {
      await a.stop();
    }
    assert.deepEqual(await leftoversUnder(dir), []);
  });

  test('the seeder killed -9 mid-pull: the leecher exits 1 with one clear line and leaves nothing attached', async (t) => {
    if (!requireFuseLoop(t)) return;
    const a = await startSeed(['--backend', 'memory', '--size', '512MiB', '--listen', sock('dead')], opts());
    const run = runLeech(['--from', a.uri, '--pull-workers', '1'], mountEnv(dir));
    await sleep(500);
    a.child.kill('SIGKILL');
    const r = await run;
    assert.equal(r.code, 1, r.stderr.slice(-2000));
    assert.match(r.stderr, /^r3map-leech: .*(cannot reach|UNAVAILABLE|reset|closed|refused|no answer)/m);
    await a.stop();
    await sleep(500);
    assert.deepEqual(await leftoversUnder(dir), []);
  });

  test('finalize at 0 %: the device is usable at once and every read fetches on demand', async (t) => {
    if (!requireFuseLoop(t) || !requireTool(t, 'dd')) return;
    const a = await startSeed(['--backend', 'memory', '--size', '16MiB', '--listen', sock('zero')], opts());
    const data = randomBytes(16 * MIB);
    await writeDevice(a.device, data);
    const l = await startLeech(['--from', a.uri, '--finalize-at', '0%', '--pull-workers', '0', '--json'], opts());
    try {
      assert.deepEqual(await deviceBytes(l.device, 16 * MIB), data);
      await waitForLines(l, 2);
      assert.equal(leechSummary(l.stdout()).rounds, 0);
      assert.equal(await a.stop('SIGCONT'), 0);
    } finally {
      assert.equal(await l.stop(), 0, l.stderr().slice(-2000));
      await a.stop();
    }
  });

  test('grpcs with mutual TLS and a token: the state moves; a leecher without a client certificate is refused', async (t) => {
    if (!requireFuseLoop(t) || !requireTool(t, 'openssl') || !requireTool(t, 'dd')) return;
    const certs = await makeTestCerts(await makeTempDir('r3map-migrate-certs-'));
    const token = path.join(dir, 'tls-token');
    await writeFile(token, 'a-token-for-tls\n');
    const a = await startSeed(['--backend', 'memory', '--size', '16MiB', '--listen', 'grpcs://127.0.0.1:0', '--tls-cert', certs.serverCert,
      '--tls-key', certs.serverKey, '--tls-client-ca', certs.ca, '--token-file', token], opts());
    let l: Awaited<ReturnType<typeof startLeech>> | undefined;
    try {
      assert.match(a.uri, /^grpcs:\/\/127\.0\.0\.1:\d+$/);
      const data = randomBytes(16 * MIB);
      await writeDevice(a.device, data);
      const noCert = await runLeech(['--from', `${a.uri}?ca=${certs.ca}&token-file=${token}`, '--connect-timeout', '3s'], mountEnv(dir));
      assert.equal(noCert.code, 1, noCert.stderr);
      assert.match(noCert.stderr, /^r3map-leech: .*(cannot reach|refused)/m);
      assert.doesNotMatch(noCert.stderr, /\n\s+at /, 'no stack trace');
      const from = `${a.uri}?ca=${certs.ca}&cert=${certs.clientCert}&key=${certs.clientKey}&token-file=${token}`;
      l = await startLeech(['--from', from, '--finalize-at', '100%', '--json'], opts());
      await waitForLines(l, 2);
      assert.equal(leechSummary(l.stdout()).bytes, 16 * MIB);
      assert.deepEqual(await deviceBytes(l.device, 16 * MIB), data);
      assert.equal(await a.stop('SIGCONT'), 0, 'the seeder exits 0 once its leecher is done');
    } finally {
      if (l !== undefined) assert.equal(await l.stop(), 0, l.stderr().slice(-2000));
      await a.stop();
      await removeDir(certs.dir);
    }
    assert.deepEqual(await leftoversUnder(dir), []);
  });

  test('bad input: one clear line, a non-zero exit, nothing attached, the seeder unharmed', async (t) => {
    if (!requireFuseLoop(t)) return;
    const token = path.join(dir, 'token');
    const wrong = path.join(dir, 'wrong-token');
    await writeFile(token, 'the-right-token\n');
    await writeFile(wrong, 'not-it\n');
    const a = await startSeed(['--backend', 'memory', '--size', '8MiB', '--listen', sock('bad'), '--token-file', token], opts());
    try {
      const cases: Array<[string[], number, RegExp]> = [
        [['--from', `grpc+unix://${path.join(dir, 'nobody.sock')}`, '--connect-timeout', '2s'], 1, /cannot reach|no answer/],
        [['--from', `${a.uri}?token-file=${wrong}`], 1, /refused the credentials|token/],
        [['--from', 'nbd://127.0.0.1/x'], 2, /reached over gRPC/],
        [['--from', a.uri, '--listen', sock('x')], 2, /--listen needs --seed-after/],
        [['--from', a.uri, '--finalize-at', '50%', '--finalize-on', 'SIGUSR1'], 2, /exclude each other/],
        [['--from', a.uri, '--finalize-at', '150%'], 2, /0% to 100%/],
      ];
      const small = path.join(dir, 'small.img');
      await writeFile(small, Buffer.alloc(4096));
      cases.push([['--from', `${a.uri}?token-file=${token}`, '--cache', small], 2, /has 4096 bytes, but the seeder's state has 8388608/]);
      for (const [args, code, message] of cases) {
        const r = await runLeech(args, mountEnv(dir));
        assert.equal(r.code, code, `${args.join(' ')}: ${r.stderr}`);
        assert.match(r.stderr, message, args.join(' '));
        assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
        assert.equal(r.stdout, '', 'no device printed');
      }
      const seedNoListen = await runSeed(['--backend', 'memory', '--size', '8MiB'], mountEnv(dir));
      assert.equal(seedNoListen.code, 2);
      assert.match(seedNoListen.stderr, /--listen is required/);
      // a finalized seeder refuses a second leecher
      const first = await startLeech(['--from', `${a.uri}?token-file=${token}`, '--finalize-at', '0%', '--pull-workers', '0'], opts());
      const second = await runLeech(['--from', `${a.uri}?token-file=${token}`], mountEnv(dir));
      assert.equal(second.code, 1);
      assert.match(second.stderr, /finalized by a leecher already/);
      assert.equal(await first.stop(), 0);
      assert.equal(await a.stop(), 0);
    } finally {
      await a.stop();
    }
    assert.deepEqual(await leftoversUnder(dir), []);
  });
});
