/**
 * The migration roles in one process, over a real gRPC server on a Unix socket: a Seeder whose
 * application keeps writing during pre-copy, and a Leecher that pulls, finalizes and completes.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { MigrationError } from '../../src/errors.js';
import { FileBackend } from '../../src/backends/file.js';
import { MemoryBackend } from '../../src/backends/memory.js';
import { Leecher } from '../../src/migration/leecher.js';
import { Seeder } from '../../src/migration/seeder.js';
import { SeederRemote } from '../../src/migration/seeder-remote.js';
import { GrpcServer } from '../../src/rpc/grpc-server.js';
import { makeTempDir, removeDir } from '../support/tools.js';

const chunkSize = 4096;
const chunks = 64;
const size = chunks * chunkSize;
let dir: string;
let n = 0;

before(async () => {
  dir = await makeTempDir('r3map-migration-');
});
after(async () => {
  await removeDir(dir);
});

interface Rig {
  seeder: Seeder;
  server: GrpcServer;
  uri: string;
  content: Buffer;
  events: string[];
  stop(): Promise<void>;
}

async function seed(): Promise<Rig> {
  const state = new MemoryBackend({ size });
  const content = randomBytes(size);
  await state.writeAt(content, 0);
  const events: string[] = [];
  const seeder = new Seeder({ backend: state, chunkSize, onSuspend: () => void events.push('suspend'), flush: async () => void events.push('flush') });
  const server = new GrpcServer({ backend: seeder.backend, seeder: seeder.source, readOnly: true });
  const uri = await server.listen(`grpc+unix://${path.join(dir, `seed-${++n}.sock`)}`);
  return { seeder, server, uri, content, events, stop: async () => { await server.close(); await seeder.close(); } };
}

/** A leecher of the seeder at `uri` with a file cache at `cachePath` that it can resume from. */
async function fileLeecher(uri: string, cachePath: string): Promise<Leecher> {
  return Leecher.open({ seeder: await SeederRemote.open(uri), cache: await FileBackend.open(cachePath, { size }), statePath: cachePath, chunkSize, pullWorkers: 4 });
}

async function readAll(backend: { readAt(buf: Buffer, off: number): Promise<void> }): Promise<Buffer> {
  const buf = Buffer.alloc(size);
  await backend.readAt(buf, 0);
  return buf;
}

describe('migration: Seeder → Leecher over gRPC', () => {
  for (const workers of [0, 4]) {
    it(`moves the state with writes during pre-copy, the device locked until finalize (${workers} pull workers)`, async () => {
      const rig = await seed();
      const leecher = await Leecher.open({ seeder: await SeederRemote.open(rig.uri), chunkSize, pullWorkers: workers });
      try {
        const early = leecher.backend.readAt(Buffer.alloc(10), 0);
        let settled = false;
        void early.then(() => (settled = true), () => (settled = true));
        // the application writes while the leecher pre-copies
        const model = Buffer.from(rig.content);
        for (const off of [0, 5 * chunkSize + 17, 40 * chunkSize, size - 100]) {
          const data = randomBytes(Math.min(2 * chunkSize, size - off));
          data.copy(model, off);
          await rig.seeder.backend.writeAt(data, off);
        }
        for (let i = 0; i < 20; i++) await nextTurn();
        assert.equal(settled, false, 'the device is locked until finalize()');
        const result = await leecher.finalize();
        assert.deepEqual(rig.events, ['suspend', 'flush']);
        assert.ok(result.dirtyOffsets.includes(0) && result.dirtyOffsets.includes(40 * chunkSize));
        await early;
        assert.deepEqual(await readAll(leecher.backend), model, 'after finalize the device shows the seeder\'s last state');
        await leecher.complete();
        assert.equal(leecher.table.localCount, chunks);
        await rig.seeder.done;
      } finally {
        await leecher.close();
        await rig.stop();
      }
    });
  }

  it('finalize at 100 %: a chunk written after it was pulled is pulled again; onChunkIsLocal sees every chunk, that one twice', async () => {
    const rig = await seed();
    const local: number[] = [];
    const leecher = await Leecher.open({ seeder: await SeederRemote.open(rig.uri), chunkSize, pullWorkers: 8, onChunkIsLocal: (off) => void local.push(off) });
    try {
      while (leecher.progress().localChunks < chunks) await new Promise((resolve) => setTimeout(resolve, 5));
      const model = Buffer.from(rig.content);
      const data = randomBytes(100);
      data.copy(model, 7 * chunkSize + 1);
      await rig.seeder.backend.writeAt(data, 7 * chunkSize + 1);
      const { dirtyOffsets } = await leecher.finalize();
      assert.deepEqual(dirtyOffsets, [7 * chunkSize]);
      assert.deepEqual(await readAll(leecher.backend), model);
      await leecher.complete();
      assert.deepEqual([...local].sort((a, b) => a - b), [...Array.from({ length: chunks }, (_, i) => i * chunkSize), 7 * chunkSize].sort((a, b) => a - b));
    } finally {
      await leecher.close();
      await rig.stop();
    }
  });

  it('a Close before Sync is refused and the seeder goes on; a second leecher then completes', async () => {
    const rig = await seed();
    try {
      const quitter = await SeederRemote.open(rig.uri);
      await quitter.track();
      await assert.rejects(quitter.close(), (err: Error) => err instanceof MigrationError && /Close before Sync is refused/.test(err.message));
      const leecher = await Leecher.open({ seeder: await SeederRemote.open(rig.uri), chunkSize, pullWorkers: 2 });
      try {
        await leecher.complete();
        assert.deepEqual(await readAll(leecher.backend), rig.content);
      } finally {
        await leecher.close();
      }
    } finally {
      await rig.stop();
    }
  });

  it('refuses a seeder URI that is not gRPC, and says what is wrong with an unreachable one', async () => {
    await assert.rejects(SeederRemote.open('nbd://127.0.0.1:1/x'), /reached over gRPC/);
    await assert.rejects(SeederRemote.open(`grpc+unix://${path.join(dir, 'nobody.sock')}`, { connectTimeoutMs: 2000 }), /cannot reach the server|no answer/);
  });

  it('an r3map-serve endpoint (no Seeder service) is named as such', async () => {
    const server = new GrpcServer({ backend: new MemoryBackend({ size }) });
    const uri = await server.listen(`grpc+unix://${path.join(dir, `serve-${++n}.sock`)}`);
    try {
      await assert.rejects(SeederRemote.open(uri), /no Seeder service: it is not an r3map-seed endpoint/);
    } finally {
      await server.close();
    }
  });

  it('a leecher closed mid pre-copy leaves the seeder serving (it never synced)', async () => {
    const rig = await seed();
    try {
      const leecher = await Leecher.open({ seeder: await SeederRemote.open(rig.uri), chunkSize, pullWorkers: 1 });
      await leecher.close();
      const buf = Buffer.alloc(chunkSize);
      await rig.seeder.backend.readAt(buf, 0);
      assert.deepEqual(buf, rig.content.subarray(0, chunkSize));
      assert.deepEqual(rig.events, [], 'no suspend without a Sync');
    } finally {
      await rig.stop();
    }
  });
});

describe('migration: pre-copy rounds and resuming', () => {
  it('rounds pull again what the application wrote meanwhile, so the final Sync carries only the last writes', async () => {
    const rig = await seed();
    const leecher = await Leecher.open({ seeder: await SeederRemote.open(rig.uri), chunkSize, pullWorkers: 4 });
    try {
      const model = Buffer.from(rig.content);
      const write = async (index: number): Promise<void> => {
        const data = randomBytes(chunkSize);
        data.copy(model, index * chunkSize);
        await rig.seeder.backend.writeAt(data, index * chunkSize);
      };
      await leecher.untilPulled();
      for (const i of [3, 9, 30]) await write(i);
      const rounds: number[] = [];
      leecher.on('round', (r) => rounds.push(r.dirtyChunks));
      const first = await leecher.round();
      assert.deepEqual([first.round, first.dirtyChunks, first.epoch], [1, 3, 1]);
      await write(50);
      const more = await leecher.preCopy({ maxRounds: 3 });
      assert.deepEqual(more.map((r) => r.dirtyChunks), [1, 0], 'the second round found nothing: pre-copy stops');
      await write(60);
      const result = await leecher.finalize();
      assert.deepEqual(result.dirtyOffsets, [60 * chunkSize], 'the Sync returns only what no round has');
      assert.equal(result.rounds, 3);
      assert.deepEqual(rounds, [3, 1, 0]);
      assert.deepEqual(await readAll(leecher.backend), model);
      await leecher.complete();
      await assert.rejects(leecher.round(), /no pre-copy round after finalize/);
    } finally {
      await leecher.close();
      await rig.stop();
    }
  });

  it('a leecher started again with the same file cache pulls only what it lacked or what was written since', async () => {
    const rig = await seed();
    const cachePath = path.join(dir, `cache-${++n}.img`);
    try {
      const first = await fileLeecher(rig.uri, cachePath);
      await first.untilPulled();
      await first.round();
      await first.close(); // saves the state, as the interval save before a kill -9 would
      const model = Buffer.from(rig.content);
      for (const i of [0, 1, 33]) {
        const data = randomBytes(chunkSize);
        data.copy(model, i * chunkSize);
        await rig.seeder.backend.writeAt(data, i * chunkSize);
      }
      const second = await fileLeecher(rig.uri, cachePath);
      try {
        assert.equal(second.rounds, 1, 'the catch-up round ran at open');
        await second.complete();
        assert.equal(second.fetchedBytes, 3 * chunkSize, 'only the three chunks written since were pulled again');
        assert.deepEqual(await readAll(second.backend), model);
      } finally {
        await second.close();
      }
    } finally {
      await rig.stop();
    }
  });

  it('a leecher stopped after it finalized goes on when started again: no Track, what it wrote kept, the dirty chunks from the seeder', async () => {
    const rig = await seed();
    const cachePath = path.join(dir, `cache-${++n}.img`);
    try {
      const first = await fileLeecher(rig.uri, cachePath);
      await first.untilPulled();
      const model = Buffer.from(rig.content);
      const written = randomBytes(chunkSize);
      written.copy(model, 3 * chunkSize);
      await rig.seeder.backend.writeAt(written, 3 * chunkSize); // the source's last write: dirty at the Sync
      const { dirtyOffsets } = await first.finalize();
      assert.deepEqual(dirtyOffsets, [3 * chunkSize]);
      const mine = randomBytes(chunkSize);
      mine.copy(model, 10 * chunkSize);
      await first.backend.writeAt(mine, 10 * chunkSize); // the destination's application, after the unlock
      await first.backend.sync();
      await first.close(); // before it completed (the seeder never got Close)
      const second = await fileLeecher(rig.uri, cachePath);
      try {
        assert.equal(second.finalized, true);
        const result = await second.finalize();
        assert.equal(result.resumed, true);
        await second.complete();
        assert.ok(second.fetchedBytes <= chunkSize, `pulled again: ${second.fetchedBytes} bytes (at most the dirty chunk)`);
        assert.deepEqual(await readAll(second.backend), model);
        await rig.seeder.done; // Close, after the Sync of the first run
      } finally {
        await second.close();
      }
    } finally {
      await rig.stop();
    }
  });

  it('a saved state from another seeder session is discarded: everything is pulled again', async () => {
    const cachePath = path.join(dir, `cache-${++n}.img`);
    const one = await seed();
    try {
      const first = await fileLeecher(one.uri, cachePath);
      await first.untilPulled();
      await first.close();
    } finally {
      await one.stop();
    }
    const two = await seed();
    try {
      const second = await fileLeecher(two.uri, cachePath);
      try {
        await second.complete();
        assert.equal(second.fetchedBytes, size);
        assert.deepEqual(await readAll(second.backend), two.content);
      } finally {
        await second.close();
      }
    } finally {
      await two.stop();
    }
  });

  it('after a Sync the seeder refuses a second leecher with a clear error', async () => {
    const rig = await seed();
    try {
      const leecher = await Leecher.open({ seeder: await SeederRemote.open(rig.uri), chunkSize, pullWorkers: 4 });
      await leecher.finalize();
      const late = await SeederRemote.open(rig.uri);
      await assert.rejects(late.track(), (err: Error) => err instanceof MigrationError && /finalized by a leecher already/.test(err.message));
      await late.disconnect();
      await leecher.complete();
      await leecher.close();
    } finally {
      await rig.stop();
    }
  });
});
