/**
 * Polling shard consumer (GetShardIterator + GetRecords), the classic shared-throughput consumer.
 * One `PollingShardReader` per shard: it fetches in order, registers each record with the shard's
 * watermark (which hands out the record's ack), delivers batches to the pipeline and stops fetching
 * while the shard has too much data in flight.
 */
import {
  GetRecordsCommand,
  type GetRecordsCommandOutput,
  GetShardIteratorCommand,
  type KinesisClient,
  type ShardIteratorType,
} from '@aws-sdk/client-kinesis';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import { z } from 'zod';
import { awsErrorName, isRetryableAwsError } from '../core/aws-errors.js';
import { backoffDelay, sleep } from '../core/backoff.js';
import type { SourceRecord } from '../core/records.js';
import type { ShardPosition, ShardWatermark } from '../core/watermark.js';
import { counter, gauge } from '../metrics/registry.js';

export const pollingConsumerConfigSchema = z
  .object({
    type: z
      .literal('polling')
      .describe('Polling consumer: GetRecords, sharing the 2 MB/s per shard read budget.'),
    stream: z.string().min(1).describe('Name of the Kinesis data stream.'),
    startPosition: z
      .enum(['TRIM_HORIZON', 'LATEST', 'AT_TIMESTAMP'])
      .default('TRIM_HORIZON')
      .describe('Where a shard without a checkpoint starts. A checkpoint always wins.'),
    startTimestamp: z
      .string()
      .optional()
      .describe('ISO-8601 time for startPosition AT_TIMESTAMP, e.g. 2026-11-22T00:00:00Z.'),
    maxRecordsPerCall: z.number().int().min(1).max(10_000).default(10_000).describe('GetRecords Limit.'),
    idleIntervalMs: z
      .number()
      .int()
      .min(0)
      .default(1_000)
      .describe(
        'Wait between GetRecords calls when the shard is caught up (MillisBehindLatest = 0 or no records).',
      ),
    busyIntervalMs: z
      .number()
      .int()
      .min(0)
      .default(200)
      .describe('Wait between calls while behind; 200 ms keeps within the 5 GetRecords/s per shard limit.'),
    maxInFlightBytes: z
      .number()
      .int()
      .min(1_024)
      .default(64 * 1024 * 1024)
      .describe(
        'Record bytes per shard fetched but not yet covered by the checkpoint watermark; fetching pauses above it.',
      ),
    backoffBaseMs: z
      .number()
      .int()
      .min(1)
      .default(200)
      .describe('First retry delay after throttling or errors.'),
    backoffMaxMs: z.number().int().min(1).default(10_000).describe('Largest retry delay.'),
  })
  .strict()
  .superRefine((cfg, ctx) => {
    if (cfg.startPosition === 'AT_TIMESTAMP') {
      if (!cfg.startTimestamp) {
        ctx.addIssue({
          code: 'custom',
          path: ['startTimestamp'],
          message:
            'required when startPosition is AT_TIMESTAMP (an ISO-8601 time such as 2026-11-22T00:00:00Z)',
        });
      } else if (Number.isNaN(Date.parse(cfg.startTimestamp))) {
        ctx.addIssue({
          code: 'custom',
          path: ['startTimestamp'],
          message: `"${cfg.startTimestamp}" is not an ISO-8601 time (e.g. 2026-11-22T00:00:00Z)`,
        });
      }
    }
  });

export type PollingConsumerConfig = z.infer<typeof pollingConsumerConfigSchema>;

/** Where a reader starts: after a checkpointed record, or an initial position for fresh shards. */
export type StartingPoint =
  | { kind: 'after'; position: ShardPosition }
  | { kind: 'initial'; position: 'TRIM_HORIZON' | 'LATEST' | 'AT_TIMESTAMP'; timestamp?: Date };

export interface ShardReaderDeps {
  readonly kinesis: KinesisClient;
  readonly logger: Logger;
  readonly metrics: Registry;
  readonly watermark: ShardWatermark;
  /** Hands a batch to the pipeline; resolves when the pipeline accepted it. */
  readonly deliver: (records: SourceRecord[]) => Promise<void>;
  /** Called while fetching is paused for backpressure, so sinks can flush early instead of waiting for age. */
  readonly onBackpressure?: () => void;
}

/** Why a reader stopped. */
export type ReaderEnd = 'stopped' | 'shard-end' | 'stream-gone';

export class PollingShardReader {
  private readonly abort = new AbortController();
  private lastFetched: ShardPosition | undefined;
  /** Time of the last successful GetRecords, used to resume an expired LATEST iterator without a gap. */
  private lastPollAt: Date | undefined;
  private readonly millisBehind;
  private readonly fetchedRecords;
  private readonly fetchedBytes;
  private readonly readErrors;
  private readonly expiredIterators;
  private readonly labels: { stream: string; shard: string };

  constructor(
    private readonly config: PollingConsumerConfig,
    readonly shardId: string,
    private readonly start: StartingPoint,
    private readonly deps: ShardReaderDeps,
  ) {
    this.labels = { stream: config.stream, shard: shardId };
    const m = deps.metrics;
    this.millisBehind = gauge(m, {
      name: 'ksw_kinesis_millis_behind_latest',
      help: 'MillisBehindLatest from the last GetRecords of the shard',
      labelNames: ['stream', 'shard'],
    });
    this.fetchedRecords = counter(m, {
      name: 'ksw_kinesis_records_fetched_total',
      help: 'Records fetched from Kinesis',
      labelNames: ['stream', 'shard'],
    });
    this.fetchedBytes = counter(m, {
      name: 'ksw_kinesis_bytes_fetched_total',
      help: 'Record data bytes fetched from Kinesis',
      labelNames: ['stream', 'shard'],
    });
    this.readErrors = counter(m, {
      name: 'ksw_kinesis_read_errors_total',
      help: 'Failed GetRecords/GetShardIterator calls by error name (throttling included)',
      labelNames: ['stream', 'shard', 'error'],
    });
    this.expiredIterators = counter(m, {
      name: 'ksw_kinesis_expired_iterators_total',
      help: 'Shard iterators that expired and were renewed',
      labelNames: ['stream', 'shard'],
    });
  }

  /** Stops fetching; the promise of `run()` resolves soon after. */
  stop(): void {
    this.abort.abort();
  }

  /** The last record handed to the pipeline. */
  get lastFetchedPosition(): ShardPosition | undefined {
    return this.lastFetched;
  }

  async run(): Promise<ReaderEnd> {
    const signal = this.abort.signal;
    const log = this.deps.logger.child({ stream: this.config.stream, shard: this.shardId });
    let iterator: string | undefined;
    let attempt = 0;
    while (!signal.aborted) {
      try {
        if (!iterator) iterator = await this.getIterator();
        if (!this.deps.watermark.hasCapacity) {
          this.deps.onBackpressure?.();
          await Promise.race([
            this.deps.watermark.waitForCapacity(),
            new Promise((r) => signal.addEventListener('abort', r, { once: true })),
          ]);
          continue;
        }
        const out: GetRecordsCommandOutput = await this.deps.kinesis.send(
          new GetRecordsCommand({ ShardIterator: iterator, Limit: this.config.maxRecordsPerCall }),
          { abortSignal: signal },
        );
        attempt = 0;
        this.lastPollAt = new Date();
        const records = this.toSourceRecords(out);
        if (out.MillisBehindLatest !== undefined) this.millisBehind.set(this.labels, out.MillisBehindLatest);
        if (records.length > 0) await this.deps.deliver(records);
        if (!out.NextShardIterator) {
          log.info('shard closed (reached SHARD_END)');
          return 'shard-end';
        }
        iterator = out.NextShardIterator;
        const caughtUp = records.length === 0 || out.MillisBehindLatest === 0;
        await sleep(caughtUp ? this.config.idleIntervalMs : this.config.busyIntervalMs, signal);
      } catch (err) {
        if (signal.aborted) break;
        const name = awsErrorName(err);
        this.readErrors.inc({ ...this.labels, error: name });
        if (name === 'ExpiredIteratorException') {
          this.expiredIterators.inc(this.labels);
          log.warn({ err: name }, 'shard iterator expired; getting a new one after the last record read');
          iterator = undefined;
          continue;
        }
        if (name === 'ResourceNotFoundException') {
          log.error({ err: (err as Error).message }, 'stream or shard not found; stopping this shard');
          return 'stream-gone';
        }
        if (!isRetryableAwsError(err))
          log.error({ err: (err as Error).message, errName: name }, 'GetRecords failed');
        const delay = backoffDelay(attempt, this.config.backoffBaseMs, this.config.backoffMaxMs);
        attempt += 1;
        log.warn({ errName: name, attempt, delayMs: delay }, 'Kinesis read failed; backing off');
        // An iterator whose call failed may be fine, but a fresh one after the last record is always right.
        if (!isRetryableAwsError(err)) iterator = undefined;
        await sleep(delay, signal);
      }
    }
    return 'stopped';
  }

  /**
   * The iterator to read from: right after the last record already handed to the pipeline (those are
   * tracked by the watermark and will be acked, so re-reading them would only duplicate), else right
   * after the checkpoint, else the initial position. An expired LATEST iterator that never saw a record
   * resumes AT_TIMESTAMP of its last successful poll, so records put while it was stalled are not skipped.
   */
  private async getIterator(): Promise<string> {
    let type: ShardIteratorType;
    let sequence: string | undefined;
    let timestamp: Date | undefined;
    const after = this.lastFetched ?? (this.start.kind === 'after' ? this.start.position : undefined);
    if (after) {
      type = 'AFTER_SEQUENCE_NUMBER';
      sequence = after.sequenceNumber;
    } else if (this.start.kind === 'initial' && this.start.position === 'LATEST' && this.lastPollAt) {
      type = 'AT_TIMESTAMP';
      timestamp = new Date(this.lastPollAt.getTime() - 1_000);
    } else if (this.start.kind === 'initial') {
      type = this.start.position;
      timestamp = this.start.timestamp;
    } else {
      type = 'TRIM_HORIZON';
    }
    const out = await this.deps.kinesis.send(
      new GetShardIteratorCommand({
        StreamName: this.config.stream,
        ShardId: this.shardId,
        ShardIteratorType: type,
        ...(sequence ? { StartingSequenceNumber: sequence } : {}),
        ...(timestamp ? { Timestamp: timestamp } : {}),
      }),
      { abortSignal: this.abort.signal },
    );
    if (!out.ShardIterator) throw new Error(`GetShardIterator returned no iterator for ${this.shardId}`);
    return out.ShardIterator;
  }

  private toSourceRecords(out: GetRecordsCommandOutput): SourceRecord[] {
    const result: SourceRecord[] = [];
    let bytes = 0;
    for (const r of out.Records ?? []) {
      const data = r.Data ?? new Uint8Array();
      const position: ShardPosition = { sequenceNumber: r.SequenceNumber!, subSequenceNumber: 0 };
      const ack = this.deps.watermark.register(position, data.byteLength);
      bytes += data.byteLength;
      this.lastFetched = position;
      result.push({
        origin: {
          stream: this.config.stream,
          shardId: this.shardId,
          sequenceNumber: r.SequenceNumber!,
          subSequenceNumber: 0,
          partitionKey: r.PartitionKey ?? '',
          arrivalTime: r.ApproximateArrivalTimestamp ?? new Date(),
        },
        data,
        ack,
      });
    }
    if (result.length > 0) {
      this.fetchedRecords.inc(this.labels, result.length);
      this.fetchedBytes.inc(this.labels, bytes);
    }
    return result;
  }
}
