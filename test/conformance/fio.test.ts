// fio's nbd engine (libnbd, many requests in flight) with crc32c verification against r3map-serve.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { describeRun, requireTool, runTool, serveFixture } from '../support/tools.js';

interface FioJob {
  error: number;
  read: { io_bytes: number };
  write: { io_bytes: number };
}

async function fio(uri: string, cwd: string, args: readonly string[]): Promise<FioJob> {
  const all = ['--name=conformance', '--ioengine=nbd', `--uri=${uri}`, '--output-format=json', '--verify_fatal=1', '--verify_state_save=0', ...args];
  const r = await runTool('fio', all, { timeoutMs: 90_000, cwd });
  const what = describeRun('fio', all, r);
  assert.equal(r.code, 0, what);
  // fio's nbd engine prints "fio: connected to NBD server" before the JSON.
  const json = JSON.parse(r.stdout.slice(r.stdout.indexOf('{'))) as { jobs: FioJob[] };
  const job = json.jobs[0]!;
  assert.equal(job.error, 0, what);
  return job;
}

const jobs = [
  { name: 'random 4k reads and writes at depth 16 verify with crc32c', args: ['--rw=randrw', '--bs=4k', '--size=16M', '--iodepth=16', '--verify=crc32c'] },
  { name: 'random writes of mixed sizes at depth 32 verify afterwards', args: ['--rw=randwrite', '--bsrange=512-256k', '--size=32M', '--iodepth=32', '--verify=crc32c', '--do_verify=1'] },
  { name: 'sequential 1M writes then reads verify with crc32c', args: ['--rw=write', '--bs=1M', '--size=48M', '--iodepth=8', '--verify=crc32c', '--do_verify=1'] },
];

describe('fio --ioengine=nbd against a memory export', { timeout: 180_000 }, () => {
  const serve = serveFixture(['--backend', 'memory', '--size', '64MiB']);

  for (const kind of ['tcp', 'unix'] as const) {
    for (const j of jobs) {
      test(`over ${kind}, ${j.name}`, async (t) => {
        if (!requireTool(t, 'fio')) return;
        const job = await fio(serve.targets().find((x) => x.kind === kind)!.uri, serve.dir(), j.args);
        assert.ok(job.write.io_bytes > 0, 'fio wrote nothing');
        assert.ok(job.read.io_bytes > 0, 'fio read nothing back');
      });
    }
  }
});
