import assert from 'node:assert/strict';
import { describe, it } from 'vitest';
import { generateSpans, seededRandom, spanRecord } from '../../src/producer/synthetic-spans.js';

describe('generateSpans', () => {
  it('yields the same spans for the same seed and different ones for another seed', () => {
    const a = [...generateSpans(200, { seed: 7 })];
    const b = [...generateSpans(200, { seed: 7 })];
    const c = [...generateSpans(200, { seed: 8 })];
    assert.equal(a.length, 200);
    assert.deepEqual(a, b);
    assert.notDeepEqual(a[0], c[0]);
    // A prefix of a longer run is the shorter run: the count does not change the sequence.
    assert.deepEqual([...generateSpans(37, { seed: 7 })], a.slice(0, 37));
  });

  it('writes int64 fields as exact decimal strings beyond 2^53', () => {
    const spans = [...generateSpans(500)];
    let unsafe = 0;
    for (const s of spans) {
      for (const field of [s.startTimeUnixNano, s.endTimeUnixNano, s.durationNano]) {
        assert.equal(typeof field, 'string');
        assert.match(field, /^[1-9]\d*$/);
      }
      const start = BigInt(s.startTimeUnixNano);
      assert.ok(start > BigInt(Number.MAX_SAFE_INTEGER));
      assert.equal(BigInt(s.endTimeUnixNano) - start, BigInt(s.durationNano));
      // Most of these values cannot survive a round trip through a double; that is the point.
      if (BigInt(Number(s.startTimeUnixNano)) !== start) unsafe += 1;
    }
    assert.ok(unsafe > 450, `only ${unsafe} of 500 start times would be changed by a double`);
    // And they survive JSON, since they are strings.
    const back = JSON.parse(JSON.stringify(spans[3]));
    assert.equal(back.startTimeUnixNano, spans[3]!.startTimeUnixNano);
  });

  it('groups spans into traces: root first, children point at it, ids have OTLP lengths', () => {
    const spans = [...generateSpans(50, { spansPerTrace: 5 })];
    for (let t = 0; t < 10; t++) {
      const trace = spans.slice(t * 5, t * 5 + 5);
      const [root, ...children] = trace;
      assert.equal(new Set(trace.map((s) => s.traceId)).size, 1);
      assert.match(root!.traceId, /^[0-9a-f]{32}$/);
      assert.equal(root!.parentSpanId, '');
      for (const child of children) {
        assert.match(child.spanId, /^[0-9a-f]{16}$/);
        assert.equal(child.parentSpanId, root!.spanId);
        assert.ok(BigInt(child.startTimeUnixNano) >= BigInt(root!.startTimeUnixNano));
        assert.ok(BigInt(child.endTimeUnixNano) <= BigInt(root!.endTimeUnixNano));
      }
    }
    assert.equal(new Set(spans.map((s) => s.traceId)).size, 10);
    assert.equal(new Set(spans.map((s) => s.spanId)).size, 50);
  });

  it('makes about 1 KB documents with OTel-style attributes and resource', () => {
    const sizes = [...generateSpans(1_000)].map((s) => JSON.stringify(s).length);
    const mean = sizes.reduce((x, y) => x + y, 0) / sizes.length;
    assert.ok(mean > 700 && mean < 1_300, `mean size ${mean}`);
    const [root] = generateSpans(1);
    assert.equal(typeof root!.attributes['http.response.status_code'], 'number');
    assert.equal(root!.resource['service.name'], root!.serviceName);
  });

  it('honours the error and slow fractions', () => {
    const none = [...generateSpans(2_000, { errorRate: 0, slowRate: 0 })];
    assert.equal(none.filter((s) => s.status.code === 2).length, 0);
    assert.ok(none.every((s) => BigInt(s.durationNano) < 1_000_000_000n));

    const all = [...generateSpans(2_000, { errorRate: 1, slowRate: 1, spansPerTrace: 4 })];
    const traces = all.length / 4;
    assert.equal(all.filter((s) => s.status.code === 2 && s.parentSpanId === '').length, traces);
    assert.equal(all.filter((s) => s.status.code === 2 && s.parentSpanId !== '').length, traces);
    assert.ok(all.every((s) => BigInt(s.durationNano) >= 1_000_000_000n));

    const some = [...generateSpans(20_000, { errorRate: 0.1, spansPerTrace: 5 })];
    const errorRoots = some.filter((s) => s.parentSpanId === '' && s.status.code === 2).length;
    assert.ok(errorRoots > 300 && errorRoots < 500, `${errorRoots} error traces of 4000 at 10%`);
  });

  it('maps a span to a record keyed by its traceId', () => {
    const [span] = generateSpans(1, { seed: 3 });
    const record = spanRecord(span!);
    assert.equal(record.partitionKey, span!.traceId);
    assert.deepEqual(JSON.parse(Buffer.from(record.data).toString('utf8')), span);
  });

  it('seededRandom is uniform enough in [0, 1)', () => {
    const random = seededRandom(1);
    const values = Array.from({ length: 10_000 }, random);
    assert.ok(values.every((v) => v >= 0 && v < 1));
    const mean = values.reduce((x, y) => x + y, 0) / values.length;
    assert.ok(Math.abs(mean - 0.5) < 0.02, `mean ${mean}`);
  });
});
