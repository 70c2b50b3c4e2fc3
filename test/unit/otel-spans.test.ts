import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, it } from 'vitest';
import { Ack } from '../../src/core/ack.js';
import { eventWithAck, type PipelineEvent } from '../../src/core/records.js';
import { createRegistry } from '../../src/metrics/registry.js';
import { parseJsonDocument } from '../../src/processors/decode.js';
import { hasLazyRaw, OtelSpansProcessor, otelSpansConfigSchema } from '../../src/processors/otel-spans.js';
import {
  durationNanos,
  flatSpan,
  nanosString,
  normaliseId,
  otlpSpans,
} from '../../src/processors/span-format.js';
import { generateSpans } from '../../src/producer/synthetic-spans.js';
import { MemoryDeadLetterQueue, origin } from '../helpers/fakes.js';

const TRACE = '5b8efff798038103d269b633813fc60c';
const SPAN = 'eee19b7ec3c1b174';
const NOW = Date.UTC(2026, 10, 24);

function otlpRequest(
  spans: unknown[],
  resourceAttrs: unknown[] = [{ key: 'service.name', value: { stringValue: 'checkout' } }],
) {
  return {
    resourceSpans: [
      {
        resource: { attributes: resourceAttrs },
        scopeSpans: [{ scope: { name: 'io.opentelemetry.http', version: '1.2.0' }, spans }],
      },
    ],
  };
}

function otlpSpan(extra: Record<string, unknown> = {}) {
  return {
    traceId: TRACE,
    spanId: SPAN,
    parentSpanId: '',
    name: 'POST /api/checkout',
    kind: 2,
    startTimeUnixNano: '1763769600123456789',
    endTimeUnixNano: '1763769601123456790',
    status: { code: 2, message: 'boom' },
    attributes: [
      { key: 'http.response.status_code', value: { intValue: '503' } },
      { key: 'big', value: { intValue: '9007199254740993' } },
      { key: 'ratio', value: { doubleValue: 0.25 } },
      { key: 'ok', value: { boolValue: false } },
      { key: 'tags', value: { arrayValue: { values: [{ stringValue: 'a' }, { intValue: 2 }] } } },
      { key: 'map', value: { kvlistValue: { values: [{ key: 'k', value: { stringValue: 'v' } }] } } },
      { key: 'blob', value: { bytesValue: 'AQID' } },
      { key: 'empty', value: {} },
    ],
    events: [{ timeUnixNano: '1763769600500000000', name: 'retry', attributes: [] }],
    ...extra,
  };
}

function event(
  value: Record<string, unknown>,
  ack: Ack,
  seq = '100',
  extra: Partial<PipelineEvent> = {},
): PipelineEvent {
  return { origin: origin(seq), index: 0, value, raw: Buffer.from(JSON.stringify(value)), ack, ...extra };
}

function processor(input: 'auto' | 'otlp' | 'flat' = 'auto') {
  const dlq = new MemoryDeadLetterQueue();
  const metrics = createRegistry(false);
  const p = new OtelSpansProcessor(
    'spans',
    otelSpansConfigSchema.parse({ type: 'otel_spans', input }),
    dlq,
    metrics,
    () => NOW,
  );
  return { p, dlq, metrics };
}

describe('span formats', () => {
  it('flattens an OTLP/JSON request: kinds, statuses, every attribute value type, resource and scope', () => {
    const [r] = otlpSpans(otlpRequest([otlpSpan()]), {
      maxDurationNanos: 86_400e9,
      minStartMs: 0,
      maxFutureMs: 1e12,
      now: () => NOW,
    });
    assert.ok(r?.ok);
    const s = r.span;
    assert.equal(s.traceId, TRACE);
    assert.equal(s.kind, 'SPAN_KIND_SERVER');
    assert.deepEqual(s.status, { code: 2, message: 'boom' });
    assert.equal(s.serviceName, 'checkout');
    assert.equal(s.durationNano, '1000000001');
    assert.deepEqual(s.scope, { name: 'io.opentelemetry.http', version: '1.2.0' });
    assert.equal(s.attributes['http.response.status_code'], 503);
    assert.equal(s.attributes.big, 9007199254740993n, 'int64 beyond 2^53 stays exact');
    assert.equal(s.attributes.ratio, 0.25);
    assert.equal(s.attributes.ok, false);
    assert.deepEqual(s.attributes.tags, ['a', 2]);
    assert.deepEqual(s.attributes.map, { k: 'v' });
    assert.equal(s.attributes.blob, 'AQID');
    assert.equal(s.attributes.empty, null);
    assert.equal(s.events?.[0]?.name, 'retry');
    assert.equal(s.resource['service.name'], 'checkout');
  });

  it('accepts enum names, base64 ids, numeric times and the pre-1.0 field names', () => {
    const req = {
      resourceSpans: [
        {
          resource: { attributes: [] },
          instrumentationLibrarySpans: [
            {
              instrumentationLibrary: { name: 'old' },
              spans: [
                {
                  traceId: Buffer.from(TRACE, 'hex').toString('base64'),
                  spanId: Buffer.from(SPAN, 'hex').toString('base64'),
                  name: 'op',
                  kind: 'SPAN_KIND_CLIENT',
                  startTimeUnixNano: 1763769600123456789n,
                  endTimeUnixNano: '1763769600123456799',
                  status: { code: 'STATUS_CODE_OK' },
                },
              ],
            },
          ],
        },
      ],
    };
    const [r] = otlpSpans(req);
    assert.ok(r?.ok, JSON.stringify(r));
    assert.equal(r.span.traceId, TRACE);
    assert.equal(r.span.spanId, SPAN);
    assert.equal(r.span.kind, 'SPAN_KIND_CLIENT');
    assert.equal(r.span.status.code, 1);
    assert.equal(r.span.startTimeUnixNano, '1763769600123456789');
    assert.equal(r.span.durationNano, '10');
    assert.equal(r.span.serviceName, 'unknown_service');
    assert.equal(r.span.scope?.name, 'old');
  });

  it('keeps nanosecond times exact and computes durations exactly', () => {
    assert.equal(nanosString('0001763769600123456789', 't'), '1763769600123456789');
    assert.throws(() => nanosString('18446744073709551616', 't'), /exceeds uint64/);
    assert.throws(() => nanosString(1.5, 't'), /integer/);
    assert.equal(durationNanos('1763769600123456789', '1763769600123456790'), 1);
    // Different high digits: the BigInt path.
    assert.equal(durationNanos('1763769599999999999', '1763779600000000001'), 10_000_000_000_002);
    assert.equal(durationNanos('5', '17'), 12);
    for (const s of generateSpans(200, { seed: 3 })) {
      assert.equal(String(durationNanos(s.startTimeUnixNano, s.endTimeUnixNano)), s.durationNano);
    }
  });

  it('rejects bad ids with the field named', () => {
    assert.throws(() => normaliseId('xyz', 16, 'traceId'), /traceId must be 32 hex characters/);
    assert.throws(() => normaliseId('0'.repeat(32), 16, 'traceId'), /all zeros/);
    assert.equal(normaliseId(TRACE.toUpperCase(), 16, 'traceId'), TRACE);
    assert.equal(normaliseId(undefined, 8, 'parentSpanId', true), '');
  });

  it('the in-place fast path for canonical flat spans agrees with the general path', () => {
    const limits = { maxDurationNanos: 86_400e9, minStartMs: 0, maxFutureMs: 1e12, now: () => NOW };
    for (const g of generateSpans(300, { seed: 13, errorRate: 0.2 })) {
      const canonical = { ...g } as Record<string, unknown>;
      assert.equal(flatSpan(canonical, limits), canonical, 'canonical input is reused, not copied');
      const { extra: _, ...general } = flatSpan(
        { ...g, extra: 1 } as Record<string, unknown>,
        limits,
      ) as unknown as Record<string, unknown>;
      assert.deepEqual(canonical, general);
    }
    const g = [...generateSpans(1, { seed: 1 })][0]!;
    const wrong = { ...g, durationNano: '5' } as Record<string, unknown>;
    assert.equal(flatSpan(wrong, limits).durationNano, g.durationNano, 'a wrong durationNano is corrected');
    const upper = flatSpan({ ...g, traceId: g.traceId.toUpperCase() } as Record<string, unknown>, limits);
    assert.equal(upper.traceId, g.traceId);
    assert.equal(
      flatSpan({ ...g, parentSpanId: '0000000000000000' } as Record<string, unknown>, limits).parentSpanId,
      '',
    );
    assert.throws(
      () => flatSpan({ ...g, endTimeUnixNano: '1' } as Record<string, unknown>, limits),
      /before startTimeUnixNano/,
    );
  });

  it('normalises flat spans: numeric kind, KeyValue attributes, serviceName from the resource', () => {
    const s = flatSpan(
      {
        traceId: TRACE,
        spanId: SPAN,
        name: 'op',
        kind: 3,
        startTimeUnixNano: '1763769600000000000',
        endTimeUnixNano: '1763769600000000500',
        durationNano: 'ignored',
        attributes: [{ key: 'a', value: { intValue: '1' } }],
        resource: { 'service.name': 'cart' },
        extraTopLevel: 'dropped',
      },
      { maxDurationNanos: 1e15, minStartMs: 0, maxFutureMs: 1e12, now: () => NOW },
    );
    assert.equal(s.kind, 'SPAN_KIND_CLIENT');
    assert.equal(s.serviceName, 'cart');
    assert.equal(s.durationNano, '500');
    assert.deepEqual(s.attributes, { a: 1 });
    assert.equal((s as unknown as Record<string, unknown>).extraTopLevel, undefined);
  });
});

describe('otel_spans processor', () => {
  it('emits one event per OTLP span, splits the record ack across them and dead-letters bad spans', () => {
    const { p, dlq, metrics } = processor();
    let recordAcked = false;
    const bad = otlpSpan({ spanId: 'nothex', name: 'bad' });
    const req = otlpRequest([
      otlpSpan(),
      bad,
      otlpSpan({ spanId: 'aaaaaaaaaaaaaaaa', parentSpanId: SPAN, kind: 'SPAN_KIND_INTERNAL' }),
    ]);
    const out = p.process([event(req, new Ack(() => (recordAcked = true)))]);
    assert.equal(out.length, 2);
    assert.deepEqual(
      out.map((e) => e.index),
      [0, 1],
    );
    assert.equal(dlq.letters.length, 1);
    assert.match(
      dlq.letters[0]!.reason,
      /resourceSpans\[0\]\.scopeSpans\[0\]\.spans\[1\]: spanId must be 16 hex/,
    );
    assert.equal(JSON.parse(Buffer.from(dlq.letters[0]!.data).toString()).name, 'bad');
    assert.equal(recordAcked, false);
    out[0]!.ack.done();
    assert.equal(recordAcked, false);
    out[1]!.ack.done();
    assert.equal(recordAcked, true, 'the record is acked once every span is (DLQ part included)');
    // raw of an OTLP span is its own JSON, on demand, with exact int64 values.
    assert.equal(JSON.parse(Buffer.from(out[0]!.raw).toString()).spanId, SPAN);
    assert.match(Buffer.from(out[0]!.raw).toString(), /"big":9007199254740993[,}]/);
    return metrics
      .getSingleMetric('ksw_spans_total')!
      .get()
      .then((m) => {
        assert.equal(m.values.find((v) => v.labels.format === 'otlp')?.value, 2);
      });
  });

  it('dead-letters malformed OTLP and documents that are not spans, whole', () => {
    const { p, dlq } = processor();
    const acked: string[] = [];
    const inputs: Array<[string, Record<string, unknown>]> = [
      ['envelope', { resourceSpans: 'nope' }],
      ['scopes', { resourceSpans: [{ scopeSpans: {} }] }],
      ['not a span', { hello: 'world' }],
    ];
    const out = p.process(inputs.map(([n, v], i) => event(v, new Ack(() => acked.push(n)), String(200 + i))));
    assert.equal(out.length, 0);
    assert.deepEqual(acked, ['envelope', 'scopes', 'not a span']);
    assert.match(
      dlq.letters[0]!.reason,
      /not an OTLP ExportTraceServiceRequest: resourceSpans must be a list/,
    );
    assert.match(dlq.letters[1]!.reason, /scopeSpans must be a list/);
    assert.match(dlq.letters[2]!.reason, /not a flat span: traceId is missing/);
    // The DLQ keeps the original bytes of the event.
    assert.deepEqual(JSON.parse(Buffer.from(dlq.letters[2]!.data).toString()), { hello: 'world' });
  });

  it('an empty request is acked at once and emits nothing', () => {
    const { p } = processor();
    let acked = false;
    assert.equal(p.process([event({ resourceSpans: [] }, new Ack(() => (acked = true)))]).length, 0);
    assert.equal(acked, true);
  });

  it('dead-letters absurd durations and timestamps (the bad-input corpus span among them)', () => {
    const { p, dlq } = processor('flat');
    const fixture = parseJsonDocument(
      readFileSync(path.join(import.meta.dirname, '../fixtures/bad-input/absurd-span.json'), 'utf8'),
    );
    const base = { traceId: TRACE, spanId: SPAN, name: 'x', serviceName: 's' };
    const cases: Record<string, unknown>[] = [
      fixture,
      { ...base, startTimeUnixNano: '1763769600000000000', endTimeUnixNano: '1763769599000000000' },
      { ...base, startTimeUnixNano: '1763769600000000000', endTimeUnixNano: '1773769600000000000' },
      { ...base, startTimeUnixNano: '1763769600', endTimeUnixNano: '1763769601' },
      { ...base, startTimeUnixNano: '2763769600000000000', endTimeUnixNano: '2763769600000000001' },
      { ...base, startTimeUnixNano: '-5', endTimeUnixNano: '1' },
      { ...base, startTimeUnixNano: 1.5e18, endTimeUnixNano: '1' },
    ];
    const out = p.process(cases.map((c, i) => event(c, new Ack(() => undefined), String(300 + i))));
    assert.equal(out.length, 0);
    const reasons = dlq.letters.map((l) => l.reason);
    assert.match(reasons[0]!, /before startTimeUnixNano/);
    assert.match(reasons[1]!, /before startTimeUnixNano/);
    assert.match(reasons[2]!, /more than maxSpanDurationMs/);
    assert.match(reasons[3]!, /before 2000-01-01/);
    assert.match(reasons[4]!, /in the future/);
    assert.match(reasons[5]!, /not a decimal integer/);
    assert.match(reasons[6]!, /integer number of nanoseconds/);
  });

  it('passes flat spans with their ack and record bytes, numbering spans within a record', () => {
    const { p } = processor();
    const spans = [...generateSpans(3, { seed: 9 })];
    const o = origin('500');
    const acks = spans.map(() => new Ack(() => undefined));
    const events = spans.map((s, i) => ({
      origin: o,
      index: i,
      value: { ...s } as Record<string, unknown>,
      raw: Buffer.from(JSON.stringify(s)),
      ack: acks[i]!,
    }));
    const out = p.process(events);
    assert.deepEqual(
      out.map((e) => e.index),
      [0, 1, 2],
    );
    assert.equal(out[0]!.ack, acks[0]);
    assert.equal(out[0]!.raw, events[0]!.raw);
    assert.equal(out[0]!.value.startTimeUnixNano, spans[0]!.startTimeUnixNano);
    // A derived event passes untouched.
    const derived = { ...events[0]!, derived: true };
    assert.equal(p.process([derived])[0], derived);
  });

  it('counts spans whose trace arrives on more than one shard', async () => {
    const { p, metrics } = processor();
    const spans = [...generateSpans(10, { seed: 4, spansPerTrace: 5 })];
    const events = spans.map((s, i) => ({
      origin: origin(String(600 + i), {
        shardId: i === 4 || i === 9 ? 'shardId-000000000001' : 'shardId-000000000000',
      }),
      index: 0,
      value: { ...s } as Record<string, unknown>,
      raw: Buffer.from('{}'),
      ack: new Ack(() => undefined),
    }));
    p.process(events);
    const m = await metrics.getSingleMetric('ksw_spans_cross_shard_total')!.get();
    assert.equal(m.values[0]?.value, 2);
  });

  it('counts every span of a trace that arrives on another shard, consecutive ones too', async () => {
    const { p, metrics } = processor();
    const spans = [...generateSpans(10, { seed: 4, spansPerTrace: 5 })];
    // Trace 1: spans 0-2 on shard 0, then 3 and 4 on shard 1 (both counted); trace 2 alternates 0,1,0,1,0.
    const shardOf = (i: number) =>
      (i < 5 ? i >= 3 : (i - 5) % 2 === 1) ? 'shardId-000000000001' : 'shardId-000000000000';
    const events = spans.map((s, i) => ({
      origin: origin(String(700 + i), { shardId: shardOf(i) }),
      index: 0,
      value: { ...s } as Record<string, unknown>,
      raw: Buffer.from('{}'),
      ack: new Ack(() => undefined),
    }));
    // In two batches, so the shortcut for consecutive spans of a trace also spans calls.
    p.process(events.slice(0, 4));
    p.process(events.slice(4));
    const m = await metrics.getSingleMetric('ksw_spans_cross_shard_total')!.get();
    assert.equal(m.values[0]?.value, 4);
  });
});

describe('OTLP span events (one class, lazy raw)', () => {
  it('fans out to several sinks with their own ack parts and the span JSON as raw', () => {
    let completed = 0;
    const { p } = processor('otlp');
    const out = p.process([
      event(otlpRequest([otlpSpan(), otlpSpan({ spanId: 'aaa19b7ec3c1b174' })]), new Ack(() => completed++)),
    ]) as PipelineEvent[];
    assert.equal(out.length, 2);
    assert.equal(Object.getPrototypeOf(out[0]), Object.getPrototypeOf(out[1]));
    const first = out[0]!;
    const parts = first.ack.split(2);
    const copies = parts.map((a) => eventWithAck(first, a));
    for (const [i, c] of copies.entries()) {
      assert.equal(c.ack, parts[i]);
      assert.equal(c.value, first.value);
      assert.equal(c.index, first.index);
      assert.deepEqual(c.origin, first.origin);
      const raw = JSON.parse(Buffer.from(c.raw).toString('utf8'));
      assert.equal(raw.spanId, SPAN);
      // int64 times stay exact in the lazily serialised bytes.
      assert.equal(raw.startTimeUnixNano, '1763769600123456789');
      assert.equal(hasLazyRaw(c), true);
    }
    for (const a of parts) a.done();
    out[1]!.ack.done();
    assert.equal(completed, 1);
    // A plain event is spread with its new ack.
    const plain = event({ a: 1 }, new Ack(() => {}));
    const ack = new Ack(() => {});
    const copy = eventWithAck(plain, ack);
    assert.equal(copy.ack, ack);
    assert.equal(copy.raw, plain.raw);
    assert.equal(hasLazyRaw(copy), false);
  });

  it('rejects a request whose resource is malformed as a whole, before splitting its ack', () => {
    let completed = 0;
    const { p, dlq } = processor('otlp');
    const out = p.process([
      event(
        otlpRequest([otlpSpan(), otlpSpan()], [{ value: { stringValue: 'no key' } }]),
        new Ack(() => completed++),
      ),
    ]) as PipelineEvent[];
    assert.equal(out.length, 0);
    assert.equal(dlq.letters.length, 1);
    assert.match(dlq.letters[0]!.reason, /resource\.attributes/);
    assert.equal(completed, 1);
  });
});
