import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { pino } from 'pino';
import type { Logger } from '../../src/log.js';
import { Writable } from 'node:stream';
import {
  BackendError,
  BadLengthError,
  ClosedError,
  MisalignedError,
  NbdRequestError,
  OutOfRangeError,
  ReadOnlyError,
  TimeoutError,
} from '../../src/errors.js';
import { NBD_CMD_READ, NBD_EINVAL, NBD_EIO, NBD_ENOMEM, NBD_ENOSPC, NBD_EOVERFLOW, NBD_EPERM, NBD_ESHUTDOWN } from '../../src/nbd/constants.js';
import { nbdErrnoOf, replyErrnoFor } from '../../src/nbd/errno.js';

const sys = (code: string): Error => Object.assign(new Error(code), { code });

describe('nbdErrnoOf', () => {
  const cases: { name: string; err: unknown; errno: number }[] = [
    { name: 'an NbdRequestError keeps its errno', err: new NbdRequestError(NBD_EOVERFLOW, 'too big'), errno: NBD_EOVERFLOW },
    { name: 'out of range is EINVAL', err: new OutOfRangeError(10, 10, 5), errno: NBD_EINVAL },
    { name: 'misaligned is EINVAL', err: new MisalignedError(3, 512), errno: NBD_EINVAL },
    { name: 'a bad length is EINVAL', err: new BadLengthError(3, 4), errno: NBD_EINVAL },
    { name: 'read-only is EPERM', err: new ReadOnlyError('export'), errno: NBD_EPERM },
    { name: 'closed is ESHUTDOWN', err: new ClosedError('backend'), errno: NBD_ESHUTDOWN },
    { name: 'a timeout is EIO', err: new TimeoutError('slow'), errno: NBD_EIO },
    { name: 'a plain Error is EIO', err: new Error('boom'), errno: NBD_EIO },
    { name: 'a thrown string is EIO', err: 'boom', errno: NBD_EIO },
    { name: 'EACCES is EPERM', err: sys('EACCES'), errno: NBD_EPERM },
    { name: 'EROFS is EPERM', err: sys('EROFS'), errno: NBD_EPERM },
    { name: 'EDQUOT is ENOSPC', err: sys('EDQUOT'), errno: NBD_ENOSPC },
    { name: 'EFBIG is ENOSPC', err: sys('EFBIG'), errno: NBD_ENOSPC },
    { name: 'ENOMEM is ENOMEM', err: sys('ENOMEM'), errno: NBD_ENOMEM },
    { name: 'ENOTSUP is EINVAL (no fast zero)', err: sys('ENOTSUP'), errno: NBD_EINVAL },
    { name: 'an unknown code is EIO', err: sys('ECONNRESET'), errno: NBD_EIO },
    {
      name: 'a BackendError is mapped by its cause',
      err: new BackendError({ backend: 'file', op: 'write', off: 0, length: 1 }, 'failed', { cause: sys('ENOSPC') }),
      errno: NBD_ENOSPC,
    },
    { name: 'a BackendError without a known cause is EIO', err: new BackendError({ backend: 's3', op: 'read' }, 'HTTP 500'), errno: NBD_EIO },
  ];
  for (const { name, err, errno } of cases) {
    test(name, () => assert.equal(nbdErrnoOf(err), errno));
  }
});

describe('replyErrnoFor', () => {
  function capture(): { log: Logger; lines: { level: number; msg: string; cmd: string; err?: { message: string } }[] } {
    const lines: { level: number; msg: string; cmd: string }[] = [];
    const stream = new Writable({
      write(chunk: Buffer, _e, cb) {
        lines.push(JSON.parse(chunk.toString()));
        cb();
      },
    });
    return { log: pino({ level: 'debug' }, stream) as Logger, lines };
  }

  test('logs a backend failure at warn with the real error before mapping it', () => {
    const { log, lines } = capture();
    const errno = replyErrnoFor(new Error('disk on fire'), log, { cmd: NBD_CMD_READ, offset: 4096, length: 512 });
    assert.equal(errno, NBD_EIO);
    assert.equal(lines.length, 1);
    assert.equal(lines[0]!.level, 40);
    assert.equal(lines[0]!.cmd, 'NBD_CMD_READ');
    assert.equal(lines[0]!.err?.message, 'disk on fire');
  });

  test('logs a client fault at debug only', () => {
    const { log, lines } = capture();
    assert.equal(replyErrnoFor(new OutOfRangeError(1, 2, 2), log, { cmd: NBD_CMD_READ, offset: 1, length: 2 }), NBD_EINVAL);
    assert.deepEqual(lines.map((l) => l.level), [20]);
  });
});
