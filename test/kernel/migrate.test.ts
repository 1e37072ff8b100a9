/**
 * A live migration through the kernel NBD client (`--transport nbd`), as two processes: ext4 on
 * r3map-seed's device with a writer that appends checksummed records and fsyncs, r3map-leech
 * with pre-copy rounds, the suspend hook stopping the writer and unmounting; then fsck on the
 * leecher's device and every acknowledged record there. Runs in the kernel VM; devices are pinned
 * (/dev/nbd8, /dev/nbd9) so that no other file's device is touched. The fuse-loop version is
 * test/cli/migrate.test.ts.
 */
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { makeTempDir, runOk, runTool } from '../support/tools.js';
import { requireNbd } from './support.js';
import { assertNbdFree, cleanUpMountDir, mountEnv } from '../support/mount-cli.js';
import { checkRecords, leechSummary, startLeech, startSeed, waitForLines, liveWriter } from '../support/migrate-cli.js';

const START_TIMEOUT_MS = 300_000;
const SUITE_TIMEOUT_MS = 900_000;
const DEVICES = Object.freeze({ seed: '/dev/nbd8', leech: '/dev/nbd9' });

let dir: string;
const children = new Set<ChildProcess>();
before(async () => {
  dir = await makeTempDir('r3map-kernel-migrate-');
});
after(async () => {
  for (const child of children) child.kill('SIGKILL');
  await cleanUpMountDir(dir);
});

const opts = { env: mountEnv(), startTimeoutMs: START_TIMEOUT_MS, stopTimeoutMs: 120_000 };

describe('r3map-seed → r3map-leech through the kernel NBD client', { timeout: SUITE_TIMEOUT_MS }, () => {
  test('ext4 with a live writer moves; fsck is clean and every acknowledged record is there; nothing stays attached', async (t) => {
    if (!requireNbd(t)) return;
    const { mnt, mnt2, ack, onSuspend, start: startWriter } = await liveWriter(dir);
    const seeder = await startSeed(['--backend', `file://${path.join(dir, 'src.img')}`, '--size', '64MiB', '--transport', 'nbd', '--device', DEVICES.seed,
      '--listen', `grpc+unix://${path.join(dir, 'seed.sock')}`, '--on-suspend', onSuspend], opts);
    let leecher: Awaited<ReturnType<typeof startLeech>> | undefined;
    try {
      assert.equal(seeder.device, DEVICES.seed);
      await runOk('mkfs.ext4', ['-q', '-F', seeder.device]);
      await runOk('mount', [seeder.device, mnt]);
      children.add(await startWriter());
      leecher = await startLeech(['--from', seeder.uri, '--cache', path.join(dir, 'dst.img'), '--transport', 'nbd', '--device', DEVICES.leech,
        '--finalize-after-rounds', '2', '--json'], opts);
      assert.equal(leecher.device, DEVICES.leech);
      await waitForLines(leecher, 2, 300_000);
      assert.ok(leechSummary(leecher.stdout()).rounds >= 1);
      assert.equal(await seeder.stop('SIGCONT'), 0, seeder.stderr().slice(-3000));
      await assertNbdFree(DEVICES.seed);
      await runOk('fsck.ext4', ['-fn', leecher.device]);
      await runOk('mount', [leecher.device, mnt2]);
      await checkRecords(path.join(mnt2, 'log'), ack);
      await runOk('umount', [mnt2]);
      assert.equal(await leecher.stop(), 0, leecher.stderr().slice(-3000));
      await assertNbdFree(DEVICES.leech);
    } finally {
      await runTool('umount', [mnt]);
      await runTool('umount', [mnt2]);
      await leecher?.stop();
      await seeder.stop();
    }
  });
});
