/**
 * Helpers for tests that need the kernel NBD client (/dev/nbd0, root). `requireNbd(t)` skips a
 * test where there is no NBD driver, or fails it when R3MAP_KERNEL_TESTS=1 (the kernel harness sets
 * it, so a VM without nbd cannot pass silently). `serveBackend()` gives attachNbdDevice our
 * NbdServer in attached mode (transmission phase only).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import type { Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import type { TestContext } from 'node:test';
import { silentLogger } from '../../src/log.js';
import { NbdServer, type NbdExport } from '../../src/nbd/server.js';
import type { Backend } from '../../src/pipeline/types.js';
import { MemoryBackend } from '../../src/backends/memory.js';

export const NBD_SKIP_MESSAGE = 'needs /dev/nbd0 and root (the nbd kernel module): run the kernel suite in its VM or modprobe nbd';

export function kernelTestsRequired(): boolean {
  return process.env.R3MAP_KERNEL_TESTS === '1';
}

/** Why kernel tests cannot run here, or undefined when they can. */
export function nbdUnavailable(): string | undefined {
  if (!existsSync('/dev/nbd0')) return 'no /dev/nbd0';
  if (process.getuid?.() !== 0) return 'not root';
  return undefined;
}

/** True when /dev/nbd0 exists and we are root; otherwise skips (or throws under R3MAP_KERNEL_TESTS=1). */
export function requireNbd(t: TestContext): boolean {
  const why = nbdUnavailable();
  if (why === undefined) return true;
  if (kernelTestsRequired()) throw new Error(`R3MAP_KERNEL_TESTS=1 but kernel tests cannot run: ${why}`);
  t.skip(`${NBD_SKIP_MESSAGE} (${why})`);
  return false;
}

/** A MemoryBackend that counts sync() calls (each NBD_CMD_FLUSH is one). */
export class CountingBackend implements Backend {
  readonly size: number;
  readonly readOnly: boolean;
  readonly canMultiConn = true;
  readonly memory: MemoryBackend;
  syncs = 0;

  constructor(size: number, readOnly = false) {
    this.memory = new MemoryBackend({ size, chunkSize: 64 * 1024 });
    this.size = size;
    this.readOnly = readOnly;
  }

  readAt(buf: Buffer, off: number): Promise<void> {
    return this.memory.readAt(buf, off);
  }

  writeAt(buf: Buffer, off: number): Promise<void> {
    return this.memory.writeAt(buf, off);
  }

  async sync(): Promise<void> {
    this.syncs++;
    await this.memory.sync();
  }

  close(): Promise<void> {
    return this.memory.close();
  }
}

export interface ServedBackend {
  /** Hand this to attachNbdDevice. */
  readonly serve: (socket: Socket) => void;
  /** The flags our server advertises for the export: pass them as transmissionFlags. */
  readonly transmissionFlags: number;
  /** Closes the server: every served connection ends (the kernel then sees its socket close). */
  close(): Promise<void>;
}

/** Our NbdServer serving `backend` on sockets handed over by attachNbdDevice (no handshake). */
export function serveBackend(backend: Backend, readOnly = false): ServedBackend {
  const exp: NbdExport = { name: 'kernel', backend, readOnly };
  const server = new NbdServer({ exports: [exp], log: silentLogger });
  return {
    serve: (socket) => server.serveAttached(socket, exp.name),
    transmissionFlags: server.transmissionFlagsOf(exp.name),
    close: () => server.close(),
  };
}

export interface AttachChild {
  readonly child: ChildProcess;
  readonly paths: readonly string[];
}

const CHILD_SCRIPT = fileURLToPath(new URL('./fixtures/attach-child.js', import.meta.url));

/** Starts fixtures/attach-child.js; resolves once it printed `count` device paths. */
export function spawnAttachChild(count: number, mode: 'wait' | 'exit', timeoutMs: number): Promise<AttachChild> {
  const child = spawn(process.execPath, [CHILD_SCRIPT, String(count), mode], { stdio: ['ignore', 'pipe', 'pipe'] });
  return new Promise((resolve, reject) => {
    let out = '';
    let err = '';
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`attach-child printed no ${count} paths within ${timeoutMs} ms; stderr: ${err.slice(-2000)}`));
    }, timeoutMs);
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const paths = out.split('\n').filter((line) => line !== '');
      if (paths.length < count) return;
      clearTimeout(timer);
      resolve({ child, paths });
    });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`attach-child exited (${code ?? signal}) before printing ${count} paths; stderr: ${err.slice(-2000)}`));
    });
  });
}

/** Resolves with the exit code or signal, or 'timeout' (the child is then killed). */
export function waitExit(child: ChildProcess, timeoutMs: number): Promise<number | string> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(child.exitCode ?? child.signalCode!);
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      resolve('timeout');
    }, timeoutMs);
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      resolve(code ?? signal ?? 'unknown');
    });
  });
}

/** A value under /sys/block/nbdX/queue/, e.g. logical_block_size. */
export async function queueAttribute(index: number, name: string): Promise<string> {
  return (await readFile(`/sys/block/nbd${index}/queue/${name}`, 'latin1')).trim();
}
