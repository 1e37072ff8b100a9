import type { Backend } from '../pipeline/types.js';
import { UsageError } from '../errors.js';
import { MemoryBackend } from './memory.js';
import { FileBackend } from './file.js';
import { DirectoryBackend } from './directory.js';
import { parseBackendUri, type BackendSpec } from './uri.js';

export interface OpenBackendOptions {
  /** Size from a flag; the URI's own ?size= wins when both are given and they agree. */
  readonly size?: number;
  readonly readOnly?: boolean;
}

function resolveSize(uri: string, spec: BackendSpec, options: OpenBackendOptions): number | undefined {
  if (spec.size !== undefined && options.size !== undefined && spec.size !== options.size) {
    throw new UsageError(`backend '${uri}': size=${spec.size} in the URI disagrees with --size ${options.size}`);
  }
  return spec.size ?? options.size;
}

/** Opens the backend a URI names. */
export async function openBackend(uri: string, options: OpenBackendOptions = {}): Promise<Backend> {
  const spec = parseBackendUri(uri);
  const size = resolveSize(uri, spec, options);
  const readOnly = options.readOnly ?? false;
  switch (spec.kind) {
    case 'memory':
      if (size === undefined || size <= 0) throw new UsageError(`backend '${uri}': memory needs a size (?size=1GiB or --size)`);
      return new MemoryBackend({ size, readOnly });
    case 'file':
      return FileBackend.open(spec.path, { size, readOnly, create: size !== undefined && !readOnly });
    case 'dir':
      if (size === undefined || size <= 0) throw new UsageError(`backend '${uri}': dir needs a size (?size=1GiB or --size)`);
      return DirectoryBackend.open(spec.path, {
        size,
        readOnly,
        ...(spec.chunkSize !== undefined ? { chunkSize: spec.chunkSize } : {}),
        ...(spec.maxOpenFiles !== undefined ? { maxOpenFiles: spec.maxOpenFiles } : {}),
      });
  }
}
