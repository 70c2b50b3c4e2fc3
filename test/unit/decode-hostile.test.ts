import assert from 'node:assert/strict';
import { describe, it } from 'vitest';
import { Ack } from '../../src/core/ack.js';
import { createRegistry } from '../../src/metrics/registry.js';
import {
  decodeConfigSchema,
  NumberRangeError,
  parseJsonDocument,
  RecordDecoder,
} from '../../src/processors/decode.js';
import { MemoryDeadLetterQueue, origin } from '../helpers/fakes.js';

function decode(texts: string[]) {
  const dlq = new MemoryDeadLetterQueue();
  const metrics = createRegistry(false);
  const d = new RecordDecoder(decodeConfigSchema.parse({}), dlq, metrics);
  const acked: string[] = [];
  const events = d.parse(
    texts.map((t, i) => ({
      origin: origin(String(i + 1)),
      data: Buffer.from(t),
      ack: new Ack(() => acked.push(String(i + 1))),
    })),
  );
  return { events, dlq, metrics, acked };
}

describe('numbers JSON cannot keep are never silently changed', () => {
  it('dead-letters 1e400 and -1e400 with the reason and the original bytes', async () => {
    const doc = '{"big":1e400,"neg":-1e400}';
    const { events, dlq, metrics, acked } = decode([doc, '{"ok":1e308}', '{"id":1}\n{"x":-2E+999}']);
    assert.deepEqual(
      events.map((e) => e.value),
      [{ ok: 1e308 }, { id: 1 }],
    );
    assert.equal(dlq.letters.length, 2);
    assert.equal(Buffer.from(dlq.letters[0]!.data).toString(), doc);
    assert.match(dlq.letters[0]!.reason, /beyond the range of a double/);
    assert.match(dlq.letters[1]!.reason, /^line 2: .*beyond the range of a double/);
    assert.equal(Buffer.from(dlq.letters[1]!.data).toString(), '{"x":-2E+999}');
    assert.match(await metrics.metrics(), /ksw_decode_failures_total\{reason="number_out_of_range"\} 2/);
    for (const e of events) e.ack.done();
    assert.deepEqual(acked.sort(), ['1', '2', '3']);
  });

  it('overflow is caught on the exact (bigint) path too, and NaN/Infinity literals are invalid JSON', () => {
    assert.throws(() => parseJsonDocument('{"id":18446744073709551616,"x":1e400}'), NumberRangeError);
    for (const bad of ['{"x":NaN}', '{"x":Infinity}', '{"x":-Infinity}'])
      assert.throws(
        () => parseJsonDocument(bad),
        (e: unknown) => !(e instanceof NumberRangeError),
        bad,
      );
  });
});

describe('duplicate keys: one rule, the last one wins', () => {
  it('on the fast path and on the exact path alike', () => {
    assert.deepEqual(parseJsonDocument('{"a":1,"a":2}'), { a: 2 });
    assert.deepEqual(parseJsonDocument('{"id":18446744073709551616,"a":1,"a":2}'), {
      id: 18446744073709551616n,
      a: 2,
    });
    assert.deepEqual(parseJsonDocument('{"o":{"k":"x","k":{"n":9007199254740993}}}'), {
      o: { k: { n: 9007199254740993n } },
    });
  });
});
