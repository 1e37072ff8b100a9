/**
 * readPemFile: reads a certificate or key for TLS and says which flag or URI parameter was wrong
 * when it cannot (missing file, no PEM block), as a UsageError.
 */
import { readFile } from 'node:fs/promises';
import { UsageError } from '../errors.js';

export async function readPemFile(path: string, what: string): Promise<Buffer> {
  let pem: Buffer;
  try {
    pem = await readFile(path);
  } catch (err) {
    throw new UsageError(`cannot read ${what} ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, { cause: err });
  }
  if (!pem.includes('-----BEGIN ')) throw new UsageError(`${what} ${path} holds no PEM block (-----BEGIN …)`);
  return pem;
}
