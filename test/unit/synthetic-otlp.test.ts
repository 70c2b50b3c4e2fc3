import assert from 'node:assert/strict';
import { describe, it } from 'vitest';
import { otlpSpans } from '../../src/processors/span-format.js';
import { generateOtlpRecords } from '../../src/producer/synthetic-spans.js';

type Req = {
  resourceSpans: Array<{
    resource: { attributes: Array<{ key: string; value: { stringValue: string } }> };
    scopeSpans: Array<{ spans: Array<Record<string, unknown> & { status: { code?: number } }> }>;
  }>;
};
const parse = (d: Uint8Array) => JSON.parse(Buffer.from(d).toString('utf8')) as Req;

describe('generateOtlpRecords', () => {
  it('is deterministic by seed, and a prefix does not depend on the count', () => {
    const a = [...generateOtlpRecords(2_000, { seed: 7 })];
    const b = [...generateOtlpRecords(2_000, { seed: 7 })];
    const c = [...generateOtlpRecords(2_000, { seed: 8 })];
    assert.deepEqual(a, b);
    assert.notDeepEqual(a[0]!.data, c[0]!.data);
    const short = [...generateOtlpRecords(500, { seed: 7 })];
    // Only the last trace is cut short.
    const lastTrace = short.at(-1)!.partitionKey;
    const whole = short.filter((r) => r.partitionKey !== lastTrace);
    assert.ok(whole.length > 10);
    assert.deepEqual(whole, a.slice(0, whole.length));
  });

  it('writes one ResourceSpans per record, keyed by its trace, 1-12 spans per trace, ~564 B per span', () => {
    const records = [...generateOtlpRecords(20_000, { seed: 3 })];
    assert.equal(
      records.reduce((n, r) => n + r.spans, 0),
      20_000,
    );
    const perTrace = new Map<string, number>();
    let bytes = 0;
    let previous = '';
    const finished = new Set<string>();
    for (const r of records) {
      const req = parse(r.data);
      assert.equal(req.resourceSpans.length, 1);
      const rs = req.resourceSpans[0]!;
      const service = rs.resource.attributes.find((kv) => kv.key === 'service.name')!.value.stringValue;
      assert.ok(service);
      const spans = rs.scopeSpans[0]!.spans;
      assert.equal(spans.length, r.spans);
      for (const s of spans) {
        assert.equal(s.traceId, r.partitionKey);
        assert.match(s.spanId as string, /^[0-9a-f]{16}$/);
        assert.match(s.startTimeUnixNano as string, /^\d{19}$/);
      }
      // The records of a trace arrive one after another.
      if (r.partitionKey !== previous) {
        assert.ok(!finished.has(r.partitionKey), 'a trace resumed after another one');
        if (previous) finished.add(previous);
        previous = r.partitionKey;
      }
      perTrace.set(r.partitionKey, (perTrace.get(r.partitionKey) ?? 0) + r.spans);
      bytes += r.data.byteLength;
    }
    const sizes = [...perTrace.values()];
    assert.equal(Math.min(...sizes), 1);
    assert.equal(Math.max(...sizes), 12);
    const mean = sizes.reduce((x, y) => x + y, 0) / sizes.length;
    assert.ok(mean > 6 && mean < 7, `mean spans per trace ${mean}`);
    assert.ok(records.length < 20_000 / 2, `${records.length} records: several spans per record`);
    const perSpan = bytes / 20_000;
    assert.ok(perSpan > 480 && perSpan < 680, `${perSpan} B per span`);
  });

  it('honours the error rate per span and the slow rate per trace, and flags the traces', () => {
    const count = (errorRate: number, slowRate: number) => {
      let errors = 0;
      let slow = 0;
      const errorTraces = new Set<string>();
      for (const r of generateOtlpRecords(30_000, { seed: 5, errorRate, slowRate })) {
        for (const s of parse(r.data).resourceSpans[0]!.scopeSpans[0]!.spans) {
          if (s.status.code === 2) {
            errors += 1;
            errorTraces.add(r.partitionKey);
          }
          const d = BigInt(s.endTimeUnixNano as string) - BigInt(s.startTimeUnixNano as string);
          if (d >= 1_000_000_000n) slow += 1;
          assert.equal(d >= 1_000_000_000n, r.traceIsSlow);
        }
        assert.equal(r.traceHasError, errorTraces.has(r.partitionKey) || r.traceHasError);
      }
      return { errors: errors / 30_000, slow: slow / 30_000 };
    };
    const d = count(0.03, 0.05);
    assert.ok(Math.abs(d.errors - 0.03) < 0.006, `error spans ${d.errors}`);
    assert.ok(Math.abs(d.slow - 0.05) < 0.02, `slow spans ${d.slow}`);
    assert.deepEqual(count(0, 0), { errors: 0, slow: 0 });
    assert.ok(count(0.2, 1).errors > 0.17);
    assert.equal(count(0, 1).slow, 1);
  });

  it('makes requests otel_spans reads without a rejected span, int64 times and ids exact', () => {
    const limits = {
      maxDurationNanos: 86_400e9,
      minStartMs: Date.parse('2000-01-01T00:00:00Z'),
      maxFutureMs: 86_400_000,
      now: () => Date.parse('2025-11-22T00:10:00Z'),
    };
    for (const r of generateOtlpRecords(1_000, { seed: 9 })) {
      const req = parse(r.data);
      const results = otlpSpans(req as unknown as Record<string, unknown>, limits);
      assert.equal(results.length, r.spans);
      results.forEach((res, i) => {
        assert.ok(res.ok, res.ok ? '' : res.reason);
        const input = req.resourceSpans[0]!.scopeSpans[0]!.spans[i]!;
        assert.equal(res.span.startTimeUnixNano, input.startTimeUnixNano);
        assert.equal(res.span.traceId, input.traceId);
        assert.equal(
          res.span.durationNano,
          String(BigInt(input.endTimeUnixNano as string) - BigInt(input.startTimeUnixNano as string)),
        );
      });
    }
  });
});
