import assert from 'node:assert/strict';
import { describe, it } from 'vitest';
import { createRegistry } from '../../src/metrics/registry.js';
import { decodeConfigSchema, parseJsonDocument, RecordDecoder } from '../../src/processors/decode.js';
import { MemoryDeadLetterQueue, sourceRecord } from '../helpers/fakes.js';

function decoder(format: 'auto' | 'json' | 'ndjson' = 'auto') {
  const dlq = new MemoryDeadLetterQueue();
  return {
    dlq,
    decoder: new RecordDecoder(decodeConfigSchema.parse({ format }), dlq, createRegistry(false)),
  };
}

describe('parseJsonDocument', () => {
  it('keeps integers beyond 2^53 exact as bigint', () => {
    const v = parseJsonDocument('{"a": 1700000000123456789, "b": -9223372036854775808, "c": 1.5, "d": 42}');
    assert.equal(v.a, 1700000000123456789n);
    assert.equal(v.b, -9223372036854775808n);
    assert.equal(v.c, 1.5);
    assert.equal(v.d, 42);
  });

  it('leaves int64 strings (OTLP/JSON) as strings and uses the fast path', () => {
    const v = parseJsonDocument('{"startTimeUnixNano":"1700000000123456789"}');
    assert.equal(v.startTimeUnixNano, '1700000000123456789');
  });

  it('rejects documents that are not objects', () => {
    assert.throws(() => parseJsonDocument('[1,2]'), /expected a JSON object, got an array/);
    assert.throws(() => parseJsonDocument('42'), /got number/);
    assert.throws(() => parseJsonDocument('null'), /got null/);
  });

  it('survives 10,000-deep nesting without crashing', () => {
    const deep = `{"a":${'['.repeat(10_000)}${']'.repeat(10_000)}}`;
    assert.ok(parseJsonDocument(deep));
  });
});

describe('RecordDecoder', () => {
  it('decodes a JSON record into one event carrying the record ack', () => {
    const { decoder: d, dlq } = decoder();
    const acked: string[] = [];
    const events = d.parse([sourceRecord('1', '{"x":1}', acked)]);
    assert.equal(events.length, 1);
    assert.deepEqual(events[0]!.value, { x: 1 });
    assert.equal(dlq.letters.length, 0);
    events[0]!.ack.done();
    assert.deepEqual(acked, ['1']);
  });

  it('decodes NDJSON into one event per line; the record is acked when all lines are', () => {
    const { decoder: d } = decoder('ndjson');
    const acked: string[] = [];
    const events = d.parse([sourceRecord('7', '{"i":0}\n\n{"i":1}\n{"i":2}\n', acked)]);
    assert.deepEqual(
      events.map((e) => [e.index, e.value.i]),
      [
        [0, 0],
        [1, 1],
        [2, 2],
      ],
    );
    events[0]!.ack.done();
    events[2]!.ack.done();
    assert.deepEqual(acked, []);
    events[1]!.ack.done();
    assert.deepEqual(acked, ['7']);
  });

  it('auto-detects NDJSON but keeps a pretty-printed document whole', () => {
    const { decoder: d } = decoder('auto');
    const acked: string[] = [];
    const pretty = d.parse([sourceRecord('1', '{\n  "a": 1,\n  "b": [1, 2]\n}\n', acked)]);
    assert.equal(pretty.length, 1);
    const nd = d.parse([sourceRecord('2', '{"a":1}\n{"a":2}', acked)]);
    assert.equal(nd.length, 2);
  });

  it('sends malformed JSON, invalid UTF-8 and empty records to the DLQ with a reason, and acks them', () => {
    const { decoder: d, dlq } = decoder();
    const acked: string[] = [];
    const bad = Buffer.from([0x7b, 0x22, 0x61, 0x22, 0x3a, 0xff, 0xfe, 0x7d]);
    const events = d.parse([
      sourceRecord('1', '{"a":', acked),
      sourceRecord('2', bad, acked),
      sourceRecord('3', '   ', acked),
      sourceRecord('4', '{"ok":true}', acked),
      sourceRecord('5', '"just a string"', acked),
    ]);
    assert.equal(events.length, 1);
    assert.deepEqual(
      dlq.letters.map((l) => [l.origin.sequenceNumber, l.component]),
      [
        ['1', 'decode'],
        ['2', 'decode'],
        ['3', 'decode'],
        ['5', 'decode'],
      ],
    );
    assert.match(dlq.letters[0]!.reason, /invalid JSON/);
    assert.match(dlq.letters[1]!.reason, /UTF-8/);
    assert.match(dlq.letters[2]!.reason, /empty/);
    assert.match(dlq.letters[3]!.reason, /expected a JSON object/);
    assert.deepEqual(Buffer.from(dlq.letters[1]!.data), bad, 'the DLQ keeps the original bytes');
    assert.deepEqual(acked, ['1', '2', '3', '5']);
  });

  it('dead-letters only the bad line of an NDJSON record', () => {
    const { decoder: d, dlq } = decoder('ndjson');
    const acked: string[] = [];
    const events = d.parse([sourceRecord('9', '{"a":1}\n{broken\n{"a":3}', acked)]);
    assert.equal(events.length, 2);
    assert.equal(dlq.letters.length, 1);
    assert.equal(dlq.letters[0]!.index, 1);
    assert.equal(Buffer.from(dlq.letters[0]!.data).toString(), '{broken');
    assert.match(dlq.letters[0]!.reason, /line 2/);
    for (const e of events) e.ack.done();
    assert.deepEqual(acked, ['9']);
  });

  it('dead-letters records over maxRecordBytes', () => {
    const dlq = new MemoryDeadLetterQueue();
    const d = new RecordDecoder(decodeConfigSchema.parse({ maxRecordBytes: 10 }), dlq, createRegistry(false));
    const acked: string[] = [];
    assert.equal(d.parse([sourceRecord('1', '{"aaaaaaaaaa":1}', acked)]).length, 0);
    assert.match(dlq.letters[0]!.reason, /exceeds decode.maxRecordBytes/);
  });
});
