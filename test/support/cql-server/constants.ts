/**
 * CQL native protocol v4 constants, spelled as in apache/cassandra doc/native_protocol_v4.spec
 * so they can be grepped there. Only what the test server speaks is listed.
 */

/** Header byte 0: direction bit (0x80 = response) | version. */
export const CQL_VERSION_4 = 0x04;
export const CQL_RESPONSE = 0x80;
export const CQL_HEADER_LENGTH = 9;
/** Section 2.5: "currently a frame is limited to 256MB in length". */
export const CQL_MAX_BODY_LENGTH = 256 * 1024 * 1024;

/** Section 2.2 header flags. */
export const FrameFlag = {
  COMPRESSION: 0x01,
  TRACING: 0x02,
  CUSTOM_PAYLOAD: 0x04,
  WARNING: 0x08,
} as const;

/** Section 2.4 opcodes. */
export const Opcode = {
  ERROR: 0x00,
  STARTUP: 0x01,
  READY: 0x02,
  AUTHENTICATE: 0x03,
  OPTIONS: 0x05,
  SUPPORTED: 0x06,
  QUERY: 0x07,
  RESULT: 0x08,
  PREPARE: 0x09,
  EXECUTE: 0x0a,
  REGISTER: 0x0b,
  EVENT: 0x0c,
  BATCH: 0x0d,
  AUTH_CHALLENGE: 0x0e,
  AUTH_RESPONSE: 0x0f,
  AUTH_SUCCESS: 0x10,
} as const;
export type Opcode = (typeof Opcode)[keyof typeof Opcode];

const opcodeNames = new Map<number, string>(Object.entries(Opcode).map(([k, v]) => [v, k]));
/** `QUERY`, `EXECUTE`, … or `0x1f` for an unknown opcode (for logs and error messages). */
export function opcodeName(op: number): string {
  return opcodeNames.get(op) ?? `0x${op.toString(16).padStart(2, '0')}`;
}

/** Section 4.2.5 RESULT kinds. */
export const ResultKind = {
  Void: 0x0001,
  Rows: 0x0002,
  Set_keyspace: 0x0003,
  Prepared: 0x0004,
  Schema_change: 0x0005,
} as const;

/** Section 4.2.5.2 Rows metadata flags. */
export const RowsFlag = {
  Global_tables_spec: 0x0001,
  Has_more_pages: 0x0002,
  No_metadata: 0x0004,
} as const;

/** Section 4.1.4 query parameter flags (one byte in v4). */
export const QueryFlag = {
  Values: 0x01,
  Skip_metadata: 0x02,
  Page_size: 0x04,
  With_paging_state: 0x08,
  With_serial_consistency: 0x10,
  With_default_timestamp: 0x20,
  With_names_for_values: 0x40,
} as const;

/** Section 4.2.5.2 [option] ids of the column types the server returns. */
export const TypeId = {
  Blob: 0x0003,
  Uuid: 0x000c,
  Varchar: 0x000d,
  Inet: 0x0010,
  Set: 0x0022,
} as const;

/** Section 9 error codes. */
export const ErrorCode = {
  Server_error: 0x0000,
  Protocol_error: 0x000a,
  Authentication_error: 0x0100,
  Unavailable: 0x1000,
  Overloaded: 0x1001,
  Is_bootstrapping: 0x1002,
  Write_timeout: 0x1100,
  Read_timeout: 0x1200,
  Syntax_error: 0x2000,
  Unauthorized: 0x2100,
  Invalid: 0x2200,
  Config_error: 0x2300,
  Already_exists: 0x2400,
  Unprepared: 0x2500,
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

/** Section 3 [consistency] values. */
export const Consistency = {
  ANY: 0x0000,
  ONE: 0x0001,
  TWO: 0x0002,
  THREE: 0x0003,
  QUORUM: 0x0004,
  ALL: 0x0005,
  LOCAL_QUORUM: 0x0006,
  EACH_QUORUM: 0x0007,
  SERIAL: 0x0008,
  LOCAL_SERIAL: 0x0009,
  LOCAL_ONE: 0x000a,
} as const;

/** What Cassandra's PasswordAuthenticator announces in AUTHENTICATE. */
export const PASSWORD_AUTHENTICATOR = 'org.apache.cassandra.auth.PasswordAuthenticator';
