/**
 * Puts records to a stream with PutRecords, batched within the API limits (500 records and 5 MiB per
 * call, counting data and partition keys), retrying only the entries that failed.
 */
import {
  type KinesisClient,
  PutRecordsCommand,
  type PutRecordsCommandOutput,
  type PutRecordsRequestEntry,
} from '@aws-sdk/client-kinesis';
import { z } from 'zod';
import { backoffDelay, sleep } from '../core/backoff.js';

export const producerConfigSchema = z
  .object({
    maxAttempts: z.number().int().min(1).default(20).describe('Attempts per record before put() rejects.'),
    backoffBaseMs: z.number().int().min(1).default(100).describe('First retry delay for failed entries.'),
    backoffMaxMs: z.number().int().min(1).default(5_000).describe('Largest retry delay.'),
  })
  .strict();

export type ProducerConfig = z.infer<typeof producerConfigSchema>;

export const MAX_RECORD_BYTES = 1_048_576;
const MAX_BATCH_RECORDS = 500;
const MAX_BATCH_BYTES = 5 * 1024 * 1024;

export interface ProducerRecord {
  readonly partitionKey: string;
  readonly data: Uint8Array;
  readonly explicitHashKey?: string;
}

export interface PutResult {
  readonly shardId: string;
  readonly sequenceNumber: string;
}

function entrySize(r: ProducerRecord): number {
  return r.data.byteLength + Buffer.byteLength(r.partitionKey);
}

/** Splits records into PutRecords-sized batches, keeping their order. */
export function batchRecords<T extends ProducerRecord>(records: readonly T[]): T[][] {
  const batches: T[][] = [];
  let current: T[] = [];
  let bytes = 0;
  for (const r of records) {
    const size = entrySize(r);
    if (r.data.byteLength > MAX_RECORD_BYTES) {
      throw new Error(
        `record of ${r.data.byteLength} bytes exceeds the Kinesis limit of ${MAX_RECORD_BYTES} bytes`,
      );
    }
    if (current.length === MAX_BATCH_RECORDS || (current.length > 0 && bytes + size > MAX_BATCH_BYTES)) {
      batches.push(current);
      current = [];
      bytes = 0;
    }
    current.push(r);
    bytes += size;
  }
  if (current.length > 0) batches.push(current);
  return batches;
}

export class KinesisProducer {
  private readonly config: ProducerConfig;

  constructor(
    private readonly kinesis: KinesisClient,
    private readonly stream: string,
    config: Partial<ProducerConfig> = {},
  ) {
    this.config = producerConfigSchema.parse(config);
  }

  /** Puts all records; resolves with each record's shard and sequence number, in input order. */
  async put(records: readonly ProducerRecord[]): Promise<PutResult[]> {
    const results: PutResult[] = new Array(records.length);
    const indexed = records.map((r, index) => ({ ...r, index }));
    for (const batch of batchRecords(indexed)) {
      let pending = batch;
      for (let attempt = 0; pending.length > 0; attempt++) {
        if (attempt >= this.config.maxAttempts) {
          throw new Error(`${pending.length} records still failing after ${attempt} attempts`);
        }
        if (attempt > 0)
          await sleep(backoffDelay(attempt, this.config.backoffBaseMs, this.config.backoffMaxMs));
        const entries: PutRecordsRequestEntry[] = pending.map((r) => ({
          PartitionKey: r.partitionKey,
          Data: r.data,
          ...(r.explicitHashKey ? { ExplicitHashKey: r.explicitHashKey } : {}),
        }));
        let out: PutRecordsCommandOutput;
        try {
          out = await this.kinesis.send(new PutRecordsCommand({ StreamName: this.stream, Records: entries }));
        } catch (err) {
          const status = (err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode ?? 0;
          const name = (err as Error).name;
          if (
            status >= 500 ||
            name.includes('Throughput') ||
            name.includes('Throttl') ||
            name === 'TimeoutError'
          )
            continue;
          throw err;
        }
        const failed: typeof pending = [];
        (out.Records ?? []).forEach((entry, i) => {
          const record = pending[i]!;
          if (entry.ErrorCode) failed.push(record);
          else results[record.index] = { shardId: entry.ShardId!, sequenceNumber: entry.SequenceNumber! };
        });
        pending = failed;
      }
    }
    return results;
  }
}
