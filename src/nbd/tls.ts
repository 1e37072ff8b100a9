/**
 * TLS for NBD the spec's way: NBD_OPT_STARTTLS during option haggling, then the same socket is
 * upgraded in place and haggling (and later transmission) goes on over TLS.
 *
 * Server side: `NbdServerTlsOptions` (PEM contents) are resolved once; each STARTTLS upgrades
 * its socket with a `tls.Server` made for that connection, so Node's own peer verification runs
 * (a bare `new TLSSocket(..., { isServer: true })` never checks a client certificate). With
 * `clientCa`, clients must present a certificate issued by it (mutual TLS).
 *
 * Client side: `upgradeClientSocket` verifies the server against `ca` (or the system store) and
 * the host it dialled (IP SANs for addresses, DNS names otherwise; 'localhost' on Unix sockets).
 *
 * `readTlsFiles` loads PEM files named by path, for the CLI and the backend URIs.
 */
import { once } from 'node:events';
import { readFile } from 'node:fs/promises';
import { isIP, type Socket } from 'node:net';
import tls, { type TLSSocket } from 'node:tls';
import { NbdProtocolError, TimeoutError, UsageError } from '../errors.js';

export type Pem = string | Buffer;

export interface NbdServerTlsOptions {
  readonly cert: Pem;
  readonly key: Pem;
  /** CA that client certificates must chain to; set it to require them (mutual TLS). */
  readonly clientCa?: Pem;
  /**
   * FORCEDTLS when true (the default): every option but NBD_OPT_STARTTLS and NBD_OPT_ABORT gets
   * NBD_REP_ERR_TLS_REQD until TLS is up. False lets plaintext clients in too.
   */
  readonly require?: boolean;
  /** Bound on the TLS handshake in ms; default 10000. */
  readonly handshakeTimeoutMs?: number;
}

export interface ResolvedServerTls {
  readonly require: boolean;
  readonly mutual: boolean;
  readonly serverOptions: tls.TlsOptions;
}

export interface NbdClientTlsOptions {
  /** CA the server certificate must chain to; default the system store. */
  readonly ca?: Pem;
  /** Client certificate and key, for servers that ask for one (mutual TLS). */
  readonly cert?: Pem;
  readonly key?: Pem;
  /** Name to check the server certificate against; default the host dialled. */
  readonly servername?: string;
}

export function resolveServerTls(options: NbdServerTlsOptions): ResolvedServerTls {
  const mutual = options.clientCa !== undefined;
  const serverOptions: tls.TlsOptions = Object.freeze({
    cert: options.cert,
    key: options.key,
    minVersion: 'TLSv1.2',
    handshakeTimeout: options.handshakeTimeoutMs ?? 10_000,
    ...(mutual ? { ca: options.clientCa, requestCert: true, rejectUnauthorized: true } : { requestCert: false }),
  });
  // Fail now, with a usage error, rather than at the first STARTTLS.
  try {
    tls.createSecureContext(serverOptions);
  } catch (err) {
    throw new UsageError(`NBD TLS: the certificate, key or client CA is not usable: ${(err as Error).message}`, { cause: err });
  }
  return Object.freeze({ require: options.require ?? true, mutual, serverOptions });
}

/** Runs the server side of the TLS handshake on `raw` (right after NBD_REP_ACK to STARTTLS). */
export function upgradeServerSocket(raw: Socket, resolved: ResolvedServerTls): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    const server = tls.createServer(resolved.serverOptions);
    server.once('secureConnection', (socket: TLSSocket) => {
      server.removeAllListeners('tlsClientError');
      resolve(socket);
    });
    server.once('tlsClientError', (err: Error) => {
      server.removeAllListeners('secureConnection');
      raw.destroy();
      reject(new NbdProtocolError(`TLS handshake failed: ${(err as NodeJS.ErrnoException).code ?? err.message}`, { cause: err }));
    });
    server.emit('connection', raw);
  });
}

/** Runs the client side of the TLS handshake on `raw` (after NBD_REP_ACK to STARTTLS). */
export async function upgradeClientSocket(raw: Socket, host: string | undefined, options: NbdClientTlsOptions, timeoutMs: number): Promise<TLSSocket> {
  const name = options.servername ?? host ?? 'localhost';
  const socket = tls.connect({
    socket: raw,
    host: name,
    ...(isIP(name) === 0 ? { servername: name } : {}),
    ...(options.ca !== undefined ? { ca: options.ca } : {}),
    ...(options.cert !== undefined ? { cert: options.cert } : {}),
    ...(options.key !== undefined ? { key: options.key } : {}),
    minVersion: 'TLSv1.2',
  });
  const signal = timeoutMs > 0 ? AbortSignal.timeout(timeoutMs) : undefined;
  try {
    await once(socket, 'secureConnect', signal !== undefined ? { signal } : {});
  } catch (err) {
    socket.destroy();
    if (signal?.aborted === true) throw new TimeoutError(`TLS handshake with ${name} took longer than ${timeoutMs} ms`, { cause: err });
    throw new NbdProtocolError(`TLS handshake with ${name} failed: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, { cause: err });
  }
  return socket;
}

export interface TlsFiles {
  readonly ca?: string;
  readonly cert?: string;
  readonly key?: string;
}

/** Reads the PEM files named in `files`; a file that cannot be read is a UsageError naming it. */
export async function readTlsFiles(files: TlsFiles): Promise<NbdClientTlsOptions> {
  if ((files.cert === undefined) !== (files.key === undefined)) {
    throw new UsageError(`TLS: a client certificate needs its key and the other way round (cert=${files.cert ?? 'none'} key=${files.key ?? 'none'})`);
  }
  return {
    ...(files.ca !== undefined ? { ca: await readPem('ca', files.ca) } : {}),
    ...(files.cert !== undefined ? { cert: await readPem('cert', files.cert) } : {}),
    ...(files.key !== undefined ? { key: await readPem('key', files.key) } : {}),
  };
}

export interface NbdServerTlsFiles {
  readonly cert: string;
  readonly key: string;
  readonly clientCa?: string;
  readonly require?: boolean;
}

/** NbdServerTlsOptions from file paths (r3map-serve's --tls-cert, --tls-key, --tls-client-ca). */
export async function readServerTlsFiles(files: NbdServerTlsFiles): Promise<NbdServerTlsOptions> {
  return {
    cert: await readPem('cert', files.cert),
    key: await readPem('key', files.key),
    ...(files.clientCa !== undefined ? { clientCa: await readPem('client CA', files.clientCa) } : {}),
    ...(files.require !== undefined ? { require: files.require } : {}),
  };
}

async function readPem(what: string, file: string): Promise<Buffer> {
  try {
    return await readFile(file);
  } catch (err) {
    throw new UsageError(`TLS ${what} file ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, { cause: err });
  }
}
