/** Building Backend.extents answers. */

/** Adds `length` bytes with `flags` to `out`, merged into the last extent when its flags match. */
export function appendExtent(out: { length: number; flags: number }[], length: number, flags: number): void {
  const last = out[out.length - 1];
  if (last !== undefined && last.flags === flags) last.length += length;
  else out.push({ length, flags });
}
