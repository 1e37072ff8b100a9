import { Command } from 'commander';
import { runCommand, type CommandContext } from './run.js';
import type { BenchScenario } from '../bench/scenario.js';
import { nbdScenario } from '../bench/nbd.js';
import { deviceScenario } from '../bench/mount-device.js';
import { mountScenario } from '../bench/mount.js';
import { backendsScenario } from '../bench/backends.js';
import { uffdScenario } from '../bench/uffd.js';
import { migrationScenario } from '../bench/migration.js';

/** Every scenario, one line each: `r3map-bench <name>`. */
const SCENARIOS: readonly BenchScenario[] = [
  nbdScenario,
  deviceScenario,
  mountScenario,
  backendsScenario,
  uffdScenario,
  migrationScenario,
];

export interface BenchProgram {
  readonly program: Command;
  /** The scenario commander picked, bound to its parsed options (after parsing). */
  selected(): ((ctx: CommandContext) => Promise<number | void>) | undefined;
}

export function benchCommand(): BenchProgram {
  let selected: ((ctx: CommandContext) => Promise<number | void>) | undefined;
  const program = new Command('r3map-bench')
    .description('Benchmarks (not tests): each scenario compares r3map with a peer measured in the same run.\n' +
      'Results go to stdout (a table, or one JSON object with --json); logs go to stderr.');
  for (const scenario of SCENARIOS) {
    const sub = scenario.command();
    sub.exitOverride();
    sub.action(() => {
      const options = sub.opts();
      selected = (ctx) => scenario.run(options, ctx);
    });
    program.addCommand(sub);
  }
  return { program, selected: () => selected };
}

export function main(argv: readonly string[] = process.argv): Promise<never> {
  const { program, selected } = benchCommand();
  return runCommand(program, async (ctx) => {
    const run = selected();
    if (run === undefined) {
      program.outputHelp({ error: true });
      return 2;
    }
    return run(ctx);
  }, argv);
}
