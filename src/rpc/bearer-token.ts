/**
 * BearerToken: the shared secret of `--token-file` / `?token-file=`. The client sends
 * `authorization: Bearer <token>` with every call; the server compares in constant time
 * (`timingSafeEqual` over SHA-256 digests, so the lengths always match and the comparison does
 * not leak the token's length). The token never appears in logs or error messages.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { UsageError } from '../errors.js';

/** Printable ASCII without spaces: legal in a header value, unambiguous after "Bearer ". */
const TOKEN = /^[\x21-\x7e]+$/;
const BEARER = /^bearer +(\S+) *$/i;

function digest(text: string): Buffer {
  return createHash('sha256').update(text, 'utf8').digest();
}

export class BearerToken {
  readonly #header: string;
  readonly #digest: Buffer;

  constructor(token: string) {
    if (!TOKEN.test(token)) throw new UsageError('the token must be printable ASCII without spaces (and not empty)');
    this.#header = `Bearer ${token}`;
    this.#digest = digest(token);
  }

  /** The metadata value to send: `Bearer <token>` (a getter, so inspecting the object hides it). */
  get header(): string {
    return this.#header;
  }

  /** Reads a token file: surrounding whitespace (a trailing newline) is dropped. */
  static async fromFile(path: string): Promise<BearerToken> {
    let text: string;
    try {
      text = await readFile(path, 'utf8');
    } catch (err) {
      throw new UsageError(`cannot read the token file ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, { cause: err });
    }
    const token = text.trim();
    if (token === '') throw new UsageError(`the token file ${path} is empty`);
    try {
      return new BearerToken(token);
    } catch (err) {
      throw new UsageError(`the token file ${path}: ${(err as Error).message}`);
    }
  }

  /** True when one of the `authorization` values carries this token. */
  matches(values: readonly unknown[]): boolean {
    let ok = false;
    for (const value of values) {
      if (typeof value !== 'string') continue;
      const m = BEARER.exec(value);
      if (m !== null && timingSafeEqual(digest(m[1]!), this.#digest)) ok = true;
    }
    return ok;
  }

  /** Keeps the token out of logs and util.inspect. */
  toJSON(): string {
    return 'BearerToken(redacted)';
  }
}
