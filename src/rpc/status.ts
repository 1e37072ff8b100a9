/**
 * Errors → gRPC status and back, the one place this mapping lives (as nbd/errno.ts is for NBD).
 *
 * Server side, `toStatus(err)` picks a code any gRPC client understands and also sends our error
 * code in the `r3map-error-code` trailer. Client side, `fromStatus(err, call)` rebuilds the local
 * class from that trailer (or from the status code when a foreign server sent none), with the
 * remote message, so a caller cannot tell a remote OutOfRangeError from a local one.
 *
 *   OutOfRangeError                         OUT_OF_RANGE
 *   UsageError, BadLengthError, Misaligned  INVALID_ARGUMENT
 *   ReadOnlyError                           PERMISSION_DENIED
 *   (missing or wrong token)                UNAUTHENTICATED
 *   ClosedError                             UNAVAILABLE
 *   BackendError                            UNAVAILABLE when its cause is a transient network error, else INTERNAL
 *   TimeoutError                            DEADLINE_EXCEEDED
 *   MigrationError                          FAILED_PRECONDITION
 *   anything else                           INTERNAL
 */
import { Metadata, status as Status, type StatusObject } from '@grpc/grpc-js';
import {
  BackendError,
  BadLengthError,
  ClosedError,
  MigrationError,
  MisalignedError,
  OutOfRangeError,
  R3mapError,
  ReadOnlyError,
  TimeoutError,
  UsageError,
  type R3mapErrorCode,
} from '../errors.js';
import { isTransientNetworkError } from '../util/retry.js';

/** Trailer that carries our error code next to the gRPC status. */
export const ERROR_CODE_KEY = 'r3map-error-code';

/** What `callback(status)` takes in a grpc-js handler. */
export interface RpcStatus {
  readonly code: Status;
  readonly details: string;
  readonly metadata: Metadata;
}

/** A failed call as grpc-js reports it on the client (a ServiceError). */
export type RpcError = Error & Partial<StatusObject>;

/** Which call failed, to fill in the rebuilt error. */
export interface CallInfo {
  /** Names the remote in messages, e.g. 'grpc://127.0.0.1:1337'. */
  readonly backend: string;
  /** The RPC, e.g. 'ReadAt'. */
  readonly op: string;
  readonly off?: number;
  readonly length?: number;
  /** The remote resource's size, for OutOfRangeError. */
  readonly size?: number;
}

/** An error in the shape grpc-js gives a failed call (for clients that are not grpc-js). */
export function rpcError(code: Status, details: string, metadata = new Metadata()): RpcError {
  return Object.assign(new Error(`${code} ${Status[code]}: ${details}`), { code, details, metadata });
}

export function statusName(code: number | undefined): string {
  return code === undefined ? 'UNKNOWN' : (Status[code] ?? `status ${code}`);
}

/** The gRPC status code for an error raised while serving a call. */
export function statusCodeOf(err: unknown): Status {
  if (!(err instanceof R3mapError)) return Status.INTERNAL;
  switch (err.code) {
    case 'ERR_OUT_OF_RANGE':
      return Status.OUT_OF_RANGE;
    case 'ERR_USAGE':
    case 'ERR_BAD_LENGTH':
    case 'ERR_MISALIGNED':
    case 'ERR_NBD_REQUEST':
      return Status.INVALID_ARGUMENT;
    case 'ERR_READ_ONLY':
      return Status.PERMISSION_DENIED;
    case 'ERR_CLOSED':
      return Status.UNAVAILABLE;
    case 'ERR_BACKEND':
      return isTransientNetworkError(err) ? Status.UNAVAILABLE : Status.INTERNAL;
    case 'ERR_TIMEOUT':
      return Status.DEADLINE_EXCEEDED;
    case 'ERR_MIGRATION':
      return Status.FAILED_PRECONDITION;
    default:
      return Status.INTERNAL;
  }
}

/** The status a handler replies with for `err`. */
export function toStatus(err: unknown): RpcStatus {
  const metadata = new Metadata();
  if (err instanceof R3mapError) metadata.set(ERROR_CODE_KEY, err.code);
  const details = err instanceof Error ? err.message : String(err);
  return { code: statusCodeOf(err), details, metadata };
}

/** The status for a call without the right bearer token. */
export function unauthenticated(details: string): RpcStatus {
  return { code: Status.UNAUTHENTICATED, details, metadata: new Metadata() };
}

function remoteCode(err: RpcError): string | undefined {
  const value = err.metadata?.get(ERROR_CODE_KEY)[0];
  return typeof value === 'string' ? value : undefined;
}

/** Replaces the message (and the stack's first line) of a freshly made error. */
function withMessage<E extends Error>(e: E, message: string): E {
  const old = `${e.name}: ${e.message}`;
  e.message = message;
  if (e.stack?.startsWith(old) === true) e.stack = `${e.name}: ${message}${e.stack.slice(old.length)}`;
  return e;
}

/**
 * True for failures a retry may cure: UNAVAILABLE from the transport (connection refused or
 * reset, server restarting) or from a transient backend error, never from a closed remote.
 */
export function isTransientStatus(err: unknown): boolean {
  const e = err as RpcError;
  return e instanceof Error && e.code === Status.UNAVAILABLE && remoteCode(e) !== 'ERR_CLOSED';
}

/** The local error for a failed call: the class the server raised, with its message. */
export function fromStatus(err: RpcError, call: CallInfo): R3mapError {
  const details = err.details ?? err.message;
  const off = call.off ?? 0;
  const length = call.length ?? 0;
  const code = (remoteCode(err) as R3mapErrorCode | undefined) ?? codeOfStatus(err.code);
  switch (code) {
    case 'ERR_OUT_OF_RANGE':
      return withMessage(new OutOfRangeError(off, length, call.size ?? 0), details);
    case 'ERR_MISALIGNED':
      return withMessage(new MisalignedError(off, 0), details);
    case 'ERR_BAD_LENGTH':
      return withMessage(new BadLengthError(length, 0), details);
    case 'ERR_USAGE':
    case 'ERR_NBD_REQUEST':
      return new UsageError(details, { cause: err });
    case 'ERR_READ_ONLY':
      return withMessage(new ReadOnlyError(), details);
    case 'ERR_CLOSED':
      return withMessage(new ClosedError(), details);
    case 'ERR_TIMEOUT':
      return new TimeoutError(`${call.backend} ${call.op}: ${details}`, { cause: err });
    case 'ERR_MIGRATION':
      return new MigrationError(details, { cause: err });
    default:
      break;
  }
  const info = { backend: call.backend, op: call.op, ...(call.off !== undefined ? { off, length } : {}) };
  if (err.code === Status.UNAUTHENTICATED) {
    return new BackendError(info, `the server refused the credentials (${details}); check the token file (?token-file=) or the client certificate`, { cause: err });
  }
  return new BackendError(info, `${details} (gRPC ${statusName(err.code)})`, { cause: err });
}

/** Our error code for a status from a server that sent no r3map-error-code trailer. */
function codeOfStatus(code: number | undefined): R3mapErrorCode | undefined {
  switch (code) {
    case Status.OUT_OF_RANGE:
      return 'ERR_OUT_OF_RANGE';
    case Status.INVALID_ARGUMENT:
      return 'ERR_USAGE';
    case Status.PERMISSION_DENIED:
      return 'ERR_READ_ONLY';
    case Status.DEADLINE_EXCEEDED:
      return 'ERR_TIMEOUT';
    default:
      return undefined;
  }
}
