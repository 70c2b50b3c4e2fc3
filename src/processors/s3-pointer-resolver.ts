/**
 * Claim check, consumer side: a record that is an S3 pointer (our `$s3pointer` envelope, or the AWS
 * extended client's `PayloadS3Pointer`; see core/s3-pointer.ts) is replaced by the bytes of the object
 * it points to, before the rest of the chain sees it.
 *
 * Safety: only buckets (and key prefixes) on the allowlist are ever fetched, keys with dot or empty
 * segments never (a path-style request for `allowed/../other/k` reaches another bucket where dot
 * segments are normalised), and `expectedBucketOwner` pins the account. A pointer is written by whoever can put to the
 * stream, and the worker's role can usually read more than that producer can; fetching any bucket named
 * in a record would let a producer read through the worker (confused deputy). Size is bounded before
 * and while reading; size and SHA-256 are verified when the pointer carries them.
 *
 * Failures: a missing object, a foreign bucket, an oversize object or a checksum mismatch sends the
 * pointer record to the DLQ with the reason. Throttling, 5xx and network errors are retried with
 * backoff for `retryBudgetMs` (the shard waits meanwhile: order is kept), then dead-lettered.
 *
 * Objects are never deleted on read: another consumer of the stream (fan-out) may still need them.
 * Expire them with an S3 lifecycle rule on the offload prefix (see README).
 */
import { GetObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import pLimit, { type LimitFunction } from 'p-limit';
import type { Logger } from 'pino';
import type { Counter, Histogram, Registry } from 'prom-client';
import { z } from 'zod';
import { awsErrorName, isRetryableAwsError } from '../core/aws-errors.js';
import { backoffDelay, sleep } from '../core/backoff.js';
import {
  mayBePointer,
  PointerFormatError,
  readPointer,
  type S3Pointer,
  sha256Hex,
  unsafeBucketReason,
  unsafeKeyReason,
} from '../core/s3-pointer.js';
import { counter, histogram } from '../metrics/registry.js';

export const s3PointerConfigSchema = z
  .object({
    enabled: z
      .boolean()
      .default(false)
      .describe('Resolve S3 pointer records (claim check). Needs allowedBuckets.'),
    allowedBuckets: z
      .array(
        z
          .string()
          .min(3)
          .superRefine((entry, ctx) => {
            const { bucket, prefix } = splitAllowed(entry);
            const reason =
              unsafeBucketReason(bucket) ?? (prefix === '' ? undefined : unsafePrefixReason(prefix));
            if (reason !== undefined) ctx.addIssue({ code: 'custom', message: `"${entry}": ${reason}` });
          }),
      )
      .default([])
      .describe(
        'Where pointers may point: "bucket" (any key of it) or "bucket/prefix/" (keys starting with prefix/ only; prefer this, so a producer cannot make the worker read the lake or the DLQ). A pointer anywhere else goes to the DLQ and is never fetched (a producer must not be able to read through the worker). Keys with "." or ".." segments, empty segments, backslashes or percent-encoded separators are refused as pointer_invalid before any request.',
      ),
    expectedBucketOwner: z
      .string()
      .regex(/^\d{12}$/, 'a 12-digit AWS account id')
      .optional()
      .describe(
        'AWS account id that must own the pointed-to buckets; sent as ExpectedBucketOwner on every GetObject, so S3 refuses (403) a bucket of another account that took an allowed name.',
      ),
    maxObjectBytes: z
      .number()
      .int()
      .min(1)
      .default(64 * 1024 * 1024)
      .describe(
        'Largest object fetched; a larger one goes to the DLQ (checked from Content-Length and while reading).',
      ),
    concurrency: z
      .number()
      .int()
      .min(1)
      .max(256)
      .default(16)
      .describe('GetObject calls in flight at most, over all shards.'),
    retryBudgetMs: z
      .number()
      .int()
      .min(0)
      .default(120_000)
      .describe(
        'How long transient S3 errors (throttling, 5xx, network) are retried for one object before the pointer record goes to the DLQ. The shard waits meanwhile, so order is kept.',
      ),
    backoffBaseMs: z
      .number()
      .int()
      .min(1)
      .default(100)
      .describe('First retry delay ceiling (full jitter, doubling).'),
    backoffMaxMs: z.number().int().min(1).default(10_000).describe('Largest retry delay.'),
    requireChecksum: z
      .boolean()
      .default(false)
      .describe(
        'Reject pointers without sha256. The AWS extended-client format carries no checksum, so leave this off to read it.',
      ),
  })
  .strict()
  .describe('Claim check: replace S3 pointer records by the object they point to.');

export type S3PointerConfig = z.infer<typeof s3PointerConfigSchema>;

/** An allowlist entry: "bucket" or "bucket/key-prefix". */
export function splitAllowed(entry: string): { bucket: string; prefix: string } {
  const slash = entry.indexOf('/');
  return slash < 0
    ? { bucket: entry, prefix: '' }
    : { bucket: entry.slice(0, slash), prefix: entry.slice(slash + 1) };
}

/** A prefix obeys the key rules, except that it may end with "/". */
function unsafePrefixReason(prefix: string): string | undefined {
  return unsafeKeyReason(prefix.endsWith('/') ? prefix.slice(0, -1) : prefix);
}

/** Thrown when shutdown aborts a fetch: the record is neither delivered nor dead-lettered (read again later). */
export class PointerFetchAbortedError extends Error {
  constructor(where: string) {
    super(`fetch of ${where} aborted by shutdown`);
  }
}

/** Why a pointer could not be resolved; `kind` is the metric label and DLQ reason class. */
export class PointerError extends Error {
  constructor(
    message: string,
    readonly kind:
      | 'pointer_invalid'
      | 'pointer_bucket_not_allowed'
      | 'pointer_missing'
      | 'pointer_too_large'
      | 'pointer_size_mismatch'
      | 'pointer_checksum_mismatch'
      | 'pointer_fetch_failed',
  ) {
    super(message);
  }
}

export class S3PointerResolver {
  private readonly limit: LimitFunction;
  private readonly allowed: ReadonlyMap<string, readonly string[]>;
  private readonly resolved: Counter<'format'>;
  private readonly failed: Counter<'reason'>;
  private readonly retries: Counter;
  private readonly fetchSeconds: Histogram;

  constructor(
    private readonly config: S3PointerConfig,
    private readonly s3: Pick<S3Client, 'send'>,
    metrics: Registry,
    private readonly logger?: Logger,
    private readonly random: () => number = Math.random,
    private readonly signal?: AbortSignal,
  ) {
    this.limit = pLimit(config.concurrency);
    const allowed = new Map<string, string[]>();
    for (const entry of config.allowedBuckets) {
      const { bucket, prefix } = splitAllowed(entry);
      allowed.set(bucket, [...(allowed.get(bucket) ?? []), prefix]);
    }
    this.allowed = allowed;
    this.resolved = counter(metrics, {
      name: 'ksw_s3_pointer_resolved_total',
      help: 'Pointer records replaced by their S3 object, by pointer format',
      labelNames: ['format'],
    });
    this.failed = counter(metrics, {
      name: 'ksw_s3_pointer_failures_total',
      help: 'Pointer records sent to the DLQ, by reason',
      labelNames: ['reason'],
    });
    this.retries = counter(metrics, {
      name: 'ksw_s3_pointer_retries_total',
      help: 'GetObject attempts retried after a transient error',
    });
    this.fetchSeconds = histogram(metrics, {
      name: 'ksw_s3_pointer_fetch_seconds',
      help: 'Time to fetch a pointed-to object, retries included',
      buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    });
  }

  /**
   * The pointer a record holds, or undefined for an ordinary record. Throws PointerError when the record
   * claims to be a pointer but is malformed.
   */
  pointerOf(data: Uint8Array): S3Pointer | undefined {
    if (!mayBePointer(data)) return undefined;
    let parsed: unknown;
    try {
      parsed = JSON.parse(Buffer.from(data.buffer, data.byteOffset, data.byteLength).toString('utf8'));
    } catch {
      return undefined; // not JSON at all: the decoder reports it
    }
    try {
      return readPointer(parsed);
    } catch (err) {
      if (err instanceof PointerFormatError)
        throw new PointerError(`malformed S3 pointer: ${err.message}`, 'pointer_invalid');
      throw err;
    }
  }

  /** Fetches and verifies the object; rejects with PointerError (counted) when it cannot. */
  async fetch(pointer: S3Pointer): Promise<Uint8Array> {
    try {
      const data = await this.limit(() => this.fetchVerified(pointer));
      this.resolved.inc({ format: pointer.format });
      return data;
    } catch (err) {
      if (err instanceof PointerError) this.failed.inc({ reason: err.kind });
      throw err;
    }
  }

  countFailure(kind: PointerError['kind']): void {
    this.failed.inc({ reason: kind });
  }

  private async fetchVerified(pointer: S3Pointer): Promise<Uint8Array> {
    const where = `s3://${pointer.bucket}/${pointer.key}`;
    // readPointer already refused unsafe names; checked again so no caller can skip it.
    const unsafe = unsafeBucketReason(pointer.bucket) ?? unsafeKeyReason(pointer.key);
    if (unsafe !== undefined) {
      throw new PointerError(`pointer to ${where}: ${unsafe}; not fetched`, 'pointer_invalid');
    }
    const prefixes = this.allowed.get(pointer.bucket);
    if (!prefixes) {
      throw new PointerError(
        `pointer to ${where}: bucket "${pointer.bucket}" is not in decode.s3Pointers.allowedBuckets; not fetched`,
        'pointer_bucket_not_allowed',
      );
    }
    if (!prefixes.some((p) => pointer.key.startsWith(p))) {
      throw new PointerError(
        `pointer to ${where}: the key is not under an allowed prefix of bucket "${pointer.bucket}" (${prefixes.map((p) => `"${p}"`).join(', ')}) in decode.s3Pointers.allowedBuckets; not fetched`,
        'pointer_bucket_not_allowed',
      );
    }
    if (this.config.requireChecksum && pointer.sha256 === undefined) {
      throw new PointerError(
        `pointer to ${where} has no sha256 and decode.s3Pointers.requireChecksum is on`,
        'pointer_invalid',
      );
    }
    if (pointer.size !== undefined && pointer.size > this.config.maxObjectBytes) {
      throw new PointerError(
        `pointer to ${where} declares ${pointer.size} bytes, over decode.s3Pointers.maxObjectBytes (${this.config.maxObjectBytes})`,
        'pointer_too_large',
      );
    }
    const stop = this.fetchSeconds.startTimer();
    const data = await this.getWithRetry(pointer, where).finally(() => stop());
    if (pointer.size !== undefined && pointer.size !== data.byteLength) {
      throw new PointerError(
        `${where} has ${data.byteLength} bytes, the pointer says ${pointer.size}`,
        'pointer_size_mismatch',
      );
    }
    if (pointer.sha256 !== undefined && sha256Hex(data) !== pointer.sha256) {
      throw new PointerError(
        `${where}: SHA-256 of the object does not match the pointer's`,
        'pointer_checksum_mismatch',
      );
    }
    return data;
  }

  private async getWithRetry(pointer: S3Pointer, where: string): Promise<Uint8Array> {
    const started = Date.now();
    for (let attempt = 0; ; attempt++) {
      if (this.signal?.aborted) throw new PointerFetchAbortedError(where);
      try {
        return await this.getOnce(pointer, where);
      } catch (err) {
        if (err instanceof PointerError) throw err;
        if (this.signal?.aborted) throw new PointerFetchAbortedError(where);
        const name = awsErrorName(err);
        if (name === 'NoSuchKey' || name === 'NotFound' || name === 'NoSuchBucket') {
          throw new PointerError(`${where} does not exist (${name})`, 'pointer_missing');
        }
        const spent = Date.now() - started;
        if (!isRetryableAwsError(err) || spent >= this.config.retryBudgetMs) {
          throw new PointerError(
            `${where} could not be fetched after ${attempt + 1} attempts over ${spent} ms: ${name}: ${(err as Error).message}`,
            'pointer_fetch_failed',
          );
        }
        this.retries.inc();
        if (attempt === 0)
          this.logger?.warn({ where, err: name }, 'S3 GetObject failed; retrying with backoff');
        await sleep(
          backoffDelay(attempt, this.config.backoffBaseMs, this.config.backoffMaxMs, this.random),
          this.signal,
        );
      }
    }
  }

  private async getOnce(pointer: S3Pointer, where: string): Promise<Uint8Array> {
    const owner = this.config.expectedBucketOwner;
    const out = await this.s3.send(
      new GetObjectCommand({
        Bucket: pointer.bucket,
        Key: pointer.key,
        ...(owner === undefined ? {} : { ExpectedBucketOwner: owner }),
      }),
    );
    const max = this.config.maxObjectBytes;
    if (out.ContentLength !== undefined && out.ContentLength > max) {
      (out.Body as { destroy?: () => void } | undefined)?.destroy?.();
      throw new PointerError(
        `${where} has ${out.ContentLength} bytes, over decode.s3Pointers.maxObjectBytes (${max})`,
        'pointer_too_large',
      );
    }
    const body = out.Body as AsyncIterable<Uint8Array> & { destroy?: () => void };
    if (!body) return new Uint8Array(0);
    const parts: Uint8Array[] = [];
    let total = 0;
    for await (const part of body) {
      total += part.byteLength;
      if (total > max) {
        body.destroy?.();
        throw new PointerError(
          `${where} is larger than decode.s3Pointers.maxObjectBytes (${max})`,
          'pointer_too_large',
        );
      }
      parts.push(part);
    }
    return Buffer.concat(parts, total);
  }
}
