import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import type { Ack } from './ack.js';
import type { AwsClients } from './aws.js';
import type { PipelineEvent, RecordOrigin, SourceRecord } from './records.js';
import type { Tenure } from './tenure.js';
import type { ShardPosition } from './watermark.js';

export type { Tenure } from './tenure.js';

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
 *
 * What a processor holds belongs to the lease tenure of each event (`event.ack.tenure`): key per-shard
 * state by tenure (`tenureKey`), never by shard alone, so a shard read again by a later tenure on this
 * worker starts from a clean state.
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
  /**
   * A tenure ends gracefully (a handoff, the shard's end): release now what is held back of it (decide
   * its pending traces, close its open window) and return it; the chain takes it to the sinks before the
   * tenure's final checkpoint, so the next owner neither misses nor repeats it.
   */
  flushShard?(tenure: Tenure): PipelineEvent[] | Promise<PipelineEvent[]>;
  /**
   * A tenure has ended (lost, fenced, failed, or after a graceful end): forget what is still held of it,
   * without completing those acks (its records are read again by the next tenure), and never emit
   * anything of it again.
   */
  closeShard?(tenure: Tenure): void | Promise<void>;
  /** Releases whatever it holds back (at shutdown). */
  flush?(): Promise<PipelineEvent[]>;
  close?(): Promise<void>;
}

/** The part of the chain after a processor: later processors, routing, then the sinks. */
export type Downstream = (events: PipelineEvent[]) => Promise<void>;

/**
 * A sink makes events durable. `write` takes ownership of the events' acks and completes each one
 * only once the event is durably written (or dead-lettered). The promise resolves when the sink has
 * accepted the batch; it may wait, which is how a sink applies backpressure. A rejected `write` fails
 * the tenures of the batch's events (their shards are released and read again).
 *
 * Every event belongs to a lease tenure (`event.ack.tenure`). A sink must not write anything of a tenure
 * that is no longer `active`: check it before each request, pass the tenure's `signal` to the request,
 * ignore events of an ended tenure given to `write`, and drop what it buffers of a tenure at `closeShard`.
 * A failure that retrying cannot cure (access denied, a missing bucket) is reported with
 * `tenure.fail(stage, err)` rather than retried forever.
 */
export interface Sink {
  readonly name: string;
  write(events: PipelineEvent[]): Promise<void>;
  /**
   * Called when a tenure starts, before its first event is written, with the checkpoint the shard resumes
   * from. Lets a sink recognise output it committed after that checkpoint (replay after a crash or a lost
   * lease). A rejection releases the lease.
   */
  openShard?(tenure: Tenure, checkpoint: ShardPosition | undefined): Promise<void>;
  /**
   * A tenure ends gracefully (handoff, shard end): make what is buffered of it durable now (and ack it).
   * Without it the chain calls `flush()`.
   */
  flushShard?(tenure: Tenure): Promise<void>;
  /**
   * A tenure has ended: drop what is buffered of it (unacked), abort its requests, and resolve once no
   * request of it can still be sent. The next tenure of the shard on this worker opens only after that.
   */
  closeShard?(tenure: Tenure): Promise<void>;
  /** Makes everything buffered durable now (and acks it). */
  flush(): Promise<void>;
  /** Flushes and releases resources. */
  close(): Promise<void>;
}

/**
 * The chain as a shard consumer sees it: records in, and the lifecycle of each lease tenure. Implemented
 * by the pipeline (src/runtime/pipeline.ts); the consumers never see processors or sinks themselves.
 */
export interface ShardChain {
  /**
   * Hands a batch of one tenure's records to the chain; resolves when accepted (it may wait:
   * backpressure). Rejects when the chain failed on it; the tenure has then been failed as well.
   */
  deliver(records: SourceRecord[]): Promise<void>;
  /** A tenure starts (before its first record). Rejects when a sink cannot open the shard. */
  openShard(tenure: Tenure, checkpoint: ShardPosition | undefined): Promise<void>;
  /** Graceful end: release what processors hold of the tenure and make it durable in the sinks. */
  flushShard(tenure: Tenure): Promise<void>;
  /** The tenure ended: processors, decoder, sinks and the DLQ drop what they still hold of it. */
  closeShard(tenure: Tenure): Promise<void>;
  /**
   * A shard waits on backpressure: ask the sinks holding that tenure's events to flush them early (at
   * most now and then); sinks without its data and other shards' buffers are left alone.
   */
  relievePressure(tenure: Tenure): void;
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
  /**
   * Stores the letter and completes `ack` once it is durable. A letter whose tenure (`ack.tenure`) is no
   * longer active is not stored: the next tenure reads the record again and sends it again.
   */
  put(letter: DeadLetter, ack: Ack): void;
  /** Makes the letters of a tenure durable now (graceful end). Without it the chain calls `flush()`. */
  flushShard?(tenure: Tenure): Promise<void>;
  /** The tenure ended: drop its unwritten letters and abort their writes. */
  closeShard?(tenure: Tenure): Promise<void>;
  flush(): Promise<void>;
  close(): Promise<void>;
}

/** A registry entry: the component's config schema (its documentation) and its factory. */
export interface ComponentDefinition<TConfig, TComponent> {
  readonly description: string;
  readonly schema: import('zod').ZodType<TConfig>;
  create(name: string, config: TConfig, ctx: ComponentContext): TComponent;
}
