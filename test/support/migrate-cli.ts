/**
 * r3map-seed and r3map-leech as processes, for the host CLI tests (fuse-loop) and the kernel
 * suite (nbd): start them, read what they print, and the live writer the ext4 tests migrate
 * (checksummed records appended and fsynced, the last acknowledged one in a file).
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { spawn, type ChildProcess } from 'node:child_process';
import { chmod, mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { start, type Running, type StartOptions } from './mount-cli.js';
import { PROJECT_ROOT, runTool, type RunResult } from './tools.js';

export const SEED_BIN = path.join(PROJECT_ROOT, 'bin', 'r3map-seed.js');
export const LEECH_BIN = path.join(PROJECT_ROOT, 'bin', 'r3map-leech.js');

/** A running r3map-seed: its device and the first listener URI (its second line). */
export type Seeding = Running & { readonly device: string; readonly uri: string };

export async function startSeed(args: readonly string[], options: StartOptions = {}): Promise<Seeding> {
  const r = await start(SEED_BIN, args, options);
  const deadline = performance.now() + 10_000;
  while (r.stdout().split('\n').length < 3 && performance.now() < deadline) await sleep(20);
  const uri = r.stdout().split('\n')[1] ?? '';
  assert.match(uri, /^grpc/, `r3map-seed printed no listener URI\nstderr: ${r.stderr().slice(-2000)}`);
  return Object.assign(r, { device: r.line, uri });
}

/** Starts r3map-leech; resolves once it printed the device path (after finalize). */
export async function startLeech(args: readonly string[], options: StartOptions = {}): Promise<Running & { readonly device: string }> {
  const r = await start(LEECH_BIN, args, options);
  return Object.assign(r, { device: r.line });
}

export function runLeech(args: readonly string[], env?: NodeJS.ProcessEnv, timeoutMs = 60_000): Promise<RunResult> {
  return runTool(process.execPath, [LEECH_BIN, ...args], { timeoutMs, ...(env !== undefined ? { env } : {}) });
}

export function runSeed(args: readonly string[], env?: NodeJS.ProcessEnv, timeoutMs = 30_000): Promise<RunResult> {
  return runTool(process.execPath, [SEED_BIN, ...args], { timeoutMs, ...(env !== undefined ? { env } : {}) });
}

/** The JSON line r3map-leech --json printed. */
export function leechSummary(stdout: string): { downtimeMs: number; fetchedBytes: number; bytes: number; rounds: number; dirtyChunksAtSync: number; resumedAfterFinalize: boolean } {
  const line = stdout.split('\n').find((l) => l.startsWith('{'));
  assert.ok(line !== undefined, `no JSON line in ${JSON.stringify(stdout)}`);
  return JSON.parse(line) as ReturnType<typeof leechSummary>;
}

export function waitForLines(r: Running, lines: number, timeoutMs = 60_000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  return (async () => {
    while (r.stdout().split('\n').length <= lines) {
      if (performance.now() > deadline) throw new Error(`fewer than ${lines} lines within ${timeoutMs} ms: ${JSON.stringify(r.stdout())}\nstderr: ${r.stderr().slice(-3000)}`);
      await sleep(25);
    }
  })();
}

function record(i: number): string {
  const seq = String(i).padStart(8, '0');
  return `${seq} ${createHash('sha1').update(seq).digest('hex')}`;
}

/**
 * Writes `<dir>/writer.sh`: run as `writer.sh MOUNTPOINT ACKFILE`, it appends records to
 * MOUNTPOINT/log in batches of 8, fsyncs each batch, then writes the last record number to
 * ACKFILE; between batches it rewrites one of 20 blobs of 256 KiB (fsynced) to dirty more chunks.
 */
export async function writeWriterScript(dir: string): Promise<string> {
  const script = path.join(dir, 'writer.sh');
  await writeFile(script, `#!/bin/bash
# A TERM (the suspend hook) ends the loop only after the command under way (a dd, a sync) is done:
# with a trap, bash waits for it first, so nothing of ours is left writing into the filesystem.
trap 'exit 0' TERM
f=$1/log; ack=$2; i=0
while :; do
  for j in 1 2 3 4 5 6 7 8; do i=$((i+1)); s=$(printf '%08d' $i); printf '%s %s\\n' $s $(printf '%s' $s | sha1sum | cut -c1-40) >> $f; done
  sync $f && echo $i > $ack.tmp && mv $ack.tmp $ack
  dd if=/dev/urandom of=$1/blob.$((i % 20)) bs=64k count=4 conv=fsync status=none
done
`);
  await chmod(script, 0o755);
  return script;
}

/** Every record up to the acknowledged one is in `logFile`, byte for byte; returns how many there are. */
export async function checkRecords(logFile: string, ackFile: string): Promise<{ records: number; acknowledged: number }> {
  const acknowledged = Number((await readFile(ackFile, 'utf8')).trim());
  const lines = (await readFile(logFile, 'utf8')).split('\n').filter((l) => l !== '');
  assert.ok(acknowledged > 0, 'the writer acknowledged nothing');
  assert.ok(lines.length >= acknowledged, `${lines.length} records, but ${acknowledged} were acknowledged`);
  lines.forEach((line, i) => assert.equal(line, record(i + 1), `record ${i + 1}`));
  return { records: lines.length, acknowledged };
}

/** The ext4 live-writer rig of a migration test: paths, and the --on-suspend that stops the writer and unmounts. */
export interface LiveWriter {
  /** Where the seeder's device is mounted, and the leecher's. */
  readonly mnt: string;
  readonly mnt2: string;
  readonly ack: string;
  readonly onSuspend: string;
  /** Starts the writer on `mnt`; resolves once it acknowledged its first batch. */
  start(): Promise<ChildProcess>;
}

export async function liveWriter(dir: string): Promise<LiveWriter> {
  const writer = await writeWriterScript(dir);
  const mnt = path.join(dir, 'src-fs');
  const mnt2 = path.join(dir, 'dst-fs');
  const ack = path.join(dir, 'ack');
  const pidFile = path.join(dir, 'writer.pid');
  await mkdir(mnt, { recursive: true });
  await mkdir(mnt2, { recursive: true });
  const onSuspend = `kill $(cat ${pidFile}); while kill -0 $(cat ${pidFile}) 2>/dev/null; do sleep 0.05; done; umount ${mnt}`;
  return {
    mnt, mnt2, ack, onSuspend,
    start: async () => {
      const child = spawn(writer, [mnt, ack], { stdio: 'ignore' });
      await writeFile(pidFile, `${child.pid}\n`);
      while ((await stat(ack).catch(() => undefined)) === undefined) await sleep(50);
      return child;
    },
  };
}
