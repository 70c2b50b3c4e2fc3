/**
 * Deterministic OpenTelemetry-like spans (flat span JSON, about 1 KB each) for the demo, tests and
 * benchmarks. int64 fields are decimal strings, as OTLP/JSON encodes them; their values (~1.76e18 ns)
 * lie beyond 2^53, so any conversion through a JS number shows up when the output is compared with
 * what was produced. A trace is a root span (frontend) followed by its children (downstream services), all with the
 * same traceId, which is also the Kinesis partition key (so a trace stays on one shard, in order).
 */

/** OTLP span status: 0 UNSET, 1 OK, 2 ERROR. */
export type SpanStatusCode = 0 | 1 | 2;

export interface SyntheticSpan {
  /** 32 lowercase hex characters. */
  traceId: string;
  /** 16 lowercase hex characters. */
  spanId: string;
  /** The root span's id for children; '' for the root. */
  parentSpanId: string;
  name: string;
  kind: 'SPAN_KIND_SERVER' | 'SPAN_KIND_CLIENT' | 'SPAN_KIND_INTERNAL';
  serviceName: string;
  /** Decimal string, nanoseconds since the epoch. */
  startTimeUnixNano: string;
  /** Decimal string, nanoseconds since the epoch. */
  endTimeUnixNano: string;
  /** Decimal string, endTimeUnixNano - startTimeUnixNano. */
  durationNano: string;
  status: { code: SpanStatusCode; message: string };
  attributes: Record<string, string | number>;
  resource: Record<string, string>;
}

export interface SpanGeneratorOptions {
  /** PRNG seed; the same seed yields the same spans on every machine. Default 42. */
  seed?: number;
  /** Spans per trace: one root plus `spansPerTrace - 1` children. Default 5. */
  spansPerTrace?: number;
  /** Fraction of traces with an error: one child fails with 503 and the root answers 500. Default 0.02. */
  errorRate?: number;
  /** Fraction of slow traces: spans last 1-5 s instead of 1-5 ms. Default 0.05. */
  slowRate?: number;
  /** Start of the first trace, in ns since the epoch. Default 1763769600123456789n (2025-11-22). */
  startNanos?: bigint;
}

/** mulberry32: a small seeded PRNG, so the same seed gives the same spans on every machine. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const SERVICES = ['frontend', 'checkout', 'cart', 'payment', 'catalog', 'shipping', 'currency'];
const ROUTES = [
  { method: 'GET', route: '/api/products/{id}' },
  { method: 'GET', route: '/api/cart' },
  { method: 'POST', route: '/api/cart/items' },
  { method: 'POST', route: '/api/checkout' },
  { method: 'POST', route: '/api/pay' },
  { method: 'GET', route: '/api/shipping/quote' },
];
const STATEMENTS = [
  'SELECT id, name, price_units, price_nanos, stock FROM products WHERE id = $1 AND region = $2',
  'UPDATE carts SET items = $1, updated_at = now() WHERE user_id = $2 RETURNING version',
  'INSERT INTO orders (id, user_id, total_units, currency, created_at) VALUES ($1, $2, $3, $4, now())',
];
const USER_AGENTS = [
  'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36',
  'Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari',
  'okhttp/4.12.0 (Android 14; Pixel 8)',
];

function hex(random: () => number, chars: number): string {
  let out = '';
  for (let i = 0; i < chars; i++) out += Math.floor(random() * 16).toString(16);
  // An all-zero id is invalid in OTLP; vanishingly rare, but keep ids valid whatever the seed.
  return /^0+$/.test(out) ? `${out.slice(0, -1)}1` : out;
}

function pick<T>(random: () => number, items: readonly T[]): T {
  return items[Math.floor(random() * items.length)]!;
}

function resourceOf(random: () => number, service: string): Record<string, string> {
  return {
    'service.name': service,
    'service.namespace': 'shop',
    'service.version': `1.${Math.floor(random() * 9)}.${Math.floor(random() * 20)}`,
    'deployment.environment': 'demo',
    'host.name': `ip-10-0-${Math.floor(random() * 255)}-${Math.floor(random() * 255)}.ec2.internal`,
    'cloud.provider': 'aws',
    'cloud.region': 'us-east-1',
    'telemetry.sdk.language': 'nodejs',
  };
}

/**
 * Yields `count` spans, `spansPerTrace` per trace (consecutive, root first). Deterministic for a seed;
 * the last trace may be cut short when `count` is not a multiple of `spansPerTrace`.
 */
export function* generateSpans(count: number, opts: SpanGeneratorOptions = {}): Generator<SyntheticSpan> {
  const random = seededRandom(opts.seed ?? 42);
  const perTrace = Math.max(1, Math.floor(opts.spansPerTrace ?? 5));
  const errorRate = opts.errorRate ?? 0.02;
  const slowRate = opts.slowRate ?? 0.05;
  let clock = opts.startNanos ?? 1_763_769_600_123_456_789n;
  let produced = 0;
  while (produced < count) {
    const traceId = hex(random, 32);
    const isError = random() < errorRate;
    const isSlow = random() < slowRate;
    const unit = isSlow ? 1_000_000_000 : 1_000_000;
    const { method, route } = pick(random, ROUTES);
    const rootService = SERVICES[0]!;
    const rootId = hex(random, 16);
    const rootStart = clock;
    const userAgent = pick(random, USER_AGENTS);
    // Children run one after another inside the root; their end times decide the root's end.
    const failingChild = isError ? 1 + Math.floor(random() * Math.max(1, perTrace - 1)) : -1;
    const children: SyntheticSpan[] = [];
    let cursor = rootStart + BigInt(Math.floor(random() * 50_000)) + 1n;
    for (let c = 1; c < perTrace; c++) {
      const service = pick(random, SERVICES.slice(1));
      const duration = BigInt(Math.floor(unit * (1 + random() * 4))) + BigInt(Math.floor(random() * 1_000));
      const failed = c === failingChild;
      children.push({
        traceId,
        spanId: hex(random, 16),
        parentSpanId: rootId,
        name: `${method} /internal/${service}`,
        // Each child is the downstream service's own SERVER span, so serviceName varies within a trace.
        kind: 'SPAN_KIND_SERVER',
        serviceName: service,
        startTimeUnixNano: cursor.toString(),
        endTimeUnixNano: (cursor + duration).toString(),
        durationNano: duration.toString(),
        status: failed
          ? { code: 2, message: `${service} returned 503 Service Unavailable` }
          : { code: 0, message: '' },
        attributes: {
          'http.request.method': method,
          'http.route': `/internal/${service}`,
          'http.response.status_code': failed ? 503 : 200,
          'server.address': `${service}.shop.svc.cluster.local`,
          'server.port': 8080,
          'db.system': 'postgresql',
          'db.statement': pick(random, STATEMENTS),
          'shop.caller': rootService,
        },
        resource: resourceOf(random, service),
      });
      cursor += duration + BigInt(Math.floor(random() * 20_000));
    }
    const rootEnd = cursor + BigInt(Math.floor(random() * 100_000)) + 1n;
    const root: SyntheticSpan = {
      traceId,
      spanId: rootId,
      parentSpanId: '',
      name: `${method} ${route}`,
      kind: 'SPAN_KIND_SERVER',
      serviceName: rootService,
      startTimeUnixNano: rootStart.toString(),
      endTimeUnixNano: rootEnd.toString(),
      durationNano: (rootEnd - rootStart).toString(),
      status: isError ? { code: 2, message: 'downstream call failed' } : { code: 1, message: '' },
      attributes: {
        'http.request.method': method,
        'http.route': route,
        'http.response.status_code': isError ? 500 : 200,
        'url.scheme': 'https',
        'client.address': `203.0.113.${Math.floor(random() * 254) + 1}`,
        'user_agent.original': userAgent,
        'shop.user_id': `u-${Math.floor(random() * 1_000_000)}`,
      },
      resource: resourceOf(random, rootService),
    };
    for (const span of [root, ...children]) {
      if (produced >= count) return;
      produced += 1;
      yield span;
    }
    // Traces start a few hundred microseconds apart, so even 1M spans stay within minutes of startNanos.
    clock += BigInt(Math.floor(random() * 500_000)) + 1n;
  }
}

/** The Kinesis record for a span: the traceId as partition key (one trace, one shard) and JSON bytes. */
export function spanRecord(span: SyntheticSpan): { partitionKey: string; data: Uint8Array } {
  return { partitionKey: span.traceId, data: Buffer.from(JSON.stringify(span), 'utf8') };
}

/** Options of {@link generateOtlpRecords}. */
export interface OtlpGeneratorOptions {
  /** PRNG seed; the same seed yields the same records on every machine. Default 42. */
  seed?: number;
  /** Spans per trace are drawn uniformly from 1..maxSpansPerTrace. Default 12. */
  maxSpansPerTrace?: number;
  /** Fraction of spans with status ERROR (each span independently). Default 0.03. */
  errorRate?: number;
  /** Fraction of traces whose spans last 1-5 s instead of 1-5 ms. Default 0.05. */
  slowRate?: number;
  /** Start of the first trace, in ns since the epoch. Default 1763769600123456789n (2025-11-22). */
  startNanos?: bigint;
}

/** One Kinesis record of OTLP/JSON: an ExportTraceServiceRequest holding one ResourceSpans. */
export interface OtlpRecord {
  partitionKey: string;
  data: Uint8Array;
  /** The spans inside, and how the trace they belong to was drawn (for the bench's keep-ratio arithmetic). */
  spans: number;
  traceHasError: boolean;
  traceIsSlow: boolean;
}

const OTLP_KINDS = { server: 2, client: 3, internal: 1 } as const;

function stringKv(key: string, value: string) {
  return { key, value: { stringValue: value } };
}

function intKv(key: string, value: number) {
  // OTLP/JSON writes int64 as a decimal string.
  return { key, value: { intValue: String(value) } };
}

/**
 * OTLP/JSON records as the OpenTelemetry Collector's Kinesis exporter writes them: one ResourceSpans (one
 * service's spans of one trace, with its resource and scope) per record, keyed by the traceId. A trace has
 * 1..maxSpansPerTrace spans (uniform) in a tree rooted at the frontend, spread over several services, so a
 * trace usually spans several records that arrive one after another. Yields records until `spanCount` spans
 * were produced (the last trace is cut short if needed). Deterministic for a seed.
 */
export function* generateOtlpRecords(
  spanCount: number,
  opts: OtlpGeneratorOptions = {},
): Generator<OtlpRecord> {
  const random = seededRandom(opts.seed ?? 42);
  const maxPerTrace = Math.max(1, Math.floor(opts.maxSpansPerTrace ?? 12));
  const errorRate = opts.errorRate ?? 0.03;
  const slowRate = opts.slowRate ?? 0.05;
  let clock = opts.startNanos ?? 1_763_769_600_123_456_789n;
  let produced = 0;
  const resources = new Map<string, ReturnType<typeof otlpResource>>();
  while (produced < spanCount) {
    const traceId = hex(random, 32);
    const size = Math.min(spanCount - produced, 1 + Math.floor(random() * maxPerTrace));
    const isSlow = random() < slowRate;
    const unit = isSlow ? 1_000_000_000 : 1_000_000;
    const { method, route } = pick(random, ROUTES);
    // Span i > 0 hangs under a random earlier span; its service is new or its parent's (internal work).
    const ids: string[] = [];
    const services: string[] = [];
    const bySvc = new Map<string, Array<Record<string, unknown>>>();
    let hasError = false;
    let cursor = clock;
    for (let i = 0; i < size; i++) {
      const spanId = hex(random, 16);
      const parent = i === 0 ? -1 : Math.floor(random() * i);
      const internal = parent >= 0 && random() < 0.7;
      const service = i === 0 ? SERVICES[0]! : internal ? services[parent]! : pick(random, SERVICES.slice(1));
      ids.push(spanId);
      services.push(service);
      const duration = BigInt(Math.floor(unit * (1 + random() * 4))) + BigInt(Math.floor(random() * 1_000));
      const start = cursor + BigInt(Math.floor(random() * 20_000)) + 1n;
      cursor = start;
      const failed = random() < errorRate;
      hasError ||= failed;
      const name =
        i === 0 ? `${method} ${route}` : internal ? `${service}.work` : `${method} /internal/${service}`;
      const attributes = internal
        ? [stringKv('code.function', `${service}.handle`), stringKv('db.system', 'postgresql')]
        : [
            stringKv('http.request.method', method),
            stringKv('http.route', i === 0 ? route : `/internal/${service}`),
            intKv('http.response.status_code', failed ? 503 : 200),
            stringKv('server.address', `${service}.shop.svc.cluster.local`),
            intKv('server.port', 8080),
          ];
      const span: Record<string, unknown> = {
        traceId,
        spanId,
        parentSpanId: parent >= 0 ? ids[parent] : '',
        name,
        kind: internal ? OTLP_KINDS.internal : OTLP_KINDS.server,
        startTimeUnixNano: start.toString(),
        endTimeUnixNano: (start + duration).toString(),
        attributes,
        status: failed ? { code: 2, message: `${service} returned 503 Service Unavailable` } : {},
      };
      let group = bySvc.get(service);
      if (group === undefined) {
        group = [];
        bySvc.set(service, group);
      }
      group.push(span);
    }
    for (const [service, spans] of bySvc) {
      let resource = resources.get(service);
      if (resource === undefined) {
        resource = otlpResource(random, service);
        resources.set(service, resource);
      }
      const request = {
        resourceSpans: [
          {
            resource,
            scopeSpans: [
              { scope: { name: '@opentelemetry/instrumentation-http', version: '0.57.0' }, spans },
            ],
          },
        ],
      };
      yield {
        partitionKey: traceId,
        data: Buffer.from(JSON.stringify(request), 'utf8'),
        spans: spans.length,
        traceHasError: hasError,
        traceIsSlow: isSlow,
      };
    }
    produced += size;
    clock += BigInt(Math.floor(random() * 500_000)) + 1n;
  }
}

function otlpResource(random: () => number, service: string) {
  return {
    attributes: Object.entries(resourceOf(random, service))
      .filter(([k]) => k === 'service.name' || k === 'service.version' || k === 'host.name')
      .map(([k, v]) => stringKv(k, v)),
  };
}
