import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { describe, it, type TestContext } from 'node:test';
import { KernelError, UsageError } from '../../src/errors.js';
import { Errno } from '../../src/kernel/errno.js';
import { attachNbdDevice, disconnectNbdDevice, listNbdDevices, type NbdAttachOptions } from '../../src/kernel/nbd-device.js';

const notServed = (): void => assert.fail('serve must not be called');

describe('attachNbdDevice without touching the kernel', () => {
  const bad: readonly { readonly name: string; readonly options: Partial<NbdAttachOptions> }[] = [
    { name: 'a size that is not a multiple of the block size', options: { size: 4096 * 10 + 512 } },
    { name: 'a size below one block', options: { size: 1000, blockSize: 512 } },
    { name: 'a zero size', options: { size: 0 } },
    { name: 'a block size above 4096', options: { size: 8192, blockSize: 8192 } },
    { name: 'a block size that is not a power of two', options: { size: 6000, blockSize: 1000 } },
    { name: 'a device that is not /dev/nbdN', options: { size: 8192, device: '/dev/sda' } },
    { name: 'a negative timeout', options: { size: 8192, timeoutSec: -1 } },
    { name: 'flags wider than 16 bits', options: { size: 8192, transmissionFlags: 1 << 16 } },
  ];
  for (const c of bad) {
    it(`rejects ${c.name} with a UsageError`, async () => {
      await assert.rejects(attachNbdDevice(notServed, { transmissionFlags: 1, size: 8192, ...c.options }), UsageError);
    });
  }

  it('says "modprobe nbd" where the nbd module is missing', async (t: TestContext) => {
    if (existsSync('/sys/module/nbd')) {
      t.skip('the nbd module is loaded here');
      return;
    }
    await assert.rejects(
      attachNbdDevice(notServed, { size: 8192, transmissionFlags: 1 }),
      (err: unknown) => err instanceof KernelError && err.errno === Errno.ENOENT && /modprobe nbd/.test(err.message),
    );
    assert.deepEqual(await listNbdDevices(), []);
  });

  it('refuses to disconnect a path that is not an NBD device', async () => {
    await assert.rejects(disconnectNbdDevice('/dev/sda'), UsageError);
  });
});
