import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { FdCache } from '../../src/backends/fd-cache.js';

/** A fake handle that records whether it was closed while someone held it. */
class FakeHandle {
  readonly name: string;
  readonly world: FakeWorld;
  closed = false;
  constructor(name: string, world: FakeWorld) {
    this.name = name;
    this.world = world;
  }
  async close(): Promise<void> {
    await nextTurn();
    if (this.closed) throw new Error(`${this.name} closed twice`);
    this.closed = true;
    this.world.open--;
    if (this.world.failClose.has(this.name)) throw new Error(`close ${this.name} failed`);
  }
}

/** Files that exist, how many fake handles are open, and every open call. */
class FakeWorld {
  readonly files = new Set<string>();
  readonly failClose = new Set<string>();
  readonly opens: string[] = [];
  open = 0;
  peak = 0;
  readonly opener = async (name: string, create: boolean): Promise<FakeHandle | undefined> => {
    this.opens.push(name);
    await nextTurn();
    if (!this.files.has(name)) {
      if (!create) return undefined;
      this.files.add(name);
    }
    this.peak = Math.max(this.peak, ++this.open);
    return new FakeHandle(name, this);
  };
}

/** Leases `name`, checks the handle stays open for a few turns, releases. */
async function use(cache: FdCache<FakeHandle>, name: string, create = true): Promise<void> {
  const lease = await cache.acquire(name, create);
  assert.ok(lease, `lease for ${name}`);
  for (let i = 0; i < 3; i++) {
    assert.equal(lease.handle.closed, false, `${name} was closed while leased`);
    await nextTurn();
  }
  cache.release(lease);
}

describe('FdCache', () => {
  const caps = [
    { maxOpenFiles: 1, names: 6 },
    { maxOpenFiles: 2, names: 10 },
    { maxOpenFiles: 3, names: 3 },
  ];
  for (const { maxOpenFiles, names } of caps) {
    it(`keeps at most ${maxOpenFiles} handles open while ${names} names are used concurrently, and never closes a leased one`, async () => {
      const world = new FakeWorld();
      const cache = new FdCache<FakeHandle>(world.opener, maxOpenFiles);
      const calls: Array<Promise<void>> = [];
      for (let round = 0; round < 4; round++) {
        for (let i = 0; i < names; i++) calls.push(use(cache, `f${(i * 7 + round) % names}`));
      }
      await Promise.all(calls);
      assert.ok(world.peak <= maxOpenFiles, `peak ${world.peak} > ${maxOpenFiles}`);
      assert.ok(cache.peakOpenCount <= maxOpenFiles);
      await cache.close();
      assert.equal(world.open, 0);
    });
  }

  it('has no cap when maxOpenFiles is 0', async () => {
    const world = new FakeWorld();
    const cache = new FdCache<FakeHandle>(world.opener, 0);
    await Promise.all(Array.from({ length: 20 }, (_, i) => use(cache, `f${i}`)));
    assert.equal(world.peak, 20);
    assert.equal(cache.openCount, 20);
    await cache.close();
    assert.equal(world.open, 0);
  });

  it('shares one open among concurrent acquirers of one name and reuses the idle handle', async () => {
    const world = new FakeWorld();
    const cache = new FdCache<FakeHandle>(world.opener, 4);
    await Promise.all(Array.from({ length: 8 }, () => use(cache, 'same')));
    await use(cache, 'same');
    assert.deepEqual(world.opens, ['same']);
    await cache.close();
  });

  it('evicts the least recently released idle handle first', async () => {
    const world = new FakeWorld();
    const cache = new FdCache<FakeHandle>(world.opener, 2);
    await use(cache, 'a');
    await use(cache, 'b');
    await use(cache, 'a'); // b is now the least recently used
    await use(cache, 'c'); // evicts b
    await use(cache, 'a'); // still open: no new open
    assert.deepEqual(world.opens, ['a', 'b', 'c']);
    await cache.close();
  });

  it('returns undefined for a missing file without creating it or keeping a slot', async () => {
    const world = new FakeWorld();
    const cache = new FdCache<FakeHandle>(world.opener, 1);
    assert.equal(await cache.acquire('missing', false), undefined);
    assert.equal(world.files.has('missing'), false);
    assert.equal(cache.openCount, 0);
    await use(cache, 'other'); // the only slot is free again
    await cache.close();
  });

  it('lets an acquirer that wants to create retry after joining an open that found nothing', async () => {
    const world = new FakeWorld();
    const cache = new FdCache<FakeHandle>(world.opener, 2);
    const [reader, writer] = await Promise.all([cache.acquire('n', false), cache.acquire('n', true)]);
    assert.equal(reader, undefined);
    assert.ok(writer);
    assert.equal(writer.handle.closed, false);
    cache.release(writer);
    await cache.close();
  });

  it('discards an idle file: runs the action with the handle closed while acquirers wait', async () => {
    const world = new FakeWorld();
    const cache = new FdCache<FakeHandle>(world.opener, 2);
    await use(cache, 'd');
    const order: string[] = [];
    const discarding = cache.discard('d', async () => {
      await nextTurn();
      world.files.delete('d');
      order.push('unlinked');
    });
    await nextTurn();
    const waiting = cache.acquire('d', false).then((lease) => {
      order.push(lease === undefined ? 'missing' : 'found');
    });
    assert.equal(await discarding, true);
    await waiting;
    assert.deepEqual(order, ['unlinked', 'missing']);
    assert.equal(world.open, 0);
    await cache.close();
  });

  it('refuses to discard a file another call holds and leaves it open', async () => {
    const world = new FakeWorld();
    const cache = new FdCache<FakeHandle>(world.opener, 2);
    const lease = await cache.acquire('held', true);
    assert.ok(lease);
    let ran = false;
    assert.equal(await cache.discard('held', async () => void (ran = true)), false);
    assert.equal(ran, false);
    assert.equal(lease.handle.closed, false);
    cache.release(lease);
    assert.equal(await cache.discard('missing', async () => void (ran = true)), true);
    assert.equal(ran, false);
    await cache.close();
  });

  it('keeps errors from closing evicted handles for takeErrors, and close reports the rest', async () => {
    const world = new FakeWorld();
    world.failClose.add('a');
    world.failClose.add('b');
    const cache = new FdCache<FakeHandle>(world.opener, 1);
    await use(cache, 'a');
    await use(cache, 'b'); // evicts a, whose close fails
    const errors = cache.takeErrors();
    assert.equal(errors.length, 1);
    assert.match(errors[0]!.message, /close a failed/);
    assert.deepEqual(cache.takeErrors(), []);
    await assert.rejects(cache.close(), (err: unknown) => err instanceof AggregateError && err.errors.length === 1);
    await cache.close(); // idempotent
    await assert.rejects(cache.acquire('c', true), { code: 'ERR_CLOSED' });
  });
});
