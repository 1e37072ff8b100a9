/**
 * docs/errors.md is the table of every error code; this test keeps it equal to the code: every
 * R3mapError code appears exactly once, and the NBD errno, gRPC status and exit code columns are
 * what the product's mapping functions return for an instance of each class.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { status as Status } from '@grpc/grpc-js';
import * as errors from '../../src/errors.js';
import { exitCodeFor } from '../../src/cli/run.js';
import { NbdErrno, nameOf } from '../../src/nbd/constants.js';
import { nbdErrnoOf } from '../../src/nbd/errno.js';
import { fromStatus, rpcError, statusCodeOf, toStatus } from '../../src/rpc/status.js';

const DOC = new URL('../../../docs/errors.md', import.meta.url);

/** One instance of each class, built as the product builds them. */
const samples: Readonly<Record<errors.R3mapErrorCode, errors.R3mapError>> = {
  ERR_USAGE: new errors.UsageError('bad flag'),
  ERR_OUT_OF_RANGE: new errors.OutOfRangeError(10, 5, 12),
  ERR_MISALIGNED: new errors.MisalignedError(3, 4096),
  ERR_BAD_LENGTH: new errors.BadLengthError(3, 4096),
  ERR_READ_ONLY: new errors.ReadOnlyError('export'),
  ERR_CLOSED: new errors.ClosedError('backend'),
  ERR_BACKEND: new errors.BackendError({ backend: 'file', op: 'write' }, 'disk full'),
  ERR_NBD_PROTOCOL: new errors.NbdProtocolError('bad magic'),
  ERR_NBD_REQUEST: new errors.NbdRequestError(0, 'refused'),
  ERR_KERNEL: new errors.KernelError({ syscall: 'ioctl', errno: 16 }),
  ERR_MIGRATION: new errors.MigrationError('out of order'),
  ERR_TIMEOUT: new errors.TimeoutError('too slow'),
};

interface Row {
  readonly code: string;
  readonly className: string;
  readonly errno: string;
  readonly status: string;
  readonly clientGets: string;
  readonly exit: string;
}

interface HostRow {
  readonly code: string;
  readonly errno: string;
  readonly status: string;
}

async function tableLines(pattern: RegExp): Promise<string[][]> {
  const text = await readFile(DOC, 'utf8');
  return text.split('\n').filter((line) => pattern.test(line)).map((line) => line.split('|').slice(1, -1).map((c) => c.trim()));
}

const unquote = (cell: string): string => cell.replace(/`/g, '');

async function rows(): Promise<Row[]> {
  return (await tableLines(/^\| `ERR_/)).map((cells) => ({
    code: unquote(cells[0]!), className: unquote(cells[1]!), errno: cells[2]!, status: cells[3]!, clientGets: unquote(cells[4]!), exit: cells[5]!,
  }));
}

async function hostRows(): Promise<HostRow[]> {
  return (await tableLines(/^\| `(?!ERR_)[A-Z_]+` \| /)).map((cells) => ({ code: unquote(cells[0]!), errno: cells[1]!, status: cells[2]! }));
}

describe('docs/errors.md', () => {
  it('lists every error code exactly once, and no code that does not exist', async () => {
    const listed = (await rows()).map((r) => r.code).sort();
    assert.deepEqual(listed, Object.keys(samples).sort());
    for (const [code, err] of Object.entries(samples)) assert.equal(err.code, code, `the sample for ${code} has that code`);
  });

  it('names the class of each code', async () => {
    for (const row of await rows()) assert.equal(samples[row.code as errors.R3mapErrorCode].constructor.name, row.className, row.code);
  });

  it('gives the NBD errno, gRPC status and exit code the product answers with', async () => {
    for (const row of await rows()) {
      const err = samples[row.code as errors.R3mapErrorCode];
      const errno = nameOf(NbdErrno, nbdErrnoOf(err)).replace(/^NBD_/, '');
      assert.ok(row.errno.startsWith(errno) || row.errno.includes(`${errno} when it carries 0`), `${row.code}: errno ${errno}, doc says ${row.errno}`);
      assert.ok(row.status.startsWith(Status[statusCodeOf(err)]!) || row.status.includes(`else ${Status[statusCodeOf(err)]}`), `${row.code}: status ${Status[statusCodeOf(err)]}, doc says ${row.status}`);
      assert.equal(row.exit, String(exitCodeFor(err)), `${row.code}: exit code`);
    }
  });

  it('names the class r3map\'s gRPC client rebuilds from each answer', async () => {
    for (const row of await rows()) {
      const answer = toStatus(samples[row.code as errors.R3mapErrorCode]);
      const rebuilt = fromStatus(rpcError(answer.code, answer.details, answer.metadata), { backend: 'grpc://test', op: 'ReadAt' });
      assert.equal(rebuilt.constructor.name, row.clientGets, row.code);
    }
  });

  it('maps each host error code as the host table says', async () => {
    const listed = await hostRows();
    assert.ok(listed.length >= 20, `the host table has ${listed.length} rows`);
    for (const row of listed) {
      const host = Object.assign(new Error(row.code), { code: row.code });
      assert.equal(nameOf(NbdErrno, nbdErrnoOf(host)).replace(/^NBD_/, ''), row.errno, `${row.code}: NBD errno`);
      const caused = new errors.BackendError({ backend: 'file', op: 'write' }, 'failed', { cause: host });
      assert.equal(nameOf(NbdErrno, nbdErrnoOf(caused)).replace(/^NBD_/, ''), row.errno, `${row.code}: NBD errno through a cause`);
      assert.equal(Status[statusCodeOf(caused)], row.status, `${row.code}: gRPC status`);
    }
  });

  it('the two-way rows hold both ways', () => {
    const transient = new errors.BackendError({ backend: 'redis', op: 'get' }, 'reset', { cause: Object.assign(new Error('reset'), { code: 'ECONNRESET' }) });
    assert.equal(Status[statusCodeOf(transient)], 'UNAVAILABLE');
    assert.equal(nameOf(NbdErrno, nbdErrnoOf(new errors.NbdRequestError(NbdErrno.NBD_ENOSPC, 'no space'))), 'NBD_ENOSPC');
  });
});
