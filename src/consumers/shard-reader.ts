/**
 * What every shard reader (polling, enhanced fan-out) shares: the consumer fields common to all types,
 * where a reader starts, how it ends, and the conversion of Kinesis records into source records —
 * KPL de-aggregation, skipping what a checkpoint already covers, one watermark entry (and so one ack and
 * one checkpointable position) per user record.
 */
import { createHash } from 'node:crypto';
import type { _Record, KinesisClient } from '@aws-sdk/client-kinesis';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import { z } from 'zod';
import type { DeadLetterQueue } from '../core/component.js';
import { compareSequence, type SourceRecord } from '../core/records.js';
import type { ShardPosition, ShardWatermark } from '../core/watermark.js';
import { counter, gauge } from '../metrics/registry.js';
import { deaggregate, isAggregated, KplAggregateError } from './kpl.js';

/** The per-shard read metrics every reader type exports under the same names. */
export function shardReadMetrics(registry: Registry) {
  return {
    millisBehind: gauge(registry, {
      name: 'ksw_kinesis_millis_behind_latest',
      help: 'MillisBehindLatest from the last GetRecords of the shard',
      labelNames: ['stream', 'shard'],
    }),
    readErrors: counter(registry, {
      name: 'ksw_kinesis_read_errors_total',
      help: 'Failed GetRecords/GetShardIterator calls by error name (throttling included)',
      labelNames: ['stream', 'shard', 'error'],
    }),
    lastAnswer: gauge(registry, {
      name: 'ksw_kinesis_last_answer_timestamp_seconds',
      help: 'Unix time of the last answer Kinesis gave the shard reader (GetRecords, or a SubscribeToShard event); set when the reader starts. time() minus it grows while a held shard is not read, which the lag gauge cannot show (it changes only on answers).',
      labelNames: ['stream', 'shard'],
    }),
  };
}

/** The read series of a shard whose reader starts: answered "now", no throttling yet (see zeroSeries). */
export function startShardReadMetrics(
  m: ReturnType<typeof shardReadMetrics>,
  labels: { stream: string; shard: string },
): void {
  m.lastAnswer.set(labels, Date.now() / 1000);
  m.readErrors.inc({ ...labels, error: 'ProvisionedThroughputExceededException' }, 0);
}

/** Fields every consumer type has, whatever its `type:`. */
export const consumerBaseShape = {
  stream: z.string().min(1).describe('Name of the Kinesis data stream.'),
  startPosition: z
    .enum(['TRIM_HORIZON', 'LATEST', 'AT_TIMESTAMP'])
    .default('TRIM_HORIZON')
    .describe('Where a shard without a checkpoint starts. A checkpoint always wins.'),
  startTimestamp: z
    .string()
    .optional()
    .describe('ISO-8601 time for startPosition AT_TIMESTAMP, e.g. 2026-11-22T00:00:00Z.'),
  maxInFlightBytes: z
    .number()
    .int()
    .min(1_024)
    .default(64 * 1024 * 1024)
    .describe(
      'Record bytes per shard fetched but not yet covered by the checkpoint watermark; fetching pauses above it.',
    ),
  deaggregate: z
    .boolean()
    .default(true)
    .describe(
      'Split KPL aggregated records into their user records (each acked and checkpointed with its sub-sequence number). A record with the KPL magic but a bad MD5 or malformed protobuf goes to the DLQ.',
    ),
  backoffBaseMs: z
    .number()
    .int()
    .min(1)
    .default(200)
    .describe('First retry delay after throttling or errors.'),
  backoffMaxMs: z.number().int().min(1).default(10_000).describe('Largest retry delay.'),
};

/** Refinement shared by every consumer type: AT_TIMESTAMP needs a valid startTimestamp. */
export function checkStartTimestamp(
  cfg: { startPosition: string; startTimestamp?: string | undefined },
  ctx: z.RefinementCtx,
): void {
  if (cfg.startPosition !== 'AT_TIMESTAMP') return;
  if (!cfg.startTimestamp) {
    ctx.addIssue({
      code: 'custom',
      path: ['startTimestamp'],
      message: 'required when startPosition is AT_TIMESTAMP (an ISO-8601 time such as 2026-11-22T00:00:00Z)',
    });
  } else if (Number.isNaN(Date.parse(cfg.startTimestamp))) {
    ctx.addIssue({
      code: 'custom',
      path: ['startTimestamp'],
      message: `"${cfg.startTimestamp}" is not an ISO-8601 time (e.g. 2026-11-22T00:00:00Z)`,
    });
  }
}

export interface ConsumerBase {
  readonly type: string;
  readonly stream: string;
  readonly startPosition: 'TRIM_HORIZON' | 'LATEST' | 'AT_TIMESTAMP';
  readonly startTimestamp?: string | undefined;
  readonly maxInFlightBytes: number;
  readonly deaggregate: boolean;
  readonly backoffBaseMs: number;
  readonly backoffMaxMs: number;
}

/**
 * Where a reader starts: at a checkpoint (the checkpointed record is read again and every user record up
 * to and including the checkpoint's sub-sequence number is skipped, so a checkpoint in the middle of a KPL
 * aggregate resumes with the next user record), or an initial position for fresh shards.
 */
export type StartingPoint =
  | { kind: 'after'; position: ShardPosition }
  | { kind: 'initial'; position: 'TRIM_HORIZON' | 'LATEST' | 'AT_TIMESTAMP'; timestamp?: Date };

/** Why a reader stopped. */
export type ReaderEnd = 'stopped' | 'shard-end' | 'stream-gone';

/**
 * The chain rejected a batch (a processor threw, a sink write failed): the reader stops with it, since the
 * batch's records are registered with the watermark and their acks would never complete. The lease is then
 * released and the shard read again from its checkpoint (`ksw_shard_failures_total{stage="deliver"}`);
 * a read error, in contrast, is retried by the reader itself.
 */
export class DeliveryError extends Error {
  constructor(override readonly cause: unknown) {
    super(`the chain failed on a batch: ${(cause as Error)?.message ?? String(cause)}`);
    this.name = 'DeliveryError';
  }
}

/** Hands records to the chain; a rejection becomes a DeliveryError (never mistaken for a read error). */
export async function deliverOrFail(
  deliver: (records: SourceRecord[]) => Promise<void>,
  records: SourceRecord[],
): Promise<void> {
  try {
    await deliver(records);
  } catch (err) {
    throw new DeliveryError(err);
  }
}

/** A child of a closed shard, as the last read of the shard reported it (ChildShards). */
export interface ChildShard {
  readonly shardId: string;
  readonly parentShardIds: readonly string[];
}

export interface ShardReader {
  readonly shardId: string;
  run(): Promise<ReaderEnd>;
  stop(): void;
  /** The children the service reported at SHARD_END (undefined when it did not report them). */
  readonly childShards: readonly ChildShard[] | undefined;
}

export interface ShardReaderDeps {
  readonly kinesis: KinesisClient;
  readonly logger: Logger;
  readonly metrics: Registry;
  readonly watermark: ShardWatermark;
  /** Hands a batch to the pipeline; resolves when the pipeline accepted it. */
  readonly deliver: (records: SourceRecord[]) => Promise<void>;
  /** Called while fetching is paused for backpressure, so sinks can flush early instead of waiting for age. */
  readonly onBackpressure?: () => void;
  /** Where bad KPL aggregates go. Without one they are passed on as plain records (as the KCL does). */
  readonly dlq?: DeadLetterQueue;
  /** The shard's hash key range, to count user records whose hash key lies outside it. */
  readonly hashKeyRange?: { readonly start: bigint; readonly end: bigint };
}

/** MD5 of the partition key as an unsigned 128-bit integer: how Kinesis maps a key to a shard. */
function md5HashKey(key: string): bigint {
  return BigInt(`0x${createHash('md5').update(key, 'utf8').digest('hex')}`);
}

/**
 * Turns fetched Kinesis records into source records for one shard, in order. Each user record is
 * registered with the watermark (so acked and checkpointed on its own, with its sub-sequence number).
 * Positions at or before `skipThrough` (the checkpoint a reader resumed from) are dropped: a reader
 * resuming from a checkpoint reads the checkpointed record again (AT_SEQUENCE_NUMBER), because the
 * checkpoint may stand in the middle of an aggregate.
 */
export class RecordConverter {
  private skipThrough: ShardPosition | undefined;
  private lastRegistered: ShardPosition | undefined;
  private readonly labels: { stream: string; shard: string };
  private readonly m;

  constructor(
    private readonly config: ConsumerBase,
    private readonly shardId: string,
    private readonly deps: ShardReaderDeps,
    start: StartingPoint,
  ) {
    this.skipThrough = start.kind === 'after' ? start.position : undefined;
    this.labels = { stream: config.stream, shard: shardId };
    const r = deps.metrics;
    this.m = {
      fetchedRecords: counter(r, {
        name: 'ksw_kinesis_records_fetched_total',
        help: 'Records fetched from Kinesis (user records, after KPL de-aggregation)',
        labelNames: ['stream', 'shard'],
      }),
      fetchedBytes: counter(r, {
        name: 'ksw_kinesis_bytes_fetched_total',
        help: 'Record data bytes fetched from Kinesis',
        labelNames: ['stream', 'shard'],
      }),
      aggregates: counter(r, {
        name: 'ksw_kpl_aggregated_records_total',
        help: 'KPL aggregated Kinesis records de-aggregated',
        labelNames: ['stream'],
      }),
      userRecords: counter(r, {
        name: 'ksw_kpl_user_records_total',
        help: 'User records taken out of KPL aggregated records',
        labelNames: ['stream'],
      }),
      badAggregates: counter(r, {
        name: 'ksw_kpl_invalid_aggregates_total',
        help: 'Records with the KPL magic that could not be de-aggregated (sent to the DLQ), by reason',
        labelNames: ['stream', 'reason'],
      }),
      outsideRange: counter(r, {
        name: 'ksw_kpl_user_records_outside_shard_total',
        help: "User records whose hash key is outside their shard's range (delivered anyway; the KCL drops them)",
        labelNames: ['stream'],
      }),
    };
  }

  /** The last position registered with the watermark (the next read continues after it). */
  get lastPosition(): ShardPosition | undefined {
    return this.lastRegistered;
  }

  convert(records: readonly _Record[]): SourceRecord[] {
    const out: SourceRecord[] = [];
    let bytes = 0;
    for (const r of records) {
      const data = r.Data ?? new Uint8Array();
      const sequenceNumber = r.SequenceNumber!;
      const base = {
        stream: this.config.stream,
        shardId: this.shardId,
        sequenceNumber,
        partitionKey: r.PartitionKey ?? '',
        arrivalTime: r.ApproximateArrivalTimestamp ?? new Date(),
      };
      bytes += data.byteLength;
      if (this.config.deaggregate && isAggregated(data)) {
        let users: ReturnType<typeof deaggregate> | undefined;
        try {
          users = deaggregate(data);
        } catch (err) {
          if (!(err instanceof KplAggregateError)) throw err;
          this.m.badAggregates.inc({ stream: this.config.stream, reason: err.reason });
          if (this.deps.dlq) {
            const position = { sequenceNumber, subSequenceNumber: 0 };
            if (this.skip(position)) continue;
            const ack = this.register(position, data.byteLength);
            this.deps.dlq.put(
              { origin: { ...base, subSequenceNumber: 0 }, data, reason: err.message, component: 'kpl' },
              ack,
            );
            continue;
          }
        }
        if (users) {
          this.m.aggregates.inc({ stream: this.config.stream });
          this.m.userRecords.inc({ stream: this.config.stream }, users.length);
          for (const u of users) {
            const position = { sequenceNumber, subSequenceNumber: u.subSequenceNumber };
            if (this.skip(position)) continue;
            if (this.deps.hashKeyRange) {
              const ehk = u.explicitHashKey;
              const hash =
                ehk !== undefined && /^\d{1,39}$/.test(ehk) ? BigInt(ehk) : md5HashKey(u.partitionKey);
              if (hash < this.deps.hashKeyRange.start || hash > this.deps.hashKeyRange.end)
                this.m.outsideRange.inc({ stream: this.config.stream });
            }
            out.push({
              origin: {
                ...base,
                subSequenceNumber: u.subSequenceNumber,
                partitionKey: u.partitionKey,
                ...(u.explicitHashKey !== undefined ? { explicitHashKey: u.explicitHashKey } : {}),
              },
              data: u.data,
              ack: this.register(position, u.data.byteLength),
            });
          }
          continue;
        }
      }
      const position = { sequenceNumber, subSequenceNumber: 0 };
      if (this.skip(position)) continue;
      out.push({
        origin: { ...base, subSequenceNumber: 0 },
        data,
        ack: this.register(position, data.byteLength),
      });
    }
    if (out.length > 0) this.m.fetchedRecords.inc(this.labels, out.length);
    if (bytes > 0) this.m.fetchedBytes.inc(this.labels, bytes);
    return out;
  }

  private skip(position: ShardPosition): boolean {
    const limit = this.skipThrough;
    if (!limit) return false;
    const c = compareSequence(position.sequenceNumber, limit.sequenceNumber);
    if (c < 0 || (c === 0 && position.subSequenceNumber <= limit.subSequenceNumber)) return true;
    // Past the checkpoint: everything from here on is new.
    this.skipThrough = undefined;
    return false;
  }

  private register(position: ShardPosition, bytes: number) {
    this.lastRegistered = position;
    return this.deps.watermark.register(position, bytes);
  }
}

/** Stops `sleep`/`race` helpers when a reader is stopped. */
export function aborted(signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) resolve();
    else signal.addEventListener('abort', () => resolve(), { once: true });
  });
}
