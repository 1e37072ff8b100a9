/**
 * SeederRemote: a seeder (r3map-seed, or a Go r3map seeder) as the leecher sees it: a read-only
 * Backend over the Seeder service's ReadAt and Size, plus Track, Sync (the dirty chunk offsets)
 * and Close. Opened from a grpc://, grpcs:// or grpc+unix:// URI with the same TLS, mTLS and
 * token parameters as a gRPC backend. Track and Close are retried on UNAVAILABLE like reads; Sync
 * never is (a lost reply would lose the dirty list, so it fails instead).
 */
import { UsageError } from '../errors.js';
import type { Logger } from '../log.js';
import { GrpcBackend } from '../backends/grpc.js';
import { parseBackendUri } from '../backends/uri.js';
import { EMPTY } from '../rpc/codec.js';
import { seederDefinition } from '../rpc/definitions.js';
import type { DirtyChunks } from '../rpc/seeder-service.js';

export class SeederRemote {
  readonly #reader: GrpcBackend;

  private constructor(reader: GrpcBackend) {
    this.#reader = reader;
  }

  /** Connects and asks for the size; a clear BackendError when the seeder is unreachable or refuses us. */
  static async open(uri: string, options: { readonly log?: Logger; readonly connectTimeoutMs?: number } = {}): Promise<SeederRemote> {
    const spec = parseBackendUri(uri);
    if (spec.kind !== 'grpc') throw new UsageError(`a seeder is reached over gRPC (grpc://, grpcs://, grpc+unix://), not ${uri.split(':')[0]}://`);
    const reader = await GrpcBackend.open({
      target: spec.target, service: 'seeder',
      ...(spec.tls !== undefined ? { tls: spec.tls } : {}),
      ...(spec.tokenFile !== undefined ? { tokenFile: spec.tokenFile } : {}),
      ...(spec.maxRequestBytes !== undefined ? { maxRequestBytes: spec.maxRequestBytes } : {}),
      ...(spec.channels !== undefined ? { channels: spec.channels } : {}),
      ...(options.connectTimeoutMs !== undefined ? { connectTimeoutMs: options.connectTimeoutMs } : {}),
      ...(options.log !== undefined ? { log: options.log } : {}),
    });
    return new SeederRemote(reader);
  }

  /** The migrated state, read-only. */
  get backend(): GrpcBackend {
    return this.#reader;
  }

  get size(): number {
    return this.#reader.size;
  }

  get uri(): string {
    return this.#reader.uri;
  }

  /** Starts tracking on the seeder; its session number (0 from a seeder without sessions, e.g. Go r3map). */
  async track(): Promise<number> {
    return (await this.#reader.call(seederDefinition.Track, EMPTY, 'Track', true)).session;
  }

  /**
   * The seeder's session without starting to track (answered after a Sync too); for a leecher that
   * finalized, was restarted and must tell whether its saved state is this seeder's. A seeder
   * without the method (Go r3map) answers UNIMPLEMENTED, which comes back as an error.
   */
  async session(): Promise<number> {
    return (await this.#reader.call(seederDefinition.Session, EMPTY, 'Session', true)).session;
  }

  /**
   * A pre-copy round: the chunks written on the seeder after epoch `since` (0: since Track), while
   * its application runs on. Retried like reads: nothing is cleared, so a repeat is harmless.
   */
  async dirty(since: number): Promise<DirtyChunks> {
    const reply = await this.#reader.call(seederDefinition.Dirty, { since }, 'Dirty', true);
    return { offsets: reply.dirtyOffsets, epoch: reply.epoch ?? 0 };
  }

  /** Suspends the application on the seeder and returns the chunks written after epoch `since`. Never retried. */
  async sync(since = 0): Promise<DirtyChunks> {
    const reply = await this.#reader.call(seederDefinition.Sync, { since }, 'Sync', false);
    return { offsets: reply.dirtyOffsets, epoch: reply.epoch ?? 0 };
  }

  /** Tells the seeder we are done (it refuses before a Sync), then disconnects. */
  async close(): Promise<void> {
    try {
      await this.#reader.call(seederDefinition.Close, EMPTY, 'Close', true);
    } finally {
      await this.#reader.close();
    }
  }

  /** Disconnects without telling the seeder (after a failure). */
  disconnect(): Promise<void> {
    return this.#reader.close();
  }
}
