import assert from 'node:assert/strict';
import { afterAll, describe, it } from 'vitest';
import type { RedWindowDocument } from '../../src/core/documents.js';
import type { PipelineEvent } from '../../src/core/records.js';
import {
  OPENMETRICS_CONTENT_TYPE,
  openMetricsText,
  wantsOpenMetrics,
} from '../../src/metrics/openmetrics.js';
import { createRegistry } from '../../src/metrics/registry.js';
import { startOpsServer } from '../../src/metrics/server.js';
import {
  RedMetricsProcessor,
  redMetricsConfigSchema,
  redWindowKey,
} from '../../src/processors/red-metrics.js';
import { AckLedger, spanEvent, traceWorkload } from '../helpers/traces.js';

const BOUNDS = [1, 5, 25, 100, 1_000, 2_500];
const STATUS = ['UNSET', 'OK', 'ERROR'];
const T0 = Date.UTC(2026, 10, 24, 12, 0, 0);

function red(over: Record<string, unknown> = {}, clock = { now: T0 }) {
  const metrics = createRegistry(false);
  const config = redMetricsConfigSchema.parse({
    type: 'red_metrics',
    windowMs: 20_000,
    sinks: ['red'],
    durationBucketsMs: BOUNDS,
    ...over,
  });
  const p = new RedMetricsProcessor('red', config, metrics, () => clock.now);
  return { p, metrics, clock };
}

interface Truth {
  requests: number;
  errors: number;
  buckets: number[];
  sumMs: number;
}

/** RED per series straight from the generator's spans. */
function truthOf(
  spans: Array<{
    serviceName: string;
    name: string;
    kind: string;
    status: { code: number };
    durationNano: string;
  }>,
) {
  const truth = new Map<string, Truth>();
  for (const s of spans) {
    const key = [s.serviceName, s.name, s.kind, STATUS[s.status.code]].join('|');
    let t = truth.get(key);
    if (!t) {
      t = { requests: 0, errors: 0, buckets: new Array(BOUNDS.length + 1).fill(0), sumMs: 0 };
      truth.set(key, t);
    }
    t.requests += 1;
    if (s.status.code === 2) t.errors += 1;
    const ms = Number(s.durationNano) / 1e6;
    const b = BOUNDS.findIndex((x) => ms <= x);
    t.buckets[b === -1 ? BOUNDS.length : b]! += 1;
    t.sumMs += ms;
  }
  return truth;
}

function docsOf(events: PipelineEvent[]): RedWindowDocument[] {
  return events.filter((e) => e.derived).map((e) => e.value as unknown as RedWindowDocument);
}

describe('red_metrics', () => {
  it('counts requests, errors and durations exactly, in Prometheus and in window documents', async () => {
    const { p, metrics, clock } = red();
    const w = traceWorkload({ traces: 2_000, seed: 11, errorRate: 0.05, slowRate: 0.1 });
    const spans = w.deliveries.map((d) => d.span);
    const truth = truthOf(spans);
    const ledger = new AckLedger();
    const docs: RedWindowDocument[] = [];
    const docEvents: PipelineEvent[] = [];
    // 10,000 spans over two shards and about 3 windows of virtual time.
    for (let i = 0; i < spans.length; i += 250) {
      clock.now = T0 + i * 6;
      const batch = spans
        .slice(i, i + 250)
        .map((s) => spanEvent(s, ledger.ack(), s.traceId < '8' ? 'shardId-0' : 'shardId-1'));
      const out = p.process(batch);
      docEvents.push(...out.filter((e) => e.derived));
      for (const e of out) if (!e.derived) e.ack.done();
    }
    docEvents.push(...(await p.flush()));
    docs.push(...docsOf(docEvents));
    assert.ok(new Set(docs.map((d) => d.windowStart)).size >= 3, 'several windows');
    assert.deepEqual(new Set(docs.map((d) => d.sourceShardId)), new Set(['shardId-0', 'shardId-1']));

    // Window documents, summed over windows and shards, equal the truth series by series.
    const fromDocs = new Map<string, Truth>();
    for (const d of docs) {
      const key = [d.service, d.operation, d.spanKind, d.statusCode].join('|');
      const t = fromDocs.get(key) ?? {
        requests: 0,
        errors: 0,
        buckets: new Array(BOUNDS.length + 1).fill(0),
        sumMs: 0,
      };
      t.requests += d.requestCount;
      t.errors += d.errorCount;
      d.durationBucketCounts.forEach((c, i) => {
        t.buckets[i]! += c;
      });
      t.sumMs += d.durationSumMs;
      fromDocs.set(key, t);
      assert.equal(
        d.durationBucketCounts.reduce((a, b) => a + b, 0),
        d.requestCount,
      );
      assert.deepEqual(d.durationBucketBoundsMs, BOUNDS);
      assert.ok(d.durationMinMs <= d.durationMaxMs);
      assert.equal(d.overflow, false);
    }
    assert.equal(fromDocs.size, truth.size);
    for (const [key, t] of truth) {
      const got = fromDocs.get(key)!;
      assert.equal(got.requests, t.requests, key);
      assert.equal(got.errors, t.errors, key);
      assert.deepEqual(got.buckets, t.buckets, key);
      assert.ok(Math.abs(got.sumMs - t.sumMs) < 1e-6 * t.sumMs + 1e-6, key);
    }

    // Prometheus: the same totals, cumulative buckets.
    const requests = await metrics.getSingleMetric('ksw_red_requests_total')!.get();
    const errors = await metrics.getSingleMetric('ksw_red_errors_total')!.get();
    const duration = await metrics.getSingleMetric('ksw_red_duration_seconds')!.get();
    assert.equal(requests.values.length, truth.size);
    for (const v of requests.values) {
      const l = v.labels as Record<string, string>;
      const t = truth.get([l.service, l.operation, l.span_kind, l.status_code].join('|'))!;
      assert.equal(v.value, t.requests);
      const e = errors.values.find((x) => JSON.stringify(x.labels) === JSON.stringify(l));
      assert.equal(e?.value ?? 0, t.errors);
      const buckets = duration.values.filter(
        (x) =>
          (x as { metricName?: string }).metricName === 'ksw_red_duration_seconds_bucket' &&
          x.labels.service === l.service &&
          x.labels.operation === l.operation &&
          x.labels.status_code === l.status_code &&
          x.labels.span_kind === l.span_kind,
      );
      let cumulative = 0;
      assert.deepEqual(
        buckets.map((b) => b.value),
        t.buckets.map((c) => (cumulative += c)),
      );
      assert.deepEqual(
        buckets.map((b) => b.labels.le),
        [...BOUNDS.map((b) => String(b / 1000)), '+Inf'],
      );
    }
    // Every span ack completes once the window documents are acked too.
    assert.ok(ledger.pending > 0);
    for (const e of docEvents) e.ack.done();
    assert.equal(ledger.pending, 0);
  });

  it('holds the checkpoint until the window documents are durable, and origin/index identify them', async () => {
    const { p, clock } = red();
    const ledger = new AckLedger();
    const w = traceWorkload({ traces: 20, seed: 5 });
    const events = w.deliveries.map((d) => spanEvent(d.span, ledger.ack(), 'shardId-7'));
    const out = p.process(events);
    assert.equal(out.length, events.length);
    for (const e of out) e.ack.done();
    assert.equal(ledger.pending, 1, 'only the first span of the window is still held');
    clock.now = T0 + 20_000;
    const windows = p.tick();
    assert.ok(windows.length > 1);
    const last = events[events.length - 1]!.origin;
    windows.forEach((e, i) => {
      assert.equal(e.derived, true);
      assert.deepEqual(e.sinks, ['red']);
      assert.equal(e.origin, last, 'origin: the last record aggregated');
      assert.equal(e.index, i, 'index: the series ordinal');
      assert.deepEqual(JSON.parse(Buffer.from(e.raw).toString()), e.value);
    });
    const doc = windows[0]!.value as unknown as RedWindowDocument;
    assert.equal(doc.windowStart, new Date(T0).toISOString());
    assert.equal(doc.windowEnd, new Date(T0 + 20_000).toISOString());
    for (const e of windows.slice(0, -1)) e.ack.done();
    assert.equal(ledger.pending, 1, 'one window document is not durable yet');
    windows[windows.length - 1]!.ack.done();
    assert.equal(ledger.pending, 0);
    // The next span opens a new window and is held in turn.
    p.process([spanEvent(w.deliveries[0]!.span, ledger.ack(), 'shardId-7')])[0]!.ack.done();
    assert.equal(ledger.pending, 1);
    const flushed = await p.flush();
    assert.equal(flushed.length, 1);
    flushed[0]!.ack.done();
    assert.equal(ledger.pending, 0);
  });

  it('also holds a span whose position goes backwards (a shard read again)', () => {
    const { p } = red();
    const ledger = new AckLedger();
    const spans = traceWorkload({ traces: 2, seed: 1 }).deliveries.map((d) => d.span);
    const e1 = spanEvent(spans[0]!, ledger.ack());
    const e2 = spanEvent(spans[1]!, ledger.ack());
    const out = p.process([e2, e1]);
    for (const e of out) e.ack.done();
    assert.equal(ledger.pending, 2);
  });

  it('closes a window when a span of a later window arrives, and starts a new run at the time it saw the shard', () => {
    const { p, clock } = red();
    const ledger = new AckLedger();
    const spans = traceWorkload({ traces: 10, seed: 2 }).deliveries.map((d) => d.span);
    clock.now = T0 + 7_000;
    p.process([spanEvent(spans[0]!, ledger.ack())]);
    clock.now = T0 + 21_000;
    const out = p.process([spanEvent(spans[1]!, ledger.ack())]);
    const docs = docsOf(out);
    assert.equal(docs.length, 1);
    // The shard was first seen at +7 s: the first window claims no earlier coverage than that.
    assert.equal(docs[0]!.windowStart, new Date(T0 + 7_000).toISOString());
    assert.equal(docs[0]!.windowEnd, new Date(T0 + 20_000).toISOString());
    assert.equal(docs[0]!.requestCount, 1);
  });

  it('without sinks: Prometheus only, no documents and nothing held', async () => {
    const { p } = red({ sinks: [] });
    const ledger = new AckLedger();
    const out = p.process(
      traceWorkload({ traces: 5 }).deliveries.map((d) => spanEvent(d.span, ledger.ack())),
    );
    for (const e of out) e.ack.done();
    assert.equal(ledger.pending, 0);
    assert.equal((await p.flush()).length, 0);
  });

  it('caps cardinality: a flood of unique attribute values lands in one overflow series, counted', async () => {
    const { p, metrics } = red({ dimensions: ['shop.user_id'], maxSeries: 50 });
    const ledger = new AckLedger();
    const spans = traceWorkload({ traces: 400, seed: 8 }).deliveries.map((d) => d.span);
    const out = p.process(
      spans.map((s, i) =>
        spanEvent({ ...s, attributes: { ...s.attributes, 'shop.user_id': `u-${i}` } }, ledger.ack()),
      ),
    );
    assert.equal(p.seriesCount, 50);
    const gauge = (await metrics.getSingleMetric('ksw_red_series')!.get()).values[0]!.value;
    assert.equal(gauge, 51, 'ksw_red_series counts the overflow series at once, not at the next tick');
    const overflow = (await metrics.getSingleMetric('ksw_red_overflow_spans_total')!.get()).values[0]!.value;
    assert.equal(overflow, spans.length - 50);
    const requests = await metrics.getSingleMetric('ksw_red_requests_total')!.get();
    assert.equal(requests.values.length, 51);
    const o = requests.values.find((v) => v.labels.otel_metric_overflow === 'true')!;
    assert.equal(o.value, spans.length - 50);
    assert.equal(o.labels.service, '');
    const text = await metrics.metrics();
    assert.match(
      text,
      /ksw_red_requests_total\{service="",operation="",span_kind="",status_code="",shop_user_id="",otel_metric_overflow="true"\} 1950/,
    );
    const docs = docsOf(await p.flush());
    const od = docs.filter((d) => d.overflow);
    assert.equal(od.length, 1);
    assert.equal(od[0]!.requestCount, spans.length - 50);
    assert.deepEqual(od[0]!.dimensions, { 'shop.user_id': '' });
    for (const e of out) e.ack.done();
  });

  it('forgets idle series so new ones can take their place', async () => {
    const { p, metrics, clock } = red({ maxSeries: 3, seriesIdleMs: 60_000, sinks: [] });
    const base = traceWorkload({ traces: 1, seed: 3 }).deliveries[0]!.span;
    const op = (name: string) => spanEvent({ ...base, name }, new AckLedger().ack());
    p.process([op('a'), op('b'), op('c')]);
    clock.now = T0 + 30_000;
    p.process([op('a')]);
    clock.now = T0 + 61_000;
    p.tick();
    assert.equal(p.seriesCount, 1, 'b and c expired, a was seen 31 s ago');
    p.process([op('d'), op('e')]);
    const names = (await metrics.getSingleMetric('ksw_red_requests_total')!.get()).values.map(
      (v) => v.labels.operation,
    );
    assert.deepEqual(names.sort(), ['a', 'd', 'e']);
    const expired = await metrics.getSingleMetric('ksw_red_series_expired_total')!.get();
    assert.equal(expired.values[0]!.value, 2);
  });

  it('exposes exemplars with trace ids in OpenMetrics only; plain text stays the default', async () => {
    const { p, metrics } = red();
    metrics.setDefaultLabels({ app: 'test' });
    const spans = traceWorkload({ traces: 50, seed: 12, errorRate: 0.2 }).deliveries.map((d) => d.span);
    p.process(spans.map((s) => spanEvent(s, new AckLedger().ack())));
    const om = await openMetricsText(metrics);
    assert.match(om, /^# TYPE ksw_red_requests counter$/m);
    assert.match(
      om,
      /^ksw_red_requests_total\{.*app="test".*\} \d+ # \{trace_id="[0-9a-f]{32}"\} 1 \d+(\.\d+)?$/m,
    );
    assert.match(om, /^ksw_red_errors_total\{.*\} \d+ # \{trace_id="[0-9a-f]{32}"\} 1 /m);
    assert.match(
      om,
      /^ksw_red_duration_seconds_bucket\{.*le="0.005".*\} \d+ # \{trace_id="[0-9a-f]{32}"\} 0\.00\d+ /m,
    );
    assert.match(om, /# EOF\n$/);
    // Counter families are named without _total in OpenMetrics, but the plain text keeps the names.
    const plain = await metrics.metrics();
    assert.doesNotMatch(plain, /trace_id/);
    assert.match(plain, /^ksw_red_requests_total\{/m);
    assert.match(plain, /^# TYPE ksw_red_requests_total counter$/m);
    assert.equal(
      wantsOpenMetrics(
        'application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1',
      ),
      true,
    );
    assert.equal(wantsOpenMetrics('text/plain'), false);
    assert.equal(wantsOpenMetrics('*/*'), false);
    assert.equal(wantsOpenMetrics(undefined), false);
    assert.equal(wantsOpenMetrics('application/openmetrics-text;q=0'), false);
  });

  it('the ops server negotiates: OpenMetrics when asked, text otherwise', async () => {
    const { p, metrics } = red();
    p.process(traceWorkload({ traces: 5 }).deliveries.map((d) => spanEvent(d.span, new AckLedger().ack())));
    const server = await startOpsServer({ host: '127.0.0.1', port: 0, registry: metrics, ready: () => true });
    afterAll(() => server.close());
    const url = `http://127.0.0.1:${server.address.port}/metrics`;
    const om = await fetch(url, {
      headers: { accept: 'application/openmetrics-text;version=1.0.0,text/plain;q=0.5' },
    });
    assert.equal(om.headers.get('content-type'), OPENMETRICS_CONTENT_TYPE);
    assert.match(await om.text(), /trace_id=/);
    const plain = await fetch(url);
    assert.match(plain.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
    const text = await plain.text();
    assert.doesNotMatch(text, /trace_id=|# EOF/);
    // Asking for OpenMetrics did not rename anything for the next plain scrape.
    assert.match(text, /^ksw_red_requests_total\{/m);
  });

  it('rejects configs that would clash', () => {
    assert.throws(
      () => redMetricsConfigSchema.parse({ type: 'red_metrics', windowMs: 20_000, seriesIdleMs: 30_000 }),
      /at least 2 x windowMs/,
    );
    assert.throws(
      () => redMetricsConfigSchema.parse({ type: 'red_metrics', dimensions: ['span.kind', 'span_kind'] }),
      /taken/,
    );
    assert.throws(
      () => redMetricsConfigSchema.parse({ type: 'red_metrics', durationBucketsMs: [5, 1] }),
      /ascending/,
    );
    const metrics = createRegistry(false);
    const config = redMetricsConfigSchema.parse({ type: 'red_metrics' });
    new RedMetricsProcessor('a', config, metrics);
    assert.throws(() => new RedMetricsProcessor('b', config, metrics), /its own metricPrefix/);
  });

  it('window keys name shard, window and series, independent of dimension order', () => {
    const doc = {
      sourceStream: 's',
      sourceShardId: 'x',
      windowStart: 'w',
      service: 'a',
      operation: 'o',
      spanKind: 'SPAN_KIND_SERVER',
      statusCode: 'OK',
      overflow: false,
      dimensions: { b: '1', a: '2' },
    } as unknown as RedWindowDocument;
    assert.equal(redWindowKey(doc), redWindowKey({ ...doc, dimensions: { a: '2', b: '1' } }));
    assert.notEqual(redWindowKey(doc), redWindowKey({ ...doc, windowStart: 'v' }));
  });
});
