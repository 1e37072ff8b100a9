/**
 * base:allocation for a managed mount (NBD_CMD_BLOCK_STATUS): a chunk that is local is data (the
 * cache holds it, whatever it reads as); a run of chunks that are not local yet is what the remote
 * says of that range (its own extents), so a sparse remote stays sparse for nbdcopy or qemu-img
 * before the pull has reached it. Built only when the remote has extents.
 */
import { ChunkState } from '../pipeline/chunk-state.js';
import type { ChunkTable } from '../pipeline/chunk-table.js';
import type { Backend, BackendExtent } from '../pipeline/types.js';

/** Most extents one call reports (the caller asks again for the rest). */
const MAX_EXTENTS = 1024;

export function managedExtents(table: ChunkTable, remote: Backend): ((off: number, length: number) => Promise<readonly BackendExtent[]>) | undefined {
  const remoteExtents = remote.extents?.bind(remote);
  if (remoteExtents === undefined) return undefined;
  const { chunkSize, state } = table;
  return async (off, length) => {
    const out: BackendExtent[] = [];
    const end = Math.min(off + length, table.size);
    for (let pos = off; pos < end && out.length < MAX_EXTENTS; ) {
      const local = state[Math.floor(pos / chunkSize)] === ChunkState.LOCAL;
      let stop = Math.min(end, (Math.floor(pos / chunkSize) + 1) * chunkSize);
      while (stop < end && (state[stop / chunkSize] === ChunkState.LOCAL) === local) stop = Math.min(end, stop + chunkSize);
      if (local) out.push({ length: stop - pos, flags: 0 });
      else {
        let covered = 0;
        for (const e of await remoteExtents(pos, stop - pos)) {
          const n = Math.min(e.length, stop - pos - covered);
          if (n <= 0) break;
          out.push({ length: n, flags: e.flags });
          covered += n;
        }
        if (covered === 0) out.push({ length: stop - pos, flags: 0 }); // the remote told nothing: data
        else if (covered < stop - pos) return out; // it told less: the caller asks again from there
      }
      pos = stop;
    }
    return out;
  };
}
