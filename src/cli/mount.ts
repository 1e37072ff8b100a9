import { notImplemented, runCommand } from './run.js';

export function main(argv: readonly string[] = process.argv): Promise<never> {
  return runCommand(notImplemented('r3map-mount', 'issue #4 (kernel block devices)'), async () => 2, argv);
}
