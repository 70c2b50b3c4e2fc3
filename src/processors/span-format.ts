/**
 * Span input formats, normalised to the one flat span of src/core/documents.ts (`SpanDocument`):
 *
 * - OTLP/JSON `ExportTraceServiceRequest` (what an OpenTelemetry SDK or Collector sends over OTLP/HTTP
 *   with `Content-Type: application/json`): `resourceSpans[].scopeSpans[].spans[]`. Span kind and status
 *   code as numbers or enum names; ids as hex (the OTLP/JSON rule) or base64 (the generic protobuf JSON
 *   mapping some exporters use); int64 times as decimal strings or numbers; attributes as KeyValue
 *   lists with `stringValue`, `boolValue`, `intValue` (string or number), `doubleValue`, `bytesValue`
 *   (kept base64), `arrayValue` and `kvlistValue`. Resource and scope attributes are copied onto each span.
 * - Flat span JSON: one `SpanDocument` per JSON document (what `ksw produce --synthetic-spans` writes).
 *   `attributes`/`resource` may be plain objects or OTLP KeyValue lists; `serviceName` defaults to
 *   `resource["service.name"]`; `durationNano` is always recomputed from the two times.
 *
 * Pure functions, no I/O: the `otel_spans` processor turns a thrown `SpanFormatError` into a DLQ letter.
 * Hot path (flat spans): no regular expressions, no re-serialisation, one small object per span.
 */
import type { Attributes, AttributeValue, SpanDocument, SpanKind, StatusCode } from '../core/documents.js';

export class SpanFormatError extends Error {
  constructor(
    message: string,
    /** For metrics: what kind of problem (malformed input, or times outside the plausible range). */
    readonly kind: 'malformed' | 'implausible_time' = 'malformed',
  ) {
    super(message);
  }
}

const KINDS: readonly SpanKind[] = [
  'SPAN_KIND_UNSPECIFIED',
  'SPAN_KIND_INTERNAL',
  'SPAN_KIND_SERVER',
  'SPAN_KIND_CLIENT',
  'SPAN_KIND_PRODUCER',
  'SPAN_KIND_CONSUMER',
];
const KIND_BY_NAME = new Map<string, SpanKind>();
for (const k of KINDS) {
  KIND_BY_NAME.set(k, k);
  KIND_BY_NAME.set(k.slice('SPAN_KIND_'.length), k);
  KIND_BY_NAME.set(k.slice('SPAN_KIND_'.length).toLowerCase(), k);
}
const STATUS_BY_NAME = new Map<string, StatusCode>([
  ['STATUS_CODE_UNSET', 0],
  ['STATUS_CODE_OK', 1],
  ['STATUS_CODE_ERROR', 2],
  ['UNSET', 0],
  ['OK', 1],
  ['ERROR', 2],
  ['Unset', 0],
  ['Ok', 1],
  ['Error', 2],
]);

/** Limits a span must respect; beyond them it is dead-lettered instead of skewing RED metrics. */
export interface SpanLimits {
  /** Longest accepted span, in nanoseconds (exact up to 2^53 ns, about 104 days). */
  readonly maxDurationNanos: number;
  /** Earliest accepted start time, in ms since the epoch. */
  readonly minStartMs: number;
  /** Latest accepted start time is now + this, in ms. */
  readonly maxFutureMs: number;
  /** Current time in ms (injected so tests are deterministic). */
  readonly now: () => number;
}

export const DEFAULT_SPAN_LIMITS: SpanLimits = {
  maxDurationNanos: 86_400_000_000_000,
  minStartMs: Date.UTC(2000, 0, 1),
  maxFutureMs: 86_400_000,
  now: Date.now,
};

/**
 * 0 when `s` is not `len` hex characters, 1 when it is lowercase hex, 2 when it has uppercase letters
 * (ids are normalised to lowercase; the usual lowercase id is returned as is, without a copy).
 */
function hexKind(s: string, len: number): 0 | 1 | 2 {
  if (s.length !== len) return 0;
  let kind: 1 | 2 = 1;
  for (let i = 0; i < len; i++) {
    const c = s.charCodeAt(i);
    if ((c >= 48 && c <= 57) || (c >= 97 && c <= 102)) continue;
    if (c >= 65 && c <= 70) kind = 2;
    else return 0;
  }
  return kind;
}

function isZeros(s: string): boolean {
  for (let i = 0; i < s.length; i++) if (s.charCodeAt(i) !== 48) return false;
  return true;
}

/**
 * A trace or span id as lowercase hex. `bytes` is 16 for trace ids, 8 for span ids. Base64 (24 or 12
 * characters) is accepted because protobuf's generic JSON mapping encodes bytes that way.
 */
export function normaliseId(value: unknown, bytes: number, field: string, allowEmpty = false): string {
  if (value === undefined || value === null || value === '') {
    if (allowEmpty) return '';
    throw new SpanFormatError(`${field} is missing`);
  }
  if (typeof value !== 'string') throw new SpanFormatError(`${field} must be a hex string`);
  const hexLen = bytes * 2;
  const kind = hexKind(value, hexLen);
  if (kind !== 0) {
    const id = kind === 1 ? value : value.toLowerCase();
    if (isZeros(id)) {
      if (allowEmpty) return '';
      throw new SpanFormatError(`${field} is all zeros (an invalid id)`);
    }
    return id;
  }
  const b64Len = Math.ceil(bytes / 3) * 4;
  if (value.length === b64Len) {
    const buf = Buffer.from(value, 'base64');
    if (buf.length === bytes && buf.toString('base64') === value) {
      const id = buf.toString('hex');
      if (isZeros(id)) {
        if (allowEmpty) return '';
        throw new SpanFormatError(`${field} is all zeros (an invalid id)`);
      }
      return id;
    }
  }
  throw new SpanFormatError(`${field} must be ${hexLen} hex characters, got ${JSON.stringify(clip(value))}`);
}

function clip(s: string): string {
  return s.length > 40 ? `${s.slice(0, 40)}...` : s;
}

const MAX_U64 = '18446744073709551615';

/** An int64 nanosecond time as a canonical decimal string (exact; never through a double). */
export function nanosString(value: unknown, field: string): string {
  let s: string;
  if (typeof value === 'string') s = value;
  else if (typeof value === 'bigint') s = value.toString();
  else if (typeof value === 'number' && Number.isSafeInteger(value)) s = String(value);
  else if (value === undefined || value === null) throw new SpanFormatError(`${field} is missing`);
  else throw new SpanFormatError(`${field} must be an integer number of nanoseconds`);
  if (s.length === 0 || s.length > 40) throw new SpanFormatError(`${field} is not a uint64: "${clip(s)}"`);
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 48 || c > 57) throw new SpanFormatError(`${field} is not a decimal integer: "${clip(s)}"`);
  }
  if (s.length > 1 && s.charCodeAt(0) === 48) {
    let i = 0;
    while (i < s.length - 1 && s.charCodeAt(i) === 48) i++;
    s = s.slice(i);
  }
  if (s.length > 20 || (s.length === 20 && s > MAX_U64))
    throw new SpanFormatError(`${field} exceeds uint64: "${s}"`);
  return s;
}

/**
 * end - start in nanoseconds, exactly, as a number (times are canonical decimal strings). Fast path: both
 * times share every digit above the last 15 (the same ~11.6 days), so the difference of the low parts is
 * exact in a double. Otherwise BigInt. Returns a negative number when end < start.
 */
export function durationNanos(start: string, end: string): number {
  const n = start.length;
  if (n === end.length && n > 15) {
    const cut = n - 15;
    let same = true;
    for (let i = 0; i < cut; i++) {
      if (start.charCodeAt(i) !== end.charCodeAt(i)) {
        same = false;
        break;
      }
    }
    if (same) return Number(end.slice(cut)) - Number(start.slice(cut));
  } else if (n <= 15 && end.length <= 15) {
    return Number(end) - Number(start);
  }
  // Beyond 2^53 ns (104 days) the result is rounded, which only matters for rejecting the span.
  return Number(BigInt(end) - BigInt(start));
}

function checkTimes(start: string, end: string, limits: SpanLimits): number {
  const duration = durationNanos(start, end);
  if (duration < 0) {
    throw new SpanFormatError(
      `endTimeUnixNano (${end}) is before startTimeUnixNano (${start})`,
      'implausible_time',
    );
  }
  if (duration > limits.maxDurationNanos) {
    throw new SpanFormatError(
      `span lasts ${(duration / 1e9).toFixed(0)} s, more than maxSpanDurationMs (${limits.maxDurationNanos / 1e6} ms)`,
      'implausible_time',
    );
  }
  // ms precision is plenty for a plausibility window; Number() of 19 digits is within 256 ns.
  const startMs = Number(start) / 1e6;
  if (startMs < limits.minStartMs) {
    throw new SpanFormatError(
      `startTimeUnixNano ${start} is before ${new Date(limits.minStartMs).toISOString()} (minStartTime)`,
      'implausible_time',
    );
  }
  if (startMs > limits.now() + limits.maxFutureMs) {
    throw new SpanFormatError(
      `startTimeUnixNano ${start} is more than maxFutureSkewMs (${limits.maxFutureMs} ms) in the future`,
      'implausible_time',
    );
  }
  return duration;
}

function kindOf(value: unknown): SpanKind {
  if (value === undefined || value === null) return 'SPAN_KIND_UNSPECIFIED';
  if (typeof value === 'number') {
    const k = KINDS[value];
    if (k !== undefined && Number.isInteger(value)) return k;
  } else if (typeof value === 'string') {
    const k = KIND_BY_NAME.get(value);
    if (k) return k;
  }
  throw new SpanFormatError(`kind ${JSON.stringify(value)} is not a span kind (0-5 or SPAN_KIND_*)`);
}

function statusOf(value: unknown): { code: StatusCode; message: string } {
  if (value === undefined || value === null) return { code: 0, message: '' };
  if (typeof value !== 'object') throw new SpanFormatError('status must be an object');
  const s = value as { code?: unknown; message?: unknown };
  // Already canonical (flat spans usually are): reuse the object.
  if ((s.code === 0 || s.code === 1 || s.code === 2) && typeof s.message === 'string') {
    return s as { code: StatusCode; message: string };
  }
  let code: StatusCode;
  if (s.code === undefined || s.code === null) code = 0;
  else if (s.code === 0 || s.code === 1 || s.code === 2) code = s.code;
  else if (typeof s.code === 'string' && STATUS_BY_NAME.has(s.code)) code = STATUS_BY_NAME.get(s.code)!;
  else throw new SpanFormatError(`status.code ${JSON.stringify(s.code)} is not 0-2 or STATUS_CODE_*`);
  const message = typeof s.message === 'string' ? s.message : '';
  return { code, message };
}

/** One OTLP AnyValue as a JSON-compatible value. */
function anyValue(v: unknown, depth: number): AttributeValue {
  if (v === null || typeof v !== 'object') return null;
  if (depth > 16) throw new SpanFormatError('attribute values nest deeper than 16 levels');
  const a = v as Record<string, unknown>;
  if ('stringValue' in a) return typeof a.stringValue === 'string' ? a.stringValue : String(a.stringValue);
  if ('boolValue' in a) return a.boolValue === true || a.boolValue === 'true';
  if ('intValue' in a) {
    const i = a.intValue;
    if (typeof i === 'number' || typeof i === 'bigint') return i;
    if (typeof i === 'string') {
      const n = Number(i);
      if (Number.isSafeInteger(n)) return n;
      try {
        return BigInt(i);
      } catch {
        throw new SpanFormatError(`intValue "${clip(i)}" is not an integer`);
      }
    }
    return null;
  }
  if ('doubleValue' in a) {
    const d = a.doubleValue;
    // "NaN", "Infinity" and "-Infinity" are kept as strings: JSON has no number for them.
    return typeof d === 'number' || typeof d === 'string' ? d : null;
  }
  if ('bytesValue' in a) return typeof a.bytesValue === 'string' ? a.bytesValue : null;
  if ('arrayValue' in a) {
    const values = (a.arrayValue as { values?: unknown } | null)?.values;
    return Array.isArray(values) ? values.map((x) => anyValue(x, depth + 1)) : [];
  }
  if ('kvlistValue' in a) {
    return keyValues((a.kvlistValue as { values?: unknown } | null)?.values, depth + 1, 'kvlistValue');
  }
  return null;
}

/** An OTLP KeyValue list (or an already flat object) as an attribute map. */
export function keyValues(list: unknown, depth = 0, field = 'attributes'): Attributes {
  if (list === undefined || list === null) return {};
  if (Array.isArray(list)) {
    const out: Attributes = {};
    for (const kv of list) {
      if (kv === null || typeof kv !== 'object' || typeof (kv as { key?: unknown }).key !== 'string') {
        throw new SpanFormatError(`${field}: every entry needs a string "key"`);
      }
      out[(kv as { key: string }).key] = anyValue((kv as { value?: unknown }).value, depth);
    }
    return out;
  }
  if (typeof list === 'object') return list as Attributes;
  throw new SpanFormatError(`${field} must be a list of {key, value} or an object`);
}

function str(value: unknown, field: string, fallback?: string): string {
  if (typeof value === 'string') return value;
  if ((value === undefined || value === null) && fallback !== undefined) return fallback;
  throw new SpanFormatError(`${field} must be a string`);
}

function spanEvents(list: unknown): SpanDocument['events'] {
  if (list === undefined || list === null) return undefined;
  if (!Array.isArray(list)) throw new SpanFormatError('events must be a list');
  return list.map((e: Record<string, unknown>, i) => ({
    timeUnixNano: nanosString(e?.timeUnixNano, `events[${i}].timeUnixNano`),
    name: str(e?.name, `events[${i}].name`, ''),
    attributes: keyValues(e?.attributes, 0, `events[${i}].attributes`),
  }));
}

function spanLinks(list: unknown): SpanDocument['links'] {
  if (list === undefined || list === null) return undefined;
  if (!Array.isArray(list)) throw new SpanFormatError('links must be a list');
  return list.map((l: Record<string, unknown>, i) => ({
    traceId: normaliseId(l?.traceId, 16, `links[${i}].traceId`),
    spanId: normaliseId(l?.spanId, 8, `links[${i}].spanId`),
    attributes: keyValues(l?.attributes, 0, `links[${i}].attributes`),
  }));
}

function serviceNameOf(resource: Attributes): string {
  const s = resource['service.name'];
  return typeof s === 'string' && s !== '' ? s : 'unknown_service';
}

function buildSpan(
  s: Record<string, unknown>,
  resource: Attributes,
  serviceName: string,
  scope: SpanDocument['scope'],
  limits: SpanLimits,
): SpanDocument {
  const traceId = normaliseId(s.traceId, 16, 'traceId');
  const spanId = normaliseId(s.spanId, 8, 'spanId');
  const parentSpanId = normaliseId(s.parentSpanId, 8, 'parentSpanId', true);
  const startTimeUnixNano = nanosString(s.startTimeUnixNano, 'startTimeUnixNano');
  const endTimeUnixNano = nanosString(s.endTimeUnixNano, 'endTimeUnixNano');
  const duration = checkTimes(startTimeUnixNano, endTimeUnixNano, limits);
  const span: SpanDocument = {
    traceId,
    spanId,
    parentSpanId,
    name: str(s.name, 'name'),
    kind: kindOf(s.kind),
    serviceName,
    startTimeUnixNano,
    endTimeUnixNano,
    durationNano: String(duration),
    status: statusOf(s.status),
    attributes: keyValues(s.attributes),
    resource,
  };
  if (typeof s.traceState === 'string' && s.traceState !== '') span.traceState = s.traceState;
  if (scope) span.scope = scope;
  const events = spanEvents(s.events);
  if (events && events.length > 0) span.events = events;
  const links = spanLinks(s.links);
  if (links && links.length > 0) span.links = links;
  return span;
}

const ZERO_TRACE = '0'.repeat(32);
const ZERO_SPAN = '0'.repeat(16);
const KIND_SET = new Set<unknown>(KINDS);

/** A canonical uint64 decimal: digits only, no leading zero, within 2^64 - 1. */
function isCanonicalDecimal(s: string): boolean {
  const n = s.length;
  if (n === 0 || n > 20 || (n > 1 && s.charCodeAt(0) === 48)) return false;
  for (let i = 0; i < n; i++) {
    const c = s.charCodeAt(i);
    if (c < 48 || c > 57) return false;
  }
  return n < 20 || s <= MAX_U64;
}

function isPlainObject(v: unknown): boolean {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

/**
 * The fast path for a flat span that is already exactly a canonical SpanDocument (the usual case: our own
 * producer, or a re-ingested span): validated in place and returned as is, with `durationNano` corrected
 * if needed, so no second object is built per span. Undefined when anything differs (then the general
 * path normalises it); throws SpanFormatError for implausible times, like the general path.
 */
function canonicalFlatSpan(v: Record<string, unknown>, limits: SpanLimits): SpanDocument | undefined {
  let keys = 0;
  for (const _ in v) keys++;
  if (keys !== 12) return undefined;
  const { traceId, spanId, parentSpanId, name, kind, serviceName, status, attributes, resource } = v;
  const start = v.startTimeUnixNano;
  const end = v.endTimeUnixNano;
  const duration = v.durationNano;
  if (
    typeof traceId !== 'string' ||
    hexKind(traceId, 32) !== 1 ||
    traceId === ZERO_TRACE ||
    typeof spanId !== 'string' ||
    hexKind(spanId, 16) !== 1 ||
    spanId === ZERO_SPAN ||
    typeof parentSpanId !== 'string' ||
    (parentSpanId !== '' && (hexKind(parentSpanId, 16) !== 1 || parentSpanId === ZERO_SPAN)) ||
    typeof name !== 'string' ||
    typeof serviceName !== 'string' ||
    serviceName === '' ||
    !KIND_SET.has(kind) ||
    typeof start !== 'string' ||
    typeof end !== 'string' ||
    typeof duration !== 'string' ||
    !isCanonicalDecimal(start) ||
    !isCanonicalDecimal(end) ||
    !isPlainObject(status) ||
    !isPlainObject(attributes) ||
    !isPlainObject(resource)
  ) {
    return undefined;
  }
  const st = status as { code?: unknown; message?: unknown };
  if ((st.code !== 0 && st.code !== 1 && st.code !== 2) || typeof st.message !== 'string') return undefined;
  const nanos = checkTimes(start, end, limits);
  if (!isCanonicalDecimal(duration) || Number(duration) !== nanos) v.durationNano = String(nanos);
  return v as unknown as SpanDocument;
}

/** A flat span document (input format 2), validated and in canonical form. */
export function flatSpan(
  value: Record<string, unknown>,
  limits: SpanLimits = DEFAULT_SPAN_LIMITS,
): SpanDocument {
  const canonical = canonicalFlatSpan(value, limits);
  if (canonical !== undefined) return canonical;
  const resource = keyValues(value.resource, 0, 'resource');
  const serviceName =
    typeof value.serviceName === 'string' && value.serviceName !== ''
      ? value.serviceName
      : serviceNameOf(resource);
  let scope: SpanDocument['scope'];
  const sc = value.scope as { name?: unknown; version?: unknown } | undefined;
  if (sc && typeof sc === 'object') {
    scope = {
      name: typeof sc.name === 'string' ? sc.name : '',
      version: typeof sc.version === 'string' ? sc.version : '',
    };
  }
  return buildSpan(value, resource, serviceName, scope, limits);
}

/** True when the document looks like an OTLP ExportTraceServiceRequest rather than a flat span. */
export function isOtlpRequest(value: Record<string, unknown>): boolean {
  return value.resourceSpans !== undefined;
}

/** One span of an OTLP request, or the reason it was rejected (with its path inside the request). */
export type OtlpSpanResult =
  | { ok: true; span: SpanDocument }
  | { ok: false; path: string; reason: string; kind: SpanFormatError['kind']; input: unknown };

/**
 * Checks an ExportTraceServiceRequest's envelope (resourceSpans, scopeSpans, spans lists) and counts its
 * span entries, without building anything: the caller splits the request's ack before any span is built.
 * Throws SpanFormatError for a malformed envelope.
 */
export function countOtlpSpans(value: Record<string, unknown>): number {
  const resourceSpans = value.resourceSpans;
  if (!Array.isArray(resourceSpans)) throw new SpanFormatError('resourceSpans must be a list');
  let n = 0;
  for (let r = 0; r < resourceSpans.length; r++) {
    const rs = resourceSpans[r] as Record<string, unknown> | null;
    if (rs === null || typeof rs !== 'object')
      throw new SpanFormatError(`resourceSpans[${r}] must be an object`);
    // `instrumentationLibrarySpans` is the pre-1.0 name of scopeSpans; old exporters still send it.
    const scopeSpans = rs.scopeSpans ?? rs.instrumentationLibrarySpans ?? [];
    if (!Array.isArray(scopeSpans))
      throw new SpanFormatError(`resourceSpans[${r}].scopeSpans must be a list`);
    for (let s = 0; s < scopeSpans.length; s++) {
      const ss = scopeSpans[s] as Record<string, unknown> | null;
      if (ss === null || typeof ss !== 'object') {
        throw new SpanFormatError(`resourceSpans[${r}].scopeSpans[${s}] must be an object`);
      }
      const spans = ss.spans ?? [];
      if (!Array.isArray(spans))
        throw new SpanFormatError(`resourceSpans[${r}].scopeSpans[${s}].spans must be a list`);
      n += spans.length;
    }
  }
  return n;
}

/** The resource attributes of each ResourceSpans (envelope checked by countOtlpSpans); throws SpanFormatError. */
export function otlpResources(value: Record<string, unknown>): Attributes[] {
  return (value.resourceSpans as Array<Record<string, unknown>>).map((rs, r) =>
    keyValues(
      (rs.resource as { attributes?: unknown } | undefined)?.attributes,
      0,
      `resourceSpans[${r}].resource.attributes`,
    ),
  );
}

/** Receives the spans of a request in document order: a flat span, or the reason one was rejected. */
export interface OtlpSpanVisitor {
  span(span: SpanDocument, position: number): void;
  reject(position: number, path: string, reason: string, kind: SpanFormatError['kind'], input: unknown): void;
}

/**
 * Flattens an ExportTraceServiceRequest straight into flat spans, one visitor call per span entry in
 * document order (`position` 0..countOtlpSpans - 1), with no intermediate result objects. A bad span does
 * not spoil its neighbours. The envelope must have passed countOtlpSpans, and `resources` come from
 * otlpResources (so a malformed resource rejects the whole request before the caller splits its ack).
 */
export function visitOtlpSpans(
  value: Record<string, unknown>,
  resources: readonly Attributes[],
  limits: SpanLimits,
  visitor: OtlpSpanVisitor,
): void {
  const resourceSpans = value.resourceSpans as Array<Record<string, unknown>>;
  let position = 0;
  for (let r = 0; r < resourceSpans.length; r++) {
    const rs = resourceSpans[r]!;
    const resource = resources[r]!;
    const serviceName = serviceNameOf(resource);
    const scopeSpans = (rs.scopeSpans ?? rs.instrumentationLibrarySpans ?? []) as Array<
      Record<string, unknown>
    >;
    for (let s = 0; s < scopeSpans.length; s++) {
      const ss = scopeSpans[s]!;
      const sc = (ss.scope ?? ss.instrumentationLibrary) as { name?: unknown; version?: unknown } | undefined;
      const scope =
        sc && typeof sc === 'object'
          ? {
              name: typeof sc.name === 'string' ? sc.name : '',
              version: typeof sc.version === 'string' ? sc.version : '',
            }
          : undefined;
      const spans = (ss.spans ?? []) as unknown[];
      for (let k = 0; k < spans.length; k++) {
        const input = spans[k];
        const at = position++;
        if (input === null || typeof input !== 'object' || Array.isArray(input)) {
          visitor.reject(at, spanPath(r, s, k), 'a span must be an object', 'malformed', input);
          continue;
        }
        let span: SpanDocument;
        try {
          span = buildSpan(input as Record<string, unknown>, resource, serviceName, scope, limits);
        } catch (err) {
          if (!(err instanceof SpanFormatError)) throw err;
          visitor.reject(at, spanPath(r, s, k), err.message, err.kind, input);
          continue;
        }
        visitor.span(span, at);
      }
    }
  }
}

function spanPath(r: number, s: number, k: number): string {
  return `resourceSpans[${r}].scopeSpans[${s}].spans[${k}]`;
}

/**
 * Flattens an ExportTraceServiceRequest: one result per span, in document order. A bad span does not
 * spoil its neighbours; a malformed envelope (resourceSpans not a list, ...) throws SpanFormatError.
 * (The processor uses countOtlpSpans + visitOtlpSpans, which build no result objects.)
 */
export function otlpSpans(
  value: Record<string, unknown>,
  limits: SpanLimits = DEFAULT_SPAN_LIMITS,
): OtlpSpanResult[] {
  countOtlpSpans(value);
  const resources = otlpResources(value);
  const out: OtlpSpanResult[] = [];
  visitOtlpSpans(value, resources, limits, {
    span: (span) => out.push({ ok: true, span }),
    reject: (_at, path, reason, kind, input) => out.push({ ok: false, path, reason, kind, input }),
  });
  return out;
}

/** JSON text of a value that may hold bigints (written as bare integers, exact). */
export function stringifyExact(value: unknown): string {
  const marks: string[] = [];
  const text = JSON.stringify(value, (_k, v) => {
    if (typeof v !== 'bigint') return v;
    marks.push(v.toString());
    return `\u0000big${marks.length - 1}\u0000`;
  });
  if (marks.length === 0) return text ?? 'null';
  return (text ?? 'null').replace(/"\\u0000big(\d+)\\u0000"/g, (_m, i: string) => marks[Number(i)]!);
}
