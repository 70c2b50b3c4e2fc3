/**
 * OTLP decoding: the same synthetic spans as OTLP protobuf (the Collector awskinesisexporter's default)
 * and as OTLP/JSON, one record per ResourceSpans (one service's spans of a trace, as the exporter writes
 * them), encoded by the OpenTelemetry JS serializers. Measures decode + `otel_spans` in spans/s, as a
 * ratio to the floor of the same run (TextDecoder + JSON.parse of the OTLP/JSON records), and bytes/span.
 *   node --import tsx bench/otlp.ts [--spans N] [--rounds N]
 */
import { parseArgs } from 'node:util';
import { JsonTraceSerializer, ProtobufTraceSerializer } from '@opentelemetry/otlp-transformer';
import { Ack } from '../src/core/ack.js';
import type { SourceRecord } from '../src/core/records.js';
import { createRegistry } from '../src/metrics/registry.js';
import { decodeConfigSchema, RecordDecoder } from '../src/processors/decode.js';
import { OtelSpansProcessor, otelSpansConfigSchema } from '../src/processors/otel-spans.js';
import { generateSpans, type SyntheticSpan } from '../src/producer/synthetic-spans.js';
import { CountingDeadLetters, fmt, machine, median, printTable, seconds, writeResults } from './lib.js';

const { values } = parseArgs({
  options: { spans: { type: 'string' }, rounds: { type: 'string' } },
  strict: false,
});
const SPANS = Number(values.spans ?? 100_000);
const ROUNDS = Number(values.rounds ?? 5);
const SDK_KIND = { SPAN_KIND_INTERNAL: 0, SPAN_KIND_SERVER: 1, SPAN_KIND_CLIENT: 2 } as const;

function hr(nanos: string): [number, number] {
  const n = BigInt(nanos);
  return [Number(n / 1_000_000_000n), Number(n % 1_000_000_000n)];
}

/** A synthetic span as the SDK's ReadableSpan (what the OTLP exporters hand to their serializers). */
function readable(s: SyntheticSpan, resources: Map<string, unknown>): unknown {
  let resource = resources.get(s.serviceName);
  if (!resource) {
    resource = { attributes: s.resource };
    resources.set(s.serviceName, resource);
  }
  return {
    name: s.name,
    kind: SDK_KIND[s.kind],
    spanContext: () => ({ traceId: s.traceId, spanId: s.spanId, traceFlags: 1 }),
    parentSpanContext: s.parentSpanId
      ? { traceId: s.traceId, spanId: s.parentSpanId, traceFlags: 1 }
      : undefined,
    startTime: hr(s.startTimeUnixNano),
    endTime: hr(s.endTimeUnixNano),
    status: s.status,
    attributes: s.attributes,
    links: [],
    events: [],
    duration: [0, 0],
    ended: true,
    resource,
    instrumentationScope: { name: '@opentelemetry/instrumentation-http', version: '0.57.0' },
    droppedAttributesCount: 0,
    droppedEventsCount: 0,
    droppedLinksCount: 0,
  };
}

function records(payloads: Uint8Array[]): SourceRecord[] {
  return payloads.map((data, i) => ({
    origin: {
      stream: 'bench',
      shardId: 'shardId-000000000000',
      sequenceNumber: String(i),
      subSequenceNumber: 0,
      partitionKey: 'k',
      arrivalTime: new Date(0),
    },
    data,
    ack: new Ack(() => {}),
  }));
}

function run(payloads: Uint8Array[]): { seconds: number; spans: number; letters: number } {
  const dlq = new CountingDeadLetters();
  const metrics = createRegistry(false);
  const decoder = new RecordDecoder(decodeConfigSchema.parse({}), dlq, metrics);
  const otel = new OtelSpansProcessor(
    'otel',
    otelSpansConfigSchema.parse({ type: 'otel_spans' }),
    dlq,
    metrics,
  );
  const input = records(payloads);
  const started = process.hrtime.bigint();
  let spans = 0;
  for (let i = 0; i < input.length; i += 500) {
    spans += otel.process(decoder.parse(input.slice(i, i + 500))).length;
  }
  return { seconds: seconds(started), spans, letters: dlq.letters };
}

function main(): void {
  const spans = [...generateSpans(SPANS, { seed: 7, spansPerTrace: 6 })];
  const resources = new Map<string, unknown>();
  // One record per (trace, service): the exporter writes one record per ResourceSpans.
  const groups = new Map<string, unknown[]>();
  for (const s of spans) {
    const key = `${s.traceId}/${s.serviceName}`;
    let g = groups.get(key);
    if (!g) {
      g = [];
      groups.set(key, g);
    }
    g.push(readable(s, resources));
  }
  const proto: Uint8Array[] = [];
  const json: Uint8Array[] = [];
  for (const g of groups.values()) {
    proto.push(ProtobufTraceSerializer.serializeRequest(g as never)!);
    json.push(JsonTraceSerializer.serializeRequest(g as never)!);
  }
  const bytes = (xs: Uint8Array[]) => xs.reduce((n, x) => n + x.byteLength, 0);
  const utf8 = new TextDecoder();
  const t = { floor: [] as number[], json: [] as number[], proto: [] as number[] };
  let letters = 0;
  for (let round = 0; round < ROUNDS; round++) {
    let sink = 0;
    const started = process.hrtime.bigint();
    for (const r of json) sink += Object.keys(JSON.parse(utf8.decode(r))).length;
    t.floor.push(SPANS / seconds(started));
    if (sink === 0) throw new Error('floor parsed nothing');
    const j = run(json);
    const p = run(proto);
    if (j.spans !== SPANS || p.spans !== SPANS)
      throw new Error(`spans lost: json ${j.spans}, proto ${p.spans}`);
    letters += j.letters + p.letters;
    t.json.push(SPANS / j.seconds);
    t.proto.push(SPANS / p.seconds);
  }
  if (letters > 0) throw new Error(`${letters} dead letters`);
  const floor = median(t.floor);
  const rows = [
    { figure: 'JSON.parse floor (OTLP/JSON records)', value: `${fmt(floor)} spans/s`, ratio: 1 },
    {
      figure: 'OTLP/JSON: decode + otel_spans',
      value: `${fmt(median(t.json))} spans/s`,
      ratio: median(t.json) / floor,
      note: `${fmt(bytes(json) / SPANS)} bytes/span`,
    },
    {
      figure: 'OTLP protobuf: decode + otel_spans',
      value: `${fmt(median(t.proto))} spans/s`,
      ratio: median(t.proto) / floor,
      note: `${fmt(bytes(proto) / SPANS)} bytes/span`,
    },
  ];
  printTable(
    `OTLP decoding, ${fmt(SPANS)} spans in ${fmt(proto.length)} records, median of ${ROUNDS} rounds`,
    rows,
  );
  const file = writeResults('otlp', {
    machine: machine(),
    spans: SPANS,
    records: proto.length,
    rounds: ROUNDS,
    t,
    rows,
  });
  process.stdout.write(`\nresults: ${file}\n`);
}

main();
