/**
 * READ replies with holes in them, for structured replies (NBD_REPLY_TYPE_OFFSET_HOLE):
 * - `readDataOnly`: a large READ from a backend with cheap extents (a file) reads only its data
 *   extents and names the holes with zeroView()s;
 * - `sparseReplyParts`: views in which some are zeroView()s of at least MIN_HOLE bytes become the
 *   reply's parts in write order: an OFFSET_HOLE chunk per run of holes, an OFFSET_DATA chunk
 *   header followed by its views per run of data, NBD_REPLY_FLAG_DONE on the last chunk.
 */
import { EXTENT_HOLE, EXTENT_ZERO, type Backend } from '../pipeline/types.js';
import { isZeroView, zeroView } from '../pipeline/zero-views.js';
import { settleAll } from '../util/settle-all.js';
import {
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE_OFFSET_DATA,
  NBD_REPLY_TYPE_OFFSET_HOLE,
  NBD_STRUCTURED_REPLY_HEADER_SIZE,
  encodeStructuredReplyHeader,
  writeU64,
} from './codec.js';

/** Holes shorter than this are sent as zeros (a hole chunk costs 32 bytes and a write). */
export const MIN_HOLE = 4096;
const HOLE_OF_ZEROS = EXTENT_HOLE | EXTENT_ZERO;

const isHole = (view: Buffer): boolean => view.length >= MIN_HOLE && isZeroView(view);

/** The READ being answered: where, and its handle. */
export interface SparseRead {
  readonly offset: number;
  readonly length: number;
  readonly handleHi: number;
  readonly handleLo: number;
}

/**
 * Reads [req.offset, +req.length) into `payload` except its holes: the views in order (parts of
 * `payload`, zeroView()s for holes of at least MIN_HOLE bytes). Undefined, with nothing read, when
 * the backend reports no such hole.
 */
export async function readDataOnly(backend: Backend, req: SparseRead, payload: Buffer): Promise<readonly Buffer[] | undefined> {
  const found = await backend.extents!(req.offset, req.length);
  const hole = (e: { length: number; flags: number }): boolean => e.length >= MIN_HOLE && (e.flags & HOLE_OF_ZEROS) === HOLE_OF_ZEROS;
  if (!found.some(hole)) return undefined;
  const views: Buffer[] = [];
  const reads: Promise<void>[] = [];
  const data = (at: number, n: number): void => {
    const part = payload.subarray(at, at + n);
    reads.push(backend.readAt(part, req.offset + at));
    views.push(part);
  };
  let at = 0;
  for (const e of found) {
    const n = Math.min(e.length, req.length - at);
    if (n <= 0) break;
    if (n >= MIN_HOLE && hole(e)) views.push(zeroView(n));
    else data(at, n);
    at += n;
  }
  if (at < req.length) data(at, req.length - at); // the extents covered less: the rest is data
  await settleAll(reads);
  return views;
}

/** The reply's parts in write order, or undefined when no view is a hole worth a chunk. */
export function sparseReplyParts(req: SparseRead, views: readonly Buffer[]): Buffer[] | undefined {
  if (!views.some(isHole)) return undefined;
  const parts: Buffer[] = [];
  let off = req.offset;
  for (let i = 0; i < views.length; ) {
    const hole = isHole(views[i]!);
    let j = i;
    let length = 0;
    while (j < views.length && isHole(views[j]!) === hole) length += views[j++]!.length;
    const flags = j === views.length ? NBD_REPLY_FLAG_DONE : 0;
    const header = Buffer.allocUnsafe(NBD_STRUCTURED_REPLY_HEADER_SIZE + (hole ? 12 : 8));
    encodeStructuredReplyHeader(header, 0, flags, hole ? NBD_REPLY_TYPE_OFFSET_HOLE : NBD_REPLY_TYPE_OFFSET_DATA, req.handleHi, req.handleLo, hole ? 12 : 8 + length);
    writeU64(header, NBD_STRUCTURED_REPLY_HEADER_SIZE, off);
    if (hole) header.writeUInt32BE(length, NBD_STRUCTURED_REPLY_HEADER_SIZE + 8);
    parts.push(header);
    if (!hole) for (let k = i; k < j; k++) parts.push(views[k]!);
    off += length;
    i = j;
  }
  return parts;
}
