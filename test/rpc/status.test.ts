import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Metadata, status as Status } from '@grpc/grpc-js';
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
} from '../../src/errors.js';
import { ERROR_CODE_KEY, fromStatus, isTransientStatus, toStatus, type RpcError } from '../../src/rpc/status.js';

/** What grpc-js hands a client for a status the server sent. */
function serviceError(code: Status, details: string, metadata = new Metadata()): RpcError {
  return Object.assign(new Error(`${code} ${Status[code]}: ${details}`), { code, details, metadata });
}

const call = { backend: 'grpc://127.0.0.1:1337', op: 'ReadAt', off: 4096, length: 512, size: 8192 };
const refused = Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:6379'), { code: 'ECONNREFUSED' });

const roundTrips: { name: string; err: R3mapError; status: Status; cls: new (...args: never[]) => R3mapError }[] = [
  { name: 'an out-of-range read', err: new OutOfRangeError(8000, 512, 8192), status: Status.OUT_OF_RANGE, cls: OutOfRangeError },
  { name: 'a usage error', err: new UsageError('ReadAt: length 40000000 is above this server\'s limit'), status: Status.INVALID_ARGUMENT, cls: UsageError },
  { name: 'a bad length', err: new BadLengthError(100, 4096), status: Status.INVALID_ARGUMENT, cls: BadLengthError },
  { name: 'a misaligned offset', err: new MisalignedError(100, 4096), status: Status.INVALID_ARGUMENT, cls: MisalignedError },
  { name: 'a write to a read-only export', err: new ReadOnlyError('this export'), status: Status.PERMISSION_DENIED, cls: ReadOnlyError },
  { name: 'a closed backend', err: new ClosedError('memory backend'), status: Status.UNAVAILABLE, cls: ClosedError },
  { name: 'a timeout', err: new TimeoutError('pull took too long'), status: Status.DEADLINE_EXCEEDED, cls: TimeoutError },
  { name: 'a migration error', err: new MigrationError('track() was never called'), status: Status.FAILED_PRECONDITION, cls: MigrationError },
  { name: 'a backend failure', err: new BackendError({ backend: 'redis', op: 'GET', off: 0, length: 4096 }, 'WRONGTYPE'), status: Status.INTERNAL, cls: BackendError },
  { name: 'a transient backend failure', err: new BackendError({ backend: 'redis', op: 'GET' }, 'connection refused', { cause: refused }), status: Status.UNAVAILABLE, cls: BackendError },
];

describe('status mapping', () => {
  for (const c of roundTrips) {
    it(`sends ${c.name} as ${Status[c.status]} with our error code in a trailer`, () => {
      const s = toStatus(c.err);
      assert.equal(s.code, c.status);
      assert.equal(s.details, c.err.message);
      assert.deepEqual(s.metadata.get(ERROR_CODE_KEY), [c.err.code]);
    });
    it(`rebuilds ${c.name} on the client as the same class with the remote message`, () => {
      const s = toStatus(c.err);
      const back = fromStatus(serviceError(s.code, s.details, s.metadata), call);
      assert.ok(back instanceof c.cls, `${back.name} is a ${c.cls.name}`);
      assert.equal(back.code, c.err.code);
      assert.ok(back.message.includes(c.err.message), `"${back.message}" carries "${c.err.message}"`);
    });
  }

  it('sends an unknown error as INTERNAL without a trailer', () => {
    const s = toStatus(new TypeError('boom'));
    assert.equal(s.code, Status.INTERNAL);
    assert.equal(s.details, 'boom');
    assert.deepEqual(s.metadata.get(ERROR_CODE_KEY), []);
  });

  it('fills a rebuilt OutOfRangeError with the call it failed', () => {
    const s = toStatus(new OutOfRangeError(8000, 512, 8192));
    const back = fromStatus(serviceError(s.code, s.details, s.metadata), call) as OutOfRangeError;
    assert.deepEqual([back.off, back.length, back.size], [4096, 512, 8192]);
    assert.equal(back.stack?.split('\n')[0], `OutOfRangeError: ${s.details}`);
  });

  const foreign: { status: Status; cls: new (...args: never[]) => R3mapError; text?: RegExp }[] = [
    { status: Status.OUT_OF_RANGE, cls: OutOfRangeError },
    { status: Status.INVALID_ARGUMENT, cls: UsageError },
    { status: Status.PERMISSION_DENIED, cls: ReadOnlyError },
    { status: Status.DEADLINE_EXCEEDED, cls: TimeoutError },
    { status: Status.UNAUTHENTICATED, cls: BackendError, text: /refused the credentials.*token/ },
    { status: Status.UNAVAILABLE, cls: BackendError, text: /UNAVAILABLE/ },
    { status: Status.UNKNOWN, cls: BackendError, text: /max chunk size exceeded \(gRPC UNKNOWN\)/ },
  ];
  for (const c of foreign) {
    it(`maps ${Status[c.status]} from a server that sent no trailer to ${c.cls.name}`, () => {
      const back = fromStatus(serviceError(c.status, 'max chunk size exceeded'), call);
      assert.ok(back instanceof c.cls, `${back.name} is a ${c.cls.name}`);
      if (c.text !== undefined) assert.match(back.message, c.text);
      if (back instanceof BackendError) {
        assert.equal(back.backend, call.backend);
        assert.equal(back.op, 'ReadAt');
        assert.ok(back.cause instanceof Error);
      }
    });
  }

  const transient = [
    { name: 'UNAVAILABLE from the transport', err: serviceError(Status.UNAVAILABLE, 'No connection established'), expect: true },
    { name: 'UNAVAILABLE from a transient backend error', err: serviceError(Status.UNAVAILABLE, 'x', toStatus(new BackendError({ backend: 'redis', op: 'GET' }, 'x', { cause: refused })).metadata), expect: true },
    { name: 'UNAVAILABLE from a closed backend', err: serviceError(Status.UNAVAILABLE, 'closed', toStatus(new ClosedError()).metadata), expect: false },
    { name: 'INTERNAL', err: serviceError(Status.INTERNAL, 'x'), expect: false },
    { name: 'OUT_OF_RANGE', err: serviceError(Status.OUT_OF_RANGE, 'x'), expect: false },
    { name: 'a plain error', err: new Error('x'), expect: false },
  ];
  for (const c of transient) {
    it(`${c.expect ? 'retries' : 'does not retry'} ${c.name}`, () => {
      assert.equal(isTransientStatus(c.err), c.expect);
    });
  }
});
