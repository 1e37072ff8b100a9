/**
 * S3Backend: one object per chunk, key `<prefix>-<offset>` in `bucket` (offset = index *
 * chunkSize in decimal; an empty prefix gives `<offset>`), through @aws-sdk/client-s3.
 *
 * Guarantees, on top of ChunkStoreBackend's (whole chunks, blockSize = chunkSize: any range
 * through mount/compose.ts; at most `maxInFlight` requests at once, which is also the HTTP
 * agent's socket cap):
 * - A missing object (NoSuchKey, or a 404 that is not NoSuchBucket) reads as zeros; the match
 *   is on the error's name and HTTP status, never its text. GetObject bodies stream straight
 *   into the chunk buffer; a body of another length is an error, not data.
 * - trim = DeleteObject for whole chunks. sync() is a no-op: a PutObject that answered is durable.
 * - Bounded: each request has a connect timeout and a whole-request timeout; the SDK does not
 *   retry by itself (maxAttempts 1); withRetry retries network errors, timeouts, 5xx, 429 and
 *   throttling (`retries`, backoff, one warning per retry); other errors (403, NoSuchBucket …)
 *   fail at once. open() sends HeadBucket and fails with a BackendError naming the endpoint and
 *   bucket when the bucket is missing, the credentials are refused or nothing answers.
 * - Credentials and (unless given) the region come from the SDK's default chain (environment,
 *   profile, …); with an `endpoint` and no region anywhere, 'us-east-1'. Path-style addressing
 *   is the default when an endpoint is given. Checksums are only sent where S3 requires them.
 */
import http from 'node:http';
import https from 'node:https';
import type { Readable } from 'node:stream';
import { DeleteObjectCommand, GetObjectCommand, HeadBucketCommand, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { BackendError, UsageError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import { ChunkStoreBackend, type ChunkStore } from './chunk-store.js';
import { isTransientNetworkError, withRetry, withTimeout, type RetryOptions } from '../util/retry.js';
import { DEFAULT_CHUNK_SIZE } from '../util/chunks.js';

export interface S3BackendOptions {
  readonly bucket: string;
  /** Key prefix; '' gives bare offsets as keys. */
  readonly prefix: string;
  /** e.g. http://127.0.0.1:9000 for MinIO or s3rver; default AWS. */
  readonly endpoint?: string;
  /** Default: the SDK's chain (AWS_REGION, profile); 'us-east-1' with an endpoint and none set. */
  readonly region?: string;
  /** Default: true when `endpoint` is given. */
  readonly forcePathStyle?: boolean;
  readonly size: number;
  /** Bytes per object; default DEFAULT_CHUNK_SIZE (64 KiB). */
  readonly chunkSize?: number;
  /** Requests in flight; default 16, 0 = no cap (the agent then keeps at most 64 sockets). */
  readonly maxInFlight?: number;
  readonly readOnly?: boolean;
  /** Retries of one request on transient errors; default 5, 0 = none. */
  readonly retries?: number;
  /** Bound on a TCP connect; default 5000 ms. */
  readonly connectTimeoutMs?: number;
  /** Bound on one whole request; default 30000 ms. */
  readonly requestTimeoutMs?: number;
  readonly log?: Logger;
}

/** S3 error names that go away by themselves. */
const TRANSIENT_NAMES: ReadonlySet<string> = new Set([
  'TimeoutError', 'RequestTimeout', 'RequestTimeoutException', 'SlowDown', 'ServiceUnavailable',
  'InternalError', 'ThrottlingException', 'Throttling', 'TooManyRequestsException',
]);

function httpStatus(err: unknown): number | undefined {
  return (err as { $metadata?: { httpStatusCode?: number } } | undefined)?.$metadata?.httpStatusCode;
}

function isMissing(err: unknown): boolean {
  if (!(err instanceof Error)) return false;
  return err.name === 'NoSuchKey' || (httpStatus(err) === 404 && err.name !== 'NoSuchBucket');
}

export function isTransientS3Error(err: unknown): boolean {
  if (isTransientNetworkError(err)) return true;
  if (!(err instanceof Error)) return false;
  if (TRANSIENT_NAMES.has(err.name)) return true;
  const status = httpStatus(err);
  return status !== undefined && (status >= 500 || status === 429);
}

class S3ChunkStore implements ChunkStore {
  readonly name = 's3';
  readonly #client: S3Client;
  readonly #bucket: string;
  readonly #prefix: string;
  readonly #where: string;
  readonly #abort = new AbortController();
  readonly #get: RetryOptions;
  readonly #put: RetryOptions;
  readonly #del: RetryOptions;

  constructor(client: S3Client, bucket: string, prefix: string, where: string, retries: number, log: Logger) {
    this.#client = client;
    this.#bucket = bucket;
    this.#prefix = prefix === '' ? '' : `${prefix}-`;
    this.#where = where;
    const base = { retries, isTransient: isTransientS3Error, log, signal: this.#abort.signal };
    this.#get = Object.freeze({ ...base, what: 's3 GetObject' });
    this.#put = Object.freeze({ ...base, what: 's3 PutObject' });
    this.#del = Object.freeze({ ...base, what: 's3 DeleteObject' });
  }

  async readChunk(_index: number, off: number, dst: Buffer): Promise<boolean> {
    const key = this.#prefix + off;
    let got: number;
    try {
      got = await withRetry(() => this.#getInto(key, dst), this.#get);
    } catch (err) {
      throw this.#error(err, 'read', off, dst.length);
    }
    if (got === -1) return false;
    if (got !== dst.length) {
      throw new BackendError(
        { backend: 's3', op: 'read', off, length: dst.length },
        `${this.#where}: object ${key} holds ${got > dst.length ? 'more than ' : ''}${got} bytes, expected ${dst.length} (written with another chunk size?)`,
      );
    }
    return true;
  }

  async writeChunk(_index: number, off: number, src: Buffer): Promise<void> {
    const input = { Bucket: this.#bucket, Key: this.#prefix + off, Body: src, ContentLength: src.length };
    try {
      await withRetry(() => this.#client.send(new PutObjectCommand(input)), this.#put);
    } catch (err) {
      throw this.#error(err, 'write', off, src.length);
    }
  }

  async deleteChunk(_index: number, off: number): Promise<void> {
    const input = { Bucket: this.#bucket, Key: this.#prefix + off };
    try {
      await withRetry(() => this.#client.send(new DeleteObjectCommand(input)), this.#del);
    } catch (err) {
      throw this.#error(err, 'trim', off, 0);
    }
  }

  async close(): Promise<void> {
    this.#abort.abort();
    this.#client.destroy();
  }

  /** One GetObject streamed into `dst`: the bytes it had (up to one piece past dst), or -1 when missing. */
  async #getInto(key: string, dst: Buffer): Promise<number> {
    let body: Readable;
    try {
      const out = await this.#client.send(new GetObjectCommand({ Bucket: this.#bucket, Key: key }));
      body = out.Body as Readable;
    } catch (err) {
      if (isMissing(err)) return -1;
      throw err;
    }
    let at = 0;
    try {
      for await (const piece of body as AsyncIterable<Buffer>) {
        if (at + piece.length > dst.length) {
          at += piece.length;
          break;
        }
        piece.copy(dst, at);
        at += piece.length;
      }
    } finally {
      if (!body.readableEnded) body.destroy();
    }
    return at;
  }

  #error(err: unknown, op: string, off: number, length: number): BackendError {
    return new BackendError({ backend: 's3', op, off, length }, `${this.#where}: ${describeS3Error(err)}`, { cause: err });
  }
}

export class S3Backend extends ChunkStoreBackend {
  readonly bucket: string;
  readonly prefix: string;
  /** The endpoint (or 'aws'), for messages. */
  readonly endpoint: string;

  private constructor(store: S3ChunkStore, options: S3BackendOptions, chunkSize: number, maxInFlight: number) {
    super(store, { size: options.size, chunkSize, readOnly: options.readOnly ?? false, maxInFlight, canMultiConn: true, log: options.log });
    this.bucket = options.bucket;
    this.prefix = options.prefix;
    this.endpoint = options.endpoint ?? 'aws';
  }

  static async open(options: S3BackendOptions): Promise<S3Backend> {
    const { bucket, endpoint } = options;
    if (bucket === '') throw new UsageError('s3 bucket name is empty (expected s3://bucket/prefix)');
    if (endpoint !== undefined) {
      let url: URL;
      try {
        url = new URL(endpoint);
      } catch (err) {
        throw new UsageError(`s3 endpoint is not a URL: ${endpoint} (expected http(s)://host:port)`, { cause: err });
      }
      if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new UsageError(`s3 endpoint must be http:// or https://, got ${endpoint}`);
    }
    const chunkSize = options.chunkSize ?? DEFAULT_CHUNK_SIZE;
    const maxInFlight = options.maxInFlight ?? 16;
    const connectTimeoutMs = options.connectTimeoutMs ?? 5000;
    const where = `${endpoint ?? 'aws'} bucket ${bucket}`;
    const log = (options.log ?? silentLogger).child({ component: 's3-backend', endpoint: endpoint ?? 'aws', bucket });
    const agentOptions = { keepAlive: true, maxSockets: maxInFlight === 0 ? 64 : maxInFlight };
    const region = options.region ?? (endpoint !== undefined && !process.env.AWS_REGION && !process.env.AWS_DEFAULT_REGION ? 'us-east-1' : undefined);
    const client = new S3Client({
      ...(endpoint === undefined ? {} : { endpoint }),
      ...(region === undefined ? {} : { region }),
      forcePathStyle: options.forcePathStyle ?? endpoint !== undefined,
      maxAttempts: 1,
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      requestHandler: {
        connectionTimeout: connectTimeoutMs,
        requestTimeout: options.requestTimeoutMs ?? 30_000,
        throwOnRequestTimeout: true,
        httpAgent: new http.Agent(agentOptions),
        httpsAgent: new https.Agent(agentOptions),
      },
    });
    try {
      await withTimeout(client.send(new HeadBucketCommand({ Bucket: bucket })), connectTimeoutMs + 1000, `${where}: HeadBucket`);
    } catch (err) {
      client.destroy();
      throw new BackendError({ backend: 's3', op: 'open' }, `${where}: ${describeStartupError(err)}`, { cause: err });
    }
    log.debug('bucket found');
    const store = new S3ChunkStore(client, bucket, options.prefix, where, options.retries ?? 5, log);
    return new S3Backend(store, options, chunkSize, maxInFlight);
  }
}

function describeS3Error(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  const status = httpStatus(err);
  const code = (err as { code?: unknown }).code;
  return `${err.name}${status === undefined ? '' : ` (HTTP ${status})`}${typeof code === 'string' && code !== err.name ? ` ${code}` : ''}: ${err.message}`;
}

function describeStartupError(err: unknown): string {
  const status = httpStatus(err);
  const name = err instanceof Error ? err.name : '';
  if (name === 'NoSuchBucket' || (name === 'NotFound' && status === 404)) return `the bucket does not exist (${describeS3Error(err)})`;
  if (status === 403 || status === 401) return `access denied: check the credentials (${describeS3Error(err)})`;
  if (name === 'CredentialsProviderError') return `no AWS credentials found in the environment or profile (${describeS3Error(err)})`;
  if (isTransientNetworkError(err) || name === 'TimeoutError') return `unreachable (${describeS3Error(err)})`;
  return describeS3Error(err);
}
