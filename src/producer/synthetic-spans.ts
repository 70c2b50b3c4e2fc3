/**
 * Deterministic OpenTelemetry-like spans (flat span JSON) for the demo, tests and benchmarks.
 * int64 fields are decimal strings, as OTLP/JSON encodes them; their values (~1.7e18 ns) lie beyond
 * 2^53, so any lossy conversion shows up when the output is compared with what was produced.
 */
export interface SyntheticSpan {
  traceId: string;
  spanId: string;
  parentSpanId: string;
  name: string;
  kind: 'SPAN_KIND_SERVER' | 'SPAN_KIND_CLIENT' | 'SPAN_KIND_INTERNAL';
  serviceName: string;
  startTimeUnixNano: string;
  endTimeUnixNano: string;
  durationNano: string;
  status: { code: 0 | 1 | 2; message: string };
  attributes: Record<string, string | number>;
  resource: Record<string, string>;
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

const SERVICES = ['checkout', 'cart', 'payment', 'catalog', 'shipping', 'frontend'];
const ROUTES = ['/api/cart', '/api/checkout', '/api/products/{id}', '/api/pay', '/api/ship', '/'];

function hex(random: () => number, chars: number): string {
  let out = '';
  for (let i = 0; i < chars; i++) out += Math.floor(random() * 16).toString(16);
  return out;
}

export interface SpanGeneratorOptions {
  seed?: number;
  spansPerTrace?: number;
  errorRate?: number;
  slowRate?: number;
  /** Start of the first trace, in ns since the epoch. */
  startNanos?: bigint;
}

/** Yields `count` spans, `spansPerTrace` per trace (same traceId, consecutive). */
export function* generateSpans(count: number, opts: SpanGeneratorOptions = {}): Generator<SyntheticSpan> {
  const random = seededRandom(opts.seed ?? 42);
  const perTrace = opts.spansPerTrace ?? 5;
  let clock = opts.startNanos ?? 1_763_769_600_123_456_789n;
  let traceId = '';
  let rootSpanId = '';
  let traceIsError = false;
  let traceIsSlow = false;
  for (let i = 0; i < count; i++) {
    if (i % perTrace === 0) {
      traceId = hex(random, 32);
      rootSpanId = '';
      traceIsError = random() < (opts.errorRate ?? 0.02);
      traceIsSlow = random() < (opts.slowRate ?? 0.05);
    }
    const spanId = hex(random, 16);
    const service = SERVICES[Math.floor(random() * SERVICES.length)]!;
    const route = ROUTES[Math.floor(random() * ROUTES.length)]!;
    const durationNs =
      BigInt(Math.floor((traceIsSlow ? 1_000_000_000 : 1_000_000) * (1 + random() * 4))) + 7n;
    clock += BigInt(Math.floor(random() * 1_000_000)) + 1n;
    const isError = traceIsError && i % perTrace === perTrace - 1;
    const span: SyntheticSpan = {
      traceId,
      spanId,
      parentSpanId: rootSpanId,
      name: `${i % perTrace === 0 ? 'GET' : 'call'} ${route}`,
      kind: i % perTrace === 0 ? 'SPAN_KIND_SERVER' : 'SPAN_KIND_CLIENT',
      serviceName: service,
      startTimeUnixNano: clock.toString(),
      endTimeUnixNano: (clock + durationNs).toString(),
      durationNano: durationNs.toString(),
      status: { code: isError ? 2 : 1, message: isError ? 'upstream returned 503' : '' },
      attributes: {
        'http.method': 'GET',
        'http.route': route,
        'http.status_code': isError ? 503 : 200,
        'net.peer.name': `${service}.internal`,
        'user_agent.original':
          'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0',
        'db.statement': 'SELECT id, name, price, stock FROM products WHERE id = ? AND region = ?',
      },
      resource: {
        'service.name': service,
        'service.version': '1.4.2',
        'deployment.environment': 'demo',
        'host.name': `ip-10-0-${Math.floor(random() * 255)}-${Math.floor(random() * 255)}.ec2.internal`,
        'cloud.region': 'us-east-1',
      },
    };
    if (!rootSpanId) rootSpanId = spanId;
    yield span;
  }
}
