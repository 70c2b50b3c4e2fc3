import assert from 'node:assert/strict';
import { JsonTraceSerializer, ProtobufTraceSerializer } from '@opentelemetry/otlp-transformer';
import fc from 'fast-check';
import { describe, it } from 'vitest';
import { createRegistry } from '../../src/metrics/registry.js';
import { decodeConfigSchema, parseJsonDocument, RecordDecoder } from '../../src/processors/decode.js';
import { decodeOtlpTraces, looksLikeOtlpProto, OtlpProtoError } from '../../src/processors/otlp-proto.js';
import { otlpSpans } from '../../src/processors/span-format.js';
import { MemoryDeadLetterQueue, sourceRecord } from '../helpers/fakes.js';

const LIMITS = {
  maxDurationNanos: 86_400_000_000_000,
  minStartMs: Date.UTC(2000, 0, 1),
  maxFutureMs: 86_400_000,
  now: () => Date.UTC(2026, 11, 1),
};

type Attr = string | number | boolean | Uint8Array | Attr[] | { [k: string]: Attr };

function hex(rng: () => number, bytes: number): string {
  let s = '';
  for (let i = 0; i < bytes; i++)
    s += Math.floor(rng() * 256)
      .toString(16)
      .padStart(2, '0');
  return s === '0'.repeat(bytes * 2) ? `${s.slice(1)}1` : s;
}

/** A deterministic pseudo-random source (mulberry32). */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function attrValue(rng: () => number, depth: number): Attr {
  const k = Math.floor(rng() * (depth > 2 ? 5 : 7));
  switch (k) {
    case 0:
      return `v-${Math.floor(rng() * 1e6)}-é✓`;
    case 1:
      return Math.floor((rng() - 0.5) * 2 ** 52);
    case 2:
      return rng() * 1000 + 0.5;
    case 3:
      return rng() < 0.5;
    case 4:
      return Uint8Array.from({ length: Math.floor(rng() * 9) }, () => Math.floor(rng() * 256));
    case 5:
      return [`a${Math.floor(rng() * 9)}`, Math.floor(rng() * 100), attrValue(rng, depth + 1)];
    default:
      return { inner: attrValue(rng, depth + 1), n: Math.floor(rng() * 10) };
  }
}

function attrs(rng: () => number, n: number): Record<string, Attr> {
  const out: Record<string, Attr> = {};
  for (let i = 0; i < n; i++) out[`attr.${i}`] = attrValue(rng, 0);
  return out;
}

/** Random SDK ReadableSpans (the shape the OpenTelemetry JS exporters hand to their serializers). */
function readableSpans(seed: number, count: number): unknown[] {
  const rng = prng(seed);
  const resources = [0, 1].map((i) => ({
    attributes: { 'service.name': `svc-${seed}-${i}`, 'host.name': `h${i}`, 'deploy.n': i },
    schemaUrl: undefined,
  }));
  const spans: unknown[] = [];
  for (let i = 0; i < count; i++) {
    const traceId = hex(rng, 16);
    const spanId = hex(rng, 8);
    const startSec = 1_760_000_000 + Math.floor(rng() * 1e7);
    const startNs = Math.floor(rng() * 1e9);
    const durNs = Math.floor(rng() * 5e9);
    const endSec = startSec + Math.floor((startNs + durNs) / 1e9);
    const endNs = (startNs + durNs) % 1e9;
    const traceState = rng() < 0.3 ? { serialize: () => 'vendor=a,b=c' } : undefined;
    const parent = rng() < 0.6 ? { traceId, spanId: hex(rng, 8), traceFlags: 1 } : undefined;
    spans.push({
      name: `op-${i}`,
      kind: Math.floor(rng() * 5),
      spanContext: () => ({
        traceId,
        spanId,
        traceFlags: 1,
        traceState,
      }),
      parentSpanContext: parent,
      startTime: [startSec, startNs],
      endTime: [endSec, endNs],
      status: rng() < 0.2 ? { code: 2, message: 'boom ✗' } : { code: Math.floor(rng() * 2) },
      attributes: attrs(rng, Math.floor(rng() * 6)),
      links:
        rng() < 0.3
          ? [
              {
                context: { traceId: hex(rng, 16), spanId: hex(rng, 8), traceFlags: 1 },
                attributes: attrs(rng, 2),
              },
            ]
          : [],
      events:
        rng() < 0.4
          ? [
              {
                name: 'exception',
                time: [startSec, startNs + 1],
                attributes: attrs(rng, 2),
                droppedAttributesCount: 1,
              },
            ]
          : [],
      duration: [0, durNs],
      ended: true,
      resource: resources[i % 2],
      instrumentationScope: { name: `lib-${i % 3}`, version: '1.2.3', attributes: { 'scope.attr': i % 3 } },
      droppedAttributesCount: i % 4,
      droppedEventsCount: 0,
      droppedLinksCount: i % 2,
    });
  }
  return spans;
}

function viaJson(spans: unknown[]) {
  const bytes = JsonTraceSerializer.serializeRequest(spans as never)!;
  return otlpSpans(parseJsonDocument(Buffer.from(bytes).toString('utf8')), LIMITS);
}

function viaProto(spans: unknown[]) {
  const bytes = ProtobufTraceSerializer.serializeRequest(spans as never)!;
  return otlpSpans(decodeOtlpTraces(bytes), LIMITS);
}

describe('OTLP protobuf ExportTraceServiceRequest reader', () => {
  it('gives exactly the spans the OTLP/JSON path gives for the same SDK spans (opentelemetry-js serializers)', () => {
    for (const seed of [1, 2, 3, 4, 5, 6, 7, 8]) {
      const spans = readableSpans(seed, 40);
      const fromJson = viaJson(spans);
      const fromProto = viaProto(spans);
      assert.equal(fromProto.length, 40);
      assert.ok(fromProto.every((r) => r.ok));
      // The two serializers group spans by scope in different orders: compare span by span.
      const bySpan = (rs: typeof fromJson) =>
        rs.map((r) => (r.ok ? r.span : undefined)).sort((x, y) => (x!.spanId < y!.spanId ? -1 : 1));
      assert.deepEqual(bySpan(fromProto), bySpan(fromJson));
    }
  });

  it('reads every field: ids, exact int64 times, all AnyValue kinds, resource and scope, events, links, status', () => {
    const spans = readableSpans(11, 1);
    const s = spans[0] as Record<string, unknown>;
    Object.assign(s, {
      attributes: {
        str: 'x',
        int: -42,
        dbl: 1.5,
        bool: true,
        bytes: Uint8Array.from([1, 2, 255]),
        arr: ['a', 1, false],
        kv: { a: 'b', nested: { c: 2 } },
      },
      startTime: [1_764_547_200, 123_456_789],
      endTime: [1_764_547_201, 987_654_321],
      status: { code: 2, message: 'failed' },
    });
    const req = decodeOtlpTraces(ProtobufTraceSerializer.serializeRequest(spans as never)!);
    const [r] = otlpSpans(req, LIMITS);
    assert.ok(r?.ok);
    const span = r.span;
    const ctx = (s.spanContext as () => { traceId: string; spanId: string })();
    assert.equal(span.traceId, ctx.traceId);
    assert.equal(span.spanId, ctx.spanId);
    assert.equal(span.startTimeUnixNano, '1764547200123456789');
    assert.equal(span.endTimeUnixNano, '1764547201987654321');
    assert.equal(span.durationNano, '1864197532');
    assert.deepEqual(span.status, { code: 2, message: 'failed' });
    assert.deepEqual(span.attributes, {
      str: 'x',
      int: -42,
      dbl: 1.5,
      bool: true,
      bytes: Buffer.from([1, 2, 255]).toString('base64'),
      arr: ['a', 1, false],
      kv: { a: 'b', nested: { c: 2 } },
    });
    assert.equal(span.serviceName, 'svc-11-0');
    assert.deepEqual(span.scope, { name: 'lib-0', version: '1.2.3' });
    const raw = req.resourceSpans[0] as {
      scopeSpans: Array<{ scope: unknown; spans: Array<Record<string, unknown>> }>;
    };
    assert.deepEqual((raw.scopeSpans[0]!.scope as { attributes: unknown }).attributes, [
      { key: 'scope.attr', value: { intValue: '0' } },
    ]);
    assert.equal(raw.scopeSpans[0]!.spans[0]!.flags, 257);
  });

  it('keeps int64 attribute values beyond 2^53 exact, and negative ones', () => {
    // KeyValue{key:"n", value: AnyValue{int_value: 2^63-1}} inside a span, hand-encoded.
    const big = encodeRequestWithIntAttr(2n ** 63n - 1n);
    const neg = encodeRequestWithIntAttr(-(2n ** 63n));
    const a = otlpSpans(decodeOtlpTraces(big), LIMITS)[0];
    const b = otlpSpans(decodeOtlpTraces(neg), LIMITS)[0];
    assert.ok(a?.ok && b?.ok);
    assert.equal(a.span.attributes.n, 2n ** 63n - 1n);
    assert.equal(b.span.attributes.n, -(2n ** 63n));
  });

  it('throws OtlpProtoError naming the problem: truncated, length beyond buffer, bad wire type, bad id', () => {
    const good = ProtobufTraceSerializer.serializeRequest(readableSpans(3, 3) as never)!;
    assert.throws(
      () => decodeOtlpTraces(good.subarray(0, good.length - 3)),
      (e: unknown) => {
        return e instanceof OtlpProtoError && (e.kind === 'length_beyond_buffer' || e.kind === 'truncated');
      },
    );
    assert.throws(() => decodeOtlpTraces(Uint8Array.from([0x0a, 0x80])), { kind: 'truncated' });
    assert.throws(() => decodeOtlpTraces(Uint8Array.from([0x0a, 0x05, 0x0a])), {
      kind: 'length_beyond_buffer',
    });
    assert.throws(() => decodeOtlpTraces(Uint8Array.from([0x0b, 0x00])), { kind: 'bad_wire_type' });
    assert.throws(() => decodeOtlpTraces(Uint8Array.from([0x08, 0x01])), { kind: 'bad_wire_type' });
    // span with a 3-byte trace id: ResourceSpans{ScopeSpans{Span{trace_id: 010203}}}
    const badId = Uint8Array.from([0x0a, 0x09, 0x12, 0x07, 0x12, 0x05, 0x0a, 0x03, 1, 2, 3]);
    assert.throws(() => decodeOtlpTraces(badId), { kind: 'invalid_field' });
  });

  it('never throws anything but OtlpProtoError on random or truncated bytes (property)', () => {
    const good = ProtobufTraceSerializer.serializeRequest(readableSpans(9, 5) as never)!;
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), (bytes) => {
        try {
          decodeOtlpTraces(bytes);
        } catch (err) {
          if (!(err instanceof OtlpProtoError)) throw err;
        }
      }),
      { numRuns: 2000 },
    );
    fc.assert(
      fc.property(fc.nat(good.length), fc.nat(good.length - 1), fc.nat(255), (cut, at, byte) => {
        const mutated = Uint8Array.from(good.subarray(0, cut));
        if (at < mutated.length) mutated[at] = byte;
        try {
          otlpSpans(decodeOtlpTraces(mutated), LIMITS);
        } catch (err) {
          if (!(err instanceof OtlpProtoError) && (err as Error).constructor.name !== 'SpanFormatError')
            throw err;
        }
      }),
      { numRuns: 2000 },
    );
  });

  it('tells protobuf from JSON text by its first bytes', () => {
    assert.equal(looksLikeOtlpProto(Uint8Array.from([0x0a, 0x81, 0x01])), true);
    assert.equal(looksLikeOtlpProto(Buffer.from('\n{"resourceSpans":[]}')), false);
    assert.equal(looksLikeOtlpProto(Buffer.from('{"a":1}')), false);
  });
});

describe('RecordDecoder with OTLP protobuf records', () => {
  function decoder(otlpProtobuf = true) {
    const dlq = new MemoryDeadLetterQueue();
    return {
      dlq,
      d: new RecordDecoder(decodeConfigSchema.parse({ otlpProtobuf }), dlq, createRegistry(false)),
    };
  }

  it('turns a protobuf record into one OTLP-shaped event keeping the original bytes as raw', () => {
    const { d, dlq } = decoder();
    const bytes = ProtobufTraceSerializer.serializeRequest(readableSpans(5, 4) as never)!;
    const acked: string[] = [];
    const events = d.parse([sourceRecord('1', bytes, acked)]);
    assert.equal(dlq.letters.length, 0);
    assert.equal(events.length, 1);
    assert.deepEqual(events[0]!.value, decodeOtlpTraces(bytes));
    assert.deepEqual(Buffer.from(events[0]!.raw), Buffer.from(bytes));
  });

  it('reads a protobuf record whose first ResourceSpans length byte is "{" (123), which looks like JSON', () => {
    const { d, dlq } = decoder();
    let bytes: Uint8Array | undefined;
    for (let pad = 0; pad < 200 && !bytes; pad++) {
      const b = encodeRequestWithIntAttr(7n, 'x'.repeat(pad));
      if (b[1] === 0x7b) bytes = b;
    }
    assert.ok(bytes, 'a request with a 123-byte ResourceSpans');
    assert.equal(looksLikeOtlpProto(bytes), false);
    const events = d.parse([sourceRecord('1', bytes, [])]);
    assert.equal(dlq.letters.length, 0);
    assert.ok(Array.isArray(events[0]!.value.resourceSpans));
  });

  it('dead-letters malformed protobuf with the reason and the original bytes; off means not read', () => {
    const { d, dlq } = decoder();
    const bad = Uint8Array.from([0x0a, 0x05, 0x0a]);
    const acked: string[] = [];
    assert.equal(d.parse([sourceRecord('1', bad, acked)]).length, 0);
    assert.match(dlq.letters[0]!.reason, /OTLP protobuf.*length_beyond_buffer/);
    assert.deepEqual(Buffer.from(dlq.letters[0]!.data), Buffer.from(bad));
    assert.deepEqual(acked, ['1']);
    const off = decoder(false);
    const bytes = ProtobufTraceSerializer.serializeRequest(readableSpans(5, 4) as never)!;
    assert.equal(off.d.parse([sourceRecord('2', bytes, [])]).length, 0);
    assert.match(off.dlq.letters[0]!.reason, /UTF-8|JSON/);
  });
});

function varint(n: bigint): number[] {
  let v = BigInt.asUintN(64, n);
  const out: number[] = [];
  while (v >= 0x80n) {
    out.push(Number(v & 0x7fn) | 0x80);
    v >>= 7n;
  }
  out.push(Number(v));
  return out;
}

function ld(field: number, body: number[]): number[] {
  return [(field << 3) | 2, ...varint(BigInt(body.length)), ...body];
}

function fixed64(field: number, v: bigint): number[] {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(v);
  return [(field << 3) | 1, ...b];
}

function encodeRequestWithIntAttr(value: bigint, name = 'op'): Uint8Array {
  const anyValue = [(3 << 3) | 0, ...varint(value)];
  const kv = [...ld(1, [0x6e]), ...ld(2, anyValue)];
  const span = [
    ...ld(
      1,
      Array.from({ length: 16 }, (_, i) => i + 1),
    ),
    ...ld(
      2,
      Array.from({ length: 8 }, (_, i) => i + 1),
    ),
    ...ld(5, [...Buffer.from(name)]),
    ...fixed64(7, 1_764_547_200_000_000_000n),
    ...fixed64(8, 1_764_547_200_000_001_000n),
    ...ld(9, kv),
  ];
  return Uint8Array.from(ld(1, ld(2, ld(2, span))));
}
