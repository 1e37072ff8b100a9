/**
 * What every `r3map-bench` scenario shares: the scenario contract (a commander subcommand plus a
 * run function; cli/bench.ts lists them, one line each), the machine description every result
 * carries, and the text table / JSON output.
 */
import os from 'node:os';
import type { Command } from 'commander';
import type { Logger } from '../log.js';

export interface BenchContext {
  readonly log: Logger;
  /** Aborted on SIGINT/SIGTERM: stop measuring, clean up, exit. */
  readonly signal: AbortSignal;
}

export interface BenchScenario {
  /** The subcommand name: `r3map-bench <name>`. */
  readonly name: string;
  /** A fresh subcommand with its description and options (no action; cli/bench.ts adds it). */
  command(): Command;
  /** Runs with the parsed options of that subcommand; returns the exit code. */
  run(options: Record<string, unknown>, ctx: BenchContext): Promise<number | void>;
}

export interface MachineInfo {
  readonly node: string;
  readonly kernel: string;
  readonly platform: string;
  readonly cpu: string;
  readonly cpus: number;
  readonly memoryBytes: number;
  /** Versions of outside tools the scenario used, e.g. { nbdkit: 'nbdkit 1.32.5' }. */
  readonly tools: Readonly<Record<string, string>>;
}

export function machineInfo(tools: Readonly<Record<string, string>> = {}): MachineInfo {
  const cpus = os.cpus();
  return Object.freeze({
    node: process.version,
    kernel: os.release(),
    platform: `${os.platform()}-${os.arch()}`,
    cpu: cpus[0]?.model.trim() ?? 'unknown',
    cpus: cpus.length,
    memoryBytes: os.totalmem(),
    tools,
  });
}

/** One measured quantity, ours against the peer measured in the same run. */
export interface Comparison {
  readonly test: string;
  readonly unit: string;
  readonly ours: number;
  readonly peer: number;
  /** ours / peer for "higher is better" units (MB/s, IOPS), peer / ours for latencies. */
  readonly ratio: number;
  /** The ratio the issue asks for, or undefined when none is set. */
  readonly target: number | undefined;
}

/** The median of a non-empty list (the mean of the middle two for an even count). */
export function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

export function compare(test: string, unit: string, ours: number, peer: number, target?: number, lowerIsBetter = false): Comparison {
  const ratio = lowerIsBetter ? (ours > 0 ? peer / ours : 0) : peer > 0 ? ours / peer : 0;
  return Object.freeze({ test, unit, ours, peer, ratio, target });
}

/** A plain text table: one header row, right-aligned numbers. */
export function formatTable(headers: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: readonly string[]): string =>
    cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ').trimEnd();
  return [line(headers), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)].join('\n');
}

export function formatNumber(value: number): string {
  if (value >= 100) return Math.round(value).toLocaleString('en-US');
  return value.toFixed(value >= 10 ? 1 : 2);
}
