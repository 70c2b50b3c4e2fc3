/**
 * The S3 side of the Parquet sink: uploading a finished file and listing a shard's committed objects,
 * each retried with exponential backoff and full jitter until it succeeds or the sink is closed.
 */
import { createReadStream } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { ListObjectsV2Command, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import type { Logger } from 'pino';
import type { Counter, Histogram } from 'prom-client';
import { backoffDelay, sleep } from '../../core/backoff.js';

export interface BackoffOptions {
  readonly baseMs: number;
  readonly maxMs: number;
}

export const DEFAULT_BACKOFF: BackoffOptions = { baseMs: 200, maxMs: 30_000 };

/** What gets logged of an error: never the request, the response body or credentials. */
export function errorSummary(err: unknown): { name: string; message: string; statusCode?: number } {
  const e = err as { name?: unknown; message?: unknown; $metadata?: { httpStatusCode?: number } };
  return {
    name: typeof e?.name === 'string' ? e.name : 'Error',
    message: typeof e?.message === 'string' ? e.message : String(err),
    ...(e?.$metadata?.httpStatusCode ? { statusCode: e.$metadata.httpStatusCode } : {}),
  };
}

/**
 * Runs `attempt` until it succeeds; each failure is counted, logged at warn and followed by a backoff.
 * Returns undefined when `signal` aborts first (the caller then must not treat the work as done).
 */
export async function retryUntilAborted<T>(
  what: string,
  attempt: () => Promise<T>,
  opts: {
    readonly signal: AbortSignal;
    readonly logger: Logger;
    readonly onError: () => void;
    readonly context?: Record<string, unknown>;
    readonly backoff?: BackoffOptions;
  },
): Promise<{ value: T } | undefined> {
  for (let failures = 0; ; failures++) {
    if (opts.signal.aborted) return undefined;
    try {
      return { value: await attempt() };
    } catch (err) {
      if (opts.signal.aborted) return undefined;
      opts.onError();
      const backoff = opts.backoff ?? DEFAULT_BACKOFF;
      const waitMs = backoffDelay(failures, backoff.baseMs, backoff.maxMs);
      opts.logger.warn(
        { ...opts.context, error: errorSummary(err), attempt: failures + 1, retryInMs: waitMs },
        `${what} failed; retrying`,
      );
      await sleep(waitMs, opts.signal);
    }
  }
}

export interface UploadRequest {
  readonly key: string;
  readonly path: string;
  readonly bytes: number;
  readonly metadata: Record<string, string>;
}

export interface UploadServiceOptions {
  readonly s3: S3Client;
  readonly bucket: string;
  readonly logger: Logger;
  readonly signal: AbortSignal;
  readonly uploadSeconds: Histogram<string>;
  readonly uploadErrors: Counter<string>;
  readonly labels: Record<string, string>;
  readonly backoff?: BackoffOptions;
}

export class ParquetUploadService {
  constructor(private readonly opts: UploadServiceOptions) {}

  /** Uploads the file, retrying until it succeeds (true) or the sink is closed (false). */
  async upload(request: UploadRequest): Promise<boolean> {
    const { s3, bucket, signal, uploadSeconds, labels } = this.opts;
    const result = await retryUntilAborted(
      'parquet upload',
      async () => {
        const started = performance.now();
        // A fresh stream per attempt: a failed attempt may have consumed or destroyed the previous one.
        const body = createReadStream(request.path);
        try {
          await s3.send(
            new PutObjectCommand({
              Bucket: bucket,
              Key: request.key,
              Body: body,
              ContentLength: request.bytes,
              ContentType: 'application/vnd.apache.parquet',
              Metadata: request.metadata,
            }),
            { abortSignal: signal },
          );
        } finally {
          body.destroy();
        }
        uploadSeconds.observe(labels, (performance.now() - started) / 1000);
      },
      {
        signal,
        logger: this.opts.logger,
        onError: () => this.opts.uploadErrors.inc(labels),
        context: { bucket, key: request.key },
        backoff: this.opts.backoff,
      },
    );
    return result !== undefined;
  }

  /** Every key under `prefix` (all pages), or undefined when aborted. */
  async listKeys(prefix: string): Promise<string[] | undefined> {
    const { s3, bucket, signal } = this.opts;
    const result = await retryUntilAborted(
      'parquet replay listing',
      async () => {
        const keys: string[] = [];
        let token: string | undefined;
        do {
          const page = await s3.send(
            new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, ContinuationToken: token }),
            { abortSignal: signal },
          );
          for (const object of page.Contents ?? []) if (object.Key) keys.push(object.Key);
          token = page.IsTruncated ? page.NextContinuationToken : undefined;
        } while (token);
        return keys;
      },
      {
        signal,
        logger: this.opts.logger,
        onError: () => this.opts.uploadErrors.inc(this.opts.labels),
        context: { bucket, prefix },
        backoff: this.opts.backoff,
      },
    );
    return result?.value;
  }
}
