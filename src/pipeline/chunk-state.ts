/**
 * The per-chunk states of SyncedReadWriterAt, kept one byte per chunk in a Uint8Array.
 *
 * - REMOTE: the chunk's data is only at the remote (never fetched, or marked remote again).
 * - PULLING: the chunk is becoming local right now (a fetch, or a write landing on a remote
 *   chunk); its lock is held, so readers and writers of it wait for the lock.
 * - LOCAL: the local store holds the current data; reads and writes go there directly.
 */
export const ChunkState = {
  REMOTE: 0,
  PULLING: 1,
  LOCAL: 2,
} as const;

export type ChunkState = (typeof ChunkState)[keyof typeof ChunkState];

/** Names for log messages, indexed by state. */
export const chunkStateName: Readonly<Record<ChunkState, string>> = Object.freeze({
  [ChunkState.REMOTE]: 'remote',
  [ChunkState.PULLING]: 'pulling',
  [ChunkState.LOCAL]: 'local',
});
