import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ClosedError } from '../../src/errors.js';
import { CallGate } from '../../src/util/call-gate.js';

describe('CallGate', () => {
  it('counts calls in and out', () => {
    const gate = new CallGate('thing');
    gate.enter();
    gate.enter();
    assert.equal(gate.inFlight, 2);
    gate.leave();
    gate.leave();
    assert.equal(gate.inFlight, 0);
    assert.equal(gate.closed, false);
    gate.assertOpen();
  });

  it('closes at once: enter and assertOpen throw ClosedError naming the resource', async () => {
    const gate = new CallGate('thing backend');
    const closing = gate.close(async () => undefined);
    assert.equal(gate.closed, true);
    assert.throws(() => gate.enter(), (err: unknown) => err instanceof ClosedError && err.message === 'thing backend is closed');
    assert.throws(() => gate.assertOpen(), ClosedError);
    await closing;
  });

  it('runs release only after every call in flight has left, and only once', async () => {
    const gate = new CallGate('thing');
    const events: string[] = [];
    gate.enter();
    gate.enter();
    const release = async (): Promise<void> => void events.push('released');
    const first = gate.close(release);
    const second = gate.close(release);
    assert.equal(first, second);
    await new Promise((resolve) => setImmediate(resolve));
    assert.deepEqual(events, []);
    gate.leave();
    await new Promise((resolve) => setImmediate(resolve));
    assert.deepEqual(events, []);
    gate.leave();
    await first;
    assert.deepEqual(events, ['released']);
    await gate.close(release);
    assert.deepEqual(events, ['released']);
  });

  it('hands the release error to every close()', async () => {
    const gate = new CallGate('thing');
    const boom = new Error('boom');
    await assert.rejects(gate.close(async () => { throw boom; }), boom);
    await assert.rejects(gate.close(async () => undefined), boom);
  });
});
