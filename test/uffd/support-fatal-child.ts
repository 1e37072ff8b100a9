/**
 * Run as a child process by map.test.ts: maps a reader whose every read fails, with a
 * short deadline, and touches the first byte. The handler must kill this process (SIGKILL,
 * one line on stderr); "touched" on stderr would mean the faulting read returned.
 */
import { mapReader } from '../../src/uffd/map.js';
import { READERS_MODULE } from './support-readers.js';

const size = 1024 * 1024;
const region = await mapReader({ module: READERS_MODULE, exportName: 'openFailingReader', args: [size] }, size, {
  deadlineMs: 200,
  retry: { baseDelayMs: 5, maxDelayMs: 20 },
});
region.events.on('error', () => undefined);
const byte = region.buffer[0];
process.stderr.write(`touched ${String(byte)}\n`);
