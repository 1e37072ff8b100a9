/**
 * The fuse-loop watchdog: a detached `sh` (its own session, so neither a terminal's Ctrl-C nor a
 * `kill -9` of the mounting process reaches it) that holds a pipe to the process that mounted.
 * It learns the loop device through the pipe. When the pipe reaches EOF without a `disarm` line,
 * the mounting process is gone: the watchdog detaches the loop device (only if its back-file
 * is still our FUSE file), unmounts the FUSE file (lazily as a last resort) and removes the
 * private directory once nothing is mounted on it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import type { Socket } from 'node:net';
import type { Logger } from '../log.js';
import { TOOL_ENV_PATH } from './run-tool.js';

const SCRIPT = `
dir=$1; file=$2; mnt=$dir/mnt; loop=
say() { echo "r3map fuse-loop watchdog ($$): $*" >&2; }
mounted() { grep -q " $mnt fuse" /proc/mounts; }
while IFS= read -r line; do
  case $line in
    "loop "*) loop=\${line#loop } ;;
    disarm) exit 0 ;;
  esac
done
say "the mounting process is gone; cleaning up $dir"
if [ -n "$loop" ]; then
  back=$(losetup --noheadings --output BACK-FILE "$loop" 2>/dev/null)
  case $back in
    *"$file"*) losetup -d "$loop" && say "detached $loop" ;;
    *) say "$loop is no longer backed by $file; leaving it alone" ;;
  esac
fi
i=0
while mounted && [ $i -lt 30 ]; do
  fusermount3 -u "$mnt" 2>/dev/null && break
  i=$((i + 1)); sleep 0.1
done
if mounted; then fusermount3 -u -z "$mnt" && say "lazily unmounted $mnt (still busy)"; fi
mounted || rm -rf "$dir"
say done
`;

const EXIT_WAIT_MS = 5000;

export class FuseLoopWatchdog {
  readonly #child: ChildProcess;
  readonly #log: Logger;
  readonly #exited: Promise<void>;
  #disarmed = false;

  private constructor(child: ChildProcess, log: Logger) {
    this.#child = child;
    this.#log = log;
    this.#exited = new Promise((resolve) => child.once('exit', () => resolve()));
    child.once('exit', (code, signal) => {
      if (!this.#disarmed) log.warn({ code, signal }, 'fuse-loop watchdog exited early; a kill -9 would now leave the device behind');
    });
    child.stdin!.on('error', (err) => log.warn({ err }, 'fuse-loop watchdog pipe failed'));
    child.unref();
    (child.stdin as Socket).unref();
  }

  /** Starts the watchdog for `dir` (the private temp dir) whose FUSE file is `file`. */
  static start(dir: string, file: string, log: Logger): FuseLoopWatchdog {
    const child = spawn('/bin/sh', ['-c', SCRIPT, 'r3map-fuse-loop-watchdog', dir, file], {
      detached: true,
      stdio: ['pipe', 'ignore', 'inherit'],
      env: { PATH: TOOL_ENV_PATH, LC_ALL: 'C' },
    });
    log.debug({ pid: child.pid, dir }, 'fuse-loop watchdog started');
    return new FuseLoopWatchdog(child, log);
  }

  get pid(): number | undefined {
    return this.#child.pid;
  }

  /** Tells the watchdog which loop device to detach should we die. */
  watchLoop(device: string): void {
    this.#child.stdin!.write(`loop ${device}\n`);
  }

  /** Our own teardown ran: the watchdog exits without touching anything. Waits (bounded) for it. */
  async disarm(): Promise<void> {
    if (this.#disarmed) return this.#exited;
    this.#disarmed = true;
    if (this.#child.exitCode === null && this.#child.signalCode === null) this.#child.stdin!.end('disarm\n');
    const timer = setTimeout(() => {
      this.#log.warn({ pid: this.#child.pid }, 'fuse-loop watchdog did not exit after disarm; killing it');
      this.#child.kill('SIGKILL');
    }, EXIT_WAIT_MS);
    try {
      await this.#exited;
    } finally {
      clearTimeout(timer);
    }
  }
}
