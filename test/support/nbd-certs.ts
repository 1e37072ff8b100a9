/**
 * A throwaway PKI for TLS tests, made with the `openssl` CLI in a directory the caller removes:
 * a CA, a server certificate for 127.0.0.1 / ::1 / localhost, a client certificate signed by the
 * same CA, and a second CA with its own client certificate (a client our server must refuse).
 *
 * File names follow both nbdkit's and libnbd's conventions, so the directory can be passed to
 * `nbdkit --tls-certificates=DIR` (ca-cert.pem, server-cert.pem, server-key.pem) and to libnbd's
 * `?tls-certificates=DIR` (ca-cert.pem, client-cert.pem, client-key.pem) as it is.
 */
import { chmod, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { runOk } from './tools.js';

export interface TestCerts {
  readonly dir: string;
  readonly ca: string;
  readonly serverCert: string;
  readonly serverKey: string;
  readonly clientCert: string;
  readonly clientKey: string;
  /** A client certificate from an unrelated CA. */
  readonly strangerCert: string;
  readonly strangerKey: string;
}

const DAYS = '2';

/** Makes the certificates in `dir` (about a second of openssl work). */
export async function makeTestCerts(dir: string): Promise<TestCerts> {
  const f = (name: string): string => path.join(dir, name);
  const ssl = (...args: string[]): Promise<unknown> => runOk('openssl', args, { timeoutMs: 30_000 });
  await writeFile(f('server.ext'), 'subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost\nextendedKeyUsage=serverAuth\n');
  await writeFile(f('client.ext'), 'extendedKeyUsage=clientAuth\n');
  for (const ca of ['ca', 'stranger-ca']) {
    await ssl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', DAYS,
      '-subj', `/CN=r3map test ${ca}`, '-keyout', f(`${ca}-key.pem`), '-out', f(`${ca}-cert.pem`));
  }
  const leaf = async (name: string, cn: string, ca: string, ext: string): Promise<void> => {
    await ssl('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-subj', `/CN=${cn}`,
      '-keyout', f(`${name}-key.pem`), '-out', f(`${name}.csr`));
    await ssl('x509', '-req', '-in', f(`${name}.csr`), '-CA', f(`${ca}-cert.pem`), '-CAkey', f(`${ca}-key.pem`),
      '-CAcreateserial', '-days', DAYS, '-extfile', f(ext), '-out', f(`${name}-cert.pem`));
    await chmod(f(`${name}-key.pem`), 0o600);
  };
  await leaf('server', 'localhost', 'ca', 'server.ext');
  await leaf('client', 'r3map test client', 'ca', 'client.ext');
  await leaf('stranger', 'r3map stranger', 'stranger-ca', 'client.ext');
  return {
    dir,
    ca: f('ca-cert.pem'),
    serverCert: f('server-cert.pem'),
    serverKey: f('server-key.pem'),
    clientCert: f('client-cert.pem'),
    clientKey: f('client-key.pem'),
    strangerCert: f('stranger-cert.pem'),
    strangerKey: f('stranger-key.pem'),
  };
}
