/**
 * A one-line progress display for a terminal (no dependency: a `\r` renderer), and a rate meter.
 *
 *   pulled [#########---------------]  37.5%  192 MiB / 512 MiB  38.2 MiB/s
 *
 * ProgressLine draws only when its stream is a TTY, at most every `intervalMs`, and erases the
 * rest of the line after each redraw; `done()` draws a last time and ends the line. Log lines
 * written to the same stream in between are left alone; the next redraw starts a fresh line.
 */
import { formatSize } from '../util/size.js';

const BAR_WIDTH = 24;
const ERASE_TO_END = '\x1b[K';

export interface ProgressLineOptions {
  /** Shown before the bar; default 'pulled'. */
  readonly label?: string;
  /** Least time between two redraws; default 200. */
  readonly intervalMs?: number;
  /** Time source (tests); default Date.now. */
  readonly now?: () => number;
}

/** Bytes per second between successive samples, smoothed (EWMA) so one quiet interval does not read as 0. */
export class RateMeter {
  readonly #now: () => number;
  #lastAt: number;
  #lastValue: number;
  #rate = 0;

  constructor(initialValue = 0, now: () => number = Date.now) {
    this.#now = now;
    this.#lastAt = now();
    this.#lastValue = initialValue;
  }

  /** Takes a sample of a growing counter; returns the smoothed rate per second. */
  sample(value: number): number {
    const at = this.#now();
    const seconds = (at - this.#lastAt) / 1000;
    if (seconds <= 0) return this.#rate;
    const instant = (value - this.#lastValue) / seconds;
    this.#rate = this.#rate === 0 ? instant : 0.3 * instant + 0.7 * this.#rate;
    this.#lastAt = at;
    this.#lastValue = value;
    return this.#rate;
  }
}

/** "38.2 MiB/s" */
export function formatRate(bytesPerSecond: number): string {
  return `${formatSize(Math.max(0, Math.round(bytesPerSecond)))}/s`;
}

export class ProgressLine {
  readonly enabled: boolean;
  readonly #stream: NodeJS.WritableStream;
  readonly #label: string;
  readonly #intervalMs: number;
  readonly #now: () => number;
  readonly #meter: RateMeter;
  #lastDraw = -Infinity;
  #done = false;
  #rate = 0;

  constructor(stream: NodeJS.WritableStream & { isTTY?: boolean }, options: ProgressLineOptions = {}) {
    this.enabled = stream.isTTY === true;
    this.#stream = stream;
    this.#label = options.label ?? 'pulled';
    this.#intervalMs = options.intervalMs ?? 200;
    this.#now = options.now ?? Date.now;
    this.#meter = new RateMeter(0, this.#now);
  }

  /** `rateBytes` is the counter the rate is measured on (default `doneBytes`). */
  update(doneBytes: number, totalBytes: number, rateBytes = doneBytes): void {
    if (!this.enabled || this.#done) return;
    const at = this.#now();
    if (at - this.#lastDraw < this.#intervalMs) return;
    this.#rate = this.#meter.sample(rateBytes);
    this.#lastDraw = at;
    this.#stream.write(`\r${render(this.#label, doneBytes, totalBytes, this.#rate)}${ERASE_TO_END}`);
  }

  /** Draws the final state and ends the line; later updates are ignored. */
  done(doneBytes: number, totalBytes: number): void {
    if (!this.enabled || this.#done) return;
    this.#done = true;
    this.#stream.write(`\r${render(this.#label, doneBytes, totalBytes, this.#rate)}${ERASE_TO_END}\n`);
  }
}

/** The text of one progress line (exported for tests). */
export function render(label: string, doneBytes: number, totalBytes: number, bytesPerSecond: number): string {
  const fraction = totalBytes > 0 ? Math.min(1, doneBytes / totalBytes) : 1;
  const filled = Math.round(fraction * BAR_WIDTH);
  const bar = `${'#'.repeat(filled)}${'-'.repeat(BAR_WIDTH - filled)}`;
  const percent = `${(fraction * 100).toFixed(1)}%`.padStart(6);
  return `${label} [${bar}] ${percent}  ${formatSize(doneBytes)} / ${formatSize(totalBytes)}  ${formatRate(bytesPerSecond)}`;
}
