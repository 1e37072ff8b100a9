/**
 * Re-opens a plain (not TLS) connected socket so that reads go into buffers the caller picks
 * (net.Socket `onread`): Node then allocates nothing per read, and a WRITE payload can be read
 * straight into the backend's memory. Node's servers offer no `onread` for accepted sockets, so
 * the descriptor is duplicated (close-on-exec) into a new Socket and the old one is closed without
 * a shutdown: the connection lives on in the copy.
 *
 * Returns undefined, leaving `socket` as it was, where this cannot be done safely: a TLS socket, a
 * socket without a descriptor, or one with bytes still buffered in either direction.
 */
import { Socket, type SocketConstructorOpts } from 'node:net';
import { TLSSocket } from 'node:tls';
import { close, dupCloexec } from '../kernel/ffi.js';

export interface UserBufferRead {
  /** The buffer the next read goes into (called before every read). */
  readonly buffer: () => Buffer;
  /** `n` bytes were read into the start of `buf`; return false to pause reading. */
  readonly callback: (n: number, buf: Buffer) => boolean;
}

export function reopenWithUserBuffers(socket: Socket, onread: UserBufferRead): Socket | undefined {
  if (socket instanceof TLSSocket || socket.destroyed) return undefined;
  const fd = (socket as unknown as { _handle?: { fd?: unknown } })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) return undefined;
  socket.pause();
  if (socket.readableLength > 0 || socket.writableLength > 0) return undefined;
  let copy: number;
  try {
    copy = dupCloexec(fd);
  } catch {
    return undefined;
  }
  let reopened: Socket;
  try {
    // `onread` is a documented Socket option that @types/node only lists for connect().
    reopened = new Socket({ fd: copy, readable: true, writable: true, allowHalfOpen: true, onread } as SocketConstructorOpts);
  } catch {
    close(copy);
    return undefined;
  }
  socket.destroy();
  return reopened;
}
