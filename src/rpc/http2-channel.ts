/**
 * Http2Channel: one HTTP/2 connection of a GrpcHttp2Client (plaintext, TLS with ALPN h2, or a
 * Unix socket), opened on first use with a large flow-control window and TCP keepalive.
 */
import http2 from 'node:http2';
import net from 'node:net';
import tls from 'node:tls';
import type { GrpcClientTls, GrpcTarget } from './grpc-target.js';

/** The innermost reason of a socket, TLS or HTTP/2 error, on one line. */
export function describe(err: Error): string {
  let e: Error = err;
  while (e.cause instanceof Error) e = e.cause;
  const reason = (e as { reason?: unknown }).reason;
  return (typeof reason === 'string' ? reason : e.message).split('\n')[0]!.trim();
}

/**
 * One HTTP/2 connection at a time, replaced after it fails or is told to go away. A retired
 * session serves its open streams to the end and is destroyed after the last one (Node's own
 * graceful close() of an idle client session never finishes). A session holds the event loop
 * only while it has streams.
 */
export class Http2Channel {
  readonly #target: GrpcTarget;
  readonly #tls: GrpcClientTls | undefined;
  readonly #window: number;
  #session: http2.ClientHttp2Session | undefined;
  /** Open streams per session that still has any, or that is current. */
  readonly #open = new Map<http2.ClientHttp2Session, number>();
  readonly #retired = new WeakSet<http2.ClientHttp2Session>();
  #closed = false;
  /** Why the last connection failed (for streams that end without a word). */
  lastError: string | undefined;

  constructor(target: GrpcTarget, tlsOptions: GrpcClientTls | undefined, window: number) {
    this.#target = target;
    this.#tls = tlsOptions;
    this.#window = window;
  }

  request(headers: http2.OutgoingHttpHeaders): http2.ClientHttp2Stream {
    if (this.#closed) throw new Error('channel is closed');
    let session = this.#session;
    if (session === undefined || session.closed || session.destroyed) session = this.#connect();
    let stream: http2.ClientHttp2Stream;
    try {
      stream = session.request(headers, { endStream: false });
    } catch (err) {
      this.#retire(session); // going away: the next call reconnects
      throw err;
    }
    const open = this.#open.get(session) ?? 0;
    if (open === 0) session.ref();
    this.#open.set(session, open + 1);
    return stream;
  }

  /** A stream of `session` closed. */
  settled(session: http2.ClientHttp2Session): void {
    const open = (this.#open.get(session) ?? 1) - 1;
    if (open > 0) {
      this.#open.set(session, open);
      return;
    }
    if (this.#retired.has(session)) {
      this.#open.delete(session);
      session.destroy();
    } else {
      this.#open.set(session, 0);
      session.unref();
    }
  }

  close(): void {
    this.#closed = true;
    for (const session of [...this.#open.keys()]) this.#retire(session);
  }

  /** No new streams on `session`; it goes when its last stream has closed. */
  #retire(session: http2.ClientHttp2Session): void {
    if (this.#session === session) this.#session = undefined;
    this.#retired.add(session);
    if ((this.#open.get(session) ?? 0) === 0) {
      this.#open.delete(session);
      session.destroy();
    }
  }

  #connect(): http2.ClientHttp2Session {
    const target = this.#target;
    const t = this.#tls;
    const authority = 'path' in target ? 'http://localhost' : `${t === undefined ? 'http' : 'https'}://${net.isIPv6(target.host) ? `[${target.host}]` : target.host}:${target.port}`;
    const session = http2.connect(authority, {
      settings: { initialWindowSize: this.#window, enablePush: false },
      maxSessionMemory: Number.MAX_SAFE_INTEGER,
      createConnection: () => {
        if ('path' in target) return net.connect({ path: target.path });
        const socket = t === undefined
          ? net.connect({ host: target.host, port: target.port, noDelay: true })
          : tls.connect({
            host: target.host,
            port: target.port,
            ALPNProtocols: ['h2'],
            ...(net.isIP(target.host) === 0 ? { servername: target.host } : {}),
            ...(t.ca !== undefined ? { ca: t.ca } : {}),
            ...(t.cert !== undefined ? { cert: t.cert } : {}),
            ...(t.key !== undefined ? { key: t.key } : {}),
          });
        socket.setKeepAlive(true, 30_000);
        return socket;
      },
    });
    // Every open stream gets a session's error too; the next call reconnects.
    session.on('error', (err: Error) => {
      this.lastError = describe(err);
      this.#retire(session);
    });
    session.on('goaway', () => this.#retire(session));
    session.on('close', () => {
      if (this.#session === session) this.#session = undefined;
      if ((this.#open.get(session) ?? 0) === 0) this.#open.delete(session);
    });
    session.once('connect', () => {
      this.lastError = undefined;
      try {
        session.setLocalWindowSize(this.#window);
      } catch {
        // the session already failed; its streams report it
      }
    });
    this.#session = session;
    this.#open.set(session, 0);
    return session;
  }
}
