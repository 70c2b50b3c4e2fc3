/**
 * The S3 side of the Parquet sink: uploading a finished file (one PUT, or a multipart upload streamed
 * from disk part by part for large files), writing and reading manifests, and listing a shard's
 * manifests; each retried with exponential backoff and full jitter until it succeeds or the sink is closed.
 */
import { createReadStream } from 'node:fs';
import { performance } from 'node:perf_hooks';
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  type S3Client,
  UploadPartCommand,
} from '@aws-sdk/client-s3';
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

export interface MultipartOptions {
  readonly thresholdBytes: number;
  readonly partSizeBytes: number;
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
  readonly multipart?: MultipartOptions;
}

/** S3 allows at most 10,000 parts; larger files get proportionally larger parts. */
const MAX_PARTS = 10_000;

export class ParquetUploadService {
  constructor(private readonly opts: UploadServiceOptions) {}

  private retry<T>(
    what: string,
    attempt: () => Promise<T>,
    context: Record<string, unknown>,
    signal: AbortSignal = this.opts.signal,
  ) {
    return retryUntilAborted(what, attempt, {
      signal,
      logger: this.opts.logger,
      onError: () => this.opts.uploadErrors.inc(this.opts.labels),
      context: { bucket: this.opts.bucket, ...context },
      backoff: this.opts.backoff,
    });
  }

  /**
   * Uploads the file, retrying until it succeeds (true) or `signal` (default: the sink's) aborts (false).
   */
  async upload(request: UploadRequest, signal: AbortSignal = this.opts.signal): Promise<boolean> {
    const multipart = this.opts.multipart;
    if (multipart && request.bytes >= multipart.thresholdBytes)
      return this.uploadMultipart(request, multipart, signal);
    return this.uploadSingle(request, signal);
  }

  /**
   * A multipart upload streamed from the file on disk: each part is read with its own stream and retried
   * alone, so a transient error costs one part, not the whole file. The object appears atomically at
   * CompleteMultipartUpload. When the sink is closed mid-way the upload is aborted (best effort: an
   * emulator may not implement AbortMultipartUpload; a bucket lifecycle rule cleans up after crashes).
   */
  private async uploadMultipart(
    request: UploadRequest,
    options: MultipartOptions,
    signal: AbortSignal,
  ): Promise<boolean> {
    const { s3, bucket, uploadSeconds, labels } = this.opts;
    const started = performance.now();
    const partSize = Math.max(options.partSizeBytes, Math.ceil(request.bytes / MAX_PARTS));
    const created = await this.retry(
      'parquet multipart create',
      () =>
        s3.send(
          new CreateMultipartUploadCommand({
            Bucket: bucket,
            Key: request.key,
            ContentType: 'application/vnd.apache.parquet',
            Metadata: request.metadata,
          }),
          { abortSignal: signal },
        ),
      { key: request.key },
      signal,
    );
    const uploadId = created?.value.UploadId;
    if (!uploadId) return false;
    const parts: Array<{ PartNumber: number; ETag: string }> = [];
    for (let offset = 0, number = 1; offset < request.bytes; offset += partSize, number++) {
      const length = Math.min(partSize, request.bytes - offset);
      const part = await this.retry(
        'parquet upload part',
        async () => {
          const body = createReadStream(request.path, { start: offset, end: offset + length - 1 });
          try {
            return await s3.send(
              new UploadPartCommand({
                Bucket: bucket,
                Key: request.key,
                UploadId: uploadId,
                PartNumber: number,
                Body: body,
                ContentLength: length,
              }),
              { abortSignal: signal },
            );
          } finally {
            body.destroy();
          }
        },
        { key: request.key, part: number },
        signal,
      );
      if (!part) {
        await this.abortMultipart(request.key, uploadId);
        return false;
      }
      parts.push({ PartNumber: number, ETag: part.value.ETag ?? '' });
    }
    const completed = await this.retry(
      'parquet multipart complete',
      () =>
        s3.send(
          new CompleteMultipartUploadCommand({
            Bucket: bucket,
            Key: request.key,
            UploadId: uploadId,
            MultipartUpload: { Parts: parts },
          }),
          { abortSignal: signal },
        ),
      { key: request.key },
      signal,
    );
    if (!completed) {
      await this.abortMultipart(request.key, uploadId);
      return false;
    }
    uploadSeconds.observe(labels, (performance.now() - started) / 1000);
    return true;
  }

  private async abortMultipart(key: string, uploadId: string): Promise<void> {
    try {
      // The sink's signal has fired already: this call gets its own short deadline instead.
      await this.opts.s3.send(
        new AbortMultipartUploadCommand({ Bucket: this.opts.bucket, Key: key, UploadId: uploadId }),
        {
          abortSignal: AbortSignal.timeout(5_000),
        },
      );
    } catch (err) {
      this.opts.logger.warn(
        { key, error: errorSummary(err) },
        'abort of an unfinished multipart upload failed',
      );
    }
  }

  /** Writes a small JSON object (a manifest), retrying until it succeeds (true) or the sink is closed. */
  async putJson(key: string, value: unknown, signal: AbortSignal = this.opts.signal): Promise<boolean> {
    const { s3, bucket } = this.opts;
    const body = JSON.stringify(value);
    const result = await this.retry(
      'parquet manifest write',
      () =>
        s3.send(
          new PutObjectCommand({ Bucket: bucket, Key: key, Body: body, ContentType: 'application/json' }),
          { abortSignal: signal },
        ),
      { key },
      signal,
    );
    return result !== undefined;
  }

  /** The object's text; null when it does not exist, undefined when the sink is closed. */
  async getText(key: string, signal: AbortSignal = this.opts.signal): Promise<string | null | undefined> {
    const { s3, bucket } = this.opts;
    const result = await this.retry(
      'parquet manifest read',
      async () => {
        try {
          const out = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: key }), {
            abortSignal: signal,
          });
          return { found: true as const, text: await out.Body!.transformToString() };
        } catch (err) {
          if (isNotFound(err)) return { found: false as const };
          throw err;
        }
      },
      { key },
      signal,
    );
    if (!result) return undefined;
    return result.value.found ? result.value.text : null;
  }

  /** The user metadata of an object, null when it does not exist, undefined when the sink is closed. */
  async headMetadata(
    key: string,
    signal: AbortSignal = this.opts.signal,
  ): Promise<Record<string, string> | null | undefined> {
    const { s3, bucket } = this.opts;
    const result = await this.retry(
      'parquet head',
      async () => {
        try {
          const out = await s3.send(new HeadObjectCommand({ Bucket: bucket, Key: key }), {
            abortSignal: signal,
          });
          return out.Metadata ?? {};
        } catch (err) {
          if (isNotFound(err)) return null;
          throw err;
        }
      },
      { key },
      signal,
    );
    return result?.value;
  }

  private async uploadSingle(request: UploadRequest, signal: AbortSignal): Promise<boolean> {
    const { s3, bucket, uploadSeconds, labels } = this.opts;
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

  /** Every key under `prefix` (all pages) after `startAfter`, or undefined when aborted. */
  async listKeys(
    prefix: string,
    startAfter?: string,
    signal: AbortSignal = this.opts.signal,
  ): Promise<string[] | undefined> {
    const { s3, bucket } = this.opts;
    const result = await retryUntilAborted(
      'parquet replay listing',
      async () => {
        const keys: string[] = [];
        let token: string | undefined;
        do {
          const page = await s3.send(
            new ListObjectsV2Command({
              Bucket: bucket,
              Prefix: prefix,
              ContinuationToken: token,
              ...(startAfter && !token ? { StartAfter: startAfter } : {}),
            }),
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

function isNotFound(err: unknown): boolean {
  const e = err as { name?: string; $metadata?: { httpStatusCode?: number } };
  return e?.name === 'NoSuchKey' || e?.name === 'NotFound' || e?.$metadata?.httpStatusCode === 404;
}
