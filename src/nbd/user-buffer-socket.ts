/**
 * Taking over a plain connected socket's descriptor, for two ends:
 * - `reopenWithUserBuffers`: a new Socket on a duplicate whose reads go into buffers the caller
 *   picks (net.Socket `onread`): Node then allocates nothing per read, and a WRITE payload can be
 *   read straight into the backend's memory. Node's servers offer no `onread` for accepted sockets.
 * - `takeDescriptor`: a duplicate for another thread to serve (connection-workers.ts).
 * The duplicate is close-on-exec; the old socket is closed without a shutdown, so the connection
 * lives on in the copy.
 *
 * Neither is done, leaving `socket` as it was, where it cannot be done safely: a TLS socket, a
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

/**
 * A duplicate of the socket's descriptor, with the socket paused; the caller closes the socket
 * once the duplicate is in use (or closes the duplicate). Undefined where it cannot be done.
 */
export function takeDescriptor(socket: Socket): number | undefined {
  if (socket instanceof TLSSocket || socket.destroyed) return undefined;
  const fd = (socket as unknown as { _handle?: { fd?: unknown } })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) return undefined;
  socket.pause();
  if (socket.readableLength > 0 || socket.writableLength > 0) return undefined;
  try {
    return dupCloexec(fd);
  } catch {
    return undefined;
  }
}

export function reopenWithUserBuffers(socket: Socket, onread: UserBufferRead): Socket | undefined {
  const copy = takeDescriptor(socket);
  if (copy === undefined) return undefined;
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
