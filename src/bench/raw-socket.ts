/**
 * The raw socket ceiling for `r3map-bench backends`: what plain Node sockets carry between two
 * processes with the same request pattern the backends see, and nothing else (no framing beyond a
 * 5-byte header, no copies beyond the kernel's). The peer runs in a child process (this file is
 * its entry point); the client pipelines requests on one connection and they are answered in
 * order:
 *   'W' u32 length, then length bytes  →  one byte 'k'
 *   'R' u32 length                     →  length bytes
 */
import { spawn } from 'node:child_process';
import net, { type Socket } from 'node:net';
import { createInterface } from 'node:readline';
import { fileURLToPath, pathToFileURL } from 'node:url';

const HEADER = 5;
const MAX_LENGTH = 64 * 1024 * 1024;

/** The peer: answers on 127.0.0.1 (or a Unix socket path in argv[2]); prints its address, one line. */
function servePeer(where: string | undefined): void {
  const source = Buffer.alloc(MAX_LENGTH, 0x5a);
  const server = net.createServer({ noDelay: true }, (socket) => {
    let pending = Buffer.alloc(0);
    let sink = 0;
    socket.on('data', (chunk: Buffer) => {
      let data = pending.length > 0 ? Buffer.concat([pending, chunk]) : chunk;
      pending = Buffer.alloc(0);
      while (data.length > 0) {
        if (sink > 0) {
          const n = Math.min(sink, data.length);
          sink -= n;
          data = data.subarray(n);
          if (sink === 0) socket.write('k');
          continue;
        }
        if (data.length < HEADER) {
          pending = Buffer.from(data);
          return;
        }
        const op = data[0];
        const length = data.readUInt32BE(1);
        data = data.subarray(HEADER);
        if (length > MAX_LENGTH || (op !== 0x57 && op !== 0x52)) {
          socket.destroy();
          return;
        }
        if (op === 0x52) socket.write(source.subarray(0, length));
        else if (length === 0) socket.write('k');
        else sink = length;
      }
    });
    socket.on('error', () => socket.destroy());
  });
  const onListening = (): void => {
    const a = server.address();
    process.stdout.write(`${typeof a === 'string' ? `unix:${a}` : `127.0.0.1:${a!.port}`}\n`);
  };
  if (where !== undefined) server.listen(where, onListening);
  else server.listen(0, '127.0.0.1', onListening);
  process.on('SIGTERM', () => process.exit(0));
}

export interface RawPeer {
  readonly address: { host: string; port: number } | { path: string };
  stop(): void;
}

/** Starts the peer in a child process (this module, run by the same node). */
export async function startRawPeer(socketPath?: string, timeoutMs = 15_000): Promise<RawPeer> {
  const child = spawn(process.execPath, [fileURLToPath(import.meta.url), ...(socketPath !== undefined ? [socketPath] : [])], { stdio: ['ignore', 'pipe', 'inherit'] });
  const stop = (): void => void child.kill('SIGTERM');
  process.once('exit', stop);
  const line = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('raw socket peer did not start')), timeoutMs);
    createInterface({ input: child.stdout! }).once('line', (l) => {
      clearTimeout(timer);
      resolve(l.trim());
    });
    child.once('exit', (code) => reject(new Error(`raw socket peer exited with ${code}`)));
  });
  const address = line.startsWith('unix:') ? { path: line.slice(5) } : { host: '127.0.0.1', port: Number(line.slice(line.lastIndexOf(':') + 1)) };
  return { address, stop };
}

/** One pipelined connection to the peer; `write`/`read` resolve in order as answers arrive. */
export class RawSocketClient {
  readonly #socket: Socket;
  readonly #waiting: { readonly read: boolean; left: number; buf: Buffer | undefined; resolve: () => void }[] = [];
  #head = 0;

  private constructor(socket: Socket) {
    this.#socket = socket;
    socket.on('data', this.#onData);
  }

  static async connect(address: RawPeer['address']): Promise<RawSocketClient> {
    const socket = 'path' in address ? net.connect(address.path) : net.connect(address.port, address.host);
    await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
    socket.setNoDelay(true);
    return new RawSocketClient(socket);
  }

  write(buf: Buffer): Promise<void> {
    const header = Buffer.allocUnsafe(HEADER);
    header[0] = 0x57;
    header.writeUInt32BE(buf.length, 1);
    this.#socket.cork();
    this.#socket.write(header);
    this.#socket.write(buf);
    process.nextTick(() => this.#socket.uncork());
    return new Promise((resolve) => this.#waiting.push({ read: false, left: 1, buf: undefined, resolve }));
  }

  read(buf: Buffer): Promise<void> {
    const header = Buffer.allocUnsafe(HEADER);
    header[0] = 0x52;
    header.writeUInt32BE(buf.length, 1);
    this.#socket.write(header);
    return new Promise((resolve) => this.#waiting.push({ read: true, left: buf.length, buf, resolve }));
  }

  close(): void {
    this.#socket.destroy();
  }

  readonly #onData = (chunk: Buffer): void => {
    let pos = 0;
    while (pos < chunk.length) {
      const w = this.#waiting[0];
      if (w === undefined) return;
      const n = Math.min(w.left, chunk.length - pos);
      if (w.read) chunk.copy(w.buf!, this.#head, pos, pos + n);
      this.#head += n;
      w.left -= n;
      pos += n;
      if (w.left === 0) {
        this.#waiting.shift();
        this.#head = 0;
        w.resolve();
      }
    }
  };
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) servePeer(process.argv[2]);
