/**
 * Hot ranges: a pull priority read from a file that lists the byte ranges to pull first.
 *
 * File format (text, one range per line; `#` starts a comment, blank lines are skipped):
 *
 *   # offset   length        sizes as parseSize accepts them (4096, 64KiB, 1GiB)
 *   0          1MiB          # partition table, superblock
 *   512MiB     64KiB
 *
 * Lines are pulled in the order they are listed: every chunk a line touches is pulled before the
 * chunks of the lines below it; inside a line, by ascending offset. Chunks that no line touches
 * come last, by ascending offset. A chunk touched by several lines goes with the first of them.
 * A range that starts at or past the end of the resource is a UsageError when the puller is
 * built (it names the file and the line); one that only runs past the end is cut there.
 */
import { readFile } from 'node:fs/promises';
import { UsageError } from '../errors.js';
import type { PullPriority } from '../pipeline/pull-priority.js';
import { parseSize } from '../util/size.js';

export interface HotRange {
  /** Bytes from the start of the resource. */
  readonly offset: number;
  /** Bytes, > 0. */
  readonly length: number;
  /** 1-based line in the source, for messages. */
  readonly line: number;
}

/** Parses the text of a hot-ranges file; `source` names it in errors. */
export function parseHotRanges(text: string, source = 'hot ranges'): HotRange[] {
  const ranges: HotRange[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const content = lines[i]!.replace(/#.*$/, '').trim();
    if (content === '') continue;
    const fields = content.split(/\s+/);
    if (fields.length !== 2) {
      throw new UsageError(`${source}:${i + 1}: expected "<offset> <length>" (e.g. "512MiB 64KiB"), got '${content}'`);
    }
    const offset = parseSize(fields[0]!, `${source}:${i + 1}: offset`);
    const length = parseSize(fields[1]!, `${source}:${i + 1}: length`);
    if (length === 0) throw new UsageError(`${source}:${i + 1}: the length must be > 0`);
    ranges.push(Object.freeze({ offset, length, line: i + 1 }));
  }
  return ranges;
}

/** Reads and parses a hot-ranges file. */
export async function loadHotRanges(path: string): Promise<HotRange[]> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new UsageError(`cannot read the hot-ranges file ${path}: ${(err as Error).message}`, { cause: err });
  }
  return parseHotRanges(text, path);
}

/**
 * The pull priority that pulls `ranges` first, in the order given (see the file comment). The
 * per-chunk table is built on the first call (the puller calls it once per chunk at start).
 */
export function hotRangesPriority(ranges: readonly HotRange[], chunkSize: number, source = 'hot ranges'): PullPriority {
  if (!Number.isSafeInteger(chunkSize) || chunkSize < 1) throw new UsageError(`chunk size ${chunkSize} must be >= 1`);
  let table: Float64Array | undefined;
  return (chunkIndex, chunks) => {
    if (table === undefined || table.length !== chunks) table = buildTable(ranges, chunkSize, chunks, source);
    return table[chunkIndex] ?? 0;
  };
}

/** priority[chunk] = ranges.length - position of the first range touching it; 0 when none does. */
function buildTable(ranges: readonly HotRange[], chunkSize: number, chunks: number, source: string): Float64Array {
  const table = new Float64Array(chunks);
  const end = chunks * chunkSize;
  for (let r = ranges.length - 1; r >= 0; r--) {
    const { offset, length, line } = ranges[r]!;
    if (offset >= end) {
      throw new UsageError(`${source}:${line}: the range starts at ${offset}, at or past the end of the resource (${chunks} chunks of ${chunkSize} bytes)`);
    }
    const first = Math.floor(offset / chunkSize);
    const last = Math.min(chunks - 1, Math.floor((offset + length - 1) / chunkSize));
    table.fill(ranges.length - r, first, last + 1); // earlier lines overwrite later ones
  }
  return table;
}
