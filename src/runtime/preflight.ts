/**
 * Start-up checks of the AWS resources the config names: every stream (ListShards) and every bucket the
 * worker writes to (HeadBucket: Parquet sinks, OpenSearch offload, the S3 DLQ). An error that retrying cannot
 * cure (a misspelled bucket or stream, AccessDenied, a bucket in another region) fails the start at once with
 * the config field, the resource and the fix, instead of being retried for ever by the component that meets
 * it first. A transient error (throttling, 5xx, network) is logged and left to the components' own retries.
 */
import { ListShardsCommand } from '@aws-sdk/client-kinesis';
import { HeadBucketCommand } from '@aws-sdk/client-s3';
import type { Logger } from 'pino';
import type { WorkerConfig } from '../config/schema.js';
import { isKinesisConsumer } from '../consumers/registry.js';
import type { AwsClients } from '../core/aws.js';
import { awsErrorName, isRetryableAwsError } from '../core/aws-errors.js';

interface Check {
  /** The config field naming the resource, e.g. `sinks.lake.bucket`. */
  readonly field: string;
  readonly resource: string;
  run(): Promise<unknown>;
  /** The operator's fix for a permanent error of this name. */
  explain(error: string, status: number | undefined): string;
}

/** Buckets and streams of the config, each with how to check it. */
export function preflightChecks(config: WorkerConfig, aws: AwsClients): Check[] {
  const checks: Check[] = [];
  config.consumers.forEach((c, i) => {
    // A file consumer's `stream` is only a name for its records, not a Kinesis stream.
    if (!isKinesisConsumer(c)) return;
    checks.push({
      field: `consumers[${i}].stream`,
      resource: `Kinesis stream ${c.stream}`,
      run: () => aws.kinesis.send(new ListShardsCommand({ StreamName: c.stream, MaxResults: 1 })),
      explain: (error) =>
        error === 'ResourceNotFoundException'
          ? `does not exist in ${config.aws.region}: check the name and aws.region, or create the stream`
          : `${error}: allow kinesis:ListShards, GetShardIterator and GetRecords on it to the worker's role`,
    });
  });
  const buckets = new Map<string, string>();
  for (const [name, sink] of Object.entries(config.sinks)) {
    if (sink.type === 's3_parquet') buckets.set(sink.bucket, `sinks.${name}.bucket`);
    if (sink.type === 'opensearch' && sink.offload)
      buckets.set(sink.offload.bucket, `sinks.${name}.offload.bucket`);
  }
  if (config.dlq.type === 's3' && !buckets.has(config.dlq.bucket))
    buckets.set(config.dlq.bucket, 'dlq.bucket');
  for (const [bucket, field] of buckets) {
    checks.push({
      field,
      resource: `S3 bucket ${bucket}`,
      run: () => aws.s3.send(new HeadBucketCommand({ Bucket: bucket })),
      // HeadBucket answers without a body: the status is all there is.
      explain: (error, status) =>
        status === 404 || error === 'NoSuchBucket' || error === 'NotFound'
          ? 'does not exist (NoSuchBucket): check the name, or create the bucket'
          : status === 403 || /AccessDenied|Forbidden/.test(error)
            ? `access denied (${error}): allow s3:ListBucket, s3:GetObject and s3:PutObject on it to the worker's role`
            : status === 301 || error === 'PermanentRedirect'
              ? `is in another region than aws.region ${config.aws.region} (${error})`
              : `${error} (HTTP ${status ?? '?'})`,
    });
  }
  return checks;
}

/** Runs every check at once; throws one error listing each permanent problem. */
export async function preflight(config: WorkerConfig, aws: AwsClients, logger: Logger): Promise<void> {
  const checks = preflightChecks(config, aws);
  const results = await Promise.allSettled(checks.map((c) => c.run()));
  const problems: string[] = [];
  results.forEach((r, i) => {
    if (r.status === 'fulfilled') return;
    const check = checks[i]!;
    const err = r.reason as Error & { $metadata?: { httpStatusCode?: number } };
    const status = err.$metadata?.httpStatusCode;
    const error = awsErrorName(err);
    // Only an answer from AWS is proof; throttling, 5xx and network errors are for the retries.
    if (status === undefined || isRetryableAwsError(err)) {
      logger.warn({ err, field: check.field }, `could not check ${check.resource} at start-up; continuing`);
      return;
    }
    problems.push(`${check.field}: ${check.resource} ${check.explain(error, status)}`);
  });
  if (problems.length > 0) throw new StartupCheckError(problems);
}

/** A user error, not a bug: the CLI prints every line of it (each names the field and the fix), no stack. */
export class StartupCheckError extends Error {
  override readonly name = 'StartupCheckError';
  constructor(readonly problems: string[]) {
    super(`start-up check failed:\n  ${problems.join('\n  ')}`);
  }
}
