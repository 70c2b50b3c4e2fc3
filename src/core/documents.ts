/**
 * The document shapes that several components agree on: the flat span (what span processors emit and
 * what the span schemas of the sinks store) and the RED metric window (what the RED processor emits
 * every window). Processors produce them, sinks ship schemas/mappings for them; this module is the one
 * place that names their fields, so a change here is a change to every one of them.
 */

/** OTLP span status code: 0 UNSET, 1 OK, 2 ERROR. */
export type StatusCode = 0 | 1 | 2;

/** OTLP span kinds, as their enum names. */
export type SpanKind =
  | 'SPAN_KIND_UNSPECIFIED'
  | 'SPAN_KIND_INTERNAL'
  | 'SPAN_KIND_SERVER'
  | 'SPAN_KIND_CLIENT'
  | 'SPAN_KIND_PRODUCER'
  | 'SPAN_KIND_CONSUMER';

/** A scalar attribute value; arrays and key-value lists of OTLP are kept as JSON-compatible values. */
export type AttributeValue = string | number | boolean | bigint | null | AttributeValue[] | Attributes;
export interface Attributes {
  [key: string]: AttributeValue;
}

/**
 * One span, flat (one document per span). This is the input format "flat span JSON" and what an
 * OTLP/JSON ExportTraceServiceRequest is flattened into (resource and scope attributes copied onto each span).
 * int64 nanosecond times are decimal strings (as OTLP/JSON encodes them) or bigints: never JS numbers,
 * which would round them.
 */
export interface SpanDocument {
  /** 32 lowercase hex characters. */
  traceId: string;
  /** 16 lowercase hex characters. */
  spanId: string;
  /** '' for a root span. */
  parentSpanId: string;
  traceState?: string;
  /** The operation name. */
  name: string;
  kind: SpanKind;
  /** `service.name` of the resource. */
  serviceName: string;
  startTimeUnixNano: string | bigint;
  endTimeUnixNano: string | bigint;
  /** endTimeUnixNano - startTimeUnixNano. */
  durationNano: string | bigint;
  status: { code: StatusCode; message: string };
  attributes: Attributes;
  /** Resource attributes (including service.name). */
  resource: Attributes;
  scope?: { name: string; version: string };
  events?: Array<{ timeUnixNano: string | bigint; name: string; attributes: Attributes }>;
  links?: Array<{ traceId: string; spanId: string; attributes: Attributes }>;
  /**
   * Set by samplers on the spans they keep: the policy that kept the trace and the probability with
   * which such a trace is kept, so counts can be re-weighted (a kept span stands for 1/probability spans).
   */
  sampling?: { policy: string; probability: number };
}

/**
 * RED metrics of one series for one window: Rate (requestCount), Errors (errorCount), Duration
 * (histogram in milliseconds). A series is (service, operation, spanKind, statusCode, dimensions);
 * past the cardinality cap, combinations land in one series with `overflow: true` and empty labels.
 */
export interface RedWindowDocument {
  /** ISO-8601, inclusive. */
  windowStart: string;
  /** ISO-8601, exclusive. */
  windowEnd: string;
  service: string;
  operation: string;
  spanKind: SpanKind | '';
  /** 'UNSET' | 'OK' | 'ERROR' ('' on the overflow series). */
  statusCode: string;
  /** Configured extra dimensions, e.g. { "http.route": "/api/cart" }; missing values are ''. */
  dimensions: Record<string, string>;
  overflow: boolean;
  requestCount: number;
  errorCount: number;
  durationSumMs: number;
  durationMinMs: number;
  durationMaxMs: number;
  /** Upper bounds (ms) of the histogram buckets, ascending, without +Inf. */
  durationBucketBoundsMs: number[];
  /** Non-cumulative counts, one per bound plus one for +Inf (length = bounds + 1). */
  durationBucketCounts: number[];
  /** Where the spans came from: windows are kept per shard, so a shard's windows move with its lease. */
  sourceStream: string;
  sourceShardId: string;
}
