/**
 * The one backend-URI parser every command uses. It turns a URI into a BackendSpec (parsed, not
 * opened; open.ts opens it). A wrong URI is a UsageError that names the wrong part and lists the
 * accepted forms of its scheme (all forms when the scheme is unknown). Passwords never appear in
 * an error: every message quotes the URI through `redactUri`.
 */
import { isIP } from 'node:net';
import { UsageError } from '../errors.js';
import type { TlsFiles } from '../nbd/tls.js';
import { DEFAULT_CHUNK_SIZE, checkChunkSize } from '../util/chunks.js';
import { parseSize } from '../util/size.js';

export type HostPort = { readonly host: string; readonly port: number };
export type SocketAddress = HostPort | { readonly path: string };

/** A backend named by a URI, parsed but not opened. `size` is set only when the URI carries it. */
export type BackendSpec =
  | { readonly kind: 'memory'; readonly size: number | undefined }
  | { readonly kind: 'file'; readonly path: string; readonly size: number | undefined }
  | {
      readonly kind: 'dir';
      readonly path: string;
      readonly size: number | undefined;
      readonly chunkSize: number | undefined;
      readonly maxOpenFiles: number | undefined;
    }
  | {
      readonly kind: 'redis';
      /** redis[s]://[user:pass@]host:port/db of the first node (secret inside: never log it). */
      readonly url: string;
      readonly nodes: readonly HostPort[];
      readonly db: number;
      readonly prefix: string;
      readonly chunkSize: number;
      readonly size: number | undefined;
      readonly cluster: boolean;
    }
  | {
      readonly kind: 's3';
      readonly bucket: string;
      readonly prefix: string;
      readonly endpoint: string | undefined;
      readonly region: string | undefined;
      readonly forcePathStyle: boolean;
      readonly chunkSize: number;
      readonly size: number | undefined;
    }
  | {
      readonly kind: 'cassandra';
      readonly contactPoints: readonly string[];
      readonly port: number;
      readonly keyspace: string;
      readonly table: string;
      readonly prefix: string;
      readonly localDataCenter: string | undefined;
      readonly username: string | undefined;
      /** Never log it. */
      readonly password: string | undefined;
      readonly chunkSize: number;
      readonly size: number | undefined;
    }
  | {
      readonly kind: 'grpc';
      readonly target: SocketAddress;
      readonly tls: TlsFiles | undefined;
      readonly tokenFile: string | undefined;
      /** `?chunk-size=`: the most bytes per gRPC call (a request size, not a storage chunk). */
      readonly maxRequestBytes: number | undefined;
      readonly channels: number | undefined;
      readonly size: undefined;
    }
  | {
      readonly kind: 'nbd';
      readonly address: SocketAddress;
      readonly exportName: string;
      readonly tls: TlsFiles | undefined;
      readonly connections: number | undefined;
      readonly size: undefined;
    };

export const DEFAULT_PREFIX = 'r3map';
export const DEFAULT_PORTS = Object.freeze({ redis: 6379, cassandra: 9042, grpc: 1337, nbd: 10809 });

const FORMS: Readonly<Record<string, readonly string[]>> = Object.freeze({
  memory: ['memory:?size=1GiB (or just "memory" with --size)'],
  file: ['file:///var/lib/r3map/disk.img?size=1GiB (or an absolute path)'],
  dir: ['dir:///var/lib/r3map/chunks?chunk-size=64KiB&max-open-files=512&size=1GiB'],
  redis: ['redis://[user:pass@]host:6379/0?prefix=vm1&chunk-size=64KiB&size=1GiB&cluster=1 (rediss:// for TLS)'],
  s3: ['s3://bucket/prefix?endpoint=http://127.0.0.1:9000&region=us-east-1&chunk-size=64KiB&size=1GiB&path-style=1'],
  cassandra: ['cassandra://[user:pass@]host1,host2:9042/keyspace/table?prefix=vm1&chunk-size=64KiB&size=1GiB&dc=dc1'],
  grpc: ['grpc://host:1337?token-file=/path', 'grpcs://host:1337?ca=/path&cert=/path&key=/path&token-file=/path', 'grpc+unix:///run/r3map.sock?token-file=/path'],
  nbd: ['nbd://host:10809/export?connections=4', 'nbds://host:10809/export?ca=/path&cert=/path&key=/path', 'nbd+unix:///export?socket=/run/nbd.sock (nbds+unix:// for TLS)'],
});
const SCHEME_FAMILY: Readonly<Record<string, string>> = Object.freeze({
  memory: 'memory', file: 'file', dir: 'dir', redis: 'redis', rediss: 'redis', s3: 's3', cassandra: 'cassandra',
  grpc: 'grpc', grpcs: 'grpc', 'grpc+unix': 'grpc', nbd: 'nbd', nbds: 'nbd', 'nbd+unix': 'nbd', 'nbds+unix': 'nbd',
});

/** Every accepted form, for --help and for errors about unknown schemes. */
export const ACCEPTED_BACKEND_URIS: readonly string[] = Object.freeze(Object.values(FORMS).flat());

/** The URI with any password replaced by '***' (userinfo after the first ':'). */
export function redactUri(uri: string): string {
  return uri.replace(/^([A-Za-z][A-Za-z0-9+.-]*:\/\/)([^/?#@]*)@/, (_, scheme: string, userinfo: string) => {
    const colon = userinfo.indexOf(':');
    return `${scheme}${colon < 0 ? userinfo : `${userinfo.slice(0, colon)}:***`}@`;
  });
}

interface Parts {
  readonly scheme: string;
  readonly userinfo: string | undefined;
  /** undefined when there is no '//' part; '' for 'scheme:///path'. */
  readonly authority: string | undefined;
  readonly path: string;
  readonly params: Map<string, string>;
}

/** What every parse step needs: the URI (for messages) and its scheme family. */
class UriError {
  constructor(readonly uri: string, readonly family: string | undefined) {}

  fail(what: string): never {
    const forms = this.family !== undefined ? FORMS[this.family]! : ACCEPTED_BACKEND_URIS;
    throw new UsageError(`backend '${redactUri(this.uri)}': ${what}; accepted forms: ${forms.join(' | ')}`);
  }
}

const URI_RE = /^([A-Za-z][A-Za-z0-9+.-]*):(?:\/\/([^/?#]*))?([^?#]*)(?:\?([^#]*))?(#.*)?$/;

function split(e: UriError, text: string): Parts {
  const m = URI_RE.exec(text);
  if (m === null) return e.fail('not a URI (scheme:… expected)');
  if (m[5] !== undefined) e.fail(`a fragment ('${m[5]}') is not allowed`);
  let authority = m[2];
  let userinfo: string | undefined;
  if (authority !== undefined && authority.includes('@')) {
    userinfo = authority.slice(0, authority.lastIndexOf('@'));
    authority = authority.slice(authority.lastIndexOf('@') + 1);
  }
  const params = new Map<string, string>();
  for (const [key, value] of new URLSearchParams(m[4] ?? '')) {
    if (params.has(key)) e.fail(`parameter '${key}' is given twice`);
    params.set(key, value);
  }
  return { scheme: m[1]!.toLowerCase(), userinfo, authority, path: decode(e, m[3]!, 'path'), params };
}

function decode(e: UriError, text: string, what: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    return e.fail(`the ${what} has a bad %-escape`);
  }
}

function allowOnly(e: UriError, p: Parts, allowed: readonly string[]): void {
  for (const key of p.params.keys()) {
    if (!allowed.includes(key)) e.fail(`unknown parameter '${key}' (allowed here: ${allowed.length ? allowed.join(', ') : 'none'})`);
  }
}

function noUserinfo(e: UriError, p: Parts, why: string): void {
  if (p.userinfo !== undefined) e.fail(`credentials in the URI are not accepted here (${why})`);
}

function sizeParam(e: UriError, p: Parts, key: string): number | undefined {
  const v = p.params.get(key);
  if (v === undefined) return undefined;
  try {
    const n = parseSize(v, key);
    if (n <= 0) e.fail(`${key} '${v}' must be more than 0 bytes`);
    return n;
  } catch (err) {
    return e.fail((err as Error).message);
  }
}

/** `chunk-size` of a chunked store (dir, redis, s3, cassandra): checked once, here, by checkChunkSize. */
function chunkSizeParam(e: UriError, p: Parts): number | undefined {
  const n = sizeParam(e, p, 'chunk-size');
  if (n === undefined) return undefined;
  try {
    return checkChunkSize(n, 'chunk-size');
  } catch (err) {
    return e.fail((err as Error).message);
  }
}

function countParam(e: UriError, p: Parts, key: string): number | undefined {
  const v = p.params.get(key);
  if (v === undefined) return undefined;
  if (!/^[1-9]\d{0,5}$/.test(v)) e.fail(`${key} '${v}' is not a whole number from 1`);
  return Number(v);
}

function boolParam(e: UriError, p: Parts, key: string): boolean | undefined {
  const v = p.params.get(key);
  if (v === undefined) return undefined;
  if (['1', 'true', 'yes', 'on'].includes(v)) return true;
  if (['0', 'false', 'no', 'off'].includes(v)) return false;
  return e.fail(`${key} '${v}' is not a boolean (1 or 0)`);
}

function pathParam(e: UriError, p: Parts, key: string): string | undefined {
  const v = p.params.get(key);
  if (v === undefined) return undefined;
  if (!v.startsWith('/')) e.fail(`${key} '${v}' must be an absolute path`);
  return v;
}

function localPath(e: UriError, p: Parts): string {
  if (p.authority !== undefined && p.authority !== '' && p.authority !== 'localhost') {
    e.fail(`host '${p.authority}' is not allowed for a local path (use three slashes)`);
  }
  noUserinfo(e, p, 'a local path');
  if (p.path === '' || p.path === '/') e.fail('the path is missing');
  return p.path;
}

const HOSTNAME = /^[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?$/;

/** 'h1,h2:9042' or 'h1:1,[::1]:2' into hosts with ports (`defaultPort` where none is given). */
function hostList(e: UriError, p: Parts, defaultPort: number, many: boolean): HostPort[] {
  if (p.authority === undefined || p.authority === '') return e.fail('the host is missing');
  const items = p.authority.split(',');
  if (items.length > 1 && !many) e.fail(`only one host is allowed here, not '${p.authority}'`);
  return items.map((item) => {
    const m = /^(?:\[([^\]]*)\]|([^:[\]]*))(?::([^:]*))?$/.exec(item);
    if (m === null) return e.fail(`host '${item}' is not host, host:port or [ipv6]:port`);
    const host = m[1] ?? m[2]!;
    if (m[1] !== undefined ? isIP(host) !== 6 : !HOSTNAME.test(host)) e.fail(`host '${host}' is not a valid host name or address`);
    if (m[3] === undefined) return { host, port: defaultPort };
    if (!/^\d{1,5}$/.test(m[3]) || Number(m[3]) < 1 || Number(m[3]) > 65535) e.fail(`port '${m[3]}' is not a number from 1 to 65535`);
    return { host, port: Number(m[3]) };
  });
}

function tlsFiles(e: UriError, p: Parts): TlsFiles {
  const ca = pathParam(e, p, 'ca');
  const cert = pathParam(e, p, 'cert');
  const key = pathParam(e, p, 'key');
  if ((cert === undefined) !== (key === undefined)) e.fail(`a client certificate needs both 'cert' and 'key'`);
  return { ...(ca !== undefined ? { ca } : {}), ...(cert !== undefined ? { cert } : {}), ...(key !== undefined ? { key } : {}) };
}

function noPath(e: UriError, p: Parts, what: string): void {
  if (p.path !== '' && p.path !== '/') e.fail(`unexpected path '${p.path}' (${what})`);
}

function redis(e: UriError, p: Parts, text: string): BackendSpec {
  allowOnly(e, p, ['prefix', 'chunk-size', 'size', 'cluster']);
  const cluster = boolParam(e, p, 'cluster') ?? false;
  const nodes = hostList(e, p, DEFAULT_PORTS.redis, cluster);
  const dbText = p.path.replace(/^\//, '');
  if (dbText !== '' && !/^\d{1,5}$/.test(dbText)) e.fail(`database '${dbText}' is not a number (redis://host:6379/0)`);
  const db = dbText === '' ? 0 : Number(dbText);
  if (cluster && db !== 0) e.fail(`database ${db}: Redis Cluster has only database 0`);
  const raw = /^[^:]+:\/\/([^/?#]*)/.exec(text)![1]!;
  const userinfo = raw.includes('@') ? `${raw.slice(0, raw.lastIndexOf('@'))}@` : '';
  const first = nodes[0]!;
  const host = first.host.includes(':') ? `[${first.host}]` : first.host;
  return {
    kind: 'redis',
    url: `${p.scheme}://${userinfo}${host}:${first.port}/${db}`,
    nodes, db, cluster,
    prefix: p.params.get('prefix') ?? DEFAULT_PREFIX,
    chunkSize: chunkSizeParam(e, p) ?? DEFAULT_CHUNK_SIZE,
    size: sizeParam(e, p, 'size'),
  };
}

const BUCKET = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;

function s3(e: UriError, p: Parts): BackendSpec {
  allowOnly(e, p, ['endpoint', 'region', 'chunk-size', 'size', 'path-style']);
  noUserinfo(e, p, 'S3 credentials come from the AWS environment or profile chain');
  const bucket = p.authority ?? '';
  if (!BUCKET.test(bucket)) e.fail(`bucket '${bucket}' is not a valid bucket name (3-63 of a-z, 0-9, '.', '-')`);
  const endpoint = p.params.get('endpoint');
  if (endpoint !== undefined && !/^https?:\/\/[^/?#]+\/?$/.test(endpoint)) e.fail(`endpoint '${endpoint}' is not http(s)://host[:port]`);
  const region = p.params.get('region');
  if (region !== undefined && !/^[a-z0-9-]+$/.test(region)) e.fail(`region '${region}' is not a region name such as us-east-1`);
  const prefix = p.path.replace(/^\/+|\/+$/g, '');
  return {
    kind: 's3', bucket, endpoint, region,
    prefix: prefix === '' ? DEFAULT_PREFIX : prefix,
    forcePathStyle: boolParam(e, p, 'path-style') ?? endpoint !== undefined,
    chunkSize: chunkSizeParam(e, p) ?? DEFAULT_CHUNK_SIZE,
    size: sizeParam(e, p, 'size'),
  };
}

const CQL_NAME = /^[A-Za-z_][A-Za-z0-9_]{0,47}$/;

function cassandra(e: UriError, p: Parts): BackendSpec {
  allowOnly(e, p, ['prefix', 'chunk-size', 'size', 'dc']);
  const hosts = hostList(e, p, 0, true);
  const ports = new Set(hosts.map((h) => h.port).filter((port) => port !== 0));
  if (ports.size > 1) e.fail(`all hosts must use one port, not ${[...ports].join(' and ')}`);
  const [keyspace, table, ...rest] = p.path.replace(/^\//, '').split('/');
  if (keyspace === undefined || keyspace === '') e.fail('the keyspace is missing (cassandra://host:9042/keyspace/table)');
  if (!CQL_NAME.test(keyspace)) e.fail(`keyspace '${keyspace}' is not a CQL name (letters, digits, '_')`);
  if (table === undefined || table === '') e.fail('the table is missing (cassandra://host:9042/keyspace/table)');
  if (!CQL_NAME.test(table)) e.fail(`table '${table}' is not a CQL name (letters, digits, '_')`);
  if (rest.length > 0) e.fail(`unexpected path after the table: '/${rest.join('/')}'`);
  let username: string | undefined;
  let password: string | undefined;
  if (p.userinfo !== undefined) {
    const colon = p.userinfo.indexOf(':');
    username = decode(e, colon < 0 ? p.userinfo : p.userinfo.slice(0, colon), 'user name');
    password = colon < 0 ? undefined : decode(e, p.userinfo.slice(colon + 1), 'password');
  }
  return {
    kind: 'cassandra', keyspace, table, username, password,
    contactPoints: hosts.map((h) => h.host),
    port: [...ports][0] ?? DEFAULT_PORTS.cassandra,
    prefix: p.params.get('prefix') ?? DEFAULT_PREFIX,
    localDataCenter: p.params.get('dc'),
    chunkSize: chunkSizeParam(e, p) ?? DEFAULT_CHUNK_SIZE,
    size: sizeParam(e, p, 'size'),
  };
}

function grpc(e: UriError, p: Parts): BackendSpec {
  const secure = p.scheme === 'grpcs';
  allowOnly(e, p, ['token-file', 'chunk-size', 'channels', ...(secure ? ['ca', 'cert', 'key'] : [])]);
  noUserinfo(e, p, 'pass a bearer token with ?token-file=');
  let target: SocketAddress;
  if (p.scheme === 'grpc+unix') {
    target = { path: localPath(e, p) };
  } else {
    noPath(e, p, 'grpc takes host:port only');
    target = hostList(e, p, DEFAULT_PORTS.grpc, false)[0]!;
  }
  return {
    kind: 'grpc', target,
    tls: secure ? tlsFiles(e, p) : undefined,
    tokenFile: pathParam(e, p, 'token-file'),
    maxRequestBytes: sizeParam(e, p, 'chunk-size'),
    channels: countParam(e, p, 'channels'),
    size: undefined,
  };
}

function nbd(e: UriError, p: Parts): BackendSpec {
  const secure = p.scheme.startsWith('nbds');
  const unix = p.scheme.endsWith('+unix');
  allowOnly(e, p, ['connections', ...(unix ? ['socket'] : []), ...(secure ? ['ca', 'cert', 'key'] : [])]);
  noUserinfo(e, p, 'NBD has no passwords; use nbds:// with a client certificate');
  let address: SocketAddress;
  if (unix) {
    if (p.authority !== undefined && p.authority !== '') e.fail(`host '${p.authority}' is not allowed with a Unix socket (nbd+unix:///export?socket=/path)`);
    const socket = pathParam(e, p, 'socket');
    if (socket === undefined) e.fail('the socket parameter is missing (nbd+unix:///export?socket=/path)');
    address = { path: socket };
  } else {
    address = hostList(e, p, DEFAULT_PORTS.nbd, false)[0]!;
  }
  const exportName = p.path.replace(/^\//, '');
  if (Buffer.byteLength(exportName) > 4096) e.fail('the export name is longer than 4096 bytes');
  return { kind: 'nbd', address, exportName, tls: secure ? tlsFiles(e, p) : undefined, connections: countParam(e, p, 'connections'), size: undefined };
}

/** Parses a backend URI; a wrong URI names the part that is wrong and lists the accepted forms. */
export function parseBackendUri(uri: string): BackendSpec {
  const text = uri.trim();
  if (text === 'memory') return { kind: 'memory', size: undefined };
  if (text.startsWith('/')) return { kind: 'file', path: text, size: undefined };
  const scheme = /^([A-Za-z][A-Za-z0-9+.-]*):/.exec(text)?.[1]?.toLowerCase();
  const e = new UriError(uri, scheme === undefined ? undefined : SCHEME_FAMILY[scheme]);
  const p = split(e, text);
  switch (p.scheme) {
    case 'memory':
      allowOnly(e, p, ['size']);
      if (p.authority !== undefined || p.path !== '') e.fail(`unexpected path '${p.authority !== undefined ? `//${p.authority}` : ''}${p.path}' (memory takes only ?size=)`);
      return { kind: 'memory', size: sizeParam(e, p, 'size') };
    case 'file':
      allowOnly(e, p, ['size']);
      return { kind: 'file', path: localPath(e, p), size: sizeParam(e, p, 'size') };
    case 'dir':
      allowOnly(e, p, ['size', 'chunk-size', 'max-open-files']);
      return { kind: 'dir', path: localPath(e, p), size: sizeParam(e, p, 'size'), chunkSize: chunkSizeParam(e, p), maxOpenFiles: countParam(e, p, 'max-open-files') };
    case 'redis':
    case 'rediss':
      return redis(e, p, text);
    case 's3':
      return s3(e, p);
    case 'cassandra':
      return cassandra(e, p);
    case 'grpc':
    case 'grpcs':
    case 'grpc+unix':
      return grpc(e, p);
    case 'nbd':
    case 'nbds':
    case 'nbd+unix':
    case 'nbds+unix':
      return nbd(e, p);
    default:
      return e.fail(`unknown scheme '${p.scheme}'`);
  }
}
