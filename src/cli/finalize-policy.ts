/**
 * When r3map-leech finalizes: once a share of the chunks is local (--finalize-at, default 100%),
 * when a signal arrives (--finalize-on), or after pre-copy rounds (--finalize-after-rounds).
 * `whenFinalizeIsDue` resolves then, or when `stop` aborts (the caller tells which).
 */
import type { Logger } from '../log.js';
import type { Leecher } from '../migration/leecher.js';

export type FinalizePolicy =
  | { readonly kind: 'share'; readonly share: number }
  | { readonly kind: 'signal'; readonly signal: NodeJS.Signals }
  | { readonly kind: 'rounds'; readonly rounds: number; readonly dirtyThreshold: number };

export async function whenFinalizeIsDue(leecher: Leecher, policy: FinalizePolicy, stop: AbortSignal, log: Logger): Promise<void> {
  if (leecher.finalized) return; // restarted after it had finalized: nothing to wait for
  switch (policy.kind) {
    case 'share':
      return untilShare(leecher, policy.share, stop);
    case 'signal':
      log.info({ signal: policy.signal, pid: process.pid }, `pre-copying; send ${policy.signal} to finalize`);
      return untilSignal(policy.signal, stop);
    case 'rounds':
      await leecher.preCopy({ maxRounds: policy.rounds, dirtyThreshold: policy.dirtyThreshold, signal: stop });
      return undefined;
  }
}

function untilShare(leecher: Leecher, share: number, stop: AbortSignal): Promise<void> {
  if (share >= 1) return leecher.untilPulled(stop);
  const reached = (): boolean => {
    const p = leecher.progress();
    return p.totalChunks === 0 || p.localChunks >= share * p.totalChunks;
  };
  if (reached()) return Promise.resolve();
  return new Promise<void>((resolve) => {
    const onProgress = (): void => {
      if (reached()) finish();
    };
    const finish = (): void => {
      leecher.off('progress', onProgress);
      stop.removeEventListener('abort', finish);
      resolve();
    };
    leecher.on('progress', onProgress);
    stop.addEventListener('abort', finish, { once: true });
  });
}

function untilSignal(signal: NodeJS.Signals, stop: AbortSignal): Promise<void> {
  return new Promise<void>((resolve) => {
    const finish = (): void => {
      process.off(signal, finish);
      stop.removeEventListener('abort', finish);
      resolve();
    };
    process.on(signal, finish);
    stop.addEventListener('abort', finish, { once: true });
  });
}
