import { Command, Option } from 'commander';
import { runCommand, EXIT, type CommandContext } from './run.js';
import { countArg, durationArg, sizeArg } from '../util/args.js';
import { DEFAULT_CHUNK_SIZE } from '../util/chunks.js';
import { formatRate, ProgressLine, RateMeter } from './progress.js';
import { announceAndWait } from './announce.js';
import { ACCEPTED_BACKEND_URIS } from '../backends/uri.js';
import { UsageError } from '../errors.js';
import type { Logger } from '../log.js';
import { disconnectNbdDevice } from '../kernel/nbd-device.js';
import { BLOCK_SIZE } from '../mount/direct.js';
import { DirectPathMount } from '../mount/direct-path.js';
import { disconnectFuseLoop } from '../mount/fuse-loop.js';
import type { ManagedMountStats } from '../mount/managed.js';
import { MANAGED_DEFAULTS } from '../mount/managed-options.js';
import { ManagedPathMount } from '../mount/managed-path.js';
import { pullPriorityNames, type PullPriorityName } from '../pipeline/pull-priority.js';
import { formatSize } from '../util/size.js';
import { transportOfDevice } from '../mount/transport.js';
import { addDeviceOptions, type DeviceFlags } from './device-options.js';

interface MountFlags extends DeviceFlags {
  backend?: string;
  size?: number;
  readOnly: boolean;
  chunkSize?: number | 'none';
  disconnect?: string;
  managed: boolean;
  cache: string;
  pullWorkers: number;
  pullPriority: PullPriorityName;
  pullMaxQueue: number;
  hotRangesFile?: string;
  pullFirst: boolean;
  pushWorkers: number;
  pushInterval: number;
  stateInterval: number;
  latency: number;
  resetCache: boolean;
  remoteId?: string;
  statusInterval: number;
  progress: boolean;
}

/** Flags that mean something only with --managed (their attribute names). */
const MANAGED_ONLY = ['cache', 'pullWorkers', 'pullPriority', 'pullMaxQueue', 'hotRangesFile', 'pullFirst', 'pushWorkers', 'pushInterval', 'stateInterval', 'resetCache', 'remoteId', 'statusInterval'] as const;

export function mountCommand(): Command {
  return addDeviceOptions(new Command('r3map-mount'))
    .description([
      'Attach a backend as a block device and keep it attached in the foreground. Direct mode (default): every I/O goes to the backend. Managed mode (--managed): I/O hits a local cache; a puller fills it in the background (starting before the device is up) and a pusher writes changed chunks back to the backend (the remote).',
      'Prints the device path (one line on stdout) when the device is ready; logs to stderr. SIGTERM/SIGINT flush (managed: push every dirty chunk), detach and exit 0; a second signal exits at once.',
      'Managed: a progress bar on stderr when it is a terminal; SIGUSR1 prints a status line (local %, dirty chunks, rates).',
    ].join('\n\n'))
    .option('--backend <uri>', `what to attach: ${ACCEPTED_BACKEND_URIS.join(' | ')}`)
    .option('--size <bytes>', `device size (1GiB, 64MiB, 4096), a multiple of ${BLOCK_SIZE}; needed for memory and new files (default: the file's size)`, sizeArg)
    .option('--read-only', 'refuse writes; the device is read-only', false)
    .addOption(new Option('--chunk-size <bytes|none>', `the unit the backend is read and written in (it only sees whole, aligned chunks); managed: also the unit of pulls, pushes and the cache state (default ${formatSize(DEFAULT_CHUNK_SIZE)}); direct: default none (no chunking layer)`).argParser(chunkSizeArg))
    .option('--managed', 'managed mode: local cache, background pull and push (the flags below)', false)
    .option('--cache <path>', 'managed: the local cache, a file (kept across runs, crash-safe with <path>.r3map-state) or "memory"', MANAGED_DEFAULTS.cache)
    .addOption(new Option('--pull-workers <n>', 'managed: background pull workers; 0 = no background pull (chunks are fetched when first read)').default(MANAGED_DEFAULTS.pullWorkers).argParser(countArg))
    .addOption(new Option('--pull-priority <order>', 'managed: the order of the background pull').choices(pullPriorityNames).default('ascending'))
    .addOption(new Option('--pull-max-queue <duration>', 'managed: how long the background pull may make a read of the device wait (fewer pulls in flight when more would only queue); 0 = every pull worker in flight (most pull throughput)').default(MANAGED_DEFAULTS.pullMaxQueueMs, '1ms').argParser(durationArg))
    .option('--hot-ranges-file <path>', 'managed: pull the byte ranges this file lists first ("<offset> <length>" per line, e.g. "512MiB 64KiB"), in its order')
    .option('--pull-first', 'managed: print the device only when every chunk is local', false)
    .addOption(new Option('--push-workers <n>', 'managed: push workers; 0 = no pusher: writes stay in the cache and are NEVER pushed to the remote').default(MANAGED_DEFAULTS.pushWorkers).argParser(countArg))
    .addOption(new Option('--push-interval <duration>', 'managed: push dirty chunks this often (5s, 250ms); 0 = only on SIGTERM/exit').default(MANAGED_DEFAULTS.pushIntervalMs, '5s').argParser(durationArg))
    .addOption(new Option('--state-interval <duration>', 'managed, file cache: save which chunks are local this often when they changed; 0 = only on flush and exit').default(MANAGED_DEFAULTS.stateIntervalMs, '1s').argParser(durationArg))
    .addOption(new Option('--latency <duration>', 'add this round trip to every backend call (tests, benchmarks; managed: every pull and push, direct: every request); 0 = none').default(0, '0').argParser(durationArg))
    .option('--reset-cache', 'managed: discard the cache state: pull everything again (writes not pushed yet are lost)', false)
    .option('--remote-id <name>', 'managed: the name the cache state records for the remote (default: the --backend URI, password redacted)')
    .addOption(new Option('--status-interval <duration>', 'managed: also print the SIGUSR1 status line this often; 0 = never').default(0, '0').argParser(durationArg))
    .option('--no-progress', 'managed: no progress bar, even on a terminal')
    .option('--disconnect <device>', 'detach a device left behind by a dead r3map-mount (/dev/nbdN, or /dev/loopN backed by our nbdfuse file), print "disconnected" or "not-connected", exit')
    .addHelpText('after', '\nExit codes: 0 ok (also after SIGTERM/SIGINT), 1 failure, 2 usage error.\n\nExamples:\n' +
      '  r3map-mount --backend memory --size 1GiB                 # prints /dev/nbd0 (or /dev/loop0); runs until SIGTERM\n' +
      '  r3map-mount --backend file:///var/lib/disk.img --ready-file /run/r3map.dev\n' +
      '  r3map-mount --managed --backend grpc://host:1337 --cache /var/cache/r3map/vm1.img --pull-workers 64 \\\n' +
      '              --push-workers 16 --push-interval 5s --pull-priority ascending\n' +
      '  r3map-mount --disconnect /dev/nbd0                       # after a kill -9');
}

async function mount(flags: MountFlags, ctx: CommandContext, given: (flag: string) => boolean): Promise<number> {
  const { log, signal } = ctx;
  if (flags.disconnect !== undefined) return disconnect(flags.disconnect, log);
  if (flags.backend === undefined) throw new UsageError('--backend is required (or --disconnect DEVICE)');
  if (flags.size !== undefined && (flags.size <= 0 || flags.size % BLOCK_SIZE !== 0)) {
    throw new UsageError(`--size ${flags.size} is not a positive multiple of the block size ${BLOCK_SIZE}`);
  }
  if (flags.managed) return mountManaged(flags, ctx, given);
  const stray = MANAGED_ONLY.find((name) => given(name));
  if (stray !== undefined) throw new UsageError(`--${kebab(stray)} needs --managed`);
  const mounted = new DirectPathMount({
    backendUri: flags.backend,
    ...(flags.size !== undefined ? { size: flags.size } : {}),
    readOnly: flags.readOnly,
    chunkSize: flags.chunkSize ?? 'none',
    latencyMs: flags.latency,
    transport: flags.transport,
    ...(flags.device !== undefined ? { device: flags.device } : {}),
    loopDirectIo: flags.loopDirectIo,
    log,
  });
  try {
    const path = await mounted.open();
    if (signal.aborted) return EXIT.OK;
    return await announceAndWait(path, flags.readyFile, mounted.closed, ctx);
  } finally {
    await mounted.close();
  }
}

/** A managed mount always works in chunks: 'none' is a direct-mount spelling. */
function managedChunkSize(chunkSize: number | 'none' | undefined): number {
  if (chunkSize === 'none') throw new UsageError(`--chunk-size none is for direct mounts: a managed mount pulls, pushes and caches whole chunks (default ${formatSize(MANAGED_DEFAULTS.chunkSize)})`);
  return chunkSize ?? MANAGED_DEFAULTS.chunkSize;
}

/** --chunk-size: a size (64KiB), or 'none' (direct mounts: no chunking layer). */
function chunkSizeArg(value: string): number | 'none' {
  return value.trim().toLowerCase() === 'none' ? 'none' : sizeArg(value);
}

async function disconnect(device: string, log: Logger): Promise<number> {
  const transport = transportOfDevice(device);
  if (transport === undefined) throw new UsageError(`--disconnect ${device}: expected /dev/nbdN or /dev/loopN`);
  const status = transport === 'nbd' ? await disconnectNbdDevice(device) : await disconnectFuseLoop(device, log);
  log.info({ device, status }, `${device}: ${status}`);
  process.stdout.write(`${status}\n`);
  return EXIT.OK;
}

/**
 * --managed: a ManagedPathMount. Progress bar on a TTY stderr; SIGUSR1 (and --status-interval)
 * print a status line; SIGTERM closes it, which pushes every dirty chunk before detaching.
 */
async function mountManaged(flags: MountFlags, { log, signal }: CommandContext, given: (flag: string) => boolean): Promise<number> {
  if (flags.hotRangesFile !== undefined && given('pullPriority')) throw new UsageError('--hot-ranges-file and --pull-priority exclude each other');
  const mounted = new ManagedPathMount({
    remoteUri: flags.backend!,
    ...(flags.size !== undefined ? { size: flags.size } : {}),
    ...(flags.remoteId !== undefined ? { remoteId: flags.remoteId } : {}),
    chunkSize: managedChunkSize(flags.chunkSize),
    pullWorkers: flags.pullWorkers,
    pullPriority: flags.hotRangesFile !== undefined ? { hotRangesFile: flags.hotRangesFile } : flags.pullPriority,
    pullMaxQueueMs: flags.pullMaxQueue,
    pullFirst: flags.pullFirst,
    pushWorkers: flags.pushWorkers,
    pushIntervalMs: flags.pushInterval,
    stateIntervalMs: flags.stateInterval,
    cache: flags.cache,
    resetCache: flags.resetCache,
    latencyMs: flags.latency,
    transport: flags.transport,
    ...(flags.device !== undefined ? { device: flags.device } : {}),
    readOnly: flags.readOnly,
    loopDirectIo: flags.loopDirectIo,
    log,
  });
  const progress = new ProgressLine(process.stderr, { label: 'pulled' });
  if (flags.progress && progress.enabled) {
    mounted.events.on('progress', (p) => {
      const chunkSize = mounted.options.chunkSize;
      if (p.localChunks === p.totalChunks) progress.done(p.totalChunks * chunkSize, p.totalChunks * chunkSize);
      else progress.update(p.localChunks * chunkSize, p.totalChunks * chunkSize, p.pulledBytes);
    });
  }
  let status: StatusLine | undefined;
  const printStatus = (): void => void process.stderr.write(`${status?.line() ?? 'r3map-mount: status: not ready yet'}\n`);
  process.on('SIGUSR1', printStatus);
  let interval: NodeJS.Timeout | undefined;
  try {
    const path = await mounted.open();
    status = new StatusLine(mounted);
    if (flags.statusInterval > 0) interval = setInterval(printStatus, flags.statusInterval).unref();
    if (signal.aborted) return EXIT.OK;
    return await announceAndWait(path, flags.readyFile, mounted.closed, { log, signal });
  } finally {
    clearInterval(interval);
    if (status !== undefined) log.info('closing: pushing every dirty chunk, then detaching');
    try {
      await mounted.close();
    } finally {
      process.off('SIGUSR1', printStatus);
      if (status !== undefined) printStatus();
    }
  }
}

/** The SIGUSR1 line: local %, dirty chunks, pull and push rates since the last line. */
class StatusLine {
  readonly #mount: ManagedPathMount;
  readonly #pull: RateMeter;
  readonly #push: RateMeter;

  constructor(mount: ManagedPathMount) {
    this.#mount = mount;
    const stats = mount.stats();
    this.#pull = new RateMeter(stats.pulledBytes);
    this.#push = new RateMeter(stats.pushedBytes);
  }

  line(): string {
    const s: ManagedMountStats = this.#mount.stats();
    const percent = ((100 * s.localChunks) / Math.max(1, s.totalChunks)).toFixed(1);
    return `r3map-mount: status: local ${percent}% (${s.localChunks}/${s.totalChunks} chunks), dirty ${s.dirtyChunks} chunks, ` +
      `pull ${formatRate(this.#pull.sample(s.pulledBytes))}, push ${formatRate(this.#push.sample(s.pushedBytes))}, ` +
      `pulled ${formatSize(s.pulledBytes)} (${formatSize(s.pulledBeforeReadyBytes)} before the device was ready), pushed ${formatSize(s.pushedBytes)}`;
  }
}

function kebab(name: string): string {
  return name.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
}

export function main(argv: readonly string[] = process.argv): Promise<never> {
  const cmd = mountCommand();
  const given = (name: string): boolean => cmd.getOptionValueSource(name) === 'cli';
  return runCommand(cmd, (ctx) => mount(cmd.opts<MountFlags>(), ctx, given), argv);
}
