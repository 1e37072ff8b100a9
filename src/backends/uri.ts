import { UsageError } from '../errors.js';
import { parseSize } from '../util/size.js';

/** A backend named by a URI, parsed but not opened. One parser for every command. */
export type BackendSpec =
  | { readonly kind: 'memory'; readonly size: number | undefined }
  | { readonly kind: 'file'; readonly path: string; readonly size: number | undefined }
  | {
      readonly kind: 'dir';
      readonly path: string;
      readonly size: number | undefined;
      readonly chunkSize: number | undefined;
      readonly maxOpenFiles: number | undefined;
    };

export const ACCEPTED_BACKEND_URIS = [
  'memory:?size=1GiB (or just "memory" with --size)',
  'file:///var/lib/r3map/disk.img (or an absolute path)',
  'dir:///var/lib/r3map/chunks?chunk-size=64KiB&max-open-files=512',
] as const;

function fail(uri: string, what: string): never {
  throw new UsageError(`backend '${uri}': ${what}; accepted forms: ${ACCEPTED_BACKEND_URIS.join(', ')}`);
}

function pathOf(uri: string, url: URL): string {
  if (url.host !== '' && url.host !== 'localhost') fail(uri, `host '${url.host}' is not allowed for a local path (use three slashes)`);
  const path = decodeURIComponent(url.pathname);
  if (path === '' || path === '/') fail(uri, 'the path is missing');
  return path;
}

function takeParams(uri: string, url: URL, allowed: readonly string[]): Map<string, string> {
  const out = new Map<string, string>();
  for (const [key, value] of url.searchParams) {
    if (!allowed.includes(key)) {
      fail(uri, `unknown parameter '${key}' (allowed here: ${allowed.length ? allowed.join(', ') : 'none'})`);
    }
    out.set(key, value);
  }
  return out;
}

function sizeParam(uri: string, params: Map<string, string>, key: string): number | undefined {
  const v = params.get(key);
  if (v === undefined) return undefined;
  try {
    return parseSize(v, key);
  } catch (err) {
    return fail(uri, (err as Error).message);
  }
}

/** Parses a backend URI; a wrong URI names the part that is wrong and lists the accepted forms. */
export function parseBackendUri(uri: string): BackendSpec {
  const text = uri.trim();
  if (text === 'memory') return { kind: 'memory', size: undefined };
  if (text.startsWith('/')) return { kind: 'file', path: text, size: undefined };
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    return fail(uri, 'not a URI');
  }
  switch (url.protocol) {
    case 'memory:': {
      const params = takeParams(uri, url, ['size']);
      if (url.pathname !== '') fail(uri, `unexpected path '${url.pathname}' (memory takes only ?size=)`);
      return { kind: 'memory', size: sizeParam(uri, params, 'size') };
    }
    case 'file:': {
      const params = takeParams(uri, url, ['size']);
      return { kind: 'file', path: pathOf(uri, url), size: sizeParam(uri, params, 'size') };
    }
    case 'dir:': {
      const params = takeParams(uri, url, ['size', 'chunk-size', 'max-open-files']);
      const maxOpen = params.get('max-open-files');
      if (maxOpen !== undefined && !/^[1-9]\d*$/.test(maxOpen)) fail(uri, `max-open-files '${maxOpen}' is not a positive whole number`);
      return {
        kind: 'dir',
        path: pathOf(uri, url),
        size: sizeParam(uri, params, 'size'),
        chunkSize: sizeParam(uri, params, 'chunk-size'),
        maxOpenFiles: maxOpen === undefined ? undefined : Number(maxOpen),
      };
    }
    default:
      return fail(uri, `unknown scheme '${url.protocol.replace(/:$/, '')}'`);
  }
}
