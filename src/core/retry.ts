/**
 * The one retry policy of the worker: which errors are worth retrying, how long to wait between
 * attempts, and when to give up. Every reader, writer and sink retries through this module so that a
 * permanent error (AccessDenied, NoSuchBucket, a validation error, a KMS key that is disabled) is never
 * retried silently forever, and a transient one (throttling, 5xx, a reset connection) never fails a
 * shard on its first occurrence.
 */
import { z } from 'zod';
import { backoffDelay, sleep } from './backoff.js';

/** What a failure means for the caller. */
export type ErrorClass =
  /** The service asked us to slow down (throttling, 429, SlowDown): retry, and count it as throttling. */
  | 'throttled'
  /** A passing fault (5xx, timeout, reset connection): retry. */
  | 'transient'
  /** Retrying cannot help (4xx, access denied, missing resource, bad request): stop and surface it. */
  | 'permanent';

const THROTTLING = new Set([
  'ProvisionedThroughputExceededException',
  'LimitExceededException',
  'ThrottlingException',
  'Throttling',
  'ThrottledException',
  'TooManyRequestsException',
  'RequestLimitExceeded',
  'RequestThrottled',
  'RequestThrottledException',
  'SlowDown',
  'KMSThrottlingException',
  'TransactionInProgressException',
]);

const TRANSIENT = new Set([
  'InternalFailure',
  'InternalFailureException',
  'InternalError',
  'InternalServerError',
  'InternalServerException',
  'ServiceUnavailable',
  'ServiceUnavailableException',
  'TimeoutError',
  'RequestTimeout',
  'RequestTimeoutException',
  'ECONNRESET',
  'ECONNREFUSED',
  'ECONNABORTED',
  'EPIPE',
  'ETIMEDOUT',
  'EAI_AGAIN',
  'ENOTFOUND',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'UND_ERR_SOCKET',
  'UND_ERR_CONNECT_TIMEOUT',
]);

/**
 * Errors that look like client errors but heal by themselves: a clock skew the SDK corrects on the next
 * attempt, credentials being refreshed. (`ResourceInUseException` is not here: it means "already exists"
 * as often as "busy", so callers that expect it handle it by name.)
 */
const TRANSIENT_CLIENT = new Set([
  'RequestTimeTooSkewed',
  'ClockSkewException',
  'IDPCommunicationError',
  'ExpiredTokenException',
  'ExpiredToken',
]);

/** The error's name, or its Node network code (ECONNRESET...) when that is what matters. */
export function errorName(err: unknown): string {
  const e = err as { name?: string; code?: string; Code?: string };
  if (e?.code && (TRANSIENT.has(e.code) || THROTTLING.has(e.code))) return e.code;
  if (e?.Code && typeof e.Code === 'string' && e?.name === 'Error') return e.Code;
  return e?.name ?? 'Error';
}

/** The HTTP status the error came with, when it came from a service. */
export function errorStatus(err: unknown): number | undefined {
  const e = err as {
    $metadata?: { httpStatusCode?: number };
    statusCode?: number;
    meta?: { statusCode?: number };
  };
  return e?.$metadata?.httpStatusCode ?? e?.statusCode ?? e?.meta?.statusCode;
}

/**
 * Classifies an error from the AWS SDK, the OpenSearch client or Node's network stack. Unknown errors
 * without a status (a bug, a TypeError) are permanent: retrying a bug forever hides it.
 */
export function classifyError(err: unknown): ErrorClass {
  const name = errorName(err);
  const status = errorStatus(err);
  const sdkRetryable = (err as { $retryable?: { throttling?: boolean } })?.$retryable;
  if (THROTTLING.has(name) || status === 429 || sdkRetryable?.throttling) return 'throttled';
  if (TRANSIENT.has(name) || TRANSIENT_CLIENT.has(name)) return 'transient';
  if (status !== undefined && status >= 500) return 'transient';
  if (sdkRetryable !== undefined) return 'transient';
  return 'permanent';
}

export function isRetryable(err: unknown): boolean {
  return classifyError(err) !== 'permanent';
}

/** Thrown when a retry loop gives up; `cause` is the last error, `reason` why it stopped. */
export class RetryGaveUpError extends Error {
  constructor(
    readonly reason: 'permanent' | 'budget' | 'attempts' | 'aborted',
    readonly attempts: number,
    override readonly cause: unknown,
    what: string,
  ) {
    super(`${what}: gave up after ${attempts} attempt(s) (${reason}): ${describeError(cause)}`);
    this.name = 'RetryGaveUpError';
  }
}

/** One line naming an error without its stack: "AccessDenied (403): Access Denied". */
export function describeError(err: unknown): string {
  const status = errorStatus(err);
  const message = err instanceof Error ? err.message : String(err);
  return `${errorName(err)}${status !== undefined ? ` (${status})` : ''}${message ? `: ${message}` : ''}`;
}

/** The config block every component that retries shares (its own defaults differ). */
export function retryPolicySchema(defaults: { baseMs: number; maxMs: number; budgetMs: number }) {
  return z
    .object({
      baseMs: z
        .number()
        .int()
        .positive()
        .default(defaults.baseMs)
        .describe('First backoff ceiling (full jitter).'),
      maxMs: z.number().int().positive().default(defaults.maxMs).describe('Largest backoff ceiling.'),
      budgetMs: z
        .number()
        .int()
        .nonnegative()
        .default(defaults.budgetMs)
        .describe('Give up once retrying has taken this long (0 = retry transient errors forever).'),
    })
    .strict()
    .prefault({});
}

export interface RetryPolicy {
  readonly baseMs: number;
  readonly maxMs: number;
  /** Total time after which a transient error is no longer retried; 0 = no limit. */
  readonly budgetMs: number;
  /** Attempts after which a transient error is no longer retried; undefined = no limit. */
  readonly maxAttempts?: number;
}

export interface RetryOptions {
  readonly policy: RetryPolicy;
  /** What is being retried, for the error message ("PutObject lake/x.parquet"). */
  readonly what: string;
  /** Aborting stops the wait at once and ends the loop with reason "aborted". */
  readonly signal?: AbortSignal;
  /** Overrides the classification (e.g. a sink that treats 409 as success handles it in `fn`). */
  readonly classify?: (err: unknown) => ErrorClass;
  /** Called before each wait: count retries, log throttling. */
  readonly onRetry?: (err: unknown, info: { attempt: number; delayMs: number; class: ErrorClass }) => void;
  readonly random?: () => number;
  readonly now?: () => number;
}

/**
 * Runs `fn` until it succeeds, retrying transient and throttled errors with exponential backoff and
 * full jitter, within the policy's budget. Rejects with `RetryGaveUpError` otherwise.
 */
export async function retry<T>(fn: (attempt: number) => Promise<T>, opts: RetryOptions): Promise<T> {
  const classify = opts.classify ?? classifyError;
  const now = opts.now ?? Date.now;
  const started = now();
  for (let attempt = 0; ; attempt++) {
    if (opts.signal?.aborted) throw new RetryGaveUpError('aborted', attempt, opts.signal.reason, opts.what);
    try {
      return await fn(attempt);
    } catch (err) {
      const kind = classify(err);
      if (kind === 'permanent') throw new RetryGaveUpError('permanent', attempt + 1, err, opts.what);
      if (opts.policy.maxAttempts !== undefined && attempt + 1 >= opts.policy.maxAttempts)
        throw new RetryGaveUpError('attempts', attempt + 1, err, opts.what);
      const delayMs = backoffDelay(attempt, opts.policy.baseMs, opts.policy.maxMs, opts.random);
      if (opts.policy.budgetMs > 0 && now() + delayMs - started > opts.policy.budgetMs)
        throw new RetryGaveUpError('budget', attempt + 1, err, opts.what);
      opts.onRetry?.(err, { attempt: attempt + 1, delayMs, class: kind });
      await sleep(delayMs, opts.signal);
      if (opts.signal?.aborted) throw new RetryGaveUpError('aborted', attempt + 1, err, opts.what);
    }
  }
}

/**
 * Backoff state for loops that retry across calls (a sink re-queuing a failed upload, a reader loop):
 * `next()` gives the delay after one more failure, `reset()` after a success.
 */
export class Backoff {
  private failures = 0;
  constructor(
    private readonly policy: Pick<RetryPolicy, 'baseMs' | 'maxMs'>,
    private readonly random: () => number = Math.random,
  ) {}
  get consecutiveFailures(): number {
    return this.failures;
  }
  next(): number {
    const delay = backoffDelay(this.failures, this.policy.baseMs, this.policy.maxMs, this.random);
    this.failures += 1;
    return delay;
  }
  reset(): void {
    this.failures = 0;
  }
}
