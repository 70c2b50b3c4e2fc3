/**
 * `otel_spans`: turns decoded documents into flat span events (`SpanDocument`, src/core/documents.ts),
 * one event per span, from OTLP/JSON ExportTraceServiceRequests or flat span JSON (span-format.ts).
 * Put it first in the chain: `red_metrics` and the samplers read its output.
 *
 * Acks: a request with N spans has its ack split into N parts, one per span event; a span that cannot
 * be read (or whose times are implausible) goes to the DLQ with the reason and its path in the request,
 * and its part completes there. A document that is neither format goes to the DLQ whole.
 *
 * Event identity: the spans of one record are numbered 0.. in document order (`index`), so
 * (stream, shard, sequence, subSequence, index) names one span deterministically across replays.
 *
 * Cross-shard traces: producers put the traceId as partition key, so a trace lives on one shard and a
 * worker's tail sampler sees all of it. A bounded traceId -> shard map counts spans whose trace was first
 * seen on another shard (`ksw_spans_cross_shard_total`): producers keyed by something else, or a reshard
 * splitting a trace. A worker only sees the shards it holds leases for, so a trace split between two
 * workers is invisible here (each worker sees only its own part); the counter is a lower bound.
 */
import type { Counter, Registry } from 'prom-client';
import { z } from 'zod';
import type { ComponentContext, DeadLetterQueue, Processor } from '../core/component.js';
import type { SpanDocument } from '../core/documents.js';
import type { PipelineEvent, RecordOrigin } from '../core/records.js';
import { counter } from '../metrics/registry.js';
import {
  countOtlpSpans,
  flatSpan,
  isOtlpRequest,
  otlpResources,
  SpanFormatError,
  type SpanLimits,
  stringifyExact,
  visitOtlpSpans,
} from './span-format.js';

export const otelSpansConfigSchema = z
  .object({
    type: z.literal('otel_spans'),
    name: z.string().min(1).optional().describe('Processor name (metrics label). Default: the type.'),
    input: z
      .enum(['auto', 'otlp', 'flat'])
      .default('auto')
      .describe(
        'otlp: every document is an OTLP/JSON ExportTraceServiceRequest (resourceSpans/scopeSpans/spans). flat: every document is one flat span. auto: a document with `resourceSpans` is OTLP, anything else a flat span.',
      ),
    maxSpanDurationMs: z
      .number()
      .int()
      .min(1)
      .max(100 * 86_400_000)
      .default(86_400_000)
      .describe('Spans lasting longer than this go to the DLQ as implausible (default one day).'),
    minStartTime: z
      .string()
      .default('2000-01-01T00:00:00Z')
      .refine((s) => Number.isFinite(Date.parse(s)), 'an ISO-8601 time, e.g. 2000-01-01T00:00:00Z')
      .describe('Spans starting before this time go to the DLQ (catches 0 and seconds-instead-of-nanos).'),
    maxFutureSkewMs: z
      .number()
      .int()
      .min(0)
      .default(86_400_000)
      .describe('Spans starting more than this far in the future (worker clock) go to the DLQ.'),
    crossShardTraces: z
      .number()
      .int()
      .min(0)
      .default(100_000)
      .describe(
        'Size of the traceId -> shard map that counts spans whose trace arrives on more than one shard (ksw_spans_cross_shard_total); 0 turns the count off.',
      ),
  })
  .strict()
  .describe('Turns OTLP/JSON requests and flat span JSON into one flat span event per span.');

export type OtelSpansConfig = z.infer<typeof otelSpansConfigSchema>;

export class OtelSpansProcessor implements Processor {
  private readonly limits: SpanLimits;
  private readonly spans: Counter<'processor' | 'format'>;
  private readonly rejected: Counter<'processor' | 'reason'>;
  private readonly crossShard: Counter<'processor'>;
  private readonly labels: { processor: string };
  private readonly otlpLabels: { processor: string; format: string };
  private readonly flatLabels: { processor: string; format: string };
  /** traceId -> "stream\nshard" of the first span seen; insertion-ordered, oldest evicted first. */
  private readonly traceShards = new Map<string, string>();
  private readonly shardKeys = new Map<string, Map<string, string>>();
  private lastOrigin: RecordOrigin | undefined;
  private lastTrace: string | undefined;
  private lastTraceShard: string | undefined;
  private nextIndex = 0;

  constructor(
    readonly name: string,
    private readonly config: OtelSpansConfig,
    private readonly dlq: DeadLetterQueue,
    metrics: Registry,
    now: () => number = Date.now,
  ) {
    this.limits = {
      maxDurationNanos: config.maxSpanDurationMs * 1e6,
      minStartMs: Date.parse(config.minStartTime),
      maxFutureMs: config.maxFutureSkewMs,
      now,
    };
    this.labels = { processor: name };
    this.otlpLabels = { processor: name, format: 'otlp' };
    this.flatLabels = { processor: name, format: 'flat' };
    this.spans = counter(metrics, {
      name: 'ksw_spans_total',
      help: 'Span events emitted, by input format (otlp, flat)',
      labelNames: ['processor', 'format'],
    });
    this.rejected = counter(metrics, {
      name: 'ksw_spans_rejected_total',
      help: 'Spans or documents sent to the DLQ: malformed, or implausible times (end before start, too long, too old, in the future)',
      labelNames: ['processor', 'reason'],
    });
    this.crossShard = counter(metrics, {
      name: 'ksw_spans_cross_shard_total',
      help: 'Spans whose trace was first seen on another shard (partition key is not the traceId, or a reshard split the trace); tail sampling sees such traces in parts',
      labelNames: ['processor'],
    });
  }

  process(events: PipelineEvent[]): PipelineEvent[] {
    const out: PipelineEvent[] = [];
    let flat = 0;
    let otlp = 0;
    for (const event of events) {
      if (event.derived) {
        out.push(event);
        continue;
      }
      if (event.origin !== this.lastOrigin) {
        this.lastOrigin = event.origin;
        this.nextIndex = 0;
      }
      const value = event.value;
      const mode = this.config.input;
      if (mode === 'otlp' || (mode === 'auto' && isOtlpRequest(value))) {
        otlp += this.fromOtlp(event, out);
        continue;
      }
      try {
        const span = flatSpan(value, this.limits);
        this.noteShard(span.traceId, event.origin);
        out.push({
          origin: event.origin,
          // Declared up front so routing's later assignment does not change the object's shape.
          sinks: undefined,
          index: this.nextIndex++,
          value: span as unknown as Record<string, unknown>,
          raw: event.raw,
          ack: event.ack,
        });
        flat += 1;
      } catch (err) {
        if (!(err instanceof SpanFormatError)) throw err;
        this.reject(event, event.raw, `not a flat span: ${err.message}`, err.kind);
      }
    }
    if (flat > 0) this.spans.inc(this.flatLabels, flat);
    if (otlp > 0) this.spans.inc(this.otlpLabels, otlp);
    return out;
  }

  private fromOtlp(event: PipelineEvent, out: PipelineEvent[]): number {
    let count: number;
    let resources: ReturnType<typeof otlpResources>;
    try {
      count = countOtlpSpans(event.value);
      resources = otlpResources(event.value);
    } catch (err) {
      if (!(err instanceof SpanFormatError)) throw err;
      this.reject(event, event.raw, `not an OTLP ExportTraceServiceRequest: ${err.message}`, err.kind);
      return 0;
    }
    // An empty request carries no span: its ack completes here (nothing to write).
    const parts = event.ack.split(count);
    const visit = this.visit;
    visit.event = event;
    visit.parts = parts;
    visit.out = out;
    visit.emitted = 0;
    try {
      visitOtlpSpans(event.value, resources, this.limits, visit);
    } finally {
      visit.event = undefined;
      visit.parts = undefined;
      visit.out = undefined;
    }
    return visit.emitted;
  }

  /** The visitor of OTLP requests, reused for every request (no closure per record). */
  private readonly visit = {
    event: undefined as PipelineEvent | undefined,
    parts: undefined as PipelineEvent['ack'][] | undefined,
    out: undefined as PipelineEvent[] | undefined,
    emitted: 0,
    span: (span: SpanDocument, at: number): void => {
      const v = this.visit;
      const event = v.event!;
      this.noteShard(span.traceId, event.origin);
      v.out!.push(
        new OtlpSpanEvent(
          event.origin,
          this.nextIndex++,
          span as unknown as Record<string, unknown>,
          v.parts![at]!,
        ),
      );
      v.emitted += 1;
    },
    reject: (
      at: number,
      path: string,
      reason: string,
      kind: SpanFormatError['kind'],
      input: unknown,
    ): void => {
      const event = this.visit.event!;
      this.rejected.inc({ processor: this.name, reason: kind });
      this.dlq.put(
        {
          origin: event.origin,
          index: event.index,
          data: Buffer.from(stringifyExact(input), 'utf8'),
          reason: `${path}: ${reason}`,
          component: `processor:${this.name}`,
        },
        this.visit.parts![at]!,
      );
    },
  };

  private reject(event: PipelineEvent, data: Uint8Array, reason: string, kind: string): void {
    this.rejected.inc({ processor: this.name, reason: kind });
    this.dlq.put(
      { origin: event.origin, index: event.index, data, reason, component: `processor:${this.name}` },
      event.ack,
    );
  }

  /** One interned key per shard, found without building a string per span. */
  private shardKey(origin: RecordOrigin): string {
    let byShard = this.shardKeys.get(origin.stream);
    if (byShard === undefined) {
      byShard = new Map();
      this.shardKeys.set(origin.stream, byShard);
    }
    let key = byShard.get(origin.shardId);
    if (key === undefined) {
      key = `${origin.stream}\n${origin.shardId}`;
      byShard.set(origin.shardId, key);
    }
    return key;
  }

  private noteShard(traceId: string, origin: RecordOrigin): void {
    const max = this.config.crossShardTraces;
    if (max === 0) return;
    const shard = this.shardKey(origin);
    // The spans of a trace usually arrive one after another (traceId = partition key): when the previous
    // span was of this trace, first seen on this very shard, the map has nothing new to say.
    if (traceId === this.lastTrace && shard === this.lastTraceShard) return;
    const seen = this.traceShards.get(traceId);
    if (seen === undefined) {
      if (this.traceShards.size >= max) {
        const oldest = this.traceShards.keys().next().value;
        if (oldest !== undefined) this.traceShards.delete(oldest);
      }
      this.traceShards.set(traceId, shard);
    } else if (seen !== shard) {
      this.crossShard.inc(this.labels);
      this.lastTrace = undefined;
      return;
    }
    this.lastTrace = traceId;
    this.lastTraceShard = shard;
  }
}

/** Marks span events whose `raw` is serialised on demand (so size estimates can avoid forcing it). */
export const LAZY_RAW: unique symbol = Symbol('ksw.lazyRaw');

/**
 * A span event from an OTLP request: its `raw` bytes (for the DLQ and sinks' size accounting) are the
 * span's own JSON, serialised only if something asks for them. A class, so every span event shares one
 * hidden class and one `raw` getter (an object literal with a getter made a new map per event).
 */
export class OtlpSpanEvent implements PipelineEvent {
  sinks: readonly string[] | undefined = undefined;
  private cachedRaw: Uint8Array | undefined = undefined;
  constructor(
    readonly origin: RecordOrigin,
    readonly index: number,
    public value: Record<string, unknown>,
    readonly ack: PipelineEvent['ack'],
  ) {}

  get raw(): Uint8Array {
    this.cachedRaw ??= Buffer.from(stringifyExact(this.value), 'utf8');
    return this.cachedRaw;
  }

  /** The same span with another ack (one sink's part), sharing the serialised bytes once made. */
  withAck(ack: PipelineEvent['ack']): OtlpSpanEvent {
    const copy = new OtlpSpanEvent(this.origin, this.index, this.value, ack);
    copy.sinks = this.sinks;
    copy.cachedRaw = this.cachedRaw;
    return copy;
  }

  get [LAZY_RAW](): true {
    return true;
  }
}

/** True for span events whose `raw` is serialised on demand. */
export function hasLazyRaw(event: PipelineEvent): boolean {
  return (event as { [LAZY_RAW]?: true })[LAZY_RAW] === true;
}

export function createOtelSpans(name: string, config: OtelSpansConfig, ctx: ComponentContext): Processor {
  return new OtelSpansProcessor(name, config, ctx.dlq, ctx.metrics);
}
