/**
 * Kept for the modules that name AWS errors; the classification itself lives in `retry.ts`, the one retry
 * policy of the worker.
 */
export { errorName as awsErrorName, isRetryable as isRetryableAwsError } from './retry.js';
