import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ChunkTable } from '../../src/pipeline/chunk-table.js';
import { WriteMarks, type WriteGate } from '../../src/pipeline/write-marks.js';
import { filled, Gate, TestStore, within } from './support-store.js';

const chunkSize = 4;
const size = 4 * chunkSize;

function rig(gate?: WriteGate, hook?: TestStore['hook']): { local: TestStore; table: ChunkTable; marks: WriteMarks } {
  const local = new TestStore(size, hook);
  const table = new ChunkTable({ chunkSize, size });
  return { local, table, marks: new WriteMarks(local, { table, ...(gate !== undefined ? { gate } : {}) }) };
}

describe('WriteMarks', () => {
  it('marks a chunk dirty only after its write landed, before the write resolves', async () => {
    const landed = new Gate();
    const r = rig(undefined, (op) => (op === 'write' ? landed.wait() : undefined));
    const writing = r.marks.writeAt(filled(4, 1), 2 * chunkSize);
    await within(landed.entered, 'the write');
    assert.equal(r.table.writing[2], 1, 'under way');
    assert.equal(r.table.dirty[2], 0, 'not dirty before the data is there');
    const generation = r.table.generation[2];
    landed.open();
    await within(writing, 'the write');
    assert.equal(r.table.dirty[2], 1);
    assert.equal(r.table.writing[2], 0);
    assert.notEqual(r.table.generation[2], generation);
    assert.deepEqual(r.local.data.subarray(8, 12), filled(4, 1));
  });

  it('waits for the gate before the write starts', async () => {
    const saved = new Gate();
    const begun: number[] = [];
    const gate: WriteGate = { beginWrite: (i) => (begun.push(i), saved.wait()) };
    const r = rig(gate);
    const writing = r.marks.writeAt(filled(4, 3), chunkSize);
    await within(saved.entered, 'the gate');
    assert.deepEqual(begun, [1]);
    assert.equal(r.table.writing[1], 1, 'the writing bit is set before beginWrite');
    assert.deepEqual(r.local.offsets('write'), [], 'no write before the gate opened');
    saved.open();
    await within(writing, 'the write');
    assert.equal(r.table.dirty[1], 1);
  });

  it('a failed write still marks its chunk (it may have changed part of it)', async () => {
    const r = rig(undefined, (op) => {
      if (op === 'write') throw new Error('EIO');
    });
    await assert.rejects(r.marks.writeAt(filled(4, 1), 0), /EIO/);
    assert.equal(r.table.dirty[0], 1);
    assert.equal(r.table.writing[0], 0);
  });

  it('a write the gate refused marks nothing', async () => {
    const r = rig({ beginWrite: () => Promise.reject(new Error('state save failed')) });
    await assert.rejects(r.marks.writeAt(filled(4, 1), 0), /state save failed/);
    assert.equal(r.table.dirty[0], 0);
    assert.equal(r.table.writing[0], 0);
    assert.deepEqual(r.local.offsets('write'), []);
  });

  it('passes pieces to next.writev as they are, and gathers them for a next without writev', async () => {
    const seen: Array<readonly Buffer[]> = [];
    const local = new TestStore(size);
    const table = new ChunkTable({ chunkSize, size });
    const scatter = Object.assign(local, { writev: async (bufs: readonly Buffer[], off: number) => {
      seen.push(bufs);
      await local.writeAt(Buffer.concat(bufs), off);
    } });
    const pieces = [filled(1, 5), filled(3, 6)];
    await new WriteMarks(scatter, { table }).writev(pieces, chunkSize);
    assert.equal(seen[0], pieces);
    assert.equal(table.dirty[1], 1);
    const plain = rig();
    await plain.marks.writev(pieces, 3 * chunkSize);
    assert.deepEqual(plain.local.data.subarray(12, 16), Buffer.from([5, 6, 6, 6]));
    assert.equal(plain.table.dirty[3], 1);
  });

  it('reads pass through', async () => {
    const r = rig();
    r.local.data.fill(9, 0, 4);
    const buf = Buffer.alloc(4);
    await r.marks.readAt(buf, 0);
    assert.deepEqual(buf, filled(4, 9));
    assert.equal(r.table.changes, 0);
  });
});
