import { availableParallelism } from 'node:os';
import { Command, Option } from 'commander';
import { runCommand, type CommandContext } from './run.js';
import { collect, countArg, sizeArg } from '../util/args.js';
import { openComposed } from '../mount/compose.js';
import { ACCEPTED_BACKEND_URIS, parseBackendUri } from '../backends/uri.js';
import { NbdServer, type NbdExport } from '../nbd/server.js';
import { parseListenAddress } from '../nbd/listen-address.js';
import { UsageError } from '../errors.js';
import type { Backend } from '../pipeline/types.js';
import { GrpcServer } from '../rpc/grpc-server.js';
import { addGrpcListenOptions, grpcServerSecurity, grpcSetup, type GrpcListenFlags } from './grpc-listen.js';

interface ServeFlags extends GrpcListenFlags {
  backend: string;
  size?: number;
  nbdListen: string[];
  exportName: string;
  description?: string;
  export: string[];
  readOnly: boolean;
  maxPayload: number;
  maxInFlight: number;
  nbdTls: NbdTlsMode;
  nbdWorkers: number;
}

/** Worker threads for NBD connections by default: one per core, at most 4, none on one core. */
const DEFAULT_NBD_WORKERS = availableParallelism() > 1 ? Math.min(4, availableParallelism()) : 0;

type NbdTlsMode = 'off' | 'on' | 'require';

export function serveCommand(): Command {
  return addGrpcListenOptions(new Command('r3map-serve')
    .description([
      'Serve a backend over gRPC (the r3map Backend service) and NBD at once.',
      'Prints one line per listener on stdout when ready (a grpc://, grpcs://, grpc+unix://, nbd://, nbds://, nbd+unix:// or nbds+unix:// URI), logs to stderr; SIGTERM stops accepting, finishes in-flight calls, syncs the backend and exits 0. Without --listen and --nbd-listen it serves NBD on 127.0.0.1:10809.',
    ].join('\n\n'))
    .requiredOption('--backend <uri>', `what to serve: ${ACCEPTED_BACKEND_URIS.join(' | ')}`)
    .option('--size <bytes>', 'size of the resource (1GiB, 512MiB, 4096); needed for memory and new files', sizeArg)
    .addOption(new Option('--nbd-listen <address>', 'NBD listener, repeatable: host:port, [::1]:port, unix:/path').default([], '127.0.0.1:10809').argParser(collect))
    .option('--export-name <name>', 'name of the export (clients asking for "" get it too)', 'default')
    .option('--description <text>', 'export description shown by nbdinfo')
    .addOption(new Option('--export <name=uri>', 'an extra named export, repeatable (--size applies unless the URI has ?size=; --read-only applies)').default([], 'none').argParser(collect))
    .option('--read-only', 'refuse writes and advertise NBD_FLAG_READ_ONLY', false)
    .addOption(new Option('--max-payload <bytes>', 'largest request accepted (NBD_INFO_BLOCK_SIZE maximum)').default(32 * 1024 * 1024, '32MiB').argParser(sizeArg))
    .addOption(new Option('--max-in-flight <n>', 'requests served at once per connection').default(64).argParser(countArg))
    .addOption(new Option('--nbd-workers <n>', 'worker threads serving plain NBD connections to memory exports (which then live in shared memory) and files; 0 serves every connection on the main thread').default(DEFAULT_NBD_WORKERS, `${DEFAULT_NBD_WORKERS} here: one per core, at most 4`).argParser(countArg))
    .addOption(new Option('--nbd-tls <mode>', 'NBD STARTTLS with --tls-cert and --tls-key (--tls-client-ca: clients must present a certificate it signed): on = offered, plaintext clients are served too; require = every client must upgrade (the printed URIs are nbds://)').choices(['off', 'on', 'require']).default('off')), 'gRPC listener');
}

async function serve(flags: ServeFlags, { log, signal }: CommandContext): Promise<number> {
  const grpcFlags = await grpcSetup(flags, log, { tlsUsedElsewhere: flags.nbdTls !== 'off' });
  if (flags.nbdTls !== 'off' && grpcFlags.tls === undefined) throw new UsageError(`--nbd-tls ${flags.nbdTls} needs --tls-cert and --tls-key`);
  const nbdTls = flags.nbdTls === 'off' || grpcFlags.tls === undefined ? undefined : { ...grpcFlags.tls, require: flags.nbdTls === 'require' };
  if (grpcFlags.token !== undefined && flags.nbdListen.length > 0) log.warn('--token-file guards the gRPC listeners only; NBD clients are not asked for it');
  const opened: Backend[] = [];
  let closeFailed = false;
  // --size applies to every export whose URI does not carry its own ?size=.
  const open = async (uri: string): Promise<Backend> => {
    const size = parseBackendUri(uri).size ?? flags.size;
    const b = await openComposed(uri, { ...(size !== undefined ? { size } : {}), readOnly: flags.readOnly, sharedMemory: flags.nbdWorkers > 0 });
    opened.push(b);
    return b;
  };
  try {
    const exports: NbdExport[] = [{
      name: flags.exportName,
      backend: await open(flags.backend),
      readOnly: flags.readOnly,
      ...(flags.description !== undefined ? { description: flags.description } : {}),
    }];
    for (const spec of flags.export) {
      const eq = spec.indexOf('=');
      if (eq <= 0) throw new UsageError(`--export '${spec}': expected name=uri`);
      exports.push({ name: spec.slice(0, eq), backend: await open(spec.slice(eq + 1)), readOnly: flags.readOnly });
    }
    if (flags.maxInFlight === 0) throw new UsageError('--max-in-flight must be at least 1');
    const listens = flags.nbdListen.length > 0 || grpcFlags.addresses.length > 0 ? flags.nbdListen : ['127.0.0.1:10809'];
    const addresses = listens.map((a) => parseListenAddress(a));
    const server = new NbdServer({ exports, maxPayload: flags.maxPayload, maxInFlight: flags.maxInFlight, workers: flags.nbdWorkers, ...(nbdTls !== undefined ? { tls: nbdTls } : {}), log });
    // gRPC serves the first export (the Backend service has no export names).
    const grpcServer = grpcFlags.addresses.length === 0 ? undefined : new GrpcServer({
      backend: exports[0]!.backend,
      readOnly: flags.readOnly,
      log,
      ...grpcServerSecurity(flags, grpcFlags),
    });
    try {
      for (const address of grpcFlags.addresses) {
        const uri = await grpcServer!.listen(address);
        log.info({ listen: uri, size: exports[0]!.backend.size }, 'serving gRPC');
        process.stdout.write(`${uri}\n`);
      }
      for (const address of addresses) {
        const bound = await server.listen(address);
        const name = encodeURIComponent(flags.exportName);
        const scheme = nbdTls?.require === true ? 'nbds' : 'nbd';
        const uri = bound.startsWith('unix:') ? `${scheme}+unix:///${name}?socket=${bound.slice(5)}` : `${scheme}://${bound}/${name}`;
        log.info({ listen: bound, exports: exports.map((e) => e.name), size: exports[0]!.backend.size, tls: flags.nbdTls, mtls: nbdTls?.clientCa !== undefined }, 'serving NBD');
        process.stdout.write(`${uri}\n`);
      }
      await new Promise<void>((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }));
    } finally {
      // Both stop accepting at once; the gRPC server also finishes its calls and syncs the backend.
      const closed = await Promise.allSettled([server.close(), grpcServer?.close()]);
      for (const r of closed) {
        if (r.status === 'rejected') {
          closeFailed = true;
          log.error({ err: r.reason }, 'closing a server failed');
        }
      }
    }
    return closeFailed ? 1 : 0;
  } finally {
    const results = await Promise.allSettled(opened.map((b) => b.close()));
    for (const r of results) if (r.status === 'rejected') log.error({ err: r.reason }, 'closing a backend failed');
  }
}

export function main(argv: readonly string[] = process.argv): Promise<never> {
  const cmd = serveCommand();
  return runCommand(cmd, (ctx) => serve(cmd.opts<ServeFlags>(), ctx), argv);
}
