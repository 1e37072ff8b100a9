import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ChunkTable, RemoteSync } from '../../src/pipeline/chunk-table.js';
import { RemoteStage } from '../../src/pipeline/remote-stage.js';
import type { Backend } from '../../src/pipeline/types.js';
import { MemoryStore } from '../support/memory-store.js';
import { Gate, within } from './support-store.js';

const chunkSize = 4;
const size = 4 * chunkSize;

function rig(sync?: () => Promise<void>): { remote: Backend; table: ChunkTable; stage: RemoteStage } {
  const remote = new MemoryStore(size);
  if (sync !== undefined) remote.sync = sync;
  const table = new ChunkTable({ chunkSize, size });
  return { remote, table, stage: new RemoteStage(remote, table) };
}

describe('RemoteStage', () => {
  it('counts pulled and pushed bytes', async () => {
    const r = rig();
    await r.stage.readAt(Buffer.alloc(8), 0);
    await r.stage.writeAt(Buffer.alloc(4, 1), 4);
    assert.equal(r.stage.pulledBytes, 8);
    assert.equal(r.stage.pushedBytes, 4);
  });

  it('a pushed chunk stays unsynced until a sync begun after the push completed', async () => {
    const gate = new Gate();
    const gate2 = new Gate();
    let syncs = 0;
    const r = rig(async () => {
      await (++syncs === 1 ? gate : gate2).wait();
    });
    await r.stage.writeAt(Buffer.alloc(4, 1), 0);
    assert.equal(r.table.unsynced[0], RemoteSync.WRITTEN);
    const first = r.stage.sync();
    await within(gate.entered, 'the first sync');
    assert.equal(r.table.unsynced[0], RemoteSync.SYNCING);
    await r.stage.writeAt(Buffer.alloc(4, 2), 4); // after the first sync began
    const second = r.stage.sync();
    gate.open();
    await within(first, 'the first sync');
    await within(gate2.entered, 'the second sync');
    assert.equal(r.table.unsynced[0], RemoteSync.CLEAN);
    assert.equal(r.table.unsynced[1], RemoteSync.SYNCING, 'not covered by the sync that began before it');
    gate2.open();
    await within(second, 'the second sync');
    assert.equal(r.table.unsynced[1], RemoteSync.CLEAN);
  });

  it('a failed sync leaves its chunks written, and the next one cleans them', async () => {
    let fail = true;
    const r = rig(async () => {
      if (fail) throw new Error('remote sync failed');
    });
    await r.stage.writeAt(Buffer.alloc(4, 1), 8);
    await assert.rejects(r.stage.sync(), /remote sync failed/);
    assert.equal(r.table.unsynced[2], RemoteSync.WRITTEN);
    fail = false;
    const changes = r.table.changes;
    await r.stage.sync();
    assert.equal(r.table.unsynced[2], RemoteSync.CLEAN);
    assert.ok(r.table.changes > changes, 'a completed sync is a change worth saving');
  });

  it('refuses a table for another size', () => {
    const remote = new MemoryStore(size);
    assert.throws(() => new RemoteStage(remote, new ChunkTable({ chunkSize, size: size * 2 })), /remote stage: the chunk table/);
  });
});
