/**
 * The gRPC listener flags that r3map-serve, r3map-seed and r3map-leech (--seed-after) share:
 * --listen, --tls-cert, --tls-key, --tls-client-ca, --token-file, --insecure, --max-chunk-size.
 * `grpcSetup()` checks them and reads their files before anything is opened or attached.
 */
import { Option, type Command } from 'commander';
import { collect, sizeArg } from '../util/args.js';
import { UsageError } from '../errors.js';
import type { Logger } from '../log.js';
import { checkListenerSecurity, type GrpcServerTls } from '../rpc/grpc-server.js';
import { GRPC_LISTEN_FORMS, parseGrpcListenUri, type GrpcAddress } from '../rpc/grpc-address.js';
import { DEFAULT_MAX_CHUNK_SIZE } from '../rpc/backend-service.js';
import { BearerToken } from '../rpc/bearer-token.js';
import { readPemFile } from '../rpc/pem-file.js';

export interface GrpcListenFlags {
  listen: string[];
  tlsCert?: string;
  tlsKey?: string;
  tlsClientCa?: string;
  tokenFile?: string;
  insecure: boolean;
  maxChunkSize: number;
}

export interface GrpcSetup {
  readonly addresses: readonly GrpcAddress[];
  readonly tls?: GrpcServerTls;
  readonly token?: BearerToken;
}

/** Adds the gRPC listener flags; `listenDefault` is the help text of --listen's default. */
export function addGrpcListenOptions(cmd: Command, listenHelp: string, listenDefault = 'none'): Command {
  return cmd
    .addOption(new Option('--listen <uri>', `${listenHelp}, repeatable: ${GRPC_LISTEN_FORMS}`).default([], listenDefault).argParser(collect))
    .option('--tls-cert <path>', 'PEM certificate chain for grpcs:// listeners')
    .option('--tls-key <path>', 'PEM private key for --tls-cert')
    .option('--tls-client-ca <path>', 'PEM CA bundle: grpcs:// clients must present a certificate it signed (mutual TLS)')
    .option('--token-file <path>', 'gRPC calls must carry "authorization: Bearer <the file\'s content>"')
    .option('--insecure', 'allow plaintext grpc:// on TCP (grpc+unix:// is always plaintext)', false)
    .addOption(new Option('--max-chunk-size <bytes>', 'most bytes one gRPC ReadAt or WriteAt may move').default(DEFAULT_MAX_CHUNK_SIZE, '32MiB').argParser(sizeArg));
}

/** Parses and checks the gRPC flags and reads their files, before any backend is opened. */
export async function grpcSetup(flags: GrpcListenFlags, log: Logger, options: { readonly tlsUsedElsewhere?: boolean } = {}): Promise<GrpcSetup> {
  const addresses = flags.listen.map((uri) => parseGrpcListenUri(uri));
  if ((flags.tlsCert === undefined) !== (flags.tlsKey === undefined)) throw new UsageError('--tls-cert and --tls-key go together');
  if (flags.tlsClientCa !== undefined && flags.tlsCert === undefined) throw new UsageError('--tls-client-ca needs --tls-cert and --tls-key');
  const tls = flags.tlsCert === undefined || flags.tlsKey === undefined ? undefined : {
    cert: await readPemFile(flags.tlsCert, '--tls-cert'),
    key: await readPemFile(flags.tlsKey, '--tls-key'),
    ...(flags.tlsClientCa !== undefined ? { clientCa: await readPemFile(flags.tlsClientCa, '--tls-client-ca') } : {}),
  };
  for (const address of addresses) checkListenerSecurity(address, { tls, insecure: flags.insecure });
  if (tls !== undefined && options.tlsUsedElsewhere !== true && !addresses.some((a) => a.scheme === 'grpcs')) log.warn('--tls-cert is given but no grpcs:// listener uses it');
  const token = flags.tokenFile === undefined ? undefined : await BearerToken.fromFile(flags.tokenFile);
  return { addresses, ...(tls !== undefined ? { tls } : {}), ...(token !== undefined ? { token } : {}) };
}

/** GrpcServer options for a setup. */
export function grpcServerSecurity(flags: GrpcListenFlags, setup: GrpcSetup): { insecure: boolean; maxChunkSize: number; tls?: GrpcServerTls; token?: BearerToken } {
  return {
    insecure: flags.insecure,
    maxChunkSize: flags.maxChunkSize,
    ...(setup.tls !== undefined ? { tls: setup.tls } : {}),
    ...(setup.token !== undefined ? { token: setup.token } : {}),
  };
}
