import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { formatRate, ProgressLine, RateMeter, render } from '../../src/cli/progress.js';

const MiB = 1024 * 1024;

/** A stream that records what was written, posing as a terminal or not. */
function stream(isTTY: boolean): PassThrough & { isTTY: boolean; text(): string } {
  const s = new PassThrough() as PassThrough & { isTTY: boolean; text(): string };
  let text = '';
  s.on('data', (d: Buffer) => (text += d.toString()));
  s.isTTY = isTTY;
  s.text = () => text;
  return s;
}

describe('progress', () => {
  const lines: Array<{ done: number; total: number; rate: number; expect: string }> = [
    { done: 0, total: 512 * MiB, rate: 0, expect: 'pulled [------------------------]   0.0%  0 B / 512 MiB  0 B/s' },
    { done: 192 * MiB, total: 512 * MiB, rate: 38.2 * MiB, expect: 'pulled [#########---------------]  37.5%  192 MiB / 512 MiB  38.2 MiB/s' },
    { done: 512 * MiB, total: 512 * MiB, rate: MiB, expect: 'pulled [########################] 100.0%  512 MiB / 512 MiB  1 MiB/s' },
  ];
  for (const c of lines) {
    it(`renders ${c.done} of ${c.total} bytes at ${c.rate} B/s`, () => {
      assert.equal(render('pulled', c.done, c.total, c.rate), c.expect);
    });
  }

  it('draws in place on a terminal, at most once per interval, and ends the line when done', () => {
    let now = 0;
    const out = stream(true);
    const line = new ProgressLine(out, { now: () => now, intervalMs: 100 });
    line.update(MiB, 4 * MiB);
    now = 50;
    line.update(2 * MiB, 4 * MiB); // too soon: skipped
    now = 1000;
    line.update(3 * MiB, 4 * MiB);
    line.done(4 * MiB, 4 * MiB);
    line.update(4 * MiB, 4 * MiB); // after done: ignored
    const draws = out.text().split('\r').filter((d) => d !== '');
    assert.equal(draws.length, 3);
    assert.ok(draws[1]!.includes('75.0%  3 MiB / 4 MiB  3 MiB/s'), draws[1]);
    assert.ok(out.text().endsWith('\n'));
  });

  it('writes nothing when the stream is not a terminal', () => {
    const out = stream(false);
    const line = new ProgressLine(out);
    line.update(1, 2);
    line.done(2, 2);
    assert.equal(line.enabled, false);
    assert.equal(out.text(), '');
  });

  it('RateMeter measures a growing counter per second and smooths it', () => {
    let now = 0;
    const meter = new RateMeter(0, () => now);
    now = 1000;
    assert.equal(meter.sample(10 * MiB), 10 * MiB);
    now = 2000;
    assert.equal(meter.sample(10 * MiB), 7 * MiB);
    assert.equal(formatRate(1536), '1.5 KiB/s');
  });
});
