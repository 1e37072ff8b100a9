import assert from 'node:assert/strict';
import { closeSync, openSync, readFileSync, readSync, writeFileSync, writeSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Worker } from 'node:worker_threads';
import { KernelError } from '../../src/errors.js';
import { Errno, errnoName } from '../../src/kernel/errno.js';
import {
  close,
  gettid,
  ioctl,
  MADV_DONTNEED,
  madvise,
  MAP_ANONYMOUS,
  MAP_PRIVATE,
  MAP_SHARED,
  mlock,
  mmap,
  msync,
  munlock,
  munmap,
  O_CLOEXEC,
  O_RDWR,
  open,
  poll,
  POLLIN,
  prctl,
  PROT_READ,
  PROT_WRITE,
  socketpair,
  viewOf,
} from '../../src/kernel/ffi.js';
import { NBD_DO_IT, NBD_SET_FLAGS, NBD_SET_SOCK, nbdIoctlName } from '../../src/kernel/nbd-ioctl.js';
import { makeTempDir, removeDir } from '../support/tools.js';

const PAGE = 4096;
const PR_GET_DUMPABLE = 3;
let dir: string | undefined;

before(async () => {
  dir = await makeTempDir('r3map-ffi-');
});
after(() => removeDir(dir));

function fdFlags(fd: number): number {
  const m = /^flags:\s+([0-7]+)$/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'latin1'));
  return parseInt(m![1]!, 8);
}

function kernelError(syscall: string, errno: number, device?: string): (err: unknown) => boolean {
  return (err) => err instanceof KernelError && err.code === 'ERR_KERNEL' && err.syscall === syscall && err.errno === errno && err.device === device;
}

describe('ffi', () => {
  it('socketpair gives two connected close-on-exec ends', () => {
    const [a, b] = socketpair();
    try {
      assert.ok((fdFlags(a) & O_CLOEXEC) !== 0 && (fdFlags(b) & O_CLOEXEC) !== 0);
      writeSync(a, Buffer.from('ping'));
      const got = Buffer.alloc(4);
      assert.equal(readSync(b, got), 4);
      assert.equal(got.toString(), 'ping');
      assert.deepEqual(poll([{ fd: a, events: POLLIN }], 0), [0]);
      writeSync(b, Buffer.from('pong'));
      assert.deepEqual(poll([{ fd: a, events: POLLIN }], 1000), [POLLIN]);
    } finally {
      close(a);
      close(b);
    }
    assert.throws(() => close(a), kernelError('close', Errno.EBADF));
  });

  it('maps anonymous memory as a Buffer without copying, and madvise(DONTNEED) zeroes it', () => {
    const addr = mmap(2 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
    try {
      assert.equal(typeof addr, 'bigint');
      const view = viewOf(addr, 2 * PAGE);
      view.fill(0xab);
      assert.equal(viewOf(addr + BigInt(PAGE), 1)[0], 0xab, 'a second view sees the same memory');
      mlock(addr, PAGE);
      munlock(addr, PAGE);
      madvise(addr, 2 * PAGE, MADV_DONTNEED);
      assert.equal(view.readUInt32LE(PAGE), 0);
    } finally {
      munmap(addr, 2 * PAGE);
    }
  });

  it('writes a shared file mapping back with msync', () => {
    const file = path.join(dir!, 'mapped.bin');
    writeFileSync(file, Buffer.alloc(2 * PAGE));
    const fd = open(file, O_RDWR | O_CLOEXEC);
    const addr = mmap(2 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0, file);
    try {
      viewOf(addr, 2 * PAGE).write('through the mapping', PAGE);
      msync(addr, 2 * PAGE);
    } finally {
      munmap(addr, 2 * PAGE);
      close(fd, file);
    }
    assert.equal(readFileSync(file).subarray(PAGE, PAGE + 19).toString(), 'through the mapping');
  });

  it('turns errno into a KernelError naming the call and the device', () => {
    const file = path.join(dir!, 'not-a-device');
    writeFileSync(file, 'x');
    const fd = openSync(file, 'r');
    try {
      assert.throws(() => ioctl(fd, NBD_SET_SOCK, 0, nbdIoctlName(NBD_SET_SOCK), file), kernelError('NBD_SET_SOCK', Errno.ENOTTY, file));
      assert.throws(() => ioctl(fd, NBD_SET_SOCK, 0, nbdIoctlName(NBD_SET_SOCK), file), /^KernelError: NBD_SET_SOCK .*not-a-device: ENOTTY$/);
    } finally {
      closeSync(fd);
    }
    assert.throws(() => open(path.join(dir!, 'missing'), O_RDWR), kernelError('open', Errno.ENOENT, path.join(dir!, 'missing')));
    assert.throws(() => mmap(0, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS), kernelError('mmap', Errno.EINVAL));
    assert.throws(() => prctl(0x7fff), kernelError('prctl', Errno.EINVAL));
    assert.ok([0, 1, 2].includes(prctl(PR_GET_DUMPABLE)));
  });

  it('blocks every blockable signal in a worker thread, and only there', async () => {
    const ffiUrl = new URL('../../src/kernel/ffi.js', import.meta.url).href;
    const code = `
      const { parentPort } = require('node:worker_threads');
      const { readFileSync } = require('node:fs');
      const sigblk = () => readFileSync('/proc/thread-self/status', 'latin1').match(/SigBlk:\\s*(\\S+)/)[1];
      import(${JSON.stringify(ffiUrl)}).then((ffi) => {
        const beforeMask = sigblk();
        ffi.blockAllSignals();
        parentPort.postMessage({ before: beforeMask, after: sigblk(), tid: ffi.gettid() });
      });`;
    const worker = new Worker(code, { eval: true });
    const result = await new Promise<{ before: string; after: string; tid: number }>((resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', reject);
    });
    await worker.terminate();
    const blocked = BigInt(`0x${result.after}`);
    for (const name of ['SIGINT', 'SIGTERM', 'SIGCHLD', 'SIGHUP', 'SIGUSR1', 'SIGPIPE'] as const) {
      const bit = 1n << BigInt(osConstants.signals[name] - 1);
      assert.notEqual(blocked & bit, 0n, `${name} is blocked`);
    }
    assert.equal(blocked & (1n << BigInt(osConstants.signals.SIGKILL - 1)), 0n, 'SIGKILL cannot be blocked');
    assert.notEqual(result.tid, gettid(), 'the worker is a thread of its own');
    assert.equal(gettid(), process.pid, 'the main thread id is the process id');
    const mainMask = /SigBlk:\s*(\S+)/.exec(readFileSync('/proc/thread-self/status', 'latin1'))![1]!;
    assert.equal(BigInt(`0x${mainMask}`) & (1n << BigInt(osConstants.signals.SIGCHLD - 1)), 0n, 'the main thread still takes SIGCHLD');
  });

  it('names errno values as the kernel does', () => {
    for (const [name, value] of Object.entries(Errno)) {
      const node = (osConstants.errno as Record<string, number | undefined>)[name];
      if (node !== undefined) assert.equal(value, node, name);
      assert.equal(errnoName(value), name);
    }
    assert.equal(errnoName(4095), 'errno 4095');
  });

  it('keeps the ioctl numbers of linux/nbd.h', () => {
    assert.deepEqual([NBD_SET_SOCK, NBD_DO_IT, NBD_SET_FLAGS], [0xab00, 0xab03, 0xab0a]);
    assert.equal(nbdIoctlName(0xab08), 'NBD_DISCONNECT');
    assert.equal(nbdIoctlName(0xab20), 'ioctl 0xab20');
  });
});
