import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { MisalignedError, OutOfRangeError, UsageError } from '../../src/errors.js';
import { ChunkState } from '../../src/pipeline/chunk-state.js';
import { ChunkTable } from '../../src/pipeline/chunk-table.js';

const chunkSize = 4;
const size = 5 * chunkSize + 1; // 6 chunks, the last one 1 byte long

describe('ChunkTable', () => {
  it('has one column per fact, all zero (remote, clean, queued) at first', () => {
    const t = new ChunkTable({ chunkSize, size });
    assert.equal(t.chunks, 6);
    for (const column of [t.state, t.dirty, t.generation, t.unsynced, t.writing, t.pull, t.tracked]) {
      assert.equal(column.length, 6);
      assert.ok(column.every((v) => v === 0));
    }
    assert.equal(t.localCount, 0);
    assert.equal(t.dirtyCount, 0);
    assert.equal(t.lengthOf(5), 1);
    assert.equal(t.lengthOf(0), chunkSize);
  });

  it('keeps localCount with the state column and counts every change', () => {
    const t = new ChunkTable({ chunkSize, size });
    const before = t.changes;
    t.setState(1, ChunkState.PULLING);
    assert.equal(t.localCount, 0);
    t.setState(1, ChunkState.LOCAL);
    t.setState(1, ChunkState.LOCAL); // no change
    t.setState(3, ChunkState.LOCAL);
    assert.equal(t.localCount, 2);
    assert.ok(t.isLocal(3));
    t.setState(3, ChunkState.REMOTE);
    assert.equal(t.localCount, 1);
    assert.equal(t.changes - before, 4);
  });

  it('a push cleans a chunk only if no write landed since it read the generation', () => {
    const t = new ChunkTable({ chunkSize, size });
    t.markDirty(2);
    const read = t.generation[2]!;
    t.markDirty(2); // a write during the push
    assert.equal(t.dirtyCount, 1, 'dirty once, however often written');
    assert.equal(t.markPushed(2, read), false);
    assert.equal(t.dirty[2], 1);
    assert.equal(t.markPushed(2, t.generation[2]!), true);
    assert.equal(t.dirtyCount, 0);
    assert.equal(t.markPushed(2, t.generation[2]!), false, 'already clean');
    assert.deepEqual(t.dirtyIndexes(), []);
  });

  it('the generation wraps around without losing a write', () => {
    const t = new ChunkTable({ chunkSize, size });
    t.generation[0] = 0xffffffff;
    t.markDirty(0);
    assert.equal(t.generation[0], 0);
  });

  it('indexOf names bad offsets with the pipeline errors', () => {
    const t = new ChunkTable({ chunkSize, size });
    assert.equal(t.indexOf(20), 5);
    assert.throws(() => t.indexOf(2), MisalignedError);
    assert.throws(() => t.indexOf(24), OutOfRangeError);
    assert.throws(() => t.indexOf(-4), OutOfRangeError);
  });

  it('refuses a bad geometry, and a stage given a table for another target', () => {
    assert.throws(() => new ChunkTable({ chunkSize: 0, size }), UsageError);
    assert.throws(() => new ChunkTable({ chunkSize, size: -1 }), UsageError);
    const t = new ChunkTable({ chunkSize, size });
    assert.throws(() => t.checkGeometry(8, size, 'synced'), /synced: the chunk table is for 21 bytes in chunks of 4, not 21 in chunks of 8/);
    t.checkGeometry(chunkSize, size, 'synced');
  });
});
