/**
 * The seeder half that r3map-seed and r3map-leech --seed-after share: the Seeder's hook flags,
 * building the Seeder over the device's backend, and serving it over gRPC (read-only Backend
 * service plus the Seeder service) until a leecher has finished with it.
 */
import { Option, type Command } from 'commander';
import { durationArg } from '../util/args.js';
import type { Logger } from '../log.js';
import { Seeder } from '../migration/seeder.js';
import type { Backend } from '../pipeline/types.js';
import { GrpcServer } from '../rpc/grpc-server.js';
import { grpcServerSecurity, type GrpcListenFlags, type GrpcSetup } from './grpc-listen.js';
import { hook } from './hook.js';

export interface SeedHookFlags {
  onBeforeSuspend?: string;
  onSuspend?: string;
  onAfterSync?: string;
  hookTimeout: number;
}

export function addSeedHookOptions(cmd: Command, prefix = ''): Command {
  return cmd
    .option('--on-before-suspend <cmd>', `${prefix}shell command run first when a leecher finalizes (R3MAP_DEVICE is set)`)
    .option('--on-suspend <cmd>', `${prefix}shell command that stops the application writing (and unmounts it), run when a leecher finalizes; the downtime starts here`)
    .option('--on-after-sync <cmd>', `${prefix}shell command run after the flush, before the dirty list goes out (R3MAP_DIRTY_CHUNKS is set)`)
    .addOption(new Option('--hook-timeout <duration>', 'a hook command running longer is killed and fails the step').default(60_000, '60s').argParser(durationArg));
}

/** A Seeder over `backend`, its hooks from the flags; `flush` fsyncs the device it serves. */
export function makeSeeder(
  backend: Backend,
  options: { readonly flags: SeedHookFlags; readonly chunkSize: number; readonly device: () => string; readonly flush: () => Promise<void>; readonly log: Logger },
): Seeder {
  const { flags, log } = options;
  const hookOptions = (flag: string) => ({ flag, timeoutMs: flags.hookTimeout, log });
  const beforeSuspend = hook(flags.onBeforeSuspend, hookOptions('--on-before-suspend'));
  const suspend = hook(flags.onSuspend, hookOptions('--on-suspend'));
  const afterSync = hook(flags.onAfterSync, hookOptions('--on-after-sync'));
  return new Seeder({
    backend,
    chunkSize: options.chunkSize,
    onBeforeSuspend: () => beforeSuspend({ R3MAP_DEVICE: options.device() }),
    onSuspend: () => suspend({ R3MAP_DEVICE: options.device() }),
    flush: options.flush,
    onAfterSync: (dirty) => afterSync({ R3MAP_DEVICE: options.device(), R3MAP_DIRTY_CHUNKS: String(dirty.length) }),
    log,
  });
}

export interface SeederListeners {
  readonly server: GrpcServer;
  /** One per --listen, as bound (a port 0 resolved). */
  readonly uris: readonly string[];
}

/** Listens on every address of `setup`. The caller closes the server. */
export async function listenSeeder(seeder: Seeder, flags: GrpcListenFlags, setup: GrpcSetup, log: Logger): Promise<SeederListeners> {
  const server = new GrpcServer({ backend: seeder.backend, seeder: seeder.source, readOnly: true, log, ...grpcServerSecurity(flags, setup) });
  const uris: string[] = [];
  try {
    for (const address of setup.addresses) {
      const uri = await server.listen(address);
      log.info({ listen: uri, size: seeder.backend.size, session: seeder.session }, 'seeding');
      uris.push(uri);
    }
  } catch (err) {
    await server.close();
    throw err;
  }
  return { server, uris };
}
