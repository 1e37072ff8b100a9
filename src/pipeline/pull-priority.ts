import { UsageError } from '../errors.js';

/**
 * Decides the order in which a Puller fetches chunks: the chunk with the HIGHER value is pulled
 * first, and chunks with equal values are pulled by ascending index (the order is stable).
 * Called once per chunk when the puller is built, never on the data path.
 */
export type PullPriority = (chunkIndex: number, chunks: number) => number;

/** First chunk first, then by ascending index. */
export const ascending: PullPriority = () => 0;

/** Last chunk first, then by descending index. */
export const descending: PullPriority = (chunkIndex) => chunkIndex;

/**
 * The first and the last chunk first (partition tables and filesystem superblocks and their
 * backups live at both ends of a disk), then the rest by ascending index.
 */
export const firstAndLast: PullPriority = (chunkIndex, chunks) =>
  chunkIndex === 0 || chunkIndex === chunks - 1 ? 1 : 0;

/** The built-in priorities by the name the CLI and the library accept. */
export const pullPriorities = Object.freeze({
  ascending,
  descending,
  'first-and-last': firstAndLast,
} as const);

export type PullPriorityName = keyof typeof pullPriorities;

export const pullPriorityNames: readonly PullPriorityName[] = Object.freeze(
  Object.keys(pullPriorities) as PullPriorityName[],
);

/** The built-in priority called `name`; throws a UsageError listing the valid names otherwise. */
export function pullPriorityByName(name: string): PullPriority {
  if (Object.hasOwn(pullPriorities, name)) return pullPriorities[name as PullPriorityName];
  throw new UsageError(`unknown pull priority '${name}' (use one of: ${pullPriorityNames.join(', ')})`);
}

/**
 * The chunk indexes of `chunks` chunks in pull order: by descending priority, ties by ascending
 * index. Throws a UsageError if `priority` returns something that is not a number.
 */
export function pullOrder(chunks: number, priority: PullPriority): Uint32Array {
  const values = new Float64Array(chunks);
  const order = new Uint32Array(chunks);
  for (let i = 0; i < chunks; i++) {
    const value = priority(i, chunks);
    if (typeof value !== 'number' || Number.isNaN(value)) {
      throw new UsageError(`pull priority returned ${String(value)} for chunk ${i}; it must return a number`);
    }
    values[i] = value;
    order[i] = i;
  }
  return order.sort((a, b) => values[b]! - values[a]! || a - b);
}
