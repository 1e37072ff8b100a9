import { Command, Option } from 'commander';
import { runCommand, EXIT, type CommandContext } from './run.js';
import { sizeArg } from '../util/args.js';
import { DEFAULT_CHUNK_SIZE } from '../util/chunks.js';
import { formatSize } from '../util/size.js';
import { UsageError } from '../errors.js';
import { ACCEPTED_BACKEND_URIS } from '../backends/uri.js';
import { openComposed } from '../mount/compose.js';
import { DirectPathMount } from '../mount/direct-path.js';
import type { GrpcServer } from '../rpc/grpc-server.js';
import { announce, waitForEnd } from './announce.js';
import { addDeviceOptions, deviceMountOptions, type DeviceFlags } from './device-options.js';
import { addGrpcListenOptions, grpcSetup, type GrpcListenFlags } from './grpc-listen.js';
import { addSeedHookOptions, listenSeeder, makeSeeder, type SeedHookFlags } from './seeding.js';

interface SeedFlags extends GrpcListenFlags, DeviceFlags, SeedHookFlags {
  backend: string;
  size?: number;
  chunkSize: number;
}

export function seedCommand(): Command {
  const cmd = new Command('r3map-seed')
    .description([
      'The source of a live migration: attach a backend as a block device for the application, and serve it to a leecher (r3map-leech) over gRPC, recording every chunk the application writes.',
      'Prints the device path (first line on stdout, --ready-file, sd_notify READY=1), then one line per listener URI.',
      'When a leecher finalizes: --on-before-suspend, --on-suspend (stop the application), the device is flushed, --on-after-sync, and the written chunks go to the leecher. Exits 0 once a leecher has every chunk, or on SIGTERM. A leecher that dies or gives up before it finalized never stops the seeder.',
    ].join('\n\n'))
    .requiredOption('--backend <uri>', `the state to migrate: ${ACCEPTED_BACKEND_URIS.join(' | ')}`)
    .option('--size <bytes>', 'size of the state; needed for memory and new files', sizeArg)
    .addOption(new Option('--chunk-size <bytes>', 'the unit of tracking; the leecher must use the same').default(DEFAULT_CHUNK_SIZE, formatSize(DEFAULT_CHUNK_SIZE)).argParser(sizeArg));
  addSeedHookOptions(cmd);
  addDeviceOptions(cmd);
  return addGrpcListenOptions(cmd, 'where leechers connect (required)')
    .addHelpText('after', '\nExit codes: 0 ok (a leecher finished, or SIGTERM/SIGINT), 1 failure, 2 usage error.\n\nExample:\n' +
      '  r3map-seed --backend file:///var/lib/app.img --listen grpc://0.0.0.0:1337 --insecure \\\n' +
      "             --on-suspend 'systemctl stop app && umount /srv/app'");
}

async function seed(flags: SeedFlags, ctx: CommandContext): Promise<number> {
  const { log, signal } = ctx;
  const setup = await grpcSetup(flags, log);
  if (setup.addresses.length === 0) throw new UsageError('--listen is required: where leechers connect (grpc://host:port with --insecure, grpcs://, grpc+unix:///path)');
  const backend = await openComposed(flags.backend, flags.size !== undefined ? { size: flags.size } : {});
  let device = '';
  let mount: DirectPathMount | undefined;
  const seeder = makeSeeder(backend, { flags, chunkSize: flags.chunkSize, device: () => device, flush: () => mount!.sync(), log });
  let server: GrpcServer | undefined;
  try {
    mount = new DirectPathMount({ backend: seeder.backend, ...deviceMountOptions(flags), log });
    device = await mount.open();
    if (signal.aborted) return EXIT.OK;
    const listening = await listenSeeder(seeder, flags, setup, log);
    server = listening.server;
    const announced = await announce(device, flags.readyFile, ctx);
    for (const uri of listening.uris) process.stdout.write(`${uri}\n`);
    try {
      const code = await waitForEnd(device, mount.closed, ctx, seeder.done);
      if (code === EXIT.OK && !signal.aborted) log.info('the leecher has every chunk: detaching and exiting');
      return code;
    } finally {
      await announced.withdraw();
    }
  } finally {
    await server?.close();
    await mount?.close();
    await seeder.close();
  }
}

export function main(argv: readonly string[] = process.argv): Promise<never> {
  const cmd = seedCommand();
  return runCommand(cmd, (ctx) => seed(cmd.opts<SeedFlags>(), ctx), argv);
}
