import { rename, rm, writeFile } from 'node:fs/promises';
import { Command, Option } from 'commander';
import { runCommand, EXIT, type CommandContext } from './run.js';
import { sizeArg } from './options.js';
import { notifyReady } from './sd-notify.js';
import { ACCEPTED_BACKEND_URIS } from '../backends/uri.js';
import { UsageError } from '../errors.js';
import type { Logger } from '../log.js';
import { disconnectNbdDevice } from '../kernel/nbd-device.js';
import { BLOCK_SIZE } from '../mount/direct.js';
import { DirectPathMount } from '../mount/direct-path.js';
import { disconnectFuseLoop } from '../mount/fuse-loop.js';
import { TRANSPORTS, transportOfDevice, type Transport } from '../mount/transport.js';

interface MountFlags {
  backend?: string;
  size?: number;
  device?: string;
  readOnly: boolean;
  chunkSize: number;
  transport: Transport;
  loopDirectIo: boolean;
  readyFile?: string;
  disconnect?: string;
}

export function mountCommand(): Command {
  return new Command('r3map-mount')
    .description('Attach a backend as a block device (direct mode) and keep it attached in the foreground.\n' +
      'Prints the device path (one line on stdout) when the device is ready; logs to stderr.\n' +
      'SIGTERM/SIGINT flush, detach and exit 0; a second signal exits at once.')
    .option('--backend <uri>', `what to attach: ${ACCEPTED_BACKEND_URIS.join(' | ')}`)
    .option('--size <bytes>', `device size (1GiB, 64MiB, 4096), a multiple of ${BLOCK_SIZE}; needed for memory and new files (default: the file's size)`, sizeArg)
    .option('--device <path>', 'use this /dev/nbdN (transport nbd) or /dev/loopN (transport fuse-loop) (default: the first free one)')
    .option('--read-only', 'refuse writes; the device is read-only', false)
    .addOption(new Option('--chunk-size <bytes>', 'the backend only sees whole chunks of this size; 0 = no chunking layer').default(0, '0').argParser(sizeArg))
    .addOption(new Option('--transport <kind>', 'nbd (kernel NBD client), fuse-loop (nbdfuse + losetup, for kernels without nbd) or auto (nbd when /sys/module/nbd or /dev/nbd0 exists)').choices(TRANSPORTS).default('auto'))
    .option('--no-loop-direct-io', 'fuse-loop: attach the loop device without direct I/O (default: direct I/O on)')
    .option('--ready-file <path>', 'also write the device path to this file (atomically) when ready; removed on exit')
    .option('--disconnect <device>', 'detach a device left behind by a dead r3map-mount (/dev/nbdN, or /dev/loopN backed by our nbdfuse file), print "disconnected" or "not-connected", exit')
    .addHelpText('after', '\nExit codes: 0 ok (also after SIGTERM/SIGINT), 1 failure, 2 usage error.\n\nExamples:\n' +
      '  r3map-mount --backend memory --size 1GiB                 # prints /dev/nbd0 (or /dev/loop0); runs until SIGTERM\n' +
      '  r3map-mount --backend file:///var/lib/disk.img --ready-file /run/r3map.dev\n' +
      '  r3map-mount --disconnect /dev/nbd0                       # after a kill -9');
}

async function mount(flags: MountFlags, { log, signal }: CommandContext): Promise<number> {
  if (flags.disconnect !== undefined) return disconnect(flags.disconnect, log);
  if (flags.backend === undefined) throw new UsageError('--backend is required (or --disconnect DEVICE)');
  if (flags.size !== undefined && (flags.size <= 0 || flags.size % BLOCK_SIZE !== 0)) {
    throw new UsageError(`--size ${flags.size} is not a positive multiple of the block size ${BLOCK_SIZE}`);
  }
  const mounted = new DirectPathMount({
    backendUri: flags.backend,
    ...(flags.size !== undefined ? { size: flags.size } : {}),
    readOnly: flags.readOnly,
    chunkSize: flags.chunkSize,
    transport: flags.transport,
    ...(flags.device !== undefined ? { device: flags.device } : {}),
    loopDirectIo: flags.loopDirectIo,
    log,
  });
  let readyFile: string | undefined;
  let code: number = EXIT.OK;
  try {
    const path = await mounted.open();
    if (signal.aborted) return EXIT.OK;
    if (flags.readyFile !== undefined) {
      await writeAtomically(flags.readyFile, `${path}\n`);
      readyFile = flags.readyFile;
    }
    process.stdout.write(`${path}\n`);
    // ---- notifyReady(): sd_notify(READY=1) when run by systemd (NOTIFY_SOCKET) ----
    await notifyReady(log);
    const lost = await Promise.race([untilAborted(signal), mounted.closed]);
    if (lost !== undefined) {
      log.error({ err: lost, device: path }, `the device went away: ${lost.message}`);
      code = EXIT.FAILURE;
    }
  } finally {
    if (readyFile !== undefined) await rm(readyFile, { force: true });
    await mounted.close();
  }
  return code;
}

async function disconnect(device: string, log: Logger): Promise<number> {
  const transport = transportOfDevice(device);
  if (transport === undefined) throw new UsageError(`--disconnect ${device}: expected /dev/nbdN or /dev/loopN`);
  const status = transport === 'nbd' ? await disconnectNbdDevice(device) : await disconnectFuseLoop(device, log);
  log.info({ device, status }, `${device}: ${status}`);
  process.stdout.write(`${status}\n`);
  return EXIT.OK;
}

function untilAborted(signal: AbortSignal): Promise<undefined> {
  if (signal.aborted) return Promise.resolve(undefined);
  return new Promise((resolve) => signal.addEventListener('abort', () => resolve(undefined), { once: true }));
}

async function writeAtomically(path: string, text: string): Promise<void> {
  const tmp = `${path}.${process.pid}.tmp`;
  await writeFile(tmp, text);
  await rename(tmp, path);
}

export function main(argv: readonly string[] = process.argv): Promise<never> {
  const cmd = mountCommand();
  return runCommand(cmd, (ctx) => mount(cmd.opts<MountFlags>(), ctx), argv);
}
