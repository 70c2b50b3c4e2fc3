import type { Ack } from './ack.js';

/** Where a record came from. Immutable, shared by every event decoded from that record. */
export interface RecordOrigin {
  readonly stream: string;
  readonly shardId: string;
  /** Kinesis sequence number: a decimal string of up to 128 digits; compare with `compareSequence`. */
  readonly sequenceNumber: string;
  /** Sub-sequence number inside a KPL aggregated record; 0 for plain records. */
  readonly subSequenceNumber: number;
  readonly partitionKey: string;
  /** The producer's explicit hash key (of the record, or of the KPL user record), when it gave one. */
  readonly explicitHashKey?: string;
  readonly arrivalTime: Date;
}

/** A Kinesis record as the consumer hands it to the chain. */
export interface SourceRecord {
  readonly origin: RecordOrigin;
  readonly data: Uint8Array;
  readonly ack: Ack;
}

/**
 * One unit flowing through processors to sinks. `value` is the decoded document (a JSON object);
 * `index` is its position inside the record (line number for NDJSON, 0 otherwise), so
 * (stream, shard, sequence, subSequence, index) identifies an event uniquely and deterministically.
 */
export interface PipelineEvent {
  readonly origin: RecordOrigin;
  readonly index: number;
  value: Record<string, unknown>;
  /** The raw bytes the event was decoded from, kept for the dead-letter queue. */
  readonly raw: Uint8Array;
  readonly ack: Ack;
  /**
   * Names of the sinks this event goes to. Set by routing, or by the processor that generated the event
   * (e.g. RED metric windows name their own sinks); undefined means every sink. An empty list means
   * the event is deliberately written nowhere: its ack completes at delivery.
   */
  sinks?: readonly string[];
  /**
   * True for events a processor made rather than decoded from a record (e.g. a RED metric window). Their
   * origin is the last record they were derived from, but a replay may derive different events for the same
   * positions, so sinks must not assume that a replayed position yields the same event (no replay skipping).
   */
  readonly derived?: boolean;
}

/**
 * The same event with another ack (a part of its ack, for one of several sinks). Events whose class keeps
 * state off their own properties (a lazily serialised `raw`) copy themselves with `withAck`; plain events
 * are spread.
 */
export function eventWithAck(event: PipelineEvent, ack: Ack): PipelineEvent {
  const own = (event as { withAck?: (ack: Ack) => PipelineEvent }).withAck;
  return own === undefined ? { ...event, ack } : own.call(event, ack);
}

/** Compares two Kinesis sequence numbers (decimal strings without leading zeros). */
export function compareSequence(a: string, b: string): number {
  if (a.length !== b.length) return a.length < b.length ? -1 : 1;
  return a < b ? -1 : a > b ? 1 : 0;
}
