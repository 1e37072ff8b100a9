/** The device flags every command that attaches a device shares: --transport, --device, --no-loop-direct-io, --ready-file. */
import { Option, type Command } from 'commander';
import { TRANSPORTS, type Transport } from '../mount/transport.js';

export interface DeviceFlags {
  transport: Transport;
  device?: string;
  loopDirectIo: boolean;
  readyFile?: string;
}

export function addDeviceOptions(cmd: Command): Command {
  return cmd
    .option('--device <path>', 'use this /dev/nbdN (transport nbd) or /dev/loopN (transport fuse-loop) (default: the first free one)')
    .addOption(new Option('--transport <kind>', 'nbd (kernel NBD client), fuse-loop (nbdfuse + losetup, for kernels without nbd) or auto (nbd when /sys/module/nbd or /dev/nbd0 exists)').choices(TRANSPORTS).default('auto'))
    .option('--no-loop-direct-io', 'fuse-loop: attach the loop device without direct I/O (default: direct I/O on)')
    .option('--ready-file <path>', 'also write the device path to this file (atomically) when ready; removed on exit');
}

/** The DirectPathMount options the flags give. */
export function deviceMountOptions(flags: DeviceFlags): { transport: Transport; loopDirectIo: boolean; device?: string } {
  return { transport: flags.transport, loopDirectIo: flags.loopDirectIo, ...(flags.device !== undefined ? { device: flags.device } : {}) };
}
