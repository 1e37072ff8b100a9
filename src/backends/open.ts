/**
 * openBackend: the backend a URI names, opened. Network backends are imported on first use, so
 * a command that serves memory or a file never loads the AWS SDK, ioredis, cassandra-driver or
 * grpc-js.
 */
import type { Logger } from '../log.js';
import type { Backend } from '../pipeline/types.js';
import { UsageError } from '../errors.js';
import { MemoryBackend } from './memory.js';
import { SharedMemoryBackend } from './shared-memory.js';
import { FileBackend } from './file.js';
import { DirectoryBackend } from './directory.js';
import { parseBackendUri, redactUri, type BackendSpec } from './uri.js';

export interface OpenBackendOptions {
  /** Size from a flag; the URI's own ?size= wins when both are given and they agree. */
  readonly size?: number;
  readonly readOnly?: boolean;
  /** memory: a store other threads can attach (SharedMemoryBackend), for NBD worker threads. */
  readonly sharedMemory?: boolean;
  readonly log?: Logger;
}

function resolveSize(uri: string, spec: BackendSpec, options: OpenBackendOptions): number | undefined {
  if (spec.size !== undefined && options.size !== undefined && spec.size !== options.size) {
    throw new UsageError(`backend '${redactUri(uri)}': size=${spec.size} in the URI disagrees with --size ${options.size}`);
  }
  return spec.size ?? options.size;
}

function needSize(uri: string, kind: string, size: number | undefined): number {
  if (size === undefined || size <= 0) throw new UsageError(`backend '${redactUri(uri)}': ${kind} needs a size (?size=1GiB or --size)`);
  return size;
}

/** Opens the backend a URI names. */
export async function openBackend(uri: string, options: OpenBackendOptions = {}): Promise<Backend> {
  const spec = parseBackendUri(uri);
  const readOnly = options.readOnly ?? false;
  const log = options.log !== undefined ? { log: options.log } : {};
  switch (spec.kind) {
    case 'memory': {
      const size = needSize(uri, 'memory', resolveSize(uri, spec, options));
      return options.sharedMemory === true ? SharedMemoryBackend.create({ size, readOnly }) : new MemoryBackend({ size, readOnly });
    }
    case 'file': {
      const size = resolveSize(uri, spec, options);
      return FileBackend.open(spec.path, { size, readOnly, create: size !== undefined && !readOnly });
    }
    case 'dir':
      return DirectoryBackend.open(spec.path, {
        size: needSize(uri, 'dir', resolveSize(uri, spec, options)),
        readOnly,
        ...(spec.chunkSize !== undefined ? { chunkSize: spec.chunkSize } : {}),
        ...(spec.maxOpenFiles !== undefined ? { maxOpenFiles: spec.maxOpenFiles } : {}),
      });
    case 'redis': {
      const { RedisBackend } = await import('./redis.js');
      const { url, prefix, chunkSize, cluster } = spec;
      return RedisBackend.open({ url, prefix, chunkSize, cluster, size: needSize(uri, 'redis', resolveSize(uri, spec, options)), readOnly, ...log });
    }
    case 's3': {
      const { S3Backend } = await import('./s3.js');
      const { bucket, prefix, chunkSize, forcePathStyle } = spec;
      return S3Backend.open({
        bucket, prefix, chunkSize, forcePathStyle, readOnly, ...log,
        size: needSize(uri, 's3', resolveSize(uri, spec, options)),
        ...(spec.endpoint !== undefined ? { endpoint: spec.endpoint } : {}),
        ...(spec.region !== undefined ? { region: spec.region } : {}),
      });
    }
    case 'cassandra': {
      const { CassandraBackend } = await import('./cassandra.js');
      const { contactPoints, port, keyspace, table, prefix, chunkSize } = spec;
      return CassandraBackend.open({
        contactPoints, port, keyspace, table, prefix, chunkSize, readOnly, ...log,
        size: needSize(uri, 'cassandra', resolveSize(uri, spec, options)),
        ...(spec.localDataCenter !== undefined ? { localDataCenter: spec.localDataCenter } : {}),
        ...(spec.username !== undefined ? { username: spec.username } : {}),
        ...(spec.password !== undefined ? { password: spec.password } : {}),
      });
    }
    case 'grpc': {
      const { GrpcBackend } = await import('./grpc.js');
      const backend = await GrpcBackend.open({
        target: spec.target, readOnly, ...log,
        ...(spec.tls !== undefined ? { tls: spec.tls } : {}),
        ...(spec.tokenFile !== undefined ? { tokenFile: spec.tokenFile } : {}),
        ...(spec.maxRequestBytes !== undefined ? { maxRequestBytes: spec.maxRequestBytes } : {}),
        ...(spec.channels !== undefined ? { channels: spec.channels } : {}),
      });
      return checkRemoteSize(uri, backend, options.size);
    }
    case 'nbd': {
      const { NbdRemoteBackend } = await import('./nbd.js');
      const backend = await NbdRemoteBackend.open({
        address: spec.address, exportName: spec.exportName, readOnly, ...log,
        ...(spec.tls !== undefined ? { tls: spec.tls } : {}),
        ...(spec.connections !== undefined ? { connections: spec.connections } : {}),
      });
      return checkRemoteSize(uri, backend, options.size);
    }
  }
}

/** A remote that knows its own size: a --size that disagrees is a usage error, not a silent resize. */
async function checkRemoteSize(uri: string, backend: Backend, size: number | undefined): Promise<Backend> {
  if (size === undefined || size === backend.size) return backend;
  await backend.close();
  throw new UsageError(`backend '${redactUri(uri)}' has ${backend.size} bytes, but --size says ${size}`);
}
