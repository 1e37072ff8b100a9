import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');

function run(command: string, args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [path.join(root, 'bin', `${command}.js`), ...args], {
    encoding: 'utf8',
    timeout: 30_000,
    env: { ...process.env, R3MAP_LOG_LEVEL: 'silent' },
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

for (const command of ['r3map-serve', 'r3map-mount', 'r3map-seed', 'r3map-leech', 'r3map-bench']) {
  test(`${command} --help prints usage and exits 0`, () => {
    const r = run(command, ['--help']);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /Usage:/);
  });
}

for (const [command, message] of [['r3map-seed', /--backend/], ['r3map-leech', /--from/]] as const) {
  test(`${command} without its required flag says which and exits 2`, () => {
    const r = run(command, []);
    assert.equal(r.status, 2);
    assert.match(r.stderr, message);
  });
}

const usage: Array<[string, string[], RegExp]> = [
  ['an unknown flag', ['--backend', 'memory', '--size', '1MiB', '--frobnicate'], /unknown option '--frobnicate'/],
  ['a missing --backend', [], /--backend/],
  ['an unknown backend scheme', ['--backend', 'tape://x'], /unknown scheme 'tape'/],
  ['a memory backend without a size', ['--backend', 'memory'], /memory needs a size/],
  ['a size that is not a size', ['--backend', 'memory', '--size', 'huge'], /cannot parse 'huge'/],
  ['a bad listen address', ['--backend', 'memory', '--size', '1MiB', '--nbd-listen', 'nowhere'], /nowhere/],
  ['an --export without a name', ['--backend', 'memory', '--size', '1MiB', '--export', '=memory'], /expected name=uri/],
];
for (const [name, args, message] of usage) {
  test(`r3map-serve with ${name} prints a clear message and exits 2`, () => {
    const r = run('r3map-serve', args);
    assert.equal(r.status, 2, `stderr: ${r.stderr}`);
    assert.match(r.stderr, message);
  });
}

test('r3map-serve with an unreadable backing file exits 1 and names the file', () => {
  const r = run('r3map-serve', ['--backend', 'file:///nonexistent-dir/disk.img', '--nbd-listen', '127.0.0.1:0']);
  assert.equal(r.status, 1, `stderr: ${r.stderr}`);
  assert.match(r.stderr, /nonexistent-dir/);
});
