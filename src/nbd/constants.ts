/**
 * NBD wire constants under the names used by the spec (NetworkBlockDevice/nbd `doc/proto.md`), so
 * `grep NBD_OPT_GO` finds both. Grouped in `as const` objects (for `nameOf` in log lines) and also
 * exported one by one. 64-bit magics are split into two 32-bit halves: no BigInt on the wire path.
 */

/** 'NBDMAGIC' (INIT_PASSWD), sent first by a newstyle server. */
export const NBD_INIT_PASSWD_HI = 0x4e42444d;
export const NBD_INIT_PASSWD_LO = 0x41474943;
/** 'IHAVEOPT', sent by the server after NBDMAGIC and by the client before every option. */
export const NBD_OPTS_MAGIC_HI = 0x49484156;
export const NBD_OPTS_MAGIC_LO = 0x454f5054;
/** 0x3e889045565a9, leads every fixed-newstyle option reply. */
export const NBD_REP_MAGIC_HI = 0x0003e889;
export const NBD_REP_MAGIC_LO = 0x045565a9;
export const NBD_REQUEST_MAGIC = 0x25609513;
export const NBD_SIMPLE_REPLY_MAGIC = 0x67446698;
export const NBD_STRUCTURED_REPLY_MAGIC = 0x668e33ef;

/** Wire sizes in bytes. */
export const NBD_GREETING_SIZE = 8 + 8 + 2;
export const NBD_CLIENT_FLAGS_SIZE = 4;
export const NBD_OPTION_HEADER_SIZE = 8 + 4 + 4;
export const NBD_OPTION_REPLY_HEADER_SIZE = 8 + 4 + 4 + 4;
export const NBD_REQUEST_SIZE = 4 + 2 + 2 + 8 + 8 + 4;
export const NBD_SIMPLE_REPLY_SIZE = 4 + 4 + 8;
/** Reserved zeroes after the NBD_OPT_EXPORT_NAME reply unless NBD_FLAG_C_NO_ZEROES. */
export const NBD_EXPORT_NAME_ZEROES = 124;
/** Longest string (export name, description, message) the spec allows. */
export const NBD_MAX_STRING = 4096;

export const NbdHandshakeFlag = {
  NBD_FLAG_FIXED_NEWSTYLE: 1 << 0,
  NBD_FLAG_NO_ZEROES: 1 << 1,
} as const;
export const { NBD_FLAG_FIXED_NEWSTYLE, NBD_FLAG_NO_ZEROES } = NbdHandshakeFlag;

export const NbdClientFlag = {
  NBD_FLAG_C_FIXED_NEWSTYLE: 1 << 0,
  NBD_FLAG_C_NO_ZEROES: 1 << 1,
} as const;
export const { NBD_FLAG_C_FIXED_NEWSTYLE, NBD_FLAG_C_NO_ZEROES } = NbdClientFlag;

export const NbdTransmissionFlag = {
  NBD_FLAG_HAS_FLAGS: 1 << 0,
  NBD_FLAG_READ_ONLY: 1 << 1,
  NBD_FLAG_SEND_FLUSH: 1 << 2,
  NBD_FLAG_SEND_FUA: 1 << 3,
  NBD_FLAG_ROTATIONAL: 1 << 4,
  NBD_FLAG_SEND_TRIM: 1 << 5,
  NBD_FLAG_SEND_WRITE_ZEROES: 1 << 6,
  NBD_FLAG_SEND_DF: 1 << 7,
  NBD_FLAG_CAN_MULTI_CONN: 1 << 8,
  NBD_FLAG_SEND_RESIZE: 1 << 9,
  NBD_FLAG_SEND_CACHE: 1 << 10,
  NBD_FLAG_SEND_FAST_ZERO: 1 << 11,
  NBD_FLAG_BLOCK_STATUS_PAYLOAD: 1 << 12,
} as const;
export const {
  NBD_FLAG_HAS_FLAGS,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_FLAG_ROTATIONAL,
  NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_WRITE_ZEROES,
  NBD_FLAG_SEND_DF,
  NBD_FLAG_CAN_MULTI_CONN,
  NBD_FLAG_SEND_RESIZE,
  NBD_FLAG_SEND_CACHE,
  NBD_FLAG_SEND_FAST_ZERO,
  NBD_FLAG_BLOCK_STATUS_PAYLOAD,
} = NbdTransmissionFlag;

export const NbdOpt = {
  NBD_OPT_EXPORT_NAME: 1,
  NBD_OPT_ABORT: 2,
  NBD_OPT_LIST: 3,
  NBD_OPT_PEEK_EXPORT: 4,
  NBD_OPT_STARTTLS: 5,
  NBD_OPT_INFO: 6,
  NBD_OPT_GO: 7,
  NBD_OPT_STRUCTURED_REPLY: 8,
  NBD_OPT_LIST_META_CONTEXT: 9,
  NBD_OPT_SET_META_CONTEXT: 10,
  NBD_OPT_EXTENDED_HEADERS: 11,
} as const;
export type NbdOpt = (typeof NbdOpt)[keyof typeof NbdOpt];
export const {
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_ABORT,
  NBD_OPT_LIST,
  NBD_OPT_PEEK_EXPORT,
  NBD_OPT_STARTTLS,
  NBD_OPT_INFO,
  NBD_OPT_GO,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_OPT_LIST_META_CONTEXT,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_EXTENDED_HEADERS,
} = NbdOpt;

const NBD_REP_FLAG_ERROR = 2 ** 31;
export const NbdRep = {
  NBD_REP_ACK: 1,
  NBD_REP_SERVER: 2,
  NBD_REP_INFO: 3,
  NBD_REP_META_CONTEXT: 4,
  NBD_REP_ERR_UNSUP: NBD_REP_FLAG_ERROR + 1,
  NBD_REP_ERR_POLICY: NBD_REP_FLAG_ERROR + 2,
  NBD_REP_ERR_INVALID: NBD_REP_FLAG_ERROR + 3,
  NBD_REP_ERR_PLATFORM: NBD_REP_FLAG_ERROR + 4,
  NBD_REP_ERR_TLS_REQD: NBD_REP_FLAG_ERROR + 5,
  NBD_REP_ERR_UNKNOWN: NBD_REP_FLAG_ERROR + 6,
  NBD_REP_ERR_SHUTDOWN: NBD_REP_FLAG_ERROR + 7,
  NBD_REP_ERR_BLOCK_SIZE_REQD: NBD_REP_FLAG_ERROR + 8,
  NBD_REP_ERR_TOO_BIG: NBD_REP_FLAG_ERROR + 9,
  NBD_REP_ERR_EXT_HEADER_REQD: NBD_REP_FLAG_ERROR + 10,
} as const;
export type NbdRep = (typeof NbdRep)[keyof typeof NbdRep];
export const {
  NBD_REP_ACK,
  NBD_REP_SERVER,
  NBD_REP_INFO,
  NBD_REP_META_CONTEXT,
  NBD_REP_ERR_UNSUP,
  NBD_REP_ERR_POLICY,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_PLATFORM,
  NBD_REP_ERR_TLS_REQD,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_SHUTDOWN,
  NBD_REP_ERR_BLOCK_SIZE_REQD,
  NBD_REP_ERR_TOO_BIG,
  NBD_REP_ERR_EXT_HEADER_REQD,
} = NbdRep;

/** True for the NBD_REP_ERR_* reply types (bit 31 set). */
export function isNbdRepError(type: number): boolean {
  return type >= NBD_REP_FLAG_ERROR;
}

export const NbdInfo = {
  NBD_INFO_EXPORT: 0,
  NBD_INFO_NAME: 1,
  NBD_INFO_DESCRIPTION: 2,
  NBD_INFO_BLOCK_SIZE: 3,
} as const;
export type NbdInfo = (typeof NbdInfo)[keyof typeof NbdInfo];
export const { NBD_INFO_EXPORT, NBD_INFO_NAME, NBD_INFO_DESCRIPTION, NBD_INFO_BLOCK_SIZE } = NbdInfo;

export const NbdCmd = {
  NBD_CMD_READ: 0,
  NBD_CMD_WRITE: 1,
  NBD_CMD_DISC: 2,
  NBD_CMD_FLUSH: 3,
  NBD_CMD_TRIM: 4,
  NBD_CMD_CACHE: 5,
  NBD_CMD_WRITE_ZEROES: 6,
  NBD_CMD_BLOCK_STATUS: 7,
  NBD_CMD_RESIZE: 8,
} as const;
export type NbdCmd = (typeof NbdCmd)[keyof typeof NbdCmd];
export const {
  NBD_CMD_READ,
  NBD_CMD_WRITE,
  NBD_CMD_DISC,
  NBD_CMD_FLUSH,
  NBD_CMD_TRIM,
  NBD_CMD_CACHE,
  NBD_CMD_WRITE_ZEROES,
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_RESIZE,
} = NbdCmd;

export const NbdCmdFlag = {
  NBD_CMD_FLAG_FUA: 1 << 0,
  NBD_CMD_FLAG_NO_HOLE: 1 << 1,
  NBD_CMD_FLAG_DF: 1 << 2,
  NBD_CMD_FLAG_REQ_ONE: 1 << 3,
  NBD_CMD_FLAG_FAST_ZERO: 1 << 4,
  NBD_CMD_FLAG_PAYLOAD_LEN: 1 << 5,
} as const;
export const {
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_FLAG_DF,
  NBD_CMD_FLAG_REQ_ONE,
  NBD_CMD_FLAG_FAST_ZERO,
  NBD_CMD_FLAG_PAYLOAD_LEN,
} = NbdCmdFlag;

/** Error values of the reply's error field (not the host's errno numbering). */
export const NbdErrno = {
  NBD_SUCCESS: 0,
  NBD_EPERM: 1,
  NBD_EIO: 5,
  NBD_ENOMEM: 12,
  NBD_EINVAL: 22,
  NBD_ENOSPC: 28,
  NBD_EOVERFLOW: 75,
  NBD_ENOTSUP: 95,
  NBD_ESHUTDOWN: 108,
} as const;
export type NbdErrno = (typeof NbdErrno)[keyof typeof NbdErrno];
export const {
  NBD_SUCCESS,
  NBD_EPERM,
  NBD_EIO,
  NBD_ENOMEM,
  NBD_EINVAL,
  NBD_ENOSPC,
  NBD_EOVERFLOW,
  NBD_ENOTSUP,
  NBD_ESHUTDOWN,
} = NbdErrno;

/** A value → name table for one group, for log lines: `nameOf(NbdCmd, 1)` is 'NBD_CMD_WRITE'. */
export function nameOf(group: Readonly<Record<string, number>>, value: number): string {
  let names = nameTables.get(group);
  if (names === undefined) {
    names = new Map();
    for (const [name, v] of Object.entries(group)) if (!names.has(v)) names.set(v, name);
    nameTables.set(group, names);
  }
  return names.get(value) ?? `unknown(${value})`;
}
const nameTables = new WeakMap<object, Map<number, string>>();

/** The names of the bits set in `flags`, e.g. 'NBD_FLAG_HAS_FLAGS|NBD_FLAG_SEND_FLUSH'. */
export function flagNames(group: Readonly<Record<string, number>>, flags: number): string {
  const parts: string[] = [];
  let rest = flags;
  for (const [name, bit] of Object.entries(group)) {
    if ((flags & bit) !== 0) {
      parts.push(name);
      rest &= ~bit;
    }
  }
  if (rest !== 0) parts.push(`0x${rest.toString(16)}`);
  return parts.length === 0 ? '0' : parts.join('|');
}
