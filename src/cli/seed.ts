import { notImplemented, runCommand } from './run.js';

export function main(argv: readonly string[] = process.argv): Promise<never> {
  return runCommand(notImplemented('r3map-seed', 'the migration issue'), async () => 2, argv);
}
