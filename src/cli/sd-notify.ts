/**
 * sd_notify(READY=1) for commands run as systemd services (Type=notify). A stub for now: it does
 * nothing unless NOTIFY_SOCKET is set; then it runs `systemd-notify --ready --pid=<our pid>` when
 * that binary exists and logs a warning otherwise. (A datagram sent over FFI can replace it.)
 */
import { spawn } from 'node:child_process';
import type { Logger } from '../log.js';

const NOTIFY_TIMEOUT_MS = 5000;

export async function notifyReady(log: Logger): Promise<void> {
  const socket = process.env.NOTIFY_SOCKET;
  if (socket === undefined || socket === '') return;
  const ok = await new Promise<boolean>((resolve) => {
    const child = spawn('systemd-notify', ['--ready', `--pid=${process.pid}`], { stdio: 'ignore' });
    const timer = setTimeout(() => child.kill('SIGKILL'), NOTIFY_TIMEOUT_MS);
    child.once('error', () => {
      clearTimeout(timer);
      resolve(false);
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      if (code !== 0) log.warn({ code, socket }, 'systemd-notify --ready failed');
      resolve(true);
    });
  });
  if (!ok) log.warn({ socket }, 'NOTIFY_SOCKET is set but systemd-notify is not installed: READY=1 was not sent');
}
