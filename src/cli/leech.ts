import { stat } from 'node:fs/promises';
import path from 'node:path';
import { Command, Option } from 'commander';
import { runCommand, EXIT, type CommandContext } from './run.js';
import { countArg, durationArg, percentArg, sizeArg } from '../util/args.js';
import { DEFAULT_CHUNK_SIZE } from '../util/chunks.js';
import { formatSize } from '../util/size.js';
import { UsageError } from '../errors.js';
import type { Logger } from '../log.js';
import { openComposed } from '../mount/compose.js';
import { DirectPathMount } from '../mount/direct-path.js';
import { Leecher, type FinalizeResult } from '../migration/leecher.js';
import { SeederRemote } from '../migration/seeder-remote.js';
import type { Seeder } from '../migration/seeder.js';
import { pullPriorityByName, pullPriorityNames, type PullPriorityName } from '../pipeline/pull-priority.js';
import type { Backend } from '../pipeline/types.js';
import type { GrpcServer } from '../rpc/grpc-server.js';
import { announce, waitForEnd, type Announced } from './announce.js';
import { addDeviceOptions, deviceMountOptions, type DeviceFlags } from './device-options.js';
import { addGrpcListenOptions, grpcSetup, type GrpcListenFlags, type GrpcSetup } from './grpc-listen.js';
import { hook } from './hook.js';
import { ProgressLine } from './progress.js';
import { addSeedHookOptions, listenSeeder, makeSeeder, type SeedHookFlags } from './seeding.js';
import { whenFinalizeIsDue, type FinalizePolicy } from './finalize-policy.js';

interface LeechFlags extends GrpcListenFlags, DeviceFlags, SeedHookFlags {
  from: string;
  cache: string;
  chunkSize: number;
  pullWorkers: number;
  pullPriority: PullPriorityName;
  pullMaxQueue: number;
  finalizeAt?: number;
  finalizeOn?: string;
  finalizeAfterRounds?: number;
  dirtyThreshold: number;
  onResume?: string;
  stateInterval: number;
  connectTimeout: number;
  json: boolean;
  seedAfter: boolean;
  progress: boolean;
}

const FINALIZE_SIGNALS = ['SIGUSR1', 'SIGUSR2', 'SIGHUP'] as const;

export function leechCommand(): Command {
  const cmd = new Command('r3map-leech')
    .description([
      'The destination of a live migration: pull the state from a seeder (r3map-seed) into a local cache while the application runs on at the source, then finalize: the seeder suspends the application and sends what it wrote, the device here unlocks, and whatever is not local yet is fetched on first read, ahead of the background pull.',
      'Prints the device path (stdout, --ready-file, sd_notify READY=1) once the device is usable; then the downtime and totals on stderr (and as one JSON line on stdout with --json) once every chunk is local.',
      'Keeps the device attached until SIGTERM; with --seed-after it then serves it to the next leecher and exits 0 once that one is done. SIGTERM before finalizing leaves the seeder running; with a file cache, running the same command again resumes (chunks pulled before are not pulled again).',
    ].join('\n\n'))
    .requiredOption('--from <uri>', 'the seeder: grpc://host:port, grpcs://host:port?ca=…&cert=…&key=…, grpc+unix:///path; ?token-file=…')
    .option('--cache <path|memory>', 'where the state lands: a file (created with the seeder\'s size; crash-safe with <path>.r3map-state) or memory', 'memory')
    .addOption(new Option('--chunk-size <bytes>', 'must equal the seeder\'s --chunk-size').default(DEFAULT_CHUNK_SIZE, formatSize(DEFAULT_CHUNK_SIZE)).argParser(sizeArg))
    .addOption(new Option('--pull-workers <n>', 'concurrent background pulls; 0 = none (every chunk is fetched when first read)').default(16).argParser(countArg))
    .addOption(new Option('--pull-priority <order>', 'the order of the background pull').choices(pullPriorityNames).default('ascending'))
    .addOption(new Option('--pull-max-queue <duration>', 'after finalize: how long the background pull may make a read of the device wait (fewer pulls in flight when more would only queue); 0 = every pull worker in flight; before finalize every worker pulls').default(1, '1ms').argParser(durationArg))
    .addOption(new Option('--finalize-at <share>', 'finalize once this share of the chunks is local (0% = at once)').argParser(percentArg).default(undefined, '100%'))
    .addOption(new Option('--finalize-on <signal>', 'finalize when this signal arrives').choices(FINALIZE_SIGNALS))
    .addOption(new Option('--finalize-after-rounds <n>', 'pre-copy rounds (each once every chunk is local: the chunks written since are pulled again), then finalize').argParser(countArg))
    .addOption(new Option('--dirty-threshold <chunks>', 'with --finalize-after-rounds: finalize early after a round with at most this many dirty chunks').default(0).argParser(countArg))
    .option('--on-resume <cmd>', 'shell command run once the device is usable (R3MAP_DEVICE is set), e.g. to mount it and start the application')
    .addOption(new Option('--state-interval <duration>', 'file cache: save which chunks are local this often').default(1000, '1s').argParser(durationArg))
    .addOption(new Option('--connect-timeout <duration>', 'give up reaching the seeder after this long').default(10_000, '10s').argParser(durationArg))
    .option('--json', 'also print the downtime and totals as one JSON line on stdout', false)
    .option('--no-progress', 'no progress bar, even on a terminal')
    .option('--seed-after', 'once every chunk is local, serve the device to the next leecher (--listen and the TLS flags apply)', false);
  addDeviceOptions(cmd);
  addSeedHookOptions(cmd, '--seed-after: ');
  return addGrpcListenOptions(cmd, '--seed-after: where the next leecher connects')
    .addHelpText('after', '\nExit codes: 0 ok (also after SIGTERM/SIGINT), 1 failure (the seeder went away, the device was lost), 2 usage error.\n\nExamples:\n' +
      '  r3map-leech --from grpc://10.0.0.1:1337 --cache /var/lib/app.img --finalize-after-rounds 3 --json\n' +
      '  r3map-leech --from grpc://10.0.0.1:1337 --finalize-on SIGUSR1      # kill -USR1 <pid> to finalize');
}

function finalizePolicy(flags: LeechFlags): FinalizePolicy {
  const given = [flags.finalizeAt !== undefined, flags.finalizeOn !== undefined, flags.finalizeAfterRounds !== undefined].filter(Boolean).length;
  if (given > 1) throw new UsageError('--finalize-at, --finalize-on and --finalize-after-rounds exclude each other');
  if (flags.finalizeOn !== undefined) return { kind: 'signal', signal: flags.finalizeOn as NodeJS.Signals };
  if (flags.finalizeAfterRounds !== undefined) {
    if (flags.finalizeAfterRounds === 0) throw new UsageError('--finalize-after-rounds must be at least 1 (use --finalize-at 100% for none)');
    return { kind: 'rounds', rounds: flags.finalizeAfterRounds, dirtyThreshold: flags.dirtyThreshold };
  }
  return { kind: 'share', share: flags.finalizeAt ?? 1 };
}

/** Opens the cache: undefined for memory (the leecher makes one), else the file, created at the seeder's size. */
async function openCache(cache: string, size: number): Promise<{ backend?: Backend; path?: string }> {
  if (cache === 'memory') return {};
  const file = path.resolve(cache);
  const existing = await stat(file).catch(() => undefined);
  if (existing !== undefined && existing.isFile() && existing.size !== 0 && existing.size !== size) {
    throw new UsageError(`the cache ${file} has ${existing.size} bytes, but the seeder's state has ${size}: use another cache, or remove it`);
  }
  return { backend: await openComposed(`file://${file}`, { size }), path: file };
}

async function leech(flags: LeechFlags, ctx: CommandContext, given: (flag: string) => boolean): Promise<number> {
  const { log, signal } = ctx;
  const policy = finalizePolicy(flags);
  let setup: GrpcSetup | undefined;
  if (flags.seedAfter) {
    setup = await grpcSetup(flags, log);
    if (setup.addresses.length === 0) throw new UsageError('--seed-after needs --listen: where the next leecher connects');
  } else {
    const stray = ['listen', 'tlsCert', 'tlsKey', 'tlsClientCa', 'tokenFile', 'onBeforeSuspend', 'onSuspend', 'onAfterSync'].find((name) => given(name));
    if (stray !== undefined) throw new UsageError(`--${stray.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)} needs --seed-after`);
  }
  const started = performance.now();
  const remote = await SeederRemote.open(flags.from, { log, connectTimeoutMs: flags.connectTimeout });
  let leecher: Leecher | undefined;
  let mount: DirectPathMount | undefined;
  let nextSeeder: Seeder | undefined;
  let server: GrpcServer | undefined;
  let announced: Announced | undefined;
  const progress = new ProgressLine(process.stderr, { label: 'pulled' });
  try {
    const cache = await openCache(flags.cache, remote.size).catch(async (err: unknown) => {
      await remote.disconnect();
      throw err;
    });
    leecher = await Leecher.open({
      seeder: remote,
      ...(cache.backend !== undefined ? { cache: cache.backend } : {}),
      ...(cache.path !== undefined ? { statePath: cache.path, stateIntervalMs: flags.stateInterval } : {}),
      chunkSize: flags.chunkSize,
      pullWorkers: flags.pullWorkers,
      pullPriority: pullPriorityByName(flags.pullPriority),
      pullMaxQueueMs: flags.pullMaxQueue,
      log,
    });
    const failed = new Promise<never>((_, reject) => leecher!.once('error', reject));
    failed.catch(() => {});
    if (flags.progress && progress.enabled) {
      const chunkSize = flags.chunkSize;
      leecher.on('progress', (p) => progress.update(p.localChunks * chunkSize, remote.size, leecher!.fetchedBytes));
    }
    let device = '';
    if (flags.seedAfter) {
      nextSeeder = makeSeeder(leecher.backend, { flags, chunkSize: flags.chunkSize, device: () => device, flush: () => mount!.sync(), log });
    }
    // The device comes up during the pre-copy: its backend is locked until finalize(), so nothing the
    // kernel reads meanwhile can land in its page cache before the state is final.
    mount = new DirectPathMount({ backend: nextSeeder?.backend ?? leecher.backend, ...deviceMountOptions(flags), log });
    const opening = mount.open();
    opening.catch(() => {});
    const stop = new Promise<'stopped'>((resolve) => signal.addEventListener('abort', () => resolve('stopped'), { once: true }));
    const due = await Promise.race([whenFinalizeIsDue(leecher, policy, signal, log).then(() => 'due' as const), stop, failed, opening.then(() => new Promise<never>(() => {}))]);
    if (due === 'stopped' || signal.aborted) {
      log.info(leecher.progress(), 'stopped before finalizing: the seeder goes on; run again with the same cache to resume');
      return EXIT.OK;
    }
    const result = await Promise.race([leecher.finalize(), failed]);
    device = await Promise.race([opening, failed]);
    announced = await announce(device, flags.readyFile, ctx);
    await hook(flags.onResume, { flag: '--on-resume', timeoutMs: flags.hookTimeout, log })({ R3MAP_DEVICE: device });
    const done = await Promise.race([leecher.complete().then(() => 'complete' as const), stop, failed, mount.closed.then((err) => err ?? new Error('detached'))]);
    if (done instanceof Error) {
      log.error({ err: done, device }, `the device went away: ${done.message}`);
      return EXIT.FAILURE;
    }
    if (done === 'stopped') {
      log.warn(leecher.progress(), flags.cache === 'memory' ? 'stopped after finalizing but before every chunk was local: the seeder still holds the state (suspended); with a memory cache, what was not local is gone here' : 'stopped after finalizing but before every chunk was local: run the same command again to go on (the seeder waits, suspended)');
      return EXIT.OK;
    }
    progress.done(remote.size, remote.size);
    report(result, leecher, remote.size, performance.now() - started, flags.json, log);
    if (nextSeeder !== undefined && setup !== undefined) {
      const listening = await listenSeeder(nextSeeder, flags, setup, log);
      server = listening.server;
      for (const uri of listening.uris) process.stdout.write(`${uri}\n`);
      return await waitForEnd(device, mount.closed, ctx, nextSeeder.done);
    }
    return await waitForEnd(device, mount.closed, ctx);
  } finally {
    await announced?.withdraw();
    await server?.close();
    await mount?.close();
    await nextSeeder?.close();
    if (leecher !== undefined) await leecher.close();
    else await remote.disconnect();
  }
}

/** The downtime and totals: one line on stderr, and with --json one JSON line on stdout. */
function report(result: FinalizeResult, leecher: Leecher, size: number, totalMs: number, json: boolean, log: Logger): void {
  const summary = {
    downtimeMs: Math.round(result.downtimeMs * 1000) / 1000,
    totalMs: Math.round(totalMs),
    bytes: size,
    fetchedBytes: leecher.fetchedBytes,
    rounds: result.rounds,
    dirtyChunksAtSync: result.dirtyOffsets.length,
    localChunksAtSync: result.localChunksAtSync,
    totalChunks: leecher.table.chunks,
    resumedAfterFinalize: result.resumed === true,
  };
  log.info(summary, 'migration complete');
  const downtime = summary.resumedAfterFinalize
    ? `resumed after it had finalized (${summary.localChunksAtSync}/${summary.totalChunks} chunks local then)`
    : `downtime ${summary.downtimeMs.toFixed(1)} ms (${summary.dirtyChunksAtSync} dirty chunks at the sync, ${summary.localChunksAtSync}/${summary.totalChunks} local then, ${summary.rounds} pre-copy round${summary.rounds === 1 ? '' : 's'})`;
  process.stderr.write(`r3map-leech: migrated ${formatSize(size)} in ${(totalMs / 1000).toFixed(2)} s; ${downtime}; fetched ${formatSize(summary.fetchedBytes)}\n`);
  if (json) process.stdout.write(`${JSON.stringify(summary)}\n`);
}

export function main(argv: readonly string[] = process.argv): Promise<never> {
  const cmd = leechCommand();
  const given = (name: string): boolean => cmd.getOptionValueSource(name) === 'cli';
  return runCommand(cmd, (ctx) => leech(cmd.opts<LeechFlags>(), ctx, given), argv);
}
