/**
 * Listen addresses as users type them: "127.0.0.1:10809", "[::1]:10809", "localhost:10809",
 * ":10809" (every interface), "unix:/run/r3map.sock" (also a bare absolute path). Port 0 picks a
 * free port. Bad input is a UsageError naming the accepted forms.
 */
import { isIPv6 } from 'node:net';
import { UsageError } from '../errors.js';

export type ListenAddress = { readonly host: string; readonly port: number } | { readonly path: string };

const FORMS = 'expected HOST:PORT, [IPV6]:PORT, :PORT or unix:/PATH';
const HOSTNAME = /^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$/;

export function parseListenAddress(text: string): ListenAddress {
  const input = text.trim();
  if (input.startsWith('unix:')) {
    const path = input.slice('unix:'.length);
    if (path === '') throw new UsageError(`listen address "${text}" has an empty socket path (${FORMS})`);
    return { path };
  }
  if (input.startsWith('/')) return { path: input };
  const colon = input.lastIndexOf(':');
  if (colon < 0) throw new UsageError(`listen address "${text}" has no port (${FORMS})`);
  let host = input.slice(0, colon);
  const port = parsePort(input.slice(colon + 1), text);
  if (host.startsWith('[')) {
    if (!host.endsWith(']') || !isIPv6(host.slice(1, -1))) {
      throw new UsageError(`listen address "${text}" has an invalid IPv6 address (${FORMS})`);
    }
    host = host.slice(1, -1);
  } else if (host.includes(':')) {
    throw new UsageError(`listen address "${text}": put an IPv6 address in brackets, e.g. [::1]:10809`);
  } else if (host !== '' && !HOSTNAME.test(host)) {
    throw new UsageError(`listen address "${text}" has an invalid host "${host}" (${FORMS})`);
  }
  return { host, port };
}

/** The address as a user would type it back: "127.0.0.1:10809", "[::1]:10809", "unix:/path". */
export function formatListenAddress(address: ListenAddress): string {
  if ('path' in address) return `unix:${address.path}`;
  return isIPv6(address.host) ? `[${address.host}]:${address.port}` : `${address.host}:${address.port}`;
}

function parsePort(text: string, input: string): number {
  if (!/^\d{1,5}$/.test(text)) throw new UsageError(`listen address "${input}" has an invalid port "${text}" (${FORMS})`);
  const port = Number(text);
  if (port > 65535) throw new UsageError(`listen address "${input}": port ${port} is out of range (0..65535)`);
  return port;
}
