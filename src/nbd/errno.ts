/**
 * Errors → NBD error values, the one place this mapping lives (like nbdkit's `nbd_errno`). The real
 * error is logged before the limited NBD errno goes out: at warn for failures (backend, I/O), at
 * debug for requests the client got wrong (they are answered and the connection goes on).
 */
import {
  BackendError,
  BadLengthError,
  ClosedError,
  MisalignedError,
  NbdRequestError,
  OutOfRangeError,
  R3mapError,
  ReadOnlyError,
} from '../errors.js';
import type { Logger } from '../log.js';
import { NBD_EINVAL, NBD_EIO, NBD_ENOMEM, NBD_ENOSPC, NBD_EOVERFLOW, NBD_EPERM, NBD_ESHUTDOWN, NbdCmd, NbdErrno, nameOf } from './constants.js';

/** Host errno codes (Node's `err.code`) that have an NBD counterpart; everything else is EIO. */
const SYSTEM_CODES: Readonly<Record<string, number>> = {
  EPERM: NBD_EPERM,
  EACCES: NBD_EPERM,
  EROFS: NBD_EPERM,
  ENOSPC: NBD_ENOSPC,
  EDQUOT: NBD_ENOSPC,
  EFBIG: NBD_ENOSPC,
  ENOMEM: NBD_ENOMEM,
  EINVAL: NBD_EINVAL,
  EOVERFLOW: NBD_EOVERFLOW,
  ESHUTDOWN: NBD_ESHUTDOWN,
  // No fast-zero support, so ENOTSUP is answered as EINVAL (as nbdkit does).
  ENOTSUP: NBD_EINVAL,
  EOPNOTSUPP: NBD_EINVAL,
};

const MAX_CAUSE_DEPTH = 5;

/** The NBD errno for an error (pure; no logging). Never 0. */
export function nbdErrnoOf(err: unknown): number {
  let e: unknown = err;
  for (let depth = 0; depth < MAX_CAUSE_DEPTH && e !== undefined && e !== null; depth++) {
    if (e instanceof NbdRequestError) return e.errno === 0 ? NBD_EINVAL : e.errno;
    if (e instanceof OutOfRangeError || e instanceof MisalignedError || e instanceof BadLengthError) return NBD_EINVAL;
    if (e instanceof ReadOnlyError) return NBD_EPERM;
    if (e instanceof ClosedError) return NBD_ESHUTDOWN;
    if (!(e instanceof R3mapError)) {
      const code = (e as { code?: unknown }).code;
      if (typeof code === 'string' && code in SYSTEM_CODES) return SYSTEM_CODES[code]!;
    }
    e = (e as { cause?: unknown }).cause;
  }
  return NBD_EIO;
}

/** True for errors that describe a bad request rather than a failure of the server or backend. */
export function isClientFault(err: unknown): boolean {
  return (
    err instanceof NbdRequestError ||
    err instanceof OutOfRangeError ||
    err instanceof MisalignedError ||
    err instanceof BadLengthError ||
    err instanceof ReadOnlyError
  );
}

export interface RequestContext {
  readonly cmd: number;
  readonly offset: number;
  readonly length: number;
}

/** Maps `err` for a reply and logs the real error first (warn for failures, debug for client faults). */
export function replyErrnoFor(err: unknown, log: Logger, req: RequestContext): number {
  const errno = nbdErrnoOf(err);
  const fields = {
    err,
    cmd: nameOf(NbdCmd, req.cmd),
    offset: req.offset,
    length: req.length,
    errno: nameOf(NbdErrno, errno),
  };
  if (isClientFault(err)) log.debug(fields, 'request refused');
  else log.warn(fields, err instanceof BackendError ? 'backend failed; replying with an NBD error' : 'request failed');
  return errno;
}
