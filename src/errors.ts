/**
 * Every error r3map raises. Each has a stable `code`; test with `instanceof` or `code`,
 * never with the message text. Errors are mapped at three boundaries only: `nbd/errno.ts`,
 * `rpc/status.ts` and `cli/run.ts`.
 */
export type R3mapErrorCode =
  | 'ERR_USAGE'
  | 'ERR_OUT_OF_RANGE'
  | 'ERR_MISALIGNED'
  | 'ERR_BAD_LENGTH'
  | 'ERR_READ_ONLY'
  | 'ERR_CLOSED'
  | 'ERR_BACKEND'
  | 'ERR_NBD_PROTOCOL'
  | 'ERR_NBD_REQUEST'
  | 'ERR_KERNEL'
  | 'ERR_MIGRATION'
  | 'ERR_TIMEOUT';

export class R3mapError extends Error {
  readonly code: R3mapErrorCode;
  constructor(code: R3mapErrorCode, message: string, options?: ErrorOptions) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

/** Bad flags, URIs or arguments: one line on stderr, exit 2. */
export class UsageError extends R3mapError {
  constructor(message: string, options?: ErrorOptions) {
    super('ERR_USAGE', message, options);
  }
}

/** A range that falls outside the resource. */
export class OutOfRangeError extends R3mapError {
  readonly off: number;
  readonly length: number;
  readonly size: number;
  constructor(off: number, length: number, size: number, what = 'offset and length') {
    super('ERR_OUT_OF_RANGE', `${what} are out of range: off=${off} length=${length} size=${size}`);
    this.off = off;
    this.length = length;
    this.size = size;
  }
}

/** An offset that is not a multiple of the chunk (or block) size. */
export class MisalignedError extends R3mapError {
  readonly off: number;
  readonly alignment: number;
  constructor(off: number, alignment: number) {
    super('ERR_MISALIGNED', `offset ${off} is not a multiple of ${alignment}`);
    this.off = off;
    this.alignment = alignment;
  }
}

/** A buffer whose length is not what the stage accepts. */
export class BadLengthError extends R3mapError {
  readonly length: number;
  readonly expected: number;
  constructor(length: number, expected: number, what = 'length') {
    super('ERR_BAD_LENGTH', `${what} ${length} is not the expected ${expected}`);
    this.length = length;
    this.expected = expected;
  }
}

/** A write to something that only reads. */
export class ReadOnlyError extends R3mapError {
  constructor(what = 'resource') {
    super('ERR_READ_ONLY', `${what} is read-only`);
  }
}

/** A call on something already closed. */
export class ClosedError extends R3mapError {
  constructor(what = 'resource') {
    super('ERR_CLOSED', `${what} is closed`);
  }
}

export interface BackendErrorInfo {
  readonly backend: string;
  readonly op: string;
  readonly off?: number;
  readonly length?: number;
}

/** A store failed; the driver's error is the `cause`. */
export class BackendError extends R3mapError {
  readonly backend: string;
  readonly op: string;
  readonly off: number | undefined;
  readonly length: number | undefined;
  constructor(info: BackendErrorInfo, message: string, options?: ErrorOptions) {
    const where = info.off === undefined ? '' : ` off=${info.off} length=${info.length ?? 0}`;
    super('ERR_BACKEND', `${info.backend} ${info.op}${where}: ${message}`, options);
    this.backend = info.backend;
    this.op = info.op;
    this.off = info.off;
    this.length = info.length;
  }
}

/** The peer broke the NBD wire format: log, drop that connection. */
export class NbdProtocolError extends R3mapError {
  constructor(message: string, options?: ErrorOptions) {
    super('ERR_NBD_PROTOCOL', message, options);
  }
}

/** A request that fails with an NBD errno while the stream stays in sync. */
export class NbdRequestError extends R3mapError {
  readonly errno: number;
  constructor(errno: number, message: string, options?: ErrorOptions) {
    super('ERR_NBD_REQUEST', message, options);
    this.errno = errno;
  }
}

export interface KernelErrorInfo {
  readonly syscall: string;
  readonly errno: number;
  readonly errnoName?: string;
  readonly device?: string;
}

/** A syscall failed, e.g. `NBD_SET_SOCK /dev/nbd3: EBUSY`. */
export class KernelError extends R3mapError {
  readonly syscall: string;
  readonly errno: number;
  readonly device: string | undefined;
  constructor(info: KernelErrorInfo, hint?: string) {
    const name = info.errnoName ?? `errno ${info.errno}`;
    super('ERR_KERNEL', `${info.syscall}${info.device ? ` ${info.device}` : ''}: ${name}${hint ? ` (${hint})` : ''}`);
    this.syscall = info.syscall;
    this.errno = info.errno;
    this.device = info.device;
  }
}

export class MigrationError extends R3mapError {
  constructor(message: string, options?: ErrorOptions) {
    super('ERR_MIGRATION', message, options);
  }
}

export class TimeoutError extends R3mapError {
  constructor(message: string, options?: ErrorOptions) {
    super('ERR_TIMEOUT', message, options);
  }
}

export function isR3mapError(err: unknown, code?: R3mapErrorCode): err is R3mapError {
  return err instanceof R3mapError && (code === undefined || err.code === code);
}
