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
  type ShardIteratorType,
} from '@aws-sdk/client-kinesis';
import { z } from 'zod';
import { awsErrorName, isRetryableAwsError } from '../core/aws-errors.js';
import { backoffDelay, sleep } from '../core/backoff.js';
import type { ShardPosition } from '../core/watermark.js';
import { counter } from '../metrics/registry.js';
import {
  type ChildShard,
  checkStartTimestamp,
  consumerBaseShape,
  DeliveryError,
  deliverOrFail,
  type ReaderEnd,
  RecordConverter,
  type ShardReader,
  type ShardReaderDeps,
  type StartingPoint,
  shardReadMetrics,
  startShardReadMetrics,
} from './shard-reader.js';

export const pollingConsumerConfigSchema = z
  .object({
    type: z
      .literal('polling')
      .describe('Polling consumer: GetRecords, sharing the 2 MB/s per shard read budget.'),
    ...consumerBaseShape,
    maxRecordsPerCall: z.number().int().min(1).max(10_000).default(10_000).describe('GetRecords Limit.'),
    idleIntervalMs: z
      .number()
      .int()
      .min(0)
      .default(1_000)
      .describe(
        'Wait between GetRecords calls when the shard is caught up (no records, or MillisBehindLatest = 0 and fewer than maxRecordsPerCall records).',
      ),
    busyIntervalMs: z
      .number()
      .int()
      .min(0)
      .default(200)
      .describe('Wait between calls while behind; 200 ms keeps within the 5 GetRecords/s per shard limit.'),
  })
  .strict()
  .superRefine(checkStartTimestamp);

export type PollingConsumerConfig = z.infer<typeof pollingConsumerConfigSchema>;

export type { ReaderEnd, ShardReaderDeps, StartingPoint } from './shard-reader.js';

export class PollingShardReader implements ShardReader {
  private readonly abort = new AbortController();
  private readonly converter: RecordConverter;
  private children: ChildShard[] | undefined;
  /** Time of the last successful GetRecords, used to resume an expired LATEST iterator without a gap. */
  private lastPollAt: Date | undefined;
  private readonly read: ReturnType<typeof shardReadMetrics>;
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
    this.read = shardReadMetrics(m);
    this.expiredIterators = counter(m, {
      name: 'ksw_kinesis_expired_iterators_total',
      help: 'Shard iterators that expired and were renewed',
      labelNames: ['stream', 'shard'],
    });
    this.converter = new RecordConverter(config, shardId, deps, start);
    startShardReadMetrics(this.read, this.labels);
  }

  /** Stops fetching; the promise of `run()` resolves soon after. */
  stop(): void {
    this.abort.abort();
  }

  /** The last record handed to the pipeline. */
  get lastFetchedPosition(): ShardPosition | undefined {
    return this.converter.lastPosition;
  }

  get childShards(): readonly ChildShard[] | undefined {
    return this.children;
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
        this.read.lastAnswer.set(this.labels, this.lastPollAt.getTime() / 1000);
        const records = this.converter.convert(out.Records ?? []);
        if (out.MillisBehindLatest !== undefined)
          this.read.millisBehind.set(this.labels, out.MillisBehindLatest);
        if (records.length > 0) await deliverOrFail(this.deps.deliver, records);
        if (!out.NextShardIterator) {
          if (out.ChildShards) {
            this.children = out.ChildShards.map((c) => ({
              shardId: c.ShardId!,
              parentShardIds: c.ParentShards ?? [this.shardId],
            }));
          }
          log.info({ children: this.children?.map((c) => c.shardId) }, 'shard closed (reached SHARD_END)');
          return 'shard-end';
        }
        iterator = out.NextShardIterator;
        // A full batch means more is waiting, whatever MillisBehindLatest says (kinesalite always says 0;
        // Kinesis may say 0 for records that arrived within the last milliseconds).
        const full = (out.Records?.length ?? 0) >= this.config.maxRecordsPerCall;
        const caughtUp = records.length === 0 || (out.MillisBehindLatest === 0 && !full);
        await sleep(caughtUp ? this.config.idleIntervalMs : this.config.busyIntervalMs, signal);
      } catch (err) {
        // Not a read error: the batch is registered and cannot be skipped; the coordinator releases the shard.
        if (err instanceof DeliveryError) throw err;
        if (signal.aborted) break;
        const name = awsErrorName(err);
        this.read.readErrors.inc({ ...this.labels, error: name });
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
   * tracked by the watermark and will be acked, so re-reading them would only duplicate), else at the
   * checkpointed record (read again; the converter skips the user records the checkpoint covers), else
   * the initial position. An expired LATEST iterator that never saw a record resumes AT_TIMESTAMP of its
   * last successful poll, so records put while it was stalled are not skipped.
   */
  private async getIterator(): Promise<string> {
    let type: ShardIteratorType;
    let sequence: string | undefined;
    let timestamp: Date | undefined;
    const fetched = this.converter.lastPosition;
    if (fetched) {
      type = 'AFTER_SEQUENCE_NUMBER';
      sequence = fetched.sequenceNumber;
    } else if (this.start.kind === 'after') {
      type = 'AT_SEQUENCE_NUMBER';
      sequence = this.start.position.sequenceNumber;
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
}
