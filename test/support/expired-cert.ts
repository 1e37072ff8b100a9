/**
 * A client certificate from the test CA of nbd-certs.ts whose validity ended a day ago, for
 * "an expired client certificate is refused" tests (openssl 3.0's `x509 -days -1`).
 */
import path from 'node:path';
import { runOk } from './tools.js';
import type { TestCerts } from './nbd-certs.js';

export async function makeExpiredClientCert(certs: TestCerts): Promise<{ readonly cert: string; readonly key: string }> {
  const f = (name: string): string => path.join(certs.dir, name);
  const ssl = (...args: string[]): Promise<unknown> => runOk('openssl', args, { timeoutMs: 30_000 });
  await ssl('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-subj', '/CN=r3map expired client',
    '-keyout', f('expired-key.pem'), '-out', f('expired.csr'));
  await ssl('x509', '-req', '-in', f('expired.csr'), '-CA', certs.ca, '-CAkey', f('ca-key.pem'), '-CAcreateserial',
    '-days', '-1', '-extfile', f('client.ext'), '-out', f('expired-cert.pem'));
  return { cert: f('expired-cert.pem'), key: f('expired-key.pem') };
}
