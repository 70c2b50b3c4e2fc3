/**
 * Creates what a pipeline needs on the local emulators (or any account): streams (waiting until ACTIVE),
 * buckets and lease tables. Used by `ksw local up` and `ksw demo`; existing resources are kept.
 */
import { CreateStreamCommand, DescribeStreamSummaryCommand } from '@aws-sdk/client-kinesis';
import { CreateBucketCommand } from '@aws-sdk/client-s3';
import { LeaseTable } from '../consumers/lease-table.js';
import type { AwsClients } from '../core/aws.js';
import { sleep } from '../core/backoff.js';

export interface LocalResources {
  readonly streams: ReadonlyArray<{ name: string; shards: number }>;
  readonly buckets: readonly string[];
  readonly tables: readonly string[];
}

async function createStream(aws: AwsClients, name: string, shards: number, signal?: AbortSignal) {
  try {
    await aws.kinesis.send(new CreateStreamCommand({ StreamName: name, ShardCount: shards }));
  } catch (err) {
    if ((err as Error).name !== 'ResourceInUseException') throw err;
  }
  for (let i = 0; i < 300 && !signal?.aborted; i++) {
    const d = await aws.kinesis.send(new DescribeStreamSummaryCommand({ StreamName: name }));
    if (d.StreamDescriptionSummary?.StreamStatus === 'ACTIVE') return;
    await sleep(100, signal);
  }
  if (!signal?.aborted) throw new Error(`stream ${name} did not become ACTIVE within 30 s`);
}

async function createBucket(aws: AwsClients, name: string) {
  try {
    await aws.s3.send(new CreateBucketCommand({ Bucket: name }));
  } catch (err) {
    if (!/BucketAlready(OwnedByYou|Exists)/.test((err as Error).name)) throw err;
  }
}

export async function provision(aws: AwsClients, want: LocalResources, signal?: AbortSignal): Promise<void> {
  await Promise.all([
    ...want.streams.map((s) => createStream(aws, s.name, s.shards, signal)),
    ...want.buckets.map((b) => createBucket(aws, b)),
    ...want.tables.map((t) => new LeaseTable(aws.dynamodb, t).ensureTable(true)),
  ]);
}
