import assert from 'node:assert/strict';
import { deflateRawSync, deflateSync, gzipSync } from 'node:zlib';
import { ProtobufTraceSerializer } from '@opentelemetry/otlp-transformer';
import { describe, it } from 'vitest';
import { Ack } from '../../src/core/ack.js';
import type { SourceRecord } from '../../src/core/records.js';
import { createRegistry } from '../../src/metrics/registry.js';
import { decodeConfigSchema, RecordDecoder } from '../../src/processors/decode.js';
import { isZlib, mayBeRawDeflate } from '../../src/processors/gzip.js';
import { decodeOtlpTraces } from '../../src/processors/otlp-proto.js';
import { MemoryDeadLetterQueue, origin } from '../helpers/fakes.js';

function rec(seq: string, data: Uint8Array, acked: string[]): SourceRecord {
  return { origin: origin(seq), data, ack: new Ack(() => acked.push(seq)) };
}

function decoder(gzip: unknown = {}) {
  const dlq = new MemoryDeadLetterQueue();
  return { dlq, d: new RecordDecoder(decodeConfigSchema.parse({ gzip }), dlq, createRegistry(false)) };
}

/** One small OTLP protobuf request (what the Collector exporter compresses). */
function protoRequest(): Uint8Array {
  const span = {
    name: 'GET /a',
    kind: 1,
    spanContext: () => ({
      traceId: '0af7651916cd43dd8448eb211c80319c',
      spanId: 'b7ad6b7169203331',
      traceFlags: 1,
    }),
    startTime: [1_764_547_200, 1],
    endTime: [1_764_547_200, 5_000_001],
    status: { code: 2, message: 'x' },
    attributes: { 'http.route': '/a' },
    links: [],
    events: [],
    duration: [0, 5_000_000],
    ended: true,
    resource: { attributes: { 'service.name': 'cart' } },
    instrumentationScope: { name: 'lib', version: '1' },
    droppedAttributesCount: 0,
    droppedEventsCount: 0,
    droppedLinksCount: 0,
  };
  return ProtobufTraceSerializer.serializeRequest([span] as never)!;
}

describe('zlib and raw deflate records (Collector exporter compression zlib / flate)', () => {
  it('detects zlib headers by their check bits, never JSON or protobuf', () => {
    for (const level of [0, 1, 6, 9]) assert.ok(isZlib(deflateSync('{"a":1}', { level })));
    assert.equal(isZlib(Buffer.from('{"a":1}')), false);
    assert.equal(isZlib(protoRequest()), false);
    assert.equal(isZlib(Uint8Array.from([0x78, 0x9d, 0])), false);
    assert.equal(mayBeRawDeflate(Buffer.from('{"a":1}')), false);
    assert.equal(mayBeRawDeflate(deflateRawSync('{"a":1}')), true);
  });

  it('inflates zlib records by default, JSON and protobuf alike, in order with plain ones', async () => {
    const { d, dlq } = decoder();
    const proto = protoRequest();
    const acked: string[] = [];
    const events = await d.decode([
      rec('1', deflateSync('{"a":1}'), acked),
      rec('2', Buffer.from('{"a":2}'), acked),
      rec('3', deflateSync(proto), acked),
      rec('4', gzipSync('{"a":4}'), acked),
    ]);
    assert.equal(dlq.letters.length, 0);
    assert.deepEqual(events[0]!.value, { a: 1 });
    assert.deepEqual(events[1]!.value, { a: 2 });
    assert.deepEqual(events[2]!.value, decodeOtlpTraces(proto));
    assert.deepEqual(events[3]!.value, { a: 4 });
    d.close();
  });

  it('inflates raw deflate only with rawDeflate: try; a record that is not deflate passes on unchanged', async () => {
    const proto = protoRequest();
    const off = decoder();
    await off.d.decode([rec('1', deflateRawSync(proto), [])]);
    assert.equal(off.dlq.letters.length, 1);
    const on = decoder({ rawDeflate: 'try' });
    const acked: string[] = [];
    const events = await on.d.decode([
      rec('1', deflateRawSync(proto), acked),
      rec('2', deflateRawSync('{"b":1}'), acked),
      rec('3', proto, acked),
      rec('4', Buffer.from('{"b":2}'), acked),
    ]);
    assert.equal(on.dlq.letters.length, 0, on.dlq.letters[0]?.reason);
    assert.deepEqual(events[0]!.value, decodeOtlpTraces(proto));
    assert.deepEqual(events[1]!.value, { b: 1 });
    assert.deepEqual(events[2]!.value, decodeOtlpTraces(proto));
    assert.deepEqual(Buffer.from(events[2]!.raw), Buffer.from(proto));
    assert.deepEqual(events[3]!.value, { b: 2 });
    on.d.close();
    off.d.close();
  });

  it('dead-letters zlib and raw deflate bombs and corrupt zlib with the original bytes', async () => {
    const { d, dlq } = decoder({ maxDecompressedBytes: 1024 * 1024, rawDeflate: 'try' });
    const big = Buffer.alloc(32 * 1024 * 1024, 0x20);
    const zbomb = deflateSync(big);
    const rbomb = deflateRawSync(big);
    const corrupt = deflateSync('{"a":1}').subarray(0, 6);
    const acked: string[] = [];
    const events = await d.decode([rec('1', zbomb, acked), rec('2', rbomb, acked), rec('3', corrupt, acked)]);
    assert.equal(events.length, 0);
    assert.equal(dlq.letters.length, 3);
    // Inflates run concurrently: find each letter by its bytes.
    const reasonOf = (data: Uint8Array) =>
      dlq.letters.find((l) => Buffer.from(l.data).equals(Buffer.from(data)))?.reason ?? '';
    assert.match(reasonOf(zbomb), /zlib data inflates past decode\.gzip\.maxDecompressedBytes/);
    assert.match(reasonOf(rbomb), /deflate data inflates past/);
    assert.match(reasonOf(corrupt), /corrupt zlib data/);
    assert.deepEqual([...acked].sort(), ['1', '2', '3']);
    d.close();
  });

  it('leaves zlib alone when disabled', async () => {
    const { d, dlq } = decoder({ zlib: false });
    await d.decode([rec('1', deflateSync('{"a":1}'), [])]);
    assert.match(dlq.letters[0]!.reason, /UTF-8|JSON/);
    d.close();
  });
});
