import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { backoffDelayMs, isTransientNetworkError, withRetry } from '../../src/util/retry.js';

const withCode = (code: string): Error => Object.assign(new Error(code), { code });

/** An op that fails with `errors` in turn, then resolves with 'ok'; counts its calls. */
function flaky(errors: readonly Error[]): { op: () => Promise<string>; calls: () => number } {
  let n = 0;
  return {
    op: async () => {
      const err = errors[n++];
      if (err !== undefined) throw err;
      return 'ok';
    },
    calls: () => n,
  };
}

function captureLog(): { log: pino.Logger; lines: () => Array<Record<string, unknown>> } {
  const lines: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      lines.push(...chunk.toString().split('\n').filter((l) => l !== ''));
      cb();
    },
  });
  return { log: pino({ level: 'warn' }, stream), lines: () => lines.map((l) => JSON.parse(l) as Record<string, unknown>) };
}

describe('isTransientNetworkError', () => {
  const table: Array<{ name: string; err: unknown; expect: boolean }> = [
    { name: 'ECONNREFUSED', err: withCode('ECONNREFUSED'), expect: true },
    { name: 'ECONNRESET', err: withCode('ECONNRESET'), expect: true },
    { name: 'ETIMEDOUT', err: withCode('ETIMEDOUT'), expect: true },
    { name: 'a transient code in the cause chain', err: new Error('outer', { cause: withCode('EPIPE') }), expect: true },
    { name: 'an AggregateError holding a transient error', err: new AggregateError([new Error('x'), withCode('ECONNREFUSED')]), expect: true },
    { name: 'ENOENT', err: withCode('ENOENT'), expect: false },
    { name: 'a plain Error', err: new Error('ECONNREFUSED in the text only'), expect: false },
    { name: 'a string', err: 'ECONNRESET', expect: false },
    { name: 'undefined', err: undefined, expect: false },
  ];
  for (const { name, err, expect } of table) {
    it(`says ${expect} for ${name}`, () => assert.equal(isTransientNetworkError(err), expect));
  }
});

describe('backoffDelayMs', () => {
  it('grows exponentially, stays between half and all of its ceiling, and never passes the cap', () => {
    for (let attempt = 0; attempt < 40; attempt++) {
      const ceiling = Math.min(2000, 50 * 2 ** attempt);
      for (let k = 0; k < 20; k++) {
        const d = backoffDelayMs(attempt, 50, 2000);
        assert.ok(d >= Math.floor(ceiling / 2) && d <= ceiling, `attempt ${attempt}: ${d} not in [${ceiling / 2}, ${ceiling}]`);
      }
    }
  });
});

describe('withRetry', () => {
  it('resolves with the result once a transient failure goes away', async () => {
    const f = flaky([withCode('ECONNREFUSED'), withCode('ECONNRESET')]);
    assert.equal(await withRetry(f.op, { baseDelayMs: 1 }), 'ok');
    assert.equal(f.calls(), 3);
  });

  it('rethrows an error that is not transient without retrying', async () => {
    const err = withCode('ENOENT');
    const f = flaky([err]);
    await assert.rejects(withRetry(f.op, { baseDelayMs: 1 }), (e) => e === err);
    assert.equal(f.calls(), 1);
  });

  const limits = [
    { retries: 0, calls: 1 },
    { retries: 1, calls: 2 },
    { retries: 3, calls: 4 },
  ];
  for (const { retries, calls } of limits) {
    it(`gives up after ${retries} retries (${calls} calls) and rethrows the last error`, async () => {
      const errors = Array.from({ length: 10 }, (_, i) => withCode(i % 2 === 0 ? 'ECONNREFUSED' : 'ETIMEDOUT'));
      const f = flaky(errors);
      await assert.rejects(withRetry(f.op, { retries, baseDelayMs: 1 }), (e) => e === errors[calls - 1]);
      assert.equal(f.calls(), calls);
    });
  }

  it('asks isTransient about each error', async () => {
    const seen: unknown[] = [];
    const errors = [new Error('busy'), new Error('busy'), new Error('fatal')];
    const f = flaky(errors);
    const isTransient = (e: unknown): boolean => (seen.push(e), (e as Error).message === 'busy');
    await assert.rejects(withRetry(f.op, { baseDelayMs: 1, isTransient }), (e) => e === errors[2]);
    assert.deepEqual(seen, errors);
  });

  it('logs one warning per retry naming the operation and the attempt', async () => {
    const { log, lines } = captureLog();
    const f = flaky([withCode('ECONNREFUSED'), withCode('ECONNREFUSED')]);
    await withRetry(f.op, { baseDelayMs: 1, log, what: 'redis GET k-0' });
    const warns = lines();
    assert.equal(warns.length, 2);
    assert.deepEqual(warns.map((l) => [l.what, l.attempt, l.retries]), [['redis GET k-0', 1, 5], ['redis GET k-0', 2, 5]]);
  });

  it('stops waiting and rethrows the store error when its signal is aborted', async () => {
    const controller = new AbortController();
    const err = withCode('ECONNREFUSED');
    let calls = 0;
    const op = async (): Promise<never> => {
      calls++;
      setImmediate(() => controller.abort());
      throw err;
    };
    await assert.rejects(withRetry(op, { baseDelayMs: 60_000, maxDelayMs: 60_000, signal: controller.signal }), (e) => e === err);
    assert.equal(calls, 1);
  });
});
