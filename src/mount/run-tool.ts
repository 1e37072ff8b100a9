/**
 * Bounded runs of the outside tools the fuse-loop transport drives (losetup, fusermount3).
 * Every run has a time limit, never rejects for a non-zero exit, and finds tools in the sbin
 * directories too (losetup lives in /usr/sbin, which a non-login PATH may lack).
 */
import { spawn } from 'node:child_process';
import { KernelError } from '../errors.js';

export interface ToolResult {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

export const TOOL_ENV_PATH = [...(process.env.PATH ?? '/usr/bin:/bin').split(':'), '/usr/sbin', '/sbin', '/usr/bin', '/bin']
  .filter((dir, i, all) => dir !== '' && all.indexOf(dir) === i)
  .join(':');

const DEFAULT_TIMEOUT_MS = 30_000;

/** Runs `cmd args` to completion (SIGKILL after `timeoutMs`); rejects only when it cannot start. */
export function runTool(cmd: string, args: readonly string[], timeoutMs = DEFAULT_TIMEOUT_MS): Promise<ToolResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, PATH: TOOL_ENV_PATH } });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr = (stderr + d).slice(-8192)));
    const timer = setTimeout(() => {
      stderr += `\n${cmd}: killed after ${timeoutMs} ms`;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(new KernelError({ syscall: cmd, errno: 2, errnoName: 'cannot run' }, `${err.message}; is it installed? (scripts/install-test-tools.sh)`));
    });
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

const ERRNO_BY_TEXT: ReadonlyArray<readonly [RegExp, number, string]> = [
  [/resource busy/i, 16, 'EBUSY'],
  [/no such file or directory/i, 2, 'ENOENT'],
  [/permission denied/i, 13, 'EACCES'],
  [/operation not permitted/i, 1, 'EPERM'],
  [/no such device/i, 19, 'ENODEV'],
  [/invalid argument/i, 22, 'EINVAL'],
];

/** A failed tool run as a KernelError naming the tool, the device and what the tool said. */
export function toolError(cmd: string, result: ToolResult, device?: string, hint?: string): KernelError {
  const said = result.stderr.trim().split('\n').filter((l) => l !== '').pop() ?? `exit ${result.code}`;
  const known = ERRNO_BY_TEXT.find(([re]) => re.test(result.stderr));
  const info = known === undefined
    ? { syscall: cmd, errno: 0, errnoName: `exit ${result.code}` }
    : { syscall: cmd, errno: known[1], errnoName: known[2] };
  return new KernelError({ ...info, ...(device !== undefined ? { device } : {}) }, hint === undefined ? said : `${said}; ${hint}`);
}
