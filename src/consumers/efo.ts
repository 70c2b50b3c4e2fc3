/**
 * Enhanced fan-out consumer: the stream consumer is registered once (RegisterStreamConsumer, idempotent;
 * every worker of the application shares it) and each shard is read with SubscribeToShard, which pushes
 * events over one long HTTP/2 request with a dedicated 2 MB/s per shard for this consumer.
 *
 * A subscription lasts at most 5 minutes; the reader resubscribes when it ends, on any error, after
 * `resubscribeIntervalMs`, or after `eventTimeoutMs` of silence, continuing AFTER the last
 * ContinuationSequenceNumber (so no record is skipped or read twice). The first subscription of a shard
 * starts AT its checkpoint (the converter skips what the checkpoint covers), or at the initial position.
 * The shard is finished when an event has no ContinuationSequenceNumber (its ChildShards name the
 * children). kinesis-mock never sends that for a closed shard, so an idle subscription is probed now and
 * then with one GetRecords after the last record (`closedShardProbeMs`).
 */
import {
  DescribeStreamConsumerCommand,
  DescribeStreamSummaryCommand,
  GetRecordsCommand,
  GetShardIteratorCommand,
  type KinesisClient,
  RegisterStreamConsumerCommand,
  type StartingPosition,
  SubscribeToShardCommand,
} from '@aws-sdk/client-kinesis';
import type { Logger } from 'pino';
import { z } from 'zod';
import { awsErrorName, isRetryableAwsError } from '../core/aws-errors.js';
import { backoffDelay, sleep } from '../core/backoff.js';
import { counter } from '../metrics/registry.js';
import {
  aborted,
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

export const efoConsumerConfigSchema = z
  .object({
    type: z
      .literal('efo')
      .describe(
        'Enhanced fan-out consumer: SubscribeToShard (HTTP/2), its own 2 MB/s per shard, pushed with ~70 ms latency.',
      ),
    ...consumerBaseShape,
    consumerName: z
      .string()
      .regex(/^[a-zA-Z0-9_.-]{1,128}$/, 'letters, digits, _ . - (at most 128)')
      .optional()
      .describe(
        'Registered stream consumer name, shared by every worker of this application. Default: app.name. A stream allows 20 consumers.',
      ),
    resubscribeIntervalMs: z
      .number()
      .int()
      .min(6_000)
      .max(300_000)
      .default(300_000)
      .describe(
        'Resubscribe after this long even if the service has not ended the subscription (AWS ends each after 5 minutes).',
      ),
    eventTimeoutMs: z
      .number()
      .int()
      .min(1_000)
      .default(35_000)
      .describe(
        'A subscription that delivers no event for this long is abandoned and renewed (AWS sends one at least every 5 s).',
      ),
    registerTimeoutMs: z
      .number()
      .int()
      .min(1_000)
      .default(120_000)
      .describe('How long to wait for the stream consumer to become ACTIVE at start-up.'),
    closedShardProbeMs: z
      .number()
      .int()
      .min(0)
      .default(30_000)
      .describe(
        'When a subscription has had no records for this long, check with one GetRecords whether the shard is closed and fully read (for emulators that never end a subscription to a closed shard). 0 disables.',
      ),
  })
  .strict()
  .superRefine(checkStartTimestamp);

export type EfoConsumerConfig = z.infer<typeof efoConsumerConfigSchema>;

/** SubscribeToShard allows one successful call per consumer and shard every 5 seconds. */
const SUBSCRIBE_SPACING_MS = 5_000;

/** Registers the consumer (or finds it when already registered) and waits until it is ACTIVE. */
export async function registerStreamConsumer(
  kinesis: KinesisClient,
  stream: string,
  consumerName: string,
  opts: { timeoutMs: number; logger: Logger; signal?: AbortSignal },
): Promise<string> {
  const deadline = Date.now() + opts.timeoutMs;
  const summary = await kinesis.send(new DescribeStreamSummaryCommand({ StreamName: stream }));
  const streamArn = summary.StreamDescriptionSummary?.StreamARN;
  if (!streamArn) throw new Error(`DescribeStreamSummary of ${stream} returned no StreamARN`);
  let consumerArn: string | undefined;
  for (let attempt = 0; !consumerArn; attempt++) {
    try {
      const out = await kinesis.send(
        new RegisterStreamConsumerCommand({ StreamARN: streamArn, ConsumerName: consumerName }),
      );
      consumerArn = out.Consumer?.ConsumerARN;
      opts.logger.info({ stream, consumerName, consumerArn }, 'registered stream consumer');
    } catch (err) {
      const name = awsErrorName(err);
      if (name === 'ResourceInUseException') {
        // Already registered (by this application's other workers, or a previous run): idempotent.
        const out = await kinesis.send(
          new DescribeStreamConsumerCommand({ StreamARN: streamArn, ConsumerName: consumerName }),
        );
        consumerArn = out.ConsumerDescription?.ConsumerARN;
      } else if (isRetryableAwsError(err) && Date.now() < deadline) {
        // RegisterStreamConsumer allows 5 calls/s per stream: a fleet starting together may be throttled.
        await sleep(backoffDelay(attempt, 200, 5_000), opts.signal);
      } else {
        throw err;
      }
    }
  }
  for (let attempt = 0; ; attempt++) {
    const out = await kinesis.send(new DescribeStreamConsumerCommand({ ConsumerARN: consumerArn }));
    const status = out.ConsumerDescription?.ConsumerStatus;
    if (status === 'ACTIVE') return consumerArn;
    if (Date.now() > deadline) {
      throw new Error(
        `stream consumer ${consumerName} of ${stream} is ${status} after ${opts.timeoutMs} ms (registerTimeoutMs)`,
      );
    }
    await sleep(Math.min(1_000, 100 * 2 ** attempt), opts.signal);
  }
}

export class EfoShardReader implements ShardReader {
  private readonly abort = new AbortController();
  private readonly converter: RecordConverter;
  private children: ChildShard[] | undefined;
  /** The last ContinuationSequenceNumber: where the next subscription continues. */
  private continuation: string | undefined;
  /** When the last subscription succeeded: the service refuses another within 5 s (ResourceInUseException). */
  private subscribedAt = 0;
  private readonly labels: { stream: string; shard: string };
  private readonly m;

  constructor(
    private readonly config: EfoConsumerConfig,
    private readonly consumerArn: string,
    readonly shardId: string,
    private readonly start: StartingPoint,
    private readonly deps: ShardReaderDeps & { readonly subscribeClient: KinesisClient },
  ) {
    this.labels = { stream: config.stream, shard: shardId };
    const r = deps.metrics;
    this.m = {
      ...shardReadMetrics(r),
      subscriptions: counter(r, {
        name: 'ksw_efo_subscriptions_total',
        help: 'SubscribeToShard calls (a subscription lasts at most 5 minutes)',
        labelNames: ['stream', 'shard'],
      }),
    };
    this.converter = new RecordConverter(config, shardId, deps, start);
    startShardReadMetrics(this.m, this.labels);
  }

  stop(): void {
    this.abort.abort();
  }

  get childShards(): readonly ChildShard[] | undefined {
    return this.children;
  }

  private startingPosition(): StartingPosition {
    const after = this.continuation ?? this.converter.lastPosition?.sequenceNumber;
    if (after) return { Type: 'AFTER_SEQUENCE_NUMBER', SequenceNumber: after };
    if (this.start.kind === 'after')
      return { Type: 'AT_SEQUENCE_NUMBER', SequenceNumber: this.start.position.sequenceNumber };
    return {
      Type: this.start.position,
      ...(this.start.position === 'AT_TIMESTAMP' && this.start.timestamp
        ? { Timestamp: this.start.timestamp }
        : {}),
    };
  }

  async run(): Promise<ReaderEnd> {
    const signal = this.abort.signal;
    const log = this.deps.logger.child({ stream: this.config.stream, shard: this.shardId, consumer: 'efo' });
    let attempt = 0;
    while (!signal.aborted) {
      // One AbortController per subscription: stop(), the resubscribe timer and the silence watchdog end it.
      const subscription = new AbortController();
      const endSubscription = () => subscription.abort();
      signal.addEventListener('abort', endSubscription, { once: true });
      const lifetime = setTimeout(endSubscription, this.config.resubscribeIntervalMs);
      let watchdog = setTimeout(endSubscription, this.config.eventTimeoutMs);
      try {
        await sleep(this.subscribedAt + SUBSCRIBE_SPACING_MS - Date.now(), signal);
        if (signal.aborted) break;
        this.m.subscriptions.inc(this.labels);
        const out = await this.deps.subscribeClient.send(
          new SubscribeToShardCommand({
            ConsumerARN: this.consumerArn,
            ShardId: this.shardId,
            StartingPosition: this.startingPosition(),
          }),
          { abortSignal: subscription.signal },
        );
        this.subscribedAt = Date.now();
        log.debug({ position: this.startingPosition() }, 'subscribed');
        let idleSince = Date.now();
        for await (const event of out.EventStream ?? []) {
          clearTimeout(watchdog);
          watchdog = setTimeout(endSubscription, this.config.eventTimeoutMs);
          const e = event.SubscribeToShardEvent;
          if (!e) {
            // The union's other members are errors the service reports inside the stream.
            const [name, value] = Object.entries(event)[0] ?? ['UnknownEvent', undefined];
            throw Object.assign(new Error(`${name}: ${(value as Error | undefined)?.message ?? ''}`), {
              name,
            });
          }
          attempt = 0;
          this.m.lastAnswer.set(this.labels, Date.now() / 1000);
          log.trace({ records: e.Records?.length, continuation: e.ContinuationSequenceNumber }, 'event');
          const records = this.converter.convert(e.Records ?? []);
          if (e.MillisBehindLatest !== undefined) this.m.millisBehind.set(this.labels, e.MillisBehindLatest);
          if (records.length > 0) {
            idleSince = Date.now();
            await deliverOrFail(this.deps.deliver, records);
          }
          if (!e.ContinuationSequenceNumber) {
            this.children = (e.ChildShards ?? []).map((c) => ({
              shardId: c.ShardId!,
              parentShardIds: c.ParentShards ?? [this.shardId],
            }));
            log.info({ children: this.children.map((c) => c.shardId) }, 'shard closed (reached SHARD_END)');
            return 'shard-end';
          }
          this.continuation = e.ContinuationSequenceNumber;
          if (
            this.config.closedShardProbeMs > 0 &&
            records.length === 0 &&
            Date.now() - idleSince >= this.config.closedShardProbeMs
          ) {
            idleSince = Date.now();
            if (await this.probeClosed(log)) return 'shard-end';
          }
          // Backpressure: stop reading the event stream (TCP holds the rest) until the watermark moves.
          if (!this.deps.watermark.hasCapacity) {
            this.deps.onBackpressure?.();
            clearTimeout(watchdog);
            await Promise.race([this.deps.watermark.waitForCapacity(), aborted(subscription.signal)]);
            watchdog = setTimeout(endSubscription, this.config.eventTimeoutMs);
          }
          if (subscription.signal.aborted) break;
        }
        // The subscription ended (5 minutes, our timer or watchdog): resubscribe from the continuation.
        log.debug({ continuation: this.continuation }, 'subscription ended; resubscribing');
      } catch (err) {
        // Not a subscription error: the batch is registered and cannot be skipped by resubscribing after
        // it; the coordinator releases the shard.
        if (err instanceof DeliveryError) throw err;
        if (signal.aborted) break;
        if (subscription.signal.aborted) {
          // Our own timer or watchdog: resubscribe at once.
          log.debug({ err: (err as Error).message }, 'subscription ended by our timer; resubscribing');
          continue;
        }
        const name = awsErrorName(err);
        this.m.readErrors.inc({ ...this.labels, error: name });
        if (name === 'ResourceNotFoundException') {
          log.error(
            { err: (err as Error).message },
            'stream, shard or consumer not found; stopping this shard',
          );
          return 'stream-gone';
        }
        // ResourceInUseException: the previous owner's subscription is still open (at most 5 minutes), or
        // the consumer is not ACTIVE yet. Retry with backoff like throttling.
        const backoff = backoffDelay(attempt, this.config.backoffBaseMs, this.config.backoffMaxMs);
        // SubscribeToShard allows 1 call/s per consumer and shard; a busy subscription is retried no faster.
        const delay = name === 'ResourceInUseException' ? Math.max(1_000, backoff) : backoff;
        attempt += 1;
        log.warn(
          { errName: name, err: (err as Error).message, attempt, delayMs: delay },
          'SubscribeToShard failed; resubscribing after backoff',
        );
        await sleep(delay, signal);
      } finally {
        clearTimeout(lifetime);
        clearTimeout(watchdog);
        signal.removeEventListener('abort', endSubscription);
        subscription.abort();
      }
    }
    return 'stopped';
  }

  /** One GetRecords after the last record: a closed, fully read shard has no next iterator. */
  private async probeClosed(log: Logger): Promise<boolean> {
    try {
      const after = this.continuation ?? this.converter.lastPosition?.sequenceNumber;
      const it = await this.deps.kinesis.send(
        new GetShardIteratorCommand({
          StreamName: this.config.stream,
          ShardId: this.shardId,
          ...(after
            ? { ShardIteratorType: 'AFTER_SEQUENCE_NUMBER', StartingSequenceNumber: after }
            : { ShardIteratorType: 'TRIM_HORIZON' }),
        }),
        { abortSignal: this.abort.signal },
      );
      const out = await this.deps.kinesis.send(
        new GetRecordsCommand({ ShardIterator: it.ShardIterator, Limit: 1 }),
        { abortSignal: this.abort.signal },
      );
      if (out.NextShardIterator || (out.Records?.length ?? 0) > 0) return false;
      this.children = (out.ChildShards ?? []).map((c) => ({
        shardId: c.ShardId!,
        parentShardIds: c.ParentShards ?? [this.shardId],
      }));
      log.info(
        { children: this.children.map((c) => c.shardId) },
        'shard closed (reached SHARD_END; found by probing an idle subscription)',
      );
      return true;
    } catch (err) {
      log.debug({ errName: awsErrorName(err) }, 'closed-shard probe failed; will try again');
      return false;
    }
  }
}
