import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { gzipSync } from 'node:zlib';
import { describe, it } from 'vitest';
import { Ack } from '../../src/core/ack.js';
import type { SourceRecord } from '../../src/core/records.js';
import { createRegistry } from '../../src/metrics/registry.js';
import { ChunkAssembler, chunkConfigSchema, decodeChunk, encodeChunks } from '../../src/processors/chunks.js';
import { decodeConfigSchema, RecordDecoder } from '../../src/processors/decode.js';
import { MemoryDeadLetterQueue, origin } from '../helpers/fakes.js';

function rec(seq: string, data: Uint8Array, acked: string[], partitionKey = 'pk'): SourceRecord {
  return { origin: origin(seq, { partitionKey }), data, ack: new Ack(() => acked.push(seq)) };
}

function decoder(config: unknown = {}) {
  const dlq = new MemoryDeadLetterQueue();
  return { dlq, d: new RecordDecoder(decodeConfigSchema.parse(config), dlq, createRegistry(false)) };
}

describe('gzip records', () => {
  it('inflates gzip records detected by magic bytes, next to plain ones, in order', async () => {
    const { d, dlq } = decoder();
    const acked: string[] = [];
    const events = await d.decode([
      rec('1', gzipSync('{"a":1}\n{"a":2}'), acked),
      rec('2', Buffer.from('{"a":3}'), acked),
      rec('3', gzipSync('{"a":4}'), acked),
    ]);
    assert.deepEqual(
      events.map((e) => e.value.a),
      [1, 2, 3, 4],
    );
    assert.equal(dlq.letters.length, 0);
    for (const e of events) e.ack.done();
    assert.deepEqual(acked, ['1', '2', '3']);
    d.close();
  });

  it('sends a gzip bomb to the DLQ with the original bytes instead of inflating it', async () => {
    const { d, dlq } = decoder({ gzip: { maxDecompressedBytes: 1024 * 1024 } });
    const bomb = gzipSync(Buffer.alloc(64 * 1024 * 1024, 0x20));
    assert.ok(bomb.byteLength < 100_000);
    const acked: string[] = [];
    const events = await d.decode([rec('9', bomb, acked), rec('10', Buffer.from('{"ok":true}'), acked)]);
    assert.equal(events.length, 1);
    assert.equal(dlq.letters.length, 1);
    assert.match(dlq.letters[0]!.reason, /inflates past decode\.gzip\.maxDecompressedBytes/);
    assert.deepEqual(Buffer.from(dlq.letters[0]!.data), bomb);
    assert.deepEqual(acked, ['9']);
    d.close();
  });

  it('sends corrupt gzip to the DLQ', async () => {
    const { d, dlq } = decoder();
    const acked: string[] = [];
    const broken = gzipSync('{"a":1}').subarray(0, 12);
    assert.equal((await d.decode([rec('1', broken, acked)])).length, 0);
    assert.match(dlq.letters[0]!.reason, /corrupt gzip data/);
    assert.deepEqual(acked, ['1']);
    d.close();
  });

  it('leaves gzip alone when disabled (the record then fails JSON decoding, with the reason)', async () => {
    const { d, dlq } = decoder({ gzip: { enabled: false } });
    await d.decode([rec('1', gzipSync('{"a":1}'), [])]);
    assert.match(dlq.letters[0]!.reason, /UTF-8|JSON/);
    d.close();
  });
});

describe('chunked records', () => {
  it('round-trips the chunk encoding', () => {
    const message = randomBytes(10_000);
    const chunks = encodeChunks(message, 3_000, 'm1');
    assert.equal(chunks.length, 4);
    const decoded = chunks.map(decodeChunk);
    assert.deepEqual(
      decoded.map((c) => c.header.i),
      [0, 1, 2, 3],
    );
    assert.equal(decoded[3]!.header.last, true);
    assert.equal(decoded[3]!.header.n, 4);
    assert.deepEqual(Buffer.concat(decoded.map((c) => c.payload)), message);
  });

  it('reassembles a message from its chunks; the message acks every chunk; other keys pass in between', async () => {
    const { d, dlq } = decoder();
    const doc = Buffer.from(JSON.stringify({ big: 'x'.repeat(5000), n: 1 }));
    const chunks = encodeChunks(doc, 1_500);
    const acked: string[] = [];
    const records = chunks.map((c, i) => rec(String(10 + i * 2), c, acked, 'big'));
    // An unrelated record between the chunks
    records.splice(1, 0, rec('11', Buffer.from('{"small":1}'), acked, 'other'));
    const first = await d.decode(records.slice(0, 3));
    assert.deepEqual(
      first.map((e) => e.value.small),
      [1],
    );
    const second = await d.decode(records.slice(3));
    assert.equal(second.length, 1);
    assert.equal(second[0]!.value.n, 1);
    assert.deepEqual(Buffer.from(second[0]!.raw), doc);
    assert.equal(second[0]!.origin.sequenceNumber, records[records.length - 1]!.origin.sequenceNumber);
    assert.equal(dlq.letters.length, 0);
    first[0]!.ack.done();
    assert.deepEqual(acked, ['11']);
    second[0]!.ack.done();
    assert.deepEqual(acked.sort(), ['10', '11', '12', '14', '16'].sort());
    d.close();
  });

  it('sends chunks to the DLQ when one is missing or out of order', async () => {
    const { d, dlq } = decoder();
    const chunks = encodeChunks(randomBytes(4000), 1000, 'gap');
    const acked: string[] = [];
    // chunk 2 is missing
    const out = await d.decode([
      rec('1', chunks[0]!, acked),
      rec('2', chunks[1]!, acked),
      rec('3', chunks[3]!, acked),
    ]);
    assert.equal(out.length, 0);
    assert.equal(dlq.letters.length, 3);
    assert.match(dlq.letters[0]!.reason, /chunk 3 of message gap arrived after chunk 1/);
    assert.deepEqual(acked.sort(), ['1', '2', '3']);
    // A chunk that is not the first, with nothing held for its message
    const orphan = encodeChunks(randomBytes(3000), 1000, 'orphan');
    await d.decode([rec('4', orphan[1]!, acked)]);
    assert.match(dlq.letters[3]!.reason, /arrived without chunk 0/);
    d.close();
  });

  it('drops an exact duplicate of the previous chunk (producer retry) and still reassembles', async () => {
    const { d, dlq } = decoder();
    const msg = Buffer.from('{"dup":true}');
    const chunks = encodeChunks(msg, 5, 'd');
    const acked: string[] = [];
    const records = [
      rec('1', chunks[0]!, acked),
      rec('2', chunks[0]!, acked),
      ...chunks.slice(1).map((c, i) => rec(String(3 + i), c, acked)),
    ];
    const out = await d.decode(records);
    assert.equal(out.length, 1);
    assert.equal(out[0]!.value.dup, true);
    assert.equal(dlq.letters.length, 0);
    out[0]!.ack.done();
    assert.equal(acked.length, records.length);
    d.close();
  });

  it('rejects a message whose checksum or size does not match', async () => {
    const { d, dlq } = decoder();
    const chunks = encodeChunks(Buffer.from('{"a":"hello world"}'), 8, 'c');
    // Flip one payload byte of the first chunk
    const tampered = Buffer.from(chunks[0]!);
    tampered[tampered.length - 1] = tampered[tampered.length - 1]! ^ 1;
    await d.decode([rec('1', tampered, []), ...chunks.slice(1).map((c, i) => rec(String(2 + i), c, []))]);
    assert.equal(dlq.letters.length, chunks.length);
    assert.match(dlq.letters[0]!.reason, /SHA-256/);
    d.close();
  });

  it('times out incomplete messages and evicts the oldest past the memory limit', () => {
    let now = 0;
    const dlq = new MemoryDeadLetterQueue();
    const assembler = new ChunkAssembler(
      chunkConfigSchema.parse({ timeoutMs: 1000, maxBufferedBytes: 2048 }),
      dlq,
      createRegistry(false),
      undefined,
      () => now,
    );
    const acked: string[] = [];
    const a = encodeChunks(randomBytes(3000), 1000, 'a');
    assert.equal(assembler.add(rec('1', a[0]!, acked)), undefined);
    now = 500;
    const b = encodeChunks(randomBytes(3000), 1000, 'b');
    assembler.add(rec('2', b[0]!, acked));
    assert.equal(assembler.pendingMessages, 2);
    now = 1001;
    assembler.expire();
    assert.equal(assembler.pendingMessages, 1);
    assert.match(dlq.letters[0]!.reason, /did not arrive within 1000 ms/);
    assert.deepEqual(acked, ['1']);
    // b holds 1000 bytes; c's first two chunks push the total past 2048: b (the oldest) is evicted.
    const c = encodeChunks(randomBytes(3000), 1000, 'c');
    assembler.add(rec('3', c[0]!, acked));
    assembler.add(rec('4', c[1]!, acked));
    assert.equal(assembler.pendingMessages, 1);
    assert.match(dlq.letters[1]!.reason, /evicted/);
    assert.ok(assembler.heldBytes <= 2048);
    assert.equal(assembler.add(rec('5', c[2]!, acked))?.data.byteLength, 3000);
    assembler.close();
  });

  it('caps the size of one message', async () => {
    const { d, dlq } = decoder({ chunks: { maxMessageBytes: 2048 } });
    const chunks = encodeChunks(randomBytes(5000), 1000, 'huge');
    await d.decode(chunks.map((c, i) => rec(String(i + 1), c, [])));
    // Chunks 0-2 go with the size reason; 3 and 4 then have no chunk 0 held any more.
    assert.equal(dlq.letters.length, chunks.length);
    assert.deepEqual(
      dlq.letters.map((l) => /maxMessageBytes/.test(l.reason)),
      [true, true, true, false, false],
    );
    assert.match(dlq.letters[4]!.reason, /without chunk 0/);
    d.close();
  });

  it('gzip inside chunks: a compressed message split into chunks decodes', async () => {
    const { d } = decoder();
    const lines = Array.from({ length: 200 }, (_, i) => JSON.stringify({ i }));
    const chunks = encodeChunks(gzipSync(lines.join('\n')), 200);
    const out = await d.decode(chunks.map((c, i) => rec(String(i + 1), c, [])));
    assert.deepEqual(
      out.map((e) => e.value.i),
      lines.map((_, i) => i),
    );
    d.close();
  });
});
