import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import {
  CreateStreamCommand,
  DescribeStreamSummaryCommand,
  type KinesisClient,
  ListShardsCommand,
  PutRecordsCommand,
} from '@aws-sdk/client-kinesis';
import pino from 'pino';
import { type AwsClients, awsConfigSchema, createAwsClients } from '../../src/core/aws.js';
import { type LocalStack, startLocalStack } from '../../src/local/emulators.js';

export interface TestStack {
  readonly stack: LocalStack;
  readonly aws: AwsClients;
  readonly dir: string;
  stop(): Promise<void>;
}

/** Starts the emulators in a fresh temp dir. Call `stop()` in `after`. */
export async function startTestStack(
  opts: { kinesis?: 'kinesalite' | 'kinesis-local' } = {},
): Promise<TestStack> {
  const dir = mkdtempSync(path.join(tmpdir(), 'ksw-test-'));
  const stack = await startLocalStack({ dataDir: dir, ...opts });
  const aws = createAwsClients(awsConfigSchema.parse(stack.awsConfig));
  return {
    stack,
    aws,
    dir,
    async stop() {
      aws.destroy();
      await stack.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

export async function createStream(kinesis: KinesisClient, name: string, shards: number): Promise<string[]> {
  await kinesis.send(new CreateStreamCommand({ StreamName: name, ShardCount: shards }));
  for (let i = 0; i < 200; i++) {
    const d = await kinesis.send(new DescribeStreamSummaryCommand({ StreamName: name }));
    if (d.StreamDescriptionSummary?.StreamStatus === 'ACTIVE') break;
    await new Promise((r) => setTimeout(r, 50));
  }
  const out = await kinesis.send(new ListShardsCommand({ StreamName: name }));
  return (out.Shards ?? []).map((s) => s.ShardId!);
}

/** Puts records in batches of 500; returns each record's shard and sequence number. */
export async function putRecords(
  kinesis: KinesisClient,
  stream: string,
  records: Array<{ partitionKey: string; data: string | Uint8Array; explicitHashKey?: string }>,
): Promise<Array<{ shardId: string; sequenceNumber: string }>> {
  const results: Array<{ shardId: string; sequenceNumber: string }> = [];
  for (let i = 0; i < records.length; i += 500) {
    const batch = records.slice(i, i + 500);
    const out = await kinesis.send(
      new PutRecordsCommand({
        StreamName: stream,
        Records: batch.map((r) => ({
          PartitionKey: r.partitionKey,
          Data: typeof r.data === 'string' ? Buffer.from(r.data) : r.data,
          ...(r.explicitHashKey ? { ExplicitHashKey: r.explicitHashKey } : {}),
        })),
      }),
    );
    if (out.FailedRecordCount) throw new Error(`${out.FailedRecordCount} records failed to put`);
    for (const r of out.Records ?? [])
      results.push({ shardId: r.ShardId!, sequenceNumber: r.SequenceNumber! });
  }
  return results;
}

export const silentLogger = pino({ level: 'silent' });

export async function waitFor(
  cond: () => boolean | Promise<boolean>,
  timeoutMs: number,
  what: string,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await cond()) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
}

/** Only s3rver, for sink tests: a temp dir, a client configured for it, and the given buckets. */
export async function startS3Only(
  buckets: string[],
): Promise<{ aws: AwsClients; dir: string; stop(): Promise<void> }> {
  const { startS3rver } = await import('../../src/local/emulators.js');
  const { CreateBucketCommand } = await import('@aws-sdk/client-s3');
  const dir = mkdtempSync(path.join(tmpdir(), 'ksw-s3-'));
  const s3rver = await startS3rver({ dir: path.join(dir, 's3') });
  const aws = createAwsClients(
    awsConfigSchema.parse({
      endpoints: { s3: s3rver.endpoint },
      credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' },
      s3ChecksumMode: 'when_required',
    }),
  );
  for (const bucket of buckets) await aws.s3.send(new CreateBucketCommand({ Bucket: bucket }));
  return {
    aws,
    dir,
    async stop() {
      aws.destroy();
      await s3rver.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
