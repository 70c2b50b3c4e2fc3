/**
 * Puts records to a Kinesis data stream with PutRecords: batched within the API limits (500 records and
 * 5 MiB per call, counting data and partition keys as AWS does), a bounded number of calls in flight,
 * and only the entries that failed (per-entry ErrorCode, e.g. ProvisionedThroughputExceededException)
 * retried, with exponential backoff and full jitter.
 *
 * Ordering: PutRecords itself does not keep the order of entries that are retried, and with
 * `concurrency` > 1 two batches holding the same partition key race. Use concurrency 1 (and accept
 * that retries still reorder) when consumers need per-key order from this producer.
 */
import {
  type KinesisClient,
  PutRecordsCommand,
  type PutRecordsCommandOutput,
  type PutRecordsRequestEntry,
} from '@aws-sdk/client-kinesis';
import { z } from 'zod';
import { awsErrorName, isRetryableAwsError } from '../core/aws-errors.js';
import { backoffDelay, sleep } from '../core/backoff.js';

export const producerConfigSchema = z
  .object({
    concurrency: z
      .number()
      .int()
      .min(1)
      .max(64)
      .default(4)
      .describe(
        'PutRecords calls in flight at most. Each call carries up to 500 records / 5 MiB; a shard takes 1,000 records ' +
          'or 1 MiB per second, so more calls than shards mostly buys throttling.',
      ),
    maxAttempts: z
      .number()
      .int()
      .min(1)
      .default(20)
      .describe(
        'Attempts per record (the first put included) before put() rejects. A record that keeps failing ' +
          '(e.g. a shard throttled for long) makes the whole put() fail after this many tries.',
      ),
    retryBudgetMs: z
      .number()
      .int()
      .min(0)
      .default(120_000)
      .describe(
        'Time budget for retrying one batch, from its first attempt; put() rejects once it is spent even if ' +
          'maxAttempts is not reached. 0 disables the budget (maxAttempts alone applies).',
      ),
    backoffBaseMs: z
      .number()
      .int()
      .min(1)
      .default(100)
      .describe(
        'Backoff before retry n is a random delay in [0, min(backoffMaxMs, backoffBaseMs * 2^n)) ' +
          '(exponential with full jitter, so throttled producers spread out instead of retrying in lockstep).',
      ),
    backoffMaxMs: z.number().int().min(1).default(5_000).describe('Largest backoff delay between retries.'),
  })
  .strict()
  .describe('KinesisProducer: batching, concurrency and retry of PutRecords.');

export type ProducerConfig = z.infer<typeof producerConfigSchema>;

/** Kinesis limit for one record: data blob plus partition key, in bytes. */
export const MAX_RECORD_BYTES = 1_048_576;
/** PutRecords limits per call. */
export const MAX_BATCH_RECORDS = 500;
export const MAX_BATCH_BYTES = 5 * 1_048_576;
const MAX_PARTITION_KEY_CHARS = 256;
const HASH_KEY = /^(0|[1-9]\d{0,38})$/;
const MAX_HASH_KEY = 2n ** 128n - 1n;

export interface ProducerRecord {
  readonly partitionKey: string;
  readonly data: Uint8Array;
  /** Decimal 128-bit hash key that overrides the MD5 of the partition key for shard selection. */
  readonly explicitHashKey?: string;
}

export interface PutResult {
  readonly shardId: string;
  readonly sequenceNumber: string;
}

/** What the producer needs from a Kinesis client: `send` (a fake in tests, or a client with middleware). */
export type PutRecordsSender = Pick<KinesisClient, 'send'>;

/** Counters over the producer's lifetime, for progress output and tests. */
export interface ProducerStats {
  /** PutRecords calls sent, retries included. */
  calls: number;
  /** Records put successfully. */
  records: number;
  /** Entries sent again after a per-entry failure or a failed call. */
  retriedEntries: number;
  /** Per-entry failures by ErrorCode, and whole-call failures by error name. */
  errors: Record<string, number>;
}

/** put() gave up: some records were not written (the others of the same put() may have been). */
export class ProducerError extends Error {
  override readonly name = 'ProducerError';
  constructor(
    message: string,
    /** Input indexes of the records that were not written by the batch that gave up. */
    readonly failedIndexes: readonly number[],
    /** The last ErrorCode (or error name) seen for them. */
    readonly lastError: string,
  ) {
    super(message);
  }
}

/** Bytes a record counts for, against both the 1 MiB record and the 5 MiB request limit. */
export function recordSize(r: ProducerRecord): number {
  return r.data.byteLength + Buffer.byteLength(r.partitionKey, 'utf8');
}

/** Throws a clear error for a record Kinesis would reject, before anything is sent. */
export function validateRecord(r: ProducerRecord, index: number): void {
  const size = recordSize(r);
  if (size > MAX_RECORD_BYTES) {
    // Offloading large payloads to S3 (and putting a pointer) is a separate feature; until then refuse early.
    throw new RangeError(
      `record ${index}: ${size} bytes (data + partition key) exceeds the Kinesis limit of ${MAX_RECORD_BYTES} bytes per record`,
    );
  }
  if (r.partitionKey.length < 1 || r.partitionKey.length > MAX_PARTITION_KEY_CHARS) {
    throw new RangeError(
      `record ${index}: partition key must be 1 to ${MAX_PARTITION_KEY_CHARS} characters, got ${r.partitionKey.length}`,
    );
  }
  if (
    r.explicitHashKey !== undefined &&
    (!HASH_KEY.test(r.explicitHashKey) || BigInt(r.explicitHashKey) > MAX_HASH_KEY)
  ) {
    throw new RangeError(`record ${index}: explicitHashKey must be a decimal integer in [0, 2^128)`);
  }
}

/**
 * Splits records into PutRecords-sized batches (at most 500 records and 5 MiB each), keeping their
 * order. Validates every record first, so nothing is sent when one of them cannot be.
 */
export function batchRecords<T extends ProducerRecord>(records: readonly T[]): T[][] {
  records.forEach(validateRecord);
  const batches: T[][] = [];
  let current: T[] = [];
  let bytes = 0;
  for (const r of records) {
    const size = recordSize(r);
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

type Indexed = ProducerRecord & { readonly index: number };

export class KinesisProducer {
  readonly config: ProducerConfig;
  readonly stats: ProducerStats = { calls: 0, records: 0, retriedEntries: 0, errors: {} };
  private readonly target: { StreamName: string } | { StreamARN: string };

  /**
   * @param kinesis a client (or anything with its `send`); its own SDK retries apply to whole calls on top of ours
   * @param stream a stream name, or a stream ARN
   */
  constructor(
    private readonly kinesis: PutRecordsSender,
    stream: string,
    config: z.input<typeof producerConfigSchema> = {},
    private readonly random: () => number = Math.random,
  ) {
    this.config = producerConfigSchema.parse(config);
    this.target = stream.startsWith('arn:') ? { StreamARN: stream } : { StreamName: stream };
  }

  /**
   * Puts all records; resolves with each record's shard and sequence number, in input order.
   * Rejects with a RangeError (nothing sent) when a record breaks a Kinesis limit, and with a
   * ProducerError when records still fail after maxAttempts or the retry budget.
   */
  async put(records: readonly ProducerRecord[], opts: { signal?: AbortSignal } = {}): Promise<PutResult[]> {
    const batches = batchRecords(records.map((r, index): Indexed => ({ ...r, index })));
    const results: PutResult[] = new Array(records.length);
    let next = 0;
    let failure: unknown;
    // A fixed pool of `concurrency` lanes pulls batches; a failing lane stops the others from starting more.
    const lane = async () => {
      while (failure === undefined && next < batches.length) {
        const batch = batches[next++]!;
        try {
          await this.putBatch(batch, results, opts.signal);
        } catch (err) {
          failure ??= err;
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(this.config.concurrency, batches.length) }, lane));
    if (failure !== undefined) throw failure;
    return results;
  }

  private async putBatch(batch: Indexed[], results: PutResult[], signal?: AbortSignal): Promise<void> {
    const started = Date.now();
    let pending = batch;
    let lastError = '';
    for (let attempt = 0; ; attempt++) {
      signal?.throwIfAborted();
      const budgetSpent =
        this.config.retryBudgetMs > 0 && attempt > 0 && Date.now() - started >= this.config.retryBudgetMs;
      if (attempt >= this.config.maxAttempts || budgetSpent) {
        throw new ProducerError(
          `${pending.length} records still failing after ${attempt} attempts` +
            `${budgetSpent ? ` (retry budget of ${this.config.retryBudgetMs} ms spent)` : ''}; last error: ${lastError}`,
          pending.map((r) => r.index),
          lastError,
        );
      }
      if (attempt > 0) {
        this.stats.retriedEntries += pending.length;
        await sleep(
          backoffDelay(attempt - 1, this.config.backoffBaseMs, this.config.backoffMaxMs, this.random),
          signal,
        );
        signal?.throwIfAborted();
      }
      const entries: PutRecordsRequestEntry[] = pending.map((r) => ({
        PartitionKey: r.partitionKey,
        Data: r.data,
        ...(r.explicitHashKey === undefined ? {} : { ExplicitHashKey: r.explicitHashKey }),
      }));
      let out: PutRecordsCommandOutput;
      this.stats.calls += 1;
      try {
        out = await this.kinesis.send(new PutRecordsCommand({ ...this.target, Records: entries }), {
          abortSignal: signal,
        });
      } catch (err) {
        if (signal?.aborted) throw err;
        lastError = awsErrorName(err);
        this.countError(lastError);
        // A failed call wrote nothing we know of: retry it whole when the failure is transient.
        // (A timeout may hide a call that did write: Kinesis has no idempotent put, so that is a duplicate.)
        if (isRetryableAwsError(err)) continue;
        throw err;
      }
      const answers = out.Records ?? [];
      if (answers.length !== pending.length) {
        // Without a one-to-one answer we cannot tell which entries were written; retrying could duplicate.
        throw new Error(`PutRecords answered ${answers.length} entries for ${pending.length} sent`);
      }
      const failed: Indexed[] = [];
      answers.forEach((answer, i) => {
        const record = pending[i]!;
        if (answer.ErrorCode || !answer.SequenceNumber || !answer.ShardId) {
          lastError = answer.ErrorCode ?? 'MissingSequenceNumber';
          this.countError(lastError);
          failed.push(record);
        } else {
          results[record.index] = { shardId: answer.ShardId, sequenceNumber: answer.SequenceNumber };
        }
      });
      this.stats.records += pending.length - failed.length;
      if (failed.length === 0) return;
      pending = failed;
    }
  }

  private countError(name: string): void {
    this.stats.errors[name] = (this.stats.errors[name] ?? 0) + 1;
  }
}
