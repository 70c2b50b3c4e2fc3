import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import type { Ack } from './ack.js';
import type { AwsClients } from './aws.js';
import type { PipelineEvent, RecordOrigin } from './records.js';
import type { ShardPosition } from './watermark.js';

/** A shard of a stream, as components see it. */
export interface ShardRef {
  readonly stream: string;
  readonly shardId: string;
}

/** What every component factory receives besides its own config. */
export interface ComponentContext {
  readonly logger: Logger;
  readonly metrics: Registry;
  readonly aws: AwsClients;
  /** The dead-letter queue; absent only while the DLQ itself is being built. */
  readonly dlq: DeadLetterQueue;
}

/**
 * A processor transforms a batch of events. It may drop events (then it must complete their acks,
 * e.g. by sending them to the DLQ or because they were deliberately sampled out), hold them back
 * (then it keeps their acks until it releases them), or emit new ones (splitting acks).
 */
export interface Processor {
  readonly name: string;
  process(events: PipelineEvent[]): PipelineEvent[] | Promise<PipelineEvent[]>;
  /**
   * Called once before the first `process`, with the rest of the chain after this processor. A
   * processor that releases events on its own clock (a tail sampler's decision wait, a metrics
   * window) sends them through `downstream` instead of waiting for the next `process` call.
   */
  start?(downstream: Downstream): void;
  /** Releases whatever it holds back (at shutdown). */
  flush?(): Promise<PipelineEvent[]>;
  close?(): Promise<void>;
}

/** The part of the chain after a processor: later processors, routing, then the sinks. */
export type Downstream = (events: PipelineEvent[]) => Promise<void>;

/**
 * A sink makes events durable. `write` takes ownership of the events' acks and completes each one
 * only once the event is durably written (or dead-lettered). The promise resolves when the sink has
 * accepted the batch; it may wait, which is how a sink applies backpressure.
 */
export interface Sink {
  readonly name: string;
  write(events: PipelineEvent[]): Promise<void>;
  /**
   * Called before the first event of a shard is written, with the checkpoint the shard resumes from.
   * Lets a sink recognise output it committed after that checkpoint before a crash (replay).
   */
  openShard?(shard: ShardRef, checkpoint: ShardPosition | undefined): Promise<void>;
  /** Makes everything buffered durable now (and acks it). */
  flush(): Promise<void>;
  /** Flushes and releases resources. */
  close(): Promise<void>;
}

/** Why a record or event could not be processed, as stored in the DLQ. */
export interface DeadLetter {
  readonly origin: RecordOrigin;
  /** Position of the event inside its record (NDJSON line), when the failure concerns one event. */
  readonly index?: number;
  /** The original bytes, stored base64 so the record can be replayed. */
  readonly data: Uint8Array;
  /** Human-readable reason, e.g. "invalid JSON at position 12: Unexpected token". */
  readonly reason: string;
  /** Component that gave up on it, e.g. "decode" or "sink:lake". */
  readonly component: string;
}

/** The dead-letter queue: durable storage for what the chain could not process. */
export interface DeadLetterQueue {
  /** Stores the letter and completes `ack` once it is durable. */
  put(letter: DeadLetter, ack: Ack): void;
  flush(): Promise<void>;
  close(): Promise<void>;
}

/** A registry entry: the component's config schema (its documentation) and its factory. */
export interface ComponentDefinition<TConfig, TComponent> {
  readonly description: string;
  readonly schema: import('zod').ZodType<TConfig>;
  create(name: string, config: TConfig, ctx: ComponentContext): TComponent;
}
