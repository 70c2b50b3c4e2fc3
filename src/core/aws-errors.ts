/** How the worker classifies AWS SDK errors: one list, used by every reader and writer. */
const RETRYABLE = new Set([
  'ProvisionedThroughputExceededException',
  'LimitExceededException',
  'ThrottlingException',
  'KMSThrottlingException',
  'InternalFailure',
  'InternalFailureException',
  'ServiceUnavailable',
  'ServiceUnavailableException',
  'TimeoutError',
  'RequestTimeout',
  'ECONNRESET',
  'ECONNREFUSED',
  'EPIPE',
  'ETIMEDOUT',
]);

/** The error's name, or its Node network code (ECONNRESET...) when that is what matters. */
export function awsErrorName(err: unknown): string {
  const e = err as { name?: string; code?: string };
  return e?.code && RETRYABLE.has(e.code) ? e.code : (e?.name ?? 'Error');
}

/** Throttling, 5xx, 429 and network errors are worth retrying; validation and auth errors are not. */
export function isRetryableAwsError(err: unknown): boolean {
  const e = err as { $metadata?: { httpStatusCode?: number }; $retryable?: unknown };
  const status = e?.$metadata?.httpStatusCode ?? 0;
  return RETRYABLE.has(awsErrorName(err)) || status >= 500 || status === 429 || e?.$retryable !== undefined;
}
