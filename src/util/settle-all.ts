/**
 * Waits for every promise to settle, then rejects with the first failure if there was one.
 * allSettled attaches a handler to every part at once: a later part that rejects while an earlier
 * one is still pending never becomes an unhandled rejection, and no part is left running unseen.
 */
export async function settleAll(parts: Iterable<Promise<unknown>>): Promise<void> {
  const results = await Promise.allSettled(parts);
  for (const r of results) if (r.status === 'rejected') throw r.reason;
}
