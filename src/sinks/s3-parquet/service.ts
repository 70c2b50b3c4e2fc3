/**
 * The S3 side of the Parquet sink: uploading a finished file (one PUT, or a multipart upload streamed
 * from disk part by part for large files), writing and reading manifests, and listing a shard's
 * manifests. Transient errors (throttling, 5xx, network) are retried with exponential backoff and full
 * jitter until the call succeeds or its scope ends (the sink closes, or the lease tenure the file belongs
 * to ends); an error that retrying cannot cure (AccessDenied, NoSuchBucket, a disabled KMS key: see
 * src/core/retry.ts) is thrown at once as a `PermanentStorageError`.
 *
 * A CompleteMultipartUpload whose answer was lost and that is sent again answers NoSuchUpload: S3 forgot
 * the upload because it completed. When a Complete fails after an earlier one was sent, the object is
 * looked at (HEAD): if it carries this file's id, the upload is done; if not and S3 no longer knows the
 * upload, it really is gone (aborted meanwhile) and is started again.
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
import { classifyError, describeError, type ErrorClass, errorName } from '../../core/retry.js';
import { sendOnlyWhile } from '../../core/tenure.js';

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

/** An S3 call failed in a way retrying cannot cure; `cause` is the service's error. */
export class PermanentStorageError extends Error {
  constructor(
    readonly what: string,
    override readonly cause: unknown,
  ) {
    super(`${what}: ${describeError(cause)} (not retried: it cannot succeed until the cause is fixed)`);
    this.name = 'PermanentStorageError';
  }

  /** The service's error name (AccessDenied, NoSuchBucket, ...). */
  get errorName(): string {
    return errorName(this.cause);
  }
}

/**
 * Where a call runs: aborted by `signal` (the sink's, combined with the tenure's for a file), and only
 * while `proceed()` says so, checked right before every attempt (a tenure past its fencing deadline stops
 * sending before its timer has even ended it).
 */
export interface RequestScope {
  readonly signal: AbortSignal;
  readonly proceed?: () => boolean;
}

/**
 * Runs `attempt` until it succeeds; each failure is counted, logged at warn and followed by a backoff.
 * Returns undefined when the scope ends first (the caller then must not treat the work as done). An error
 * that `classify` calls permanent is not retried: it is thrown as a PermanentStorageError.
 */
export async function retryUntilAborted<T>(
  what: string,
  attempt: () => Promise<T>,
  opts: {
    readonly signal: AbortSignal;
    readonly proceed?: () => boolean;
    readonly logger: Logger;
    readonly onError: () => void;
    readonly context?: Record<string, unknown>;
    readonly backoff?: BackoffOptions;
    /** Default: every error is transient (local work such as encoding). */
    readonly classify?: (err: unknown) => ErrorClass;
  },
): Promise<{ value: T } | undefined> {
  const goOn = () => !opts.signal.aborted && (opts.proceed?.() ?? true);
  for (let failures = 0; ; failures++) {
    if (!goOn()) return undefined;
    try {
      return { value: await attempt() };
    } catch (err) {
      if (!goOn()) return undefined;
      opts.onError();
      if (opts.classify?.(err) === 'permanent') throw new PermanentStorageError(what, err);
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
  /** Object metadata; `ksw-file-id` names the file (how a completed upload is recognised). */
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

/** A multipart upload is started again at most this often when S3 no longer knows it (NoSuchUpload). */
const MULTIPART_ROUNDS = 3;

type MultipartOutcome = 'done' | 'stopped' | 'vanished';

/** S3 no longer knows the upload id (it completed, or it was aborted). */
class UploadVanished extends Error {}

export class ParquetUploadService {
  private readonly sinkScope: RequestScope;

  constructor(private readonly opts: UploadServiceOptions) {
    this.sinkScope = { signal: opts.signal };
  }

  /** A write command that is not sent once its scope may no longer write (checked right before the wire). */
  private write<C extends Parameters<typeof sendOnlyWhile>[0]>(
    command: C,
    scope: RequestScope,
    what: string,
  ): C {
    return scope.proceed ? sendOnlyWhile(command, scope.proceed, what) : command;
  }

  private retry<T>(
    what: string,
    attempt: () => Promise<T>,
    context: Record<string, unknown>,
    scope: RequestScope,
    classify: (err: unknown) => ErrorClass = classifyError,
  ) {
    return retryUntilAborted(what, attempt, {
      signal: scope.signal,
      ...(scope.proceed ? { proceed: scope.proceed } : {}),
      logger: this.opts.logger,
      onError: () => this.opts.uploadErrors.inc(this.opts.labels),
      context: { bucket: this.opts.bucket, ...context },
      backoff: this.opts.backoff,
      classify,
    });
  }

  /**
   * Uploads the file, retrying transient errors until it succeeds (true) or the scope ends (false).
   * Throws PermanentStorageError when it cannot succeed.
   */
  async upload(request: UploadRequest, scope: RequestScope = this.sinkScope): Promise<boolean> {
    const multipart = this.opts.multipart;
    if (!multipart || request.bytes < multipart.thresholdBytes) return this.uploadSingle(request, scope);
    for (let round = 1; ; round++) {
      const outcome = await this.uploadMultipart(request, multipart, scope);
      if (outcome !== 'vanished') return outcome === 'done';
      if (round >= MULTIPART_ROUNDS) {
        throw new PermanentStorageError(
          'parquet multipart upload',
          new Error(`${request.key}: S3 forgot the upload ${round} times (NoSuchUpload) before it completed`),
        );
      }
      this.opts.logger.warn(
        { key: request.key, round },
        'multipart upload no longer known to S3 (NoSuchUpload) and the object is not there; starting it again',
      );
    }
  }

  /**
   * A multipart upload streamed from the file on disk: each part is read with its own stream and retried
   * alone, so a transient error costs one part, not the whole file. The object appears atomically at
   * CompleteMultipartUpload. When the sink closes mid-way the upload is aborted (best effort: an emulator
   * may not implement AbortMultipartUpload); when the file's tenure ended, nothing more is sent for it, not
   * even the abort (the bucket's AbortIncompleteMultipartUpload lifecycle rule removes the parts).
   */
  private async uploadMultipart(
    request: UploadRequest,
    options: MultipartOptions,
    scope: RequestScope,
  ): Promise<MultipartOutcome> {
    const { s3, bucket, uploadSeconds, labels } = this.opts;
    const { signal } = scope;
    const started = performance.now();
    const partSize = Math.max(options.partSizeBytes, Math.ceil(request.bytes / MAX_PARTS));
    const created = await this.retry(
      'parquet multipart create',
      () =>
        s3.send(
          this.write(
            new CreateMultipartUploadCommand({
              Bucket: bucket,
              Key: request.key,
              ContentType: 'application/vnd.apache.parquet',
              Metadata: request.metadata,
            }),
            scope,
            'CreateMultipartUpload',
          ),
          { abortSignal: signal },
        ),
      { key: request.key },
      scope,
    );
    const uploadId = created?.value.UploadId;
    if (!uploadId) return 'stopped';
    const parts: Array<{ PartNumber: number; ETag: string }> = [];
    try {
      for (let offset = 0, number = 1; offset < request.bytes; offset += partSize, number++) {
        const length = Math.min(partSize, request.bytes - offset);
        const part = await this.retry(
          'parquet upload part',
          async () => {
            const body = createReadStream(request.path, { start: offset, end: offset + length - 1 });
            try {
              return await s3.send(
                this.write(
                  new UploadPartCommand({
                    Bucket: bucket,
                    Key: request.key,
                    UploadId: uploadId,
                    PartNumber: number,
                    Body: body,
                    ContentLength: length,
                  }),
                  scope,
                  'UploadPart',
                ),
                { abortSignal: signal },
              );
            } catch (err) {
              if (errorName(err) === 'NoSuchUpload') throw new UploadVanished();
              throw err;
            } finally {
              body.destroy();
            }
          },
          { key: request.key, part: number },
          scope,
          vanishedIsFinal,
        );
        if (!part) {
          await this.abortMultipart(request.key, uploadId, scope);
          return 'stopped';
        }
        parts.push({ PartNumber: number, ETag: part.value.ETag ?? '' });
      }
    } catch (err) {
      if (err instanceof PermanentStorageError && err.cause instanceof UploadVanished) return 'vanished';
      throw err;
    }
    let sent = 0;
    const completed = await this.retry(
      'parquet multipart complete',
      async () => {
        try {
          sent += 1;
          await s3.send(
            this.write(
              new CompleteMultipartUploadCommand({
                Bucket: bucket,
                Key: request.key,
                UploadId: uploadId,
                MultipartUpload: { Parts: parts },
              }),
              scope,
              'CompleteMultipartUpload',
            ),
            { abortSignal: signal },
          );
          return 'done' as const;
        } catch (err) {
          // An earlier Complete may have gone through with its answer lost: S3 then no longer knows the
          // upload (NoSuchUpload; s3rver answers 500). The object tells: it carries this file's id, or it
          // does not (the upload was aborted meanwhile, or the earlier Complete did not happen).
          const vanished = errorName(err) === 'NoSuchUpload';
          if (!vanished && sent === 1) throw err;
          const metadata = await this.headMetadata(request.key, scope);
          if (metadata === undefined) throw err; // the scope ended: stop
          const fileId = request.metadata['ksw-file-id'];
          if (fileId !== undefined && metadata?.['ksw-file-id'] === fileId) return 'done' as const;
          if (vanished) return 'vanished' as const;
          throw err;
        }
      },
      { key: request.key },
      scope,
    );
    if (!completed) {
      await this.abortMultipart(request.key, uploadId, scope);
      return 'stopped';
    }
    if (completed.value === 'vanished') return 'vanished';
    uploadSeconds.observe(labels, (performance.now() - started) / 1000);
    return 'done';
  }

  private async abortMultipart(key: string, uploadId: string, scope: RequestScope): Promise<void> {
    // The file's tenure ended (others may own the shard): nothing more is sent on its behalf.
    if (scope.proceed && !scope.proceed()) return;
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

  /** Writes a small JSON object (a manifest), retrying until it succeeds (true) or the scope ends. */
  async putJson(key: string, value: unknown, scope: RequestScope = this.sinkScope): Promise<boolean> {
    const { s3, bucket } = this.opts;
    const body = JSON.stringify(value);
    const result = await this.retry(
      'parquet manifest write',
      () =>
        s3.send(
          this.write(
            new PutObjectCommand({ Bucket: bucket, Key: key, Body: body, ContentType: 'application/json' }),
            scope,
            'PutObject (manifest)',
          ),
          { abortSignal: scope.signal },
        ),
      { key },
      scope,
    );
    return result !== undefined;
  }

  /** The object's text; null when it does not exist, undefined when the scope ended. */
  async getText(key: string, scope: RequestScope = this.sinkScope): Promise<string | null | undefined> {
    const { s3, bucket } = this.opts;
    const result = await this.retry(
      'parquet manifest read',
      async () => {
        try {
          const out = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: key }), {
            abortSignal: scope.signal,
          });
          return { found: true as const, text: await out.Body!.transformToString() };
        } catch (err) {
          if (isNotFound(err)) return { found: false as const };
          throw err;
        }
      },
      { key },
      scope,
    );
    if (!result) return undefined;
    return result.value.found ? result.value.text : null;
  }

  /** The user metadata of an object, null when it does not exist, undefined when the scope ended. */
  async headMetadata(
    key: string,
    scope: RequestScope = this.sinkScope,
  ): Promise<Record<string, string> | null | undefined> {
    const { s3, bucket } = this.opts;
    const result = await this.retry(
      'parquet head',
      async () => {
        try {
          const out = await s3.send(new HeadObjectCommand({ Bucket: bucket, Key: key }), {
            abortSignal: scope.signal,
          });
          return out.Metadata ?? {};
        } catch (err) {
          if (isNotFound(err)) return null;
          throw err;
        }
      },
      { key },
      scope,
    );
    return result?.value;
  }

  private async uploadSingle(request: UploadRequest, scope: RequestScope): Promise<boolean> {
    const { s3, bucket, uploadSeconds, labels } = this.opts;
    const result = await this.retry(
      'parquet upload',
      async () => {
        const started = performance.now();
        // A fresh stream per attempt: a failed attempt may have consumed or destroyed the previous one.
        const body = createReadStream(request.path);
        try {
          await s3.send(
            this.write(
              new PutObjectCommand({
                Bucket: bucket,
                Key: request.key,
                Body: body,
                ContentLength: request.bytes,
                ContentType: 'application/vnd.apache.parquet',
                Metadata: request.metadata,
              }),
              scope,
              'PutObject',
            ),
            { abortSignal: scope.signal },
          );
        } finally {
          body.destroy();
        }
        uploadSeconds.observe(labels, (performance.now() - started) / 1000);
      },
      { key: request.key },
      scope,
    );
    return result !== undefined;
  }

  /** Every key under `prefix` (all pages) after `startAfter`, or undefined when the scope ended. */
  async listKeys(
    prefix: string,
    startAfter?: string,
    scope: RequestScope = this.sinkScope,
  ): Promise<string[] | undefined> {
    const { s3, bucket } = this.opts;
    const result = await this.retry(
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
            { abortSignal: scope.signal },
          );
          for (const object of page.Contents ?? []) if (object.Key) keys.push(object.Key);
          token = page.IsTruncated ? page.NextContinuationToken : undefined;
        } while (token);
        return keys;
      },
      { prefix },
      scope,
    );
    return result?.value;
  }
}

/** A part upload S3 no longer knows the upload of: not retried, the whole upload starts again. */
function vanishedIsFinal(err: unknown): ErrorClass {
  return err instanceof UploadVanished ? 'permanent' : classifyError(err);
}

function isNotFound(err: unknown): boolean {
  const e = err as { name?: string; $metadata?: { httpStatusCode?: number } };
  return e?.name === 'NoSuchKey' || e?.name === 'NotFound' || e?.$metadata?.httpStatusCode === 404;
}
