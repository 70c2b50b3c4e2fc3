/**
 * KPL de-aggregation: our decoder against aggregates produced by AWS's own `aws-kinesis-agg` package (not
 * only our encoder), our encoder against AWS's de-aggregator, and bad aggregates (MD5, truncation, indexes,
 * random corruption) always rejected with an KplAggregateError. Then the record converter: one watermark
 * entry per user record, checkpoint resume in the middle of an aggregate, bad aggregates to the DLQ.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { createRequire } from 'node:module';
import type { _Record } from '@aws-sdk/client-kinesis';
import { describe, it } from 'vitest';
import {
  aggregate,
  deaggregate,
  isAggregated,
  KPL_MAGIC,
  KplAggregateError,
} from '../../src/consumers/kpl.js';
import { RecordConverter, type StartingPoint } from '../../src/consumers/shard-reader.js';
import { ShardWatermark } from '../../src/core/watermark.js';
import { createRegistry } from '../../src/metrics/registry.js';
import { seededRandom } from '../../src/producer/synthetic-spans.js';
import { MemoryDeadLetterQueue } from '../helpers/fakes.js';
import { silentLogger } from '../helpers/stack.js';

const require = createRequire(import.meta.url);
const awsAgg = require('aws-kinesis-agg') as {
  RecordAggregator: new () => {
    addUserRecord(r: { partitionKey: string; explicitHashKey?: string; data: Buffer }): void;
    build(): { partitionKey: string; data: Buffer; ExplicitHashKey?: string };
  };
  deaggregateSync(
    record: { data: string; partitionKey: string; sequenceNumber: string },
    computeChecksums: boolean,
    cb: (
      err: Error | null,
      records?: Array<{
        partitionKey: string;
        explicitPartitionKey?: string;
        subSequenceNumber: number;
        data: string;
      }>,
    ) => void,
  ): void;
};

interface Input {
  partitionKey: string;
  explicitHashKey?: string;
  data: Buffer;
}

function userRecords(n: number, seed = 7): Input[] {
  const random = seededRandom(seed);
  return Array.from({ length: n }, (_, i) => ({
    // Repeated keys exercise the partition key table; some records carry an explicit hash key.
    partitionKey: `key-${Math.floor(random() * 5)}-ü`,
    ...(i % 3 === 0 ? { explicitHashKey: String(BigInt(i) * 10n ** 30n + 17n) } : {}),
    data: Buffer.from(JSON.stringify({ i, text: 'x'.repeat(Math.floor(random() * 300)) })),
  }));
}

function awsAggregate(records: Input[]): Buffer {
  const agg = new awsAgg.RecordAggregator();
  for (const r of records) agg.addUserRecord({ ...r });
  return agg.build().data;
}

function awsDeaggregate(data: Uint8Array) {
  let out: Array<{
    partitionKey: string;
    explicitPartitionKey?: string;
    subSequenceNumber: number;
    data: string;
  }> = [];
  awsAgg.deaggregateSync(
    { data: Buffer.from(data).toString('base64'), partitionKey: 'outer', sequenceNumber: '1' },
    true,
    (err, records) => {
      if (err) throw err;
      out = records ?? [];
    },
  );
  return out;
}

describe('KPL de-aggregation', () => {
  it('reads aggregates produced by aws-kinesis-agg (AWS): keys, explicit hash keys, data, sub-sequence numbers', () => {
    const input = userRecords(60);
    const data = awsAggregate(input);
    assert.ok(isAggregated(data));
    const out = deaggregate(data);
    assert.equal(out.length, input.length);
    out.forEach((u, i) => {
      assert.equal(u.subSequenceNumber, i);
      assert.equal(u.partitionKey, input[i]!.partitionKey);
      assert.equal(u.explicitHashKey, input[i]!.explicitHashKey);
      assert.deepEqual(Buffer.from(u.data), input[i]!.data);
    });
  });

  it('our encoder produces aggregates aws-kinesis-agg reads back, MD5 checked', () => {
    const input = userRecords(25, 3);
    const ours = aggregate(input);
    const theirs = awsDeaggregate(ours);
    assert.equal(theirs.length, input.length);
    theirs.forEach((u, i) => {
      assert.equal(u.partitionKey, input[i]!.partitionKey);
      assert.equal(u.subSequenceNumber, i);
      assert.deepEqual(Buffer.from(u.data, 'base64'), input[i]!.data);
      if (input[i]!.explicitHashKey) assert.equal(u.explicitPartitionKey, input[i]!.explicitHashKey);
    });
    assert.deepEqual(
      deaggregate(ours).map((u) => Buffer.from(u.data).toString()),
      input.map((r) => r.data.toString()),
    );
  });

  it('a plain record is not an aggregate', () => {
    assert.equal(isAggregated(Buffer.from('{"a":1}')), false);
    assert.equal(isAggregated(Uint8Array.of(0xf3, 0x89)), false);
  });

  it('rejects a bad MD5, truncation, an index outside its table and an empty aggregate', () => {
    const good = awsAggregate(userRecords(4));
    const flipped = Buffer.from(good);
    flipped[10] = flipped[10]! ^ 0xff;
    assert.throws(
      () => deaggregate(flipped),
      (e: unknown) => e instanceof KplAggregateError && e.reason === 'md5-mismatch',
    );

    const withMd5 = (body: Uint8Array) =>
      Buffer.concat([KPL_MAGIC, body, createHash('md5').update(body).digest()]);
    const body = good.subarray(4, good.length - 16);
    // Truncated protobuf with a matching MD5: malformed, not an MD5 error.
    assert.throws(
      () => deaggregate(withMd5(body.subarray(0, body.length - 3))),
      (e: unknown) => e instanceof KplAggregateError && e.reason === 'malformed',
    );
    // One partition key, record pointing at key index 3.
    const badIndex = Uint8Array.of(0x0a, 0x01, 0x6b, 0x1a, 0x05, 0x08, 0x03, 0x1a, 0x01, 0x78);
    assert.throws(() => deaggregate(withMd5(badIndex)), /partition key 3 of a table of 1/);
    assert.throws(
      () => deaggregate(withMd5(Uint8Array.of(0x0a, 0x01, 0x6b))),
      (e: unknown) => e instanceof KplAggregateError && e.reason === 'empty',
    );
    assert.throws(() => deaggregate(Buffer.from(KPL_MAGIC)), /shorter than magic \+ MD5/);
  });

  it('random corruption (MD5 fixed up) only ever yields records or an KplAggregateError', () => {
    const random = seededRandom(42);
    const body = Buffer.from(awsAggregate(userRecords(8)).subarray(4));
    const protobuf = body.subarray(0, body.length - 16);
    let rejected = 0;
    for (let round = 0; round < 2_000; round++) {
      const mutated = Buffer.from(protobuf);
      for (let k = 0; k < 1 + Math.floor(random() * 4); k++)
        mutated[Math.floor(random() * mutated.length)] = Math.floor(random() * 256);
      const data = Buffer.concat([KPL_MAGIC, mutated, createHash('md5').update(mutated).digest()]);
      try {
        for (const u of deaggregate(data)) assert.ok(u.data.byteLength <= data.byteLength);
      } catch (err) {
        assert.ok(err instanceof KplAggregateError, `unexpected ${String(err)}`);
        rejected++;
      }
    }
    assert.ok(rejected > 0);
  });
});

describe('RecordConverter', () => {
  const seq = (n: number) => `4959${String(n).padStart(20, '0')}`;
  function kinesisRecord(n: number, data: Uint8Array, partitionKey = 'outer'): _Record {
    return {
      SequenceNumber: seq(n),
      Data: data,
      PartitionKey: partitionKey,
      ApproximateArrivalTimestamp: new Date(0),
    };
  }
  function converter(
    start: StartingPoint,
    opts: { deaggregate?: boolean; dlq?: MemoryDeadLetterQueue } = {},
  ) {
    const watermark = new ShardWatermark(1 << 30, start.kind === 'after' ? start.position : undefined);
    const c = new RecordConverter(
      {
        type: 'polling',
        stream: 's',
        startPosition: 'TRIM_HORIZON',
        maxInFlightBytes: 1 << 30,
        deaggregate: opts.deaggregate ?? true,
        backoffBaseMs: 1,
        backoffMaxMs: 1,
      },
      'shardId-000000000000',
      {
        kinesis: undefined as never,
        logger: silentLogger,
        metrics: createRegistry(false),
        watermark,
        deliver: async () => {},
        ...(opts.dlq ? { dlq: opts.dlq } : {}),
      },
      start,
    );
    return { c, watermark };
  }

  it('gives each user record its own position and ack; the watermark moves per user record', () => {
    const { c, watermark } = converter({ kind: 'initial', position: 'TRIM_HORIZON' });
    const agg = awsAggregate(userRecords(5));
    const out = c.convert([kinesisRecord(1, Buffer.from('{"plain":1}')), kinesisRecord(2, agg)]);
    assert.equal(out.length, 6);
    assert.deepEqual(
      out.map((r) => `${r.origin.sequenceNumber.slice(-2)}.${r.origin.subSequenceNumber}`),
      ['01.0', '02.0', '02.1', '02.2', '02.3', '02.4'],
    );
    assert.equal(out[1]!.origin.partitionKey, userRecords(5)[0]!.partitionKey);
    assert.equal(out[1]!.origin.explicitHashKey, userRecords(5)[0]!.explicitHashKey);
    for (const r of out.slice(0, 3)) r.ack.done();
    assert.deepEqual(watermark.watermark, { sequenceNumber: seq(2), subSequenceNumber: 1 });
    out[4]!.ack.done();
    assert.deepEqual(watermark.watermark, { sequenceNumber: seq(2), subSequenceNumber: 1 });
    out[3]!.ack.done();
    assert.deepEqual(watermark.watermark, { sequenceNumber: seq(2), subSequenceNumber: 3 });
  });

  it('resuming from a checkpoint in the middle of an aggregate skips the sub-records already done', () => {
    const agg = awsAggregate(userRecords(5));
    const { c } = converter({ kind: 'after', position: { sequenceNumber: seq(2), subSequenceNumber: 2 } });
    // The reader re-reads the checkpointed record (AT_SEQUENCE_NUMBER): sub-records 0..2 are skipped.
    const out = c.convert([kinesisRecord(2, agg), kinesisRecord(3, Buffer.from('{"next":1}'))]);
    assert.deepEqual(
      out.map((r) => `${r.origin.sequenceNumber.slice(-1)}.${r.origin.subSequenceNumber}`),
      ['2.3', '2.4', '3.0'],
    );
    // A plain checkpointed record is skipped as a whole.
    const plain = converter({ kind: 'after', position: { sequenceNumber: seq(3), subSequenceNumber: 0 } });
    const rest = plain.c.convert([
      kinesisRecord(3, Buffer.from('{"a":1}')),
      kinesisRecord(4, Buffer.from('{}')),
    ]);
    assert.deepEqual(
      rest.map((r) => r.origin.sequenceNumber),
      [seq(4)],
    );
  });

  it('sends an aggregate with a bad MD5 to the DLQ with the reason; the checkpoint passes it', () => {
    const dlq = new MemoryDeadLetterQueue();
    const { c, watermark } = converter({ kind: 'initial', position: 'TRIM_HORIZON' }, { dlq });
    const bad = Buffer.from(awsAggregate(userRecords(3)));
    bad[bad.length - 1] = bad[bad.length - 1]! ^ 1;
    const out = c.convert([kinesisRecord(1, bad), kinesisRecord(2, Buffer.from('{"ok":1}'))]);
    assert.equal(out.length, 1);
    assert.equal(dlq.letters.length, 1);
    assert.match(dlq.letters[0]!.reason, /MD5 trailer that does not match/);
    assert.equal(dlq.letters[0]!.component, 'kpl');
    assert.deepEqual(Buffer.from(dlq.letters[0]!.data), bad);
    out[0]!.ack.done();
    assert.equal(watermark.watermark?.sequenceNumber, seq(2));
  });

  it('with deaggregate: false an aggregate is one plain record', () => {
    const { c } = converter({ kind: 'initial', position: 'TRIM_HORIZON' }, { deaggregate: false });
    const out = c.convert([kinesisRecord(1, awsAggregate(userRecords(3)))]);
    assert.equal(out.length, 1);
    assert.equal(out[0]!.origin.subSequenceNumber, 0);
  });
});
