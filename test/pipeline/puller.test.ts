import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { ClosedError, isR3mapError, MisalignedError, OutOfRangeError, UsageError } from '../../src/errors.js';
import { ascending, descending, pullOrder, type PullPriority } from '../../src/pipeline/pull-priority.js';
import { Puller, type PullProgress } from '../../src/pipeline/puller.js';
import { Gate, settle, TestStore, within } from './support-store.js';

const chunkSize = 4;
const size = 7 * chunkSize + 3; // 8 chunks, the last one 3 bytes long
const chunks = 8;
const all = Array.from({ length: chunks }, (_, i) => i * chunkSize);
const at = (...indexes: number[]): number[] => indexes.map((i) => i * chunkSize);
const evensFirst: PullPriority = (i) => (i % 2 === 0 ? 1 : 0);

/** Runs a puller to completion and returns its store. */
async function pullAll(store: TestStore, workers: number, priority: PullPriority, dirty: number[] = []): Promise<Puller> {
  const puller = new Puller(store, { chunkSize, size, workers, priority, retryDelayMs: 1 });
  puller.start();
  puller.finalize(dirty);
  await within(puller.wait(), 'the puller');
  return puller;
}

describe('Puller', () => {
  describe('pulls every chunk once, the last one included, in priority order', () => {
    for (const workers of [1, 2, 20]) {
      for (const [name, priority] of [['ascending', ascending], ['descending', descending], ['even chunks first', evensFirst]] as const) {
        it(`with ${workers} worker(s) and ${name}`, async () => {
          const store = new TestStore(size);
          const puller = await pullAll(store, workers, priority);
          assert.deepEqual(store.offsets('read'), [...pullOrder(chunks, priority)].map((i) => i * chunkSize));
          assert.deepEqual(store.calls.map((c) => c.length), store.offsets('read').map((off) => Math.min(chunkSize, size - off)));
          assert.equal(puller.pulledChunks, chunks);
          assert.equal(puller.pulledBytes, size);
        });
      }
    }
  });

  it('pulls the last chunk before finalize() and resolves wait() only after finalize()', async () => {
    const store = new TestStore(size);
    const puller = new Puller(store, { chunkSize, size, workers: 2 });
    const progress: PullProgress[] = [];
    puller.on('progress', (p) => progress.push(p));
    let resolved = false;
    void puller.wait().then(() => (resolved = true));
    puller.start();
    while (puller.pulledChunks < chunks) await within(once(puller, 'progress'), 'progress');
    await settle();
    assert.deepEqual(store.offsets('read').sort((a, b) => a - b), all);
    assert.equal(resolved, false);
    assert.deepEqual(progress.at(-1), { pulledChunks: chunks, totalChunks: chunks, pulledBytes: size });
    assert.equal(progress.length, chunks);
    puller.finalize([]);
    await within(puller.wait(), 'wait()');
  });

  describe('finalize() after everything was pulled pulls exactly the dirty chunks again', () => {
    const cases: Array<[string, number[]]> = [['none', []], ['some', at(1, 7)], ['all', all]];
    for (const [name, dirty] of cases) {
      it(`with ${name} dirty`, async () => {
        const store = new TestStore(size);
        const puller = new Puller(store, { chunkSize, size, workers: 2 });
        puller.start();
        while (puller.pulledChunks < chunks) await within(once(puller, 'progress'), 'progress');
        puller.finalize(dirty);
        await within(puller.wait(), 'wait()');
        for (const off of all) assert.equal(store.count('read', off), dirty.includes(off) ? 2 : 1, `reads of ${off}`);
        assert.deepEqual(store.offsets('read').slice(chunks), dirty);
      });
    }
  });

  it('pulls dirty chunks before the rest of the queue, once if never pulled, again if pulling', async () => {
    const gate = new Gate();
    const store = new TestStore(size, (_op, off, attempt) => (off === at(2)[0] && attempt === 0 ? gate.wait() : undefined));
    const puller = new Puller(store, { chunkSize, size, workers: 1 });
    puller.start();
    await within(gate.entered, 'the pull of chunk 2');
    puller.finalize(at(0, 5, 2));
    gate.open();
    await within(puller.wait(), 'wait()');
    assert.deepEqual(store.offsets('read'), at(0, 1, 2, 2, 0, 5, 3, 4, 6, 7));
  });

  it('pulls each dirty chunk once when finalize() comes before start()', async () => {
    const store = new TestStore(size);
    const puller = new Puller(store, { chunkSize, size, workers: 1 });
    puller.finalize(at(3, 7, 3));
    puller.start();
    await within(puller.wait(), 'wait()');
    assert.deepEqual(store.offsets('read'), at(3, 7, 0, 1, 2, 4, 5, 6));
  });

  it('stops starting pulls on close(), and wait() rejects with ClosedError', async () => {
    const gate = new Gate();
    const store = new TestStore(size, () => gate.wait());
    const puller = new Puller(store, { chunkSize, size, workers: 2 });
    puller.start();
    puller.finalize([]);
    await within(gate.entered, 'a pull');
    await settle();
    assert.equal(store.calls.length, 2);
    await puller.close();
    await puller.close();
    await assert.rejects(puller.wait(), ClosedError);
    gate.open();
    await settle();
    await settle();
    assert.equal(store.calls.length, 2, 'no pull started after close()');
  });

  it('keeps a resolved wait() resolved after close()', async () => {
    const puller = await pullAll(new TestStore(size), 2, ascending);
    await puller.close();
    await puller.wait();
  });

  it('pulls nothing with 0 workers and resolves wait() once finalize() was called', async () => {
    const store = new TestStore(size);
    const puller = new Puller(store, { chunkSize, size, workers: 0 });
    let resolved = false;
    void puller.wait().then(() => (resolved = true));
    puller.start();
    await settle();
    assert.equal(resolved, false);
    puller.finalize(at(1));
    await within(puller.wait(), 'wait()');
    assert.equal(store.calls.length, 0);
  });

  it('retries a pull that fails twice and then succeeds', async () => {
    const store = new TestStore(size, (_op, off, attempt) => {
      if (off === at(3)[0] && attempt < 2) throw new Error('flaky');
    });
    await pullAll(store, 1, ascending);
    assert.equal(store.count('read', at(3)[0]!), 3);
    assert.equal(store.count('read', at(4)[0]!), 1);
  });

  it('rejects wait() with the error of a pull that always fails, without an error listener', async () => {
    const boom = new Error('remote is gone');
    const store = new TestStore(size, (_op, off) => {
      if (off === at(1)[0]) throw boom;
    });
    const puller = new Puller(store, { chunkSize, size, workers: 2, retries: 2, retryDelayMs: 1 });
    puller.start();
    puller.finalize([]);
    await assert.rejects(within(puller.wait(), 'wait()'), (err) => err === boom);
    assert.equal(store.count('read', at(1)[0]!), 3);
  });

  it('emits the failure once to an error listener', async () => {
    const store = new TestStore(size, () => {
      throw new Error('down');
    });
    const puller = new Puller(store, { chunkSize, size, workers: 3, retries: 0 });
    const errors: unknown[] = [];
    puller.on('error', (err) => errors.push(err));
    puller.start();
    await assert.rejects(within(puller.wait(), 'wait()'), /down/);
    await settle();
    assert.equal(errors.length, 1);
  });

  it('calls pull(off) instead of readAt when the reader has it', async () => {
    const store = new TestStore(size);
    const pulled: number[] = [];
    const reader = Object.assign(store, { pull: async (off: number) => void pulled.push(off) });
    await pullAll(reader, 2, descending);
    assert.deepEqual(pulled, [...all].reverse());
    assert.equal(store.calls.length, 0);
  });

  it('completes at once for an empty device', async () => {
    const puller = new Puller(new TestStore(0), { chunkSize, size: 0, workers: 4 });
    puller.start();
    puller.finalize([]);
    await within(puller.wait(), 'wait()');
  });

  it('rejects bad options and dirty offsets with typed errors', () => {
    assert.throws(() => new Puller(new TestStore(size), { chunkSize: 0, size, workers: 1 }), UsageError);
    assert.throws(() => new Puller(new TestStore(size), { chunkSize, size, workers: -1 }), UsageError);
    assert.throws(() => new Puller(new TestStore(size), { chunkSize, size, workers: 1, maxQueueMs: -1 }), UsageError);
    const puller = new Puller(new TestStore(size), { chunkSize, size, workers: 1 });
    assert.throws(() => puller.finalize([1]), MisalignedError);
    assert.throws(() => puller.finalize([size + 1]), OutOfRangeError);
    puller.finalize([]);
    assert.throws(() => puller.finalize([]), (err) => isR3mapError(err, 'ERR_USAGE'));
  });

  describe('the window of pulls in flight', () => {
    /**
     * A remote with a round trip of `rttMs` and, when `perPullMs` > 0, a link that delivers one
     * pull per `perPullMs` (so pulls beyond its bandwidth-delay product only queue), on a simulated
     * clock (`clock`, for the puller): pulls complete one at a time in the order of their due
     * times, each a turn of the event loop after the one before, and the clock jumps to each due
     * time. No real timers: the figures do not depend on how loaded the machine is.
     */
    function remote(rttMs: number, perPullMs: number) {
      const r = { inFlight: 0, maxInFlight: 0, lastDone: 0, now: 0 };
      const due: { at: number; seq: number; resolve: () => void }[] = [];
      let seq = 0;
      let draining = false;
      const next = (): void => {
        setImmediate(() => {
          if (due.length === 0) {
            draining = false;
            return;
          }
          due.sort((a, b) => a.at - b.at || a.seq - b.seq);
          const first = due.shift()!;
          r.now = Math.max(r.now, first.at);
          r.inFlight--;
          first.resolve();
          next();
        });
      };
      const readAt = (): Promise<void> => new Promise((resolve) => {
        r.maxInFlight = Math.max(r.maxInFlight, ++r.inFlight);
        const done = perPullMs > 0 ? Math.max(r.now + rttMs, r.lastDone + perPullMs) : r.now + rttMs;
        r.lastDone = done;
        due.push({ at: done, seq: seq++, resolve });
        if (!draining) {
          draining = true;
          next();
        }
      });
      return Object.assign(r, { readAt, clock: () => r.now });
    }

    it('starts with 16 and grows to every worker while pulls do not slow down', async () => {
      const source = remote(5, 0);
      const puller = new Puller(source, { chunkSize: 1, size: 3000, workers: 64, clock: source.clock });
      assert.equal(puller.window, 16);
      puller.start();
      assert.equal(source.maxInFlight, 16, 'slow start');
      puller.finalize([]);
      await within(puller.wait(), 'wait()');
      assert.equal(puller.window, 64);
      assert.equal(source.maxInFlight, 64);
    });

    it('leaves pulls that fetched nothing (the chunk was local) out of its samples', async () => {
      const source = remote(10, 0);
      const local = 2000; // a resumed cache: these answer at once
      let lowest = Infinity; // the window whenever a real pull starts
      const pull = async (off: number): Promise<boolean> => {
        if (off < local) return false;
        lowest = Math.min(lowest, puller.window);
        await source.readAt();
        return true;
      };
      const puller: Puller = new Puller({ readAt: () => Promise.resolve(), pull }, { chunkSize: 1, size: local + 1500, workers: 64, maxQueueMs: 2, clock: source.clock });
      puller.start();
      puller.finalize([]);
      await within(puller.wait(), 'wait()');
      assert.ok(lowest >= 16, `instant pulls must not pass for the round trip: the window fell to ${lowest}, below the 16 it starts with`);
      assert.equal(puller.window, 64, 'and it grew to every worker');
    });

    it('keeps far fewer than its workers in flight when more would only queue', async () => {
      const source = remote(2, 0.25); // 8 pulls fill the link; 256 would queue for 64 ms
      const puller = new Puller(source, { chunkSize: 1, size: 3000, workers: 256, clock: source.clock });
      puller.start();
      puller.finalize([]);
      await within(puller.wait(), 'wait()');
      assert.ok(source.maxInFlight < 256, `at most ${source.maxInFlight} in flight`);
      assert.ok(puller.window < 64, `the window ended at ${puller.window}`);
      assert.equal(puller.pulledChunks, 3000);
    });

    it('takes a new maxQueueMs at any time: 0 opens the window at once, a value after 0 starts it at 4', async () => {
      const gate = new Gate();
      const store = new TestStore(100, () => gate.wait());
      const puller = new Puller(store, { chunkSize: 1, size: 100, workers: 40, maxQueueMs: 0 });
      puller.start();
      assert.equal(store.inFlight, 40);
      puller.maxQueueMs = 1;
      assert.equal(puller.window, 4, 'what is in flight drains before more starts');
      gate.open();
      puller.finalize([]);
      await within(puller.wait(), 'wait()');
      assert.throws(() => (puller.maxQueueMs = -1), UsageError);
      const again = new Puller(new TestStore(100, () => gate.wait()), { chunkSize: 1, size: 100, workers: 40 });
      assert.equal(again.window, 16);
      again.maxQueueMs = 0;
      assert.equal(again.window, 40);
    });

    it('with maxQueueMs 0 keeps every worker busy from the start', async () => {
      const source = remote(2, 0.25);
      const puller = new Puller(source, { chunkSize: 1, size: 600, workers: 256, maxQueueMs: 0, clock: source.clock });
      puller.start();
      assert.equal(source.maxInFlight, 256);
      puller.finalize([]);
      await within(puller.wait(), 'wait()');
      assert.equal(puller.window, 256);
    });
  });
});
