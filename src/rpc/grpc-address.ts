/**
 * gRPC listen URIs as users type them for `r3map-serve --listen`: `grpc://HOST:PORT` (plaintext),
 * `grpcs://HOST:PORT` (TLS) and `grpc+unix:///PATH` (plaintext on a Unix socket). HOST is a name,
 * an IPv4 address or a bracketed IPv6 address; port 0 picks a free port. Bad input is a
 * UsageError naming the accepted forms. `grpcTarget()` turns an address into what grpc-js binds
 * or dials.
 */
import { UsageError } from '../errors.js';
import { parseListenAddress } from '../nbd/listen-address.js';
import { isIPv6 } from 'node:net';

export type GrpcTcpAddress = { readonly scheme: 'grpc' | 'grpcs'; readonly host: string; readonly port: number };
export type GrpcUnixAddress = { readonly scheme: 'grpc+unix'; readonly path: string };
export type GrpcAddress = GrpcTcpAddress | GrpcUnixAddress;

export const GRPC_LISTEN_FORMS = 'grpc://HOST:PORT, grpcs://HOST:PORT or grpc+unix:///PATH';

export function parseGrpcListenUri(text: string): GrpcAddress {
  const input = text.trim();
  const sep = input.indexOf('://');
  const scheme = sep < 0 ? '' : input.slice(0, sep).toLowerCase();
  const rest = sep < 0 ? '' : input.slice(sep + 3);
  if (scheme === 'grpc+unix') {
    if (!rest.startsWith('/') || rest.length < 2) {
      throw new UsageError(`listen URI "${text}": the socket path must be absolute (grpc+unix:///run/r3map.sock)`);
    }
    return { scheme, path: rest };
  }
  if (scheme !== 'grpc' && scheme !== 'grpcs') {
    throw new UsageError(`listen URI "${text}": unknown scheme "${scheme || input}" (expected ${GRPC_LISTEN_FORMS})`);
  }
  if (rest === '' || rest.includes('/') || rest.startsWith('unix:')) {
    throw new UsageError(`listen URI "${text}": expected ${scheme}://HOST:PORT (${GRPC_LISTEN_FORMS})`);
  }
  let address;
  try {
    address = parseListenAddress(rest);
  } catch (err) {
    throw new UsageError(`listen URI "${text}": ${(err as Error).message.replace(/\(expected[^)]*\)/, `(expected ${GRPC_LISTEN_FORMS})`)}`);
  }
  if ('path' in address) throw new UsageError(`listen URI "${text}": expected ${scheme}://HOST:PORT`);
  return { scheme, host: address.host, port: address.port };
}

/** The URI a client uses: grpc://127.0.0.1:1337, grpcs://[::1]:1337, grpc+unix:///run/r3map.sock. */
export function formatGrpcUri(address: GrpcAddress): string {
  if (address.scheme === 'grpc+unix') return `grpc+unix://${address.path}`;
  return `${address.scheme}://${hostPort(address.host, address.port)}`;
}

/** What grpc-js binds or dials: 127.0.0.1:1337, [::1]:1337, 0.0.0.0:1337, unix:///path. */
export function grpcTarget(address: { readonly host: string; readonly port: number } | { readonly path: string }): string {
  if ('path' in address) return `unix://${address.path}`;
  return hostPort(address.host === '' ? '0.0.0.0' : address.host, address.port);
}

function hostPort(host: string, port: number): string {
  return isIPv6(host) ? `[${host}]:${port}` : `${host}:${port}`;
}
