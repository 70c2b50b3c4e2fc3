/**
 * `red_metrics`: Rate, Errors and Duration of every span, before any sampling, like Data Prepper's
 * aggregate processor writing `red_metrics_from_traces` — without storing every trace.
 *
 * A series is (service, operation, span kind, status code) plus the configured extra dimensions (span
 * attributes, then resource attributes, e.g. `http.route`). For each series:
 * - Prometheus, on /metrics: `<prefix>_requests_total`, `<prefix>_errors_total` (status ERROR) and the
 *   histogram `<prefix>_duration_seconds`, with exemplars carrying the trace_id of a recent span (shown when
 *   Prometheus asks for OpenMetrics; see metrics/server.ts). Cumulative since the series appeared.
 * - Documents: every `windowMs` (wall clock, aligned to multiples of windowMs), one `RedWindowDocument`
 *   per series and shard that saw spans in the window, sent to the sinks listed in `sinks` (derived events).
 *
 * Cardinality: at most `maxSeries` series; spans of further combinations land in one overflow series
 * (`otel_metric_overflow="true"`, empty labels; `overflow: true` in documents) and are counted in
 * `<prefix>_overflow_spans_total`. Series unseen for `seriesIdleMs` are forgotten (their Prometheus series
 * disappear; a series that comes back starts from 0, which rate() reads as a counter reset).
 *
 * Windows are kept per shard and lease tenure (a shard read again by a later tenure, here or on another
 * worker, starts new windows), so a shard's windows move with its lease, and a window's data is made
 * durable before the checkpoint can pass any span counted in it:
 * the ack of the FIRST span aggregated into a shard's window is split in two; one part travels downstream
 * with the span, the other is held by the window and completed only when every window document's own ack
 * has completed (each document written by every sink it names). Because a checkpoint is the contiguous
 * watermark (src/core/watermark.ts), holding the earliest span of the window holds every later one too,
 * at the cost of one extra ack per window instead of one per span. (When positions go backwards, e.g.
 * a shard re-read after a lease came back, the earlier span is held as well.) Consequences:
 * - no RED data is lost in a crash: spans after the checkpoint are read again and counted again;
 * - at-least-once: spans after the checkpoint whose window had already been written before the crash are
 *   counted a second time, in a window of the new run (windows of a new run never start before the
 *   shard was picked up, so their (shard, windowStart, series) never collide with an older window's);
 * - the checkpoint lags by up to windowMs plus the time the sinks take to make window documents durable.
 * A window document's origin is the last record aggregated into it and its index the series' ordinal in the
 * window; sinks must not deduplicate derived events by position (see `derived` in src/core/records.ts).
 * At shutdown `flush()` emits the open windows (ending at the shutdown time); at a graceful end of a
 * tenure (handoff, shard end) `flushShard` emits that tenure's window, so it is written before the
 * handoff's checkpoint and the next owner counts only what comes after. A tenure that ends otherwise
 * (lost, fenced) drops its open window unwritten: the next owner reads its spans again and counts them.
 */
import type { Registry } from 'prom-client';
import { z } from 'zod';
import { Ack } from '../core/ack.js';
import type { ComponentContext, Downstream, Processor, Tenure } from '../core/component.js';
import type { RedWindowDocument, SpanKind } from '../core/documents.js';
import { compareSequence, type PipelineEvent, type RecordOrigin } from '../core/records.js';
import { tenureKey } from '../core/tenure.js';
import { counter, gauge } from '../metrics/registry.js';

const DEFAULT_BUCKETS_MS = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000];
const RESERVED_LABELS = ['service', 'operation', 'span_kind', 'status_code', 'otel_metric_overflow', 'le'];

export const redMetricsConfigSchema = z
  .object({
    type: z.literal('red_metrics'),
    name: z.string().min(1).optional().describe('Processor name (metrics label). Default: the type.'),
    windowMs: z
      .number()
      .int()
      .min(1_000)
      .default(20_000)
      .describe(
        'Length of a RED window document (wall clock, aligned to multiples of it). The checkpoint lags by up to this plus the time the sinks take to write the window.',
      ),
    sinks: z
      .array(z.string().min(1))
      .default([])
      .describe(
        'Sinks that receive the window documents (RedWindowDocument), e.g. an OpenSearch index and a Parquet table. [] = Prometheus metrics only (no documents, no checkpoint lag).',
      ),
    dimensions: z
      .array(z.string().min(1))
      .max(10)
      .default([])
      .describe(
        'Extra series dimensions: span attribute names, looked up in the span attributes then the resource attributes (e.g. "http.route"). Missing values are "". Prometheus label names replace characters other than letters, digits and _ by _.',
      ),
    durationBucketsMs: z
      .array(z.number().positive())
      .min(1)
      .default(DEFAULT_BUCKETS_MS)
      .refine((b) => b.every((v, i) => i === 0 || v > b[i - 1]!), 'bucket bounds must be strictly ascending')
      .describe('Upper bounds (ms) of the duration histogram buckets, ascending; +Inf is added.'),
    maxSeries: z
      .number()
      .int()
      .min(1)
      .default(2_000)
      .describe(
        'Cardinality cap: past this many series, new combinations are counted in one overflow series (otel_metric_overflow="true").',
      ),
    seriesIdleMs: z
      .number()
      .int()
      .min(1_000)
      .default(600_000)
      .describe(
        'A series unseen for this long is forgotten (frees its slot under maxSeries). At least 2 x windowMs.',
      ),
    exemplars: z
      .boolean()
      .default(true)
      .describe('Attach the trace_id of a recent span to each series (OpenMetrics exemplars).'),
    metricPrefix: z
      .string()
      .regex(/^[a-zA-Z_][a-zA-Z0-9_]*$/, 'a Prometheus metric name prefix')
      .default('ksw_red')
      .describe('Prefix of the Prometheus metric names; give each red_metrics processor its own.'),
  })
  .strict()
  .superRefine((c, ctx) => {
    if (c.seriesIdleMs < 2 * c.windowMs) {
      ctx.addIssue({
        code: 'custom',
        path: ['seriesIdleMs'],
        message: `must be at least 2 x windowMs (${2 * c.windowMs}) so an open window never outlives its series`,
      });
    }
    const seen = new Set<string>();
    c.dimensions.forEach((d, i) => {
      const label = promLabelName(d);
      if (RESERVED_LABELS.includes(label) || seen.has(label)) {
        ctx.addIssue({
          code: 'custom',
          path: ['dimensions', i],
          message: `dimension "${d}" maps to the Prometheus label "${label}", which is taken`,
        });
      }
      seen.add(label);
    });
  })
  .describe(
    'RED metrics (requests, errors, duration histogram) per service/operation/kind/status from 100 % of spans: Prometheus metrics with exemplars, and window documents to sinks.',
  );

export type RedMetricsConfig = z.infer<typeof redMetricsConfigSchema>;

export function promLabelName(attribute: string): string {
  const s = attribute.replace(/[^a-zA-Z0-9_]/g, '_');
  return /^[0-9]/.test(s) ? `_${s}` : s;
}

const STATUS_NAMES = ['UNSET', 'OK', 'ERROR'] as const;
const MAX_LABEL_CHARS = 256;

interface Exemplar {
  traceId: string;
  value: number;
  at: number;
}

/** One series: identity, Prometheus labels and cumulative totals since it appeared. */
interface Series {
  readonly service: string;
  readonly operation: string;
  readonly spanKind: SpanKind | '';
  readonly statusCode: string;
  readonly dimensions: Record<string, string>;
  readonly overflow: boolean;
  readonly labels: Record<string, string>;
  /** Key of the series in its (service, operation, kind) leaf of the index. */
  leafKey: string;
  requests: number;
  errors: number;
  sumSeconds: number;
  /** Non-cumulative counts per bucket (+Inf last). */
  readonly buckets: Float64Array;
  lastSeen: number;
  requestExemplar: Exemplar | undefined;
  errorExemplar: Exemplar | undefined;
  readonly bucketExemplars: Array<Exemplar | undefined>;
}

interface WindowSeries {
  requests: number;
  errors: number;
  sumMs: number;
  minMs: number;
  maxMs: number;
  readonly buckets: number[];
}

interface ShardWindow {
  readonly stream: string;
  readonly shardId: string;
  /** The lease tenure of the spans it counts. */
  readonly tenure: Tenure;
  /** Start of the aligned slot this window belongs to. */
  slotStart: number;
  /** Earliest time this window may claim to cover: the slot start, or when the shard was first seen. */
  coversFrom: number;
  readonly series: Map<Series, WindowSeries>;
  /** Ack parts completed once the window's documents are durable (usually one: the first span's). */
  held: Ack[];
  lastOrigin: RecordOrigin | undefined;
}

/** Stable text key of a window document's identity: shard, window start and series (for sinks' ids). */
export function redWindowKey(doc: RedWindowDocument): string {
  return JSON.stringify([
    doc.sourceStream,
    doc.sourceShardId,
    doc.windowStart,
    doc.service,
    doc.operation,
    doc.spanKind,
    doc.statusCode,
    doc.overflow,
    Object.entries(doc.dimensions).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)),
  ]);
}

/** A prom-client-compatible metric whose values are computed from the series at scrape time. */
interface CollectedMetric {
  name: string;
  help: string;
  type: 'counter' | 'histogram' | 'gauge';
  aggregator: 'sum';
  get(): { name: string; help: string; type: string; aggregator: string; values: unknown[] };
  reset(): void;
}

export class RedMetricsProcessor implements Processor {
  private readonly series = new Map<string, Series>();
  /** service -> operation -> span kind -> status[+dimensions] -> series (see seriesOf). */
  private readonly index = new Map<string, Map<string, Map<string, Map<string, Series>>>>();
  private overflowSeries: Series | undefined;
  private readonly windows = new Map<string, ShardWindow>();
  /** When each shard tenure was first seen: a new tenure's windows never start before it. */
  private readonly shardSince = new Map<string, number>();
  private readonly boundsMs: number[];
  private readonly boundsLe: string[];
  private readonly dimLabels: string[];
  private readonly sinks: readonly string[] | undefined;
  private downstream: Downstream | undefined;
  private timer: NodeJS.Timeout | undefined;
  private closed = false;
  private readonly m;

  constructor(
    readonly name: string,
    private readonly config: RedMetricsConfig,
    private readonly metrics: Registry,
    private readonly now: () => number = Date.now,
    private readonly onError: (err: unknown) => void = () => undefined,
  ) {
    this.boundsMs = config.durationBucketsMs;
    this.boundsLe = this.boundsMs.map((b) => String(b / 1000));
    this.dimLabels = config.dimensions.map(promLabelName);
    this.sinks = config.sinks.length > 0 ? Object.freeze([...new Set(config.sinks)]) : undefined;
    const prefix = config.metricPrefix;
    const labels = ['processor'] as const;
    this.m = {
      overflowSpans: counter(metrics, {
        name: `${prefix}_overflow_spans_total`,
        help: 'Spans counted in the overflow series because maxSeries series already exist (cardinality cap)',
        labelNames: labels,
      }),
      expired: counter(metrics, {
        name: `${prefix}_series_expired_total`,
        help: 'Series forgotten after seriesIdleMs without spans',
        labelNames: labels,
      }),
      seriesCount: gauge(metrics, {
        name: `${prefix}_series`,
        help: 'Series currently tracked (the cap is maxSeries, plus one overflow series)',
        labelNames: labels,
      }),
      windowDocs: counter(metrics, {
        name: `${prefix}_window_documents_total`,
        help: 'RED window documents emitted to the sinks',
        labelNames: labels,
      }),
      openWindows: gauge(metrics, {
        name: `${prefix}_open_windows`,
        help: 'Shard windows currently aggregating (their first span is held back from the checkpoint)',
        labelNames: labels,
      }),
      skipped: counter(metrics, {
        name: `${prefix}_skipped_events_total`,
        help: 'Events that are not spans (no traceId or durationNano) and were passed on uncounted',
        labelNames: labels,
      }),
    };
    this.m.seriesCount.set({ processor: name }, 0);
    this.m.openWindows.set({ processor: name }, 0);
    this.m.overflowSpans.inc({ processor: name }, 0);
    for (const metric of this.collectedMetrics()) {
      try {
        metrics.registerMetric(metric as unknown as Parameters<Registry['registerMetric']>[0]);
      } catch {
        throw new Error(
          `processor ${name}: metric ${metric.name} is already registered; give each red_metrics processor its own metricPrefix`,
        );
      }
    }
  }

  start(downstream: Downstream): void {
    this.downstream = downstream;
    this.arm();
  }

  process(events: PipelineEvent[]): PipelineEvent[] {
    const now = this.now();
    const windowMs = this.config.windowMs;
    const out: PipelineEvent[] = [];
    let skipped = 0;
    let overflowed = 0;
    let lastShardKey = '';
    let lastWindow: ShardWindow | undefined;
    for (const event of events) {
      const v = event.value;
      const traceId = v.traceId;
      const durationNano = v.durationNano;
      if (event.derived || typeof traceId !== 'string' || durationNano === undefined) {
        if (!event.derived) skipped += 1;
        out.push(event);
        continue;
      }
      const durationMs = Number(durationNano) / 1e6;
      const o = event.origin;
      let w: ShardWindow | undefined;
      if (this.sinks !== undefined) {
        w = lastWindow;
        const tenure = event.ack.tenure;
        if (w === undefined || w.shardId !== o.shardId || w.stream !== o.stream || w.tenure !== tenure) {
          lastShardKey = tenureKey(o, tenure);
          w = this.windows.get(lastShardKey);
        }
        if (w !== undefined && now >= w.slotStart + windowMs) {
          this.closeWindow(lastShardKey, w, now, out);
          w = undefined;
        }
        if (w === undefined) w = this.openWindow(lastShardKey, o, tenure, now);
        lastWindow = w;
        if (w.held.length === 0) {
          this.hold(w, event);
        } else if (
          o !== w.lastOrigin &&
          w.lastOrigin &&
          compareSequence(o.sequenceNumber, w.lastOrigin.sequenceNumber) < 0
        ) {
          // Positions went backwards (the shard is being re-read): hold this earlier span as well.
          this.hold(w, event);
        }
        w.lastOrigin = o;
      }
      const s = this.seriesOf(v, now);
      if (s.overflow) overflowed += 1;
      const status = (v.status as { code?: unknown } | undefined)?.code;
      const isError = status === 2;
      let b = 0;
      const bounds = this.boundsMs;
      while (b < bounds.length && durationMs > bounds[b]!) b++;
      s.requests += 1;
      s.sumSeconds += durationMs / 1000;
      s.buckets[b]! += 1;
      s.lastSeen = now;
      if (this.config.exemplars) {
        // Updated in place: no allocation per span once a series has its exemplars.
        s.requestExemplar = setExemplar(s.requestExemplar, traceId, durationMs / 1000, now);
        s.bucketExemplars[b] = setExemplar(s.bucketExemplars[b], traceId, durationMs / 1000, now);
        if (isError) s.errorExemplar = setExemplar(s.errorExemplar, traceId, durationMs / 1000, now);
      }
      if (isError) s.errors += 1;
      if (w !== undefined) {
        let ws = w.series.get(s);
        if (ws === undefined) {
          ws = {
            requests: 0,
            errors: 0,
            sumMs: 0,
            minMs: Number.POSITIVE_INFINITY,
            maxMs: 0,
            buckets: new Array(bounds.length + 1).fill(0),
          };
          w.series.set(s, ws);
        }
        ws.requests += 1;
        if (isError) ws.errors += 1;
        ws.sumMs += durationMs;
        if (durationMs < ws.minMs) ws.minMs = durationMs;
        if (durationMs > ws.maxMs) ws.maxMs = durationMs;
        ws.buckets[b]! += 1;
      }
      out.push(event);
    }
    if (skipped > 0) this.m.skipped.inc({ processor: this.name }, skipped);
    if (overflowed > 0) this.m.overflowSpans.inc({ processor: this.name }, overflowed);
    return out;
  }

  /** Closes every window whose slot has ended and forgets idle series; the timer calls it. */
  tick(now = this.now()): PipelineEvent[] {
    const out: PipelineEvent[] = [];
    for (const [key, w] of this.windows) {
      if (now >= w.slotStart + this.config.windowMs) this.closeWindow(key, w, now, out);
    }
    this.expire(now);
    return out;
  }

  async flush(): Promise<PipelineEvent[]> {
    const now = this.now();
    const out: PipelineEvent[] = [];
    for (const [key, w] of this.windows) this.closeWindow(key, w, now, out);
    return out;
  }

  /** Emits the tenure's open windows now (a graceful end of its lease: handoff, shard end). */
  flushShard(tenure: Tenure): PipelineEvent[] {
    const now = this.now();
    const out: PipelineEvent[] = [];
    for (const [key, w] of [...this.windows]) if (w.tenure === tenure) this.closeWindow(key, w, now, out);
    this.forgetTenure(tenure);
    return out;
  }

  /**
   * The tenure ended: its open windows are dropped unwritten and their held acks never complete (the
   * next tenure reads those spans again and counts them in its own windows).
   */
  closeShard(tenure: Tenure): void {
    for (const [key, w] of [...this.windows]) if (w.tenure === tenure) this.windows.delete(key);
    this.m.openWindows.set({ processor: this.name }, this.windows.size);
    this.forgetTenure(tenure);
  }

  private forgetTenure(tenure: Tenure): void {
    for (const key of [...this.shardSince.keys()])
      if (key.endsWith(`\n${tenure.token}`)) this.shardSince.delete(key);
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.timer);
    for (const metric of this.collectedMetrics()) this.metrics.removeSingleMetric(metric.name);
  }

  /** Current number of tracked series (for tests). */
  get seriesCount(): number {
    return this.series.size;
  }

  private arm(): void {
    if (this.closed) return;
    const now = this.now();
    const windowMs = this.config.windowMs;
    const next = (Math.floor(now / windowMs) + 1) * windowMs;
    this.timer = setTimeout(
      () => {
        const docs = this.tick();
        if (docs.length > 0 && this.downstream) {
          this.downstream(docs).catch(this.onError);
        }
        this.arm();
      },
      next - now + 5,
    );
    this.timer.unref();
  }

  private hold(w: ShardWindow, event: PipelineEvent): void {
    const [down, held] = event.ack.split(2);
    // The event is ours to pass on: swap its ack for the downstream part (no copy, so a lazily
    // serialised `raw` is not forced here).
    (event as { ack: Ack }).ack = down!;
    w.held.push(held!);
  }

  private openWindow(key: string, o: RecordOrigin, tenure: Tenure, now: number): ShardWindow {
    let since = this.shardSince.get(key);
    if (since === undefined) {
      since = now;
      this.shardSince.set(key, now);
    }
    const slotStart = now - (now % this.config.windowMs);
    const w: ShardWindow = {
      stream: o.stream,
      shardId: o.shardId,
      tenure,
      slotStart,
      coversFrom: Math.max(slotStart, since),
      series: new Map(),
      held: [],
      lastOrigin: undefined,
    };
    this.windows.set(key, w);
    this.m.openWindows.set({ processor: this.name }, this.windows.size);
    return w;
  }

  private closeWindow(key: string, w: ShardWindow, now: number, out: PipelineEvent[]): void {
    this.windows.delete(key);
    this.m.openWindows.set({ processor: this.name }, this.windows.size);
    const held = w.held;
    if (w.series.size === 0 || w.lastOrigin === undefined) {
      for (const h of held) h.done();
      return;
    }
    const windowEnd = Math.min(w.slotStart + this.config.windowMs, Math.max(now, w.coversFrom + 1));
    const windowStart = new Date(w.coversFrom).toISOString();
    const windowEndIso = new Date(windowEnd).toISOString();
    const root = new Ack(() => {
      for (const h of held) h.done();
    }, w.tenure);
    const parts = root.split(w.series.size);
    let i = 0;
    for (const [s, ws] of w.series) {
      const doc: RedWindowDocument = {
        windowStart,
        windowEnd: windowEndIso,
        service: s.service,
        operation: s.operation,
        spanKind: s.spanKind,
        statusCode: s.statusCode,
        dimensions: s.dimensions,
        overflow: s.overflow,
        requestCount: ws.requests,
        errorCount: ws.errors,
        durationSumMs: ws.sumMs,
        durationMinMs: ws.minMs,
        durationMaxMs: ws.maxMs,
        durationBucketBoundsMs: this.boundsMs,
        durationBucketCounts: ws.buckets,
        sourceStream: w.stream,
        sourceShardId: w.shardId,
      };
      out.push({
        origin: w.lastOrigin,
        index: i,
        value: doc as unknown as Record<string, unknown>,
        raw: Buffer.from(JSON.stringify(doc), 'utf8'),
        ack: parts[i]!,
        sinks: this.sinks,
        derived: true,
      });
      i += 1;
    }
    this.m.windowDocs.inc({ processor: this.name }, w.series.size);
  }

  private expire(now: number): void {
    const cutoff = now - this.config.seriesIdleMs;
    let expired = 0;
    for (const [key, s] of this.series) {
      if (s.lastSeen < cutoff) {
        this.series.delete(key);
        this.unindex(s);
        expired += 1;
      }
    }
    if (this.overflowSeries && this.overflowSeries.lastSeen < cutoff) {
      this.overflowSeries = undefined;
      expired += 1;
    }
    if (expired > 0) this.m.expired.inc({ processor: this.name }, expired);
    this.m.seriesCount.set({ processor: this.name }, this.series.size + (this.overflowSeries ? 1 : 0));
  }

  /**
   * The series of a span. Looked up through nested maps (service, operation, kind, then status and
   * dimensions) so the hot path hashes the span's own strings instead of building a key per span; nodes
   * are only created for new series under the cap, so a flood of unique values cannot grow the index.
   */
  private seriesOf(v: Record<string, unknown>, now: number): Series {
    const service = typeof v.serviceName === 'string' ? v.serviceName : '';
    const operation = typeof v.name === 'string' ? v.name : '';
    const kind = (typeof v.kind === 'string' ? v.kind : '') as SpanKind | '';
    const code = (v.status as { code?: unknown } | undefined)?.code;
    const statusCode = STATUS_NAMES[code as 0 | 1 | 2] ?? 'UNSET';
    const dims = this.config.dimensions;
    let leafKey: string = statusCode;
    const attrs = v.attributes as Record<string, unknown> | undefined;
    const resource = v.resource as Record<string, unknown> | undefined;
    for (let i = 0; i < dims.length; i++) {
      const d = dims[i]!;
      leafKey += `\u001f${labelText(attrs?.[d] ?? resource?.[d])}`;
    }
    const found = this.index.get(service)?.get(operation)?.get(kind)?.get(leafKey);
    if (found !== undefined) return found;
    // A new series (or the overflow): only now are the dimension values kept apart.
    const dimValues = dims.length > 0 ? dims.map((d) => labelText(attrs?.[d] ?? resource?.[d])) : undefined;
    if (this.series.size >= this.config.maxSeries) {
      if (!this.overflowSeries) {
        this.overflowSeries = this.newSeries('', '', '', '', undefined, true, now);
        // The gauge counts the overflow series too; without this it showed maxSeries until the next tick.
        this.m.seriesCount.set({ processor: this.name }, this.series.size + 1);
      }
      return this.overflowSeries;
    }
    const s = this.newSeries(service, operation, kind, statusCode, dimValues, false, now);
    s.leafKey = leafKey;
    this.series.set(`${service}\u001f${operation}\u001f${kind}\u001f${leafKey}`, s);
    const ops = child(this.index, service);
    const kinds = child(ops, operation);
    const leaves = child(kinds, kind);
    leaves.set(leafKey, s);
    this.m.seriesCount.set({ processor: this.name }, this.series.size + (this.overflowSeries ? 1 : 0));
    return s;
  }

  private unindex(s: Series): void {
    const ops = this.index.get(s.service);
    const kinds = ops?.get(s.operation);
    const leaves = kinds?.get(s.spanKind);
    if (!ops || !kinds || !leaves) return;
    leaves.delete(s.leafKey);
    if (leaves.size === 0) kinds.delete(s.spanKind);
    if (kinds.size === 0) ops.delete(s.operation);
    if (ops.size === 0) this.index.delete(s.service);
  }

  private newSeries(
    service: string,
    operation: string,
    spanKind: SpanKind | '',
    statusCode: string,
    dimValues: string[] | undefined,
    overflow: boolean,
    now: number,
  ): Series {
    const dimensions: Record<string, string> = {};
    const labels: Record<string, string> = {
      service: clipLabel(service),
      operation: clipLabel(operation),
      span_kind: spanKind,
      status_code: statusCode,
    };
    this.config.dimensions.forEach((d, i) => {
      const value = dimValues?.[i] ?? '';
      dimensions[d] = value;
      labels[this.dimLabels[i]!] = value;
    });
    if (overflow) labels.otel_metric_overflow = 'true';
    return {
      service,
      operation,
      spanKind,
      statusCode,
      dimensions,
      overflow,
      labels,
      leafKey: '',
      requests: 0,
      errors: 0,
      sumSeconds: 0,
      buckets: new Float64Array(this.boundsMs.length + 1),
      lastSeen: now,
      requestExemplar: undefined,
      errorExemplar: undefined,
      bucketExemplars: new Array(this.boundsMs.length + 1).fill(undefined),
    };
  }

  private *allSeries(): Iterable<Series> {
    yield* this.series.values();
    if (this.overflowSeries) yield this.overflowSeries;
  }

  private collectedMetricsCache: CollectedMetric[] | undefined;

  /** The three series metrics, computed from the series at scrape time (no per-span label hashing). */
  private collectedMetrics(): CollectedMetric[] {
    if (this.collectedMetricsCache) return this.collectedMetricsCache;
    const prefix = this.config.metricPrefix;
    const make = (
      name: string,
      help: string,
      type: CollectedMetric['type'],
      values: () => unknown[],
    ): CollectedMetric => ({
      name,
      help,
      type,
      aggregator: 'sum',
      get: () => ({ name, help, type, aggregator: 'sum', values: values() }),
      reset: () => undefined,
    });
    const requests = `${prefix}_requests_total`;
    const errors = `${prefix}_errors_total`;
    const duration = `${prefix}_duration_seconds`;
    this.collectedMetricsCache = [
      make(
        requests,
        'Spans per series (service, operation, span kind, status code, dimensions)',
        'counter',
        () => [...this.allSeries()].map((s) => sample(s.labels, s.requests, s.requestExemplar, 1)),
      ),
      make(errors, 'Spans with status ERROR per series', 'counter', () =>
        [...this.allSeries()]
          .filter((s) => s.errors > 0)
          .map((s) => sample(s.labels, s.errors, s.errorExemplar, 1)),
      ),
      make(duration, 'Span duration per series, in seconds', 'histogram', () => {
        const values: unknown[] = [];
        for (const s of this.allSeries()) {
          let cumulative = 0;
          for (let b = 0; b <= this.boundsLe.length; b++) {
            cumulative += s.buckets[b]!;
            const ex = s.bucketExemplars[b];
            values.push({
              metricName: `${duration}_bucket`,
              labels: { ...s.labels, le: this.boundsLe[b] ?? '+Inf' },
              value: cumulative,
              ...(ex ? { exemplar: exemplar(ex, ex.value) } : {}),
            });
          }
          values.push({ metricName: `${duration}_sum`, labels: s.labels, value: s.sumSeconds });
          values.push({ metricName: `${duration}_count`, labels: s.labels, value: s.requests });
        }
        return values;
      }),
    ];
    return this.collectedMetricsCache;
  }
}

function child<V>(parent: Map<string, Map<string, V>>, key: string): Map<string, V> {
  let m = parent.get(key);
  if (m === undefined) {
    m = new Map();
    parent.set(key, m);
  }
  return m;
}

function setExemplar(ex: Exemplar | undefined, traceId: string, value: number, at: number): Exemplar {
  if (ex === undefined) return { traceId, value, at };
  ex.traceId = traceId;
  ex.value = value;
  ex.at = at;
  return ex;
}

function exemplar(ex: Exemplar, value: number) {
  return { labelSet: { trace_id: ex.traceId }, value, timestamp: ex.at / 1000 };
}

function sample(labels: Record<string, string>, value: number, ex: Exemplar | undefined, exValue: number) {
  return ex ? { labels, value, exemplar: exemplar(ex, exValue) } : { labels, value };
}

function clipLabel(s: string): string {
  return s.length > MAX_LABEL_CHARS ? s.slice(0, MAX_LABEL_CHARS) : s;
}

function labelText(v: unknown): string {
  if (typeof v === 'string') return clipLabel(v);
  if (typeof v === 'number' || typeof v === 'boolean' || typeof v === 'bigint') return String(v);
  return '';
}

export function createRedMetrics(name: string, config: RedMetricsConfig, ctx: ComponentContext): Processor {
  return new RedMetricsProcessor(name, config, ctx.metrics, Date.now, (err) =>
    ctx.logger.error({ err }, 'could not deliver RED window documents; their spans stay unacked'),
  );
}
