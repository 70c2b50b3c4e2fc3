import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { KinesisClient, PutRecordsCommand } from '@aws-sdk/client-kinesis';
import { batchRecords, KinesisProducer, MAX_RECORD_BYTES } from '../../src/producer/kinesis-producer.js';
import { generateSpans } from '../../src/producer/synthetic-spans.js';

const rec = (pk: string, bytes: number) => ({ partitionKey: pk, data: new Uint8Array(bytes) });

describe('batchRecords', () => {
  it('splits at 500 records', () => {
    const batches = batchRecords(Array.from({ length: 1_201 }, (_, i) => rec(`k${i}`, 10)));
    assert.deepEqual(
      batches.map((b) => b.length),
      [500, 500, 201],
    );
  });

  it('splits at 5 MiB counting data and partition keys, keeping order', () => {
    const records = Array.from({ length: 12 }, (_, i) => rec(`key-${i}`, 1_000_000));
    const batches = batchRecords(records);
    assert.deepEqual(
      batches.map((b) => b.length),
      [5, 5, 2],
    );
    assert.deepEqual(batches.flat(), records);
    for (const b of batches) {
      const size = b.reduce((s, r) => s + r.data.byteLength + Buffer.byteLength(r.partitionKey), 0);
      assert.ok(size <= 5 * 1024 * 1024);
    }
  });

  it('rejects a record over the 1 MiB Kinesis limit with a clear error', () => {
    assert.throws(
      () => batchRecords([rec('k', MAX_RECORD_BYTES + 1)]),
      /exceeds the Kinesis limit of 1048576 bytes/,
    );
  });
});

describe('KinesisProducer', () => {
  it('retries only the entries that failed and returns results in input order', async () => {
    const calls: string[][] = [];
    let seq = 0;
    const fake = {
      send: async (command: PutRecordsCommand) => {
        const keys = command.input.Records!.map((r) => r.PartitionKey!);
        calls.push(keys);
        return {
          FailedRecordCount: 0,
          Records: keys.map((k) =>
            calls.length === 1 && (k === 'b' || k === 'd')
              ? { ErrorCode: 'ProvisionedThroughputExceededException', ErrorMessage: 'slow down' }
              : { ShardId: 'shardId-000000000000', SequenceNumber: `${k}-${++seq}` },
          ),
        };
      },
    } as unknown as KinesisClient;
    const producer = new KinesisProducer(fake, 's', { backoffBaseMs: 1, backoffMaxMs: 2 });
    const out = await producer.put(['a', 'b', 'c', 'd'].map((k) => rec(k, 3)));
    assert.deepEqual(calls, [
      ['a', 'b', 'c', 'd'],
      ['b', 'd'],
    ]);
    assert.deepEqual(
      out.map((r) => r.sequenceNumber.split('-')[0]),
      ['a', 'b', 'c', 'd'],
    );
  });

  it('gives up after maxAttempts with the number of records still failing', async () => {
    const fake = {
      send: async (command: PutRecordsCommand) => ({
        Records: command.input.Records!.map(() => ({ ErrorCode: 'InternalFailure' })),
      }),
    } as unknown as KinesisClient;
    const producer = new KinesisProducer(fake, 's', { maxAttempts: 3, backoffBaseMs: 1, backoffMaxMs: 1 });
    await assert.rejects(
      producer.put([rec('a', 1), rec('b', 1)]),
      /2 records still failing after 3 attempts/,
    );
  });
});

describe('generateSpans', () => {
  it('is deterministic for a seed and keeps int64 fields as exact decimal strings beyond 2^53', () => {
    const a = [...generateSpans(50, { seed: 7 })];
    const b = [...generateSpans(50, { seed: 7 })];
    const c = [...generateSpans(50, { seed: 8 })];
    assert.deepEqual(a, b);
    assert.notDeepEqual(a, c);
    for (const s of a) {
      assert.match(s.startTimeUnixNano, /^\d{19}$/);
      assert.ok(BigInt(s.startTimeUnixNano) > BigInt(Number.MAX_SAFE_INTEGER));
      assert.equal(BigInt(s.endTimeUnixNano) - BigInt(s.startTimeUnixNano), BigInt(s.durationNano));
    }
    assert.equal(new Set(a.slice(0, 5).map((s) => s.traceId)).size, 1, 'spans of a trace share the traceId');
    assert.ok(JSON.stringify(a[0]).length > 600, 'about 1 KB per span');
  });
});
