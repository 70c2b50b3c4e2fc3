import assert from 'node:assert/strict';
import {
  type KinesisClient,
  PutRecordsCommand,
  type PutRecordsCommandOutput,
  type PutRecordsResultEntry,
} from '@aws-sdk/client-kinesis';
import { afterAll, beforeAll, describe, it } from 'vitest';
import {
  batchRecords,
  KinesisProducer,
  MAX_BATCH_BYTES,
  MAX_BATCH_RECORDS,
  MAX_RECORD_BYTES,
  ProducerError,
  recordSize,
} from '../../src/producer/kinesis-producer.js';
import { createStream, startTestStack, type TestStack } from '../helpers/stack.js';

const rec = (partitionKey: string, bytes: number) => ({ partitionKey, data: new Uint8Array(bytes) });
const MiB = 1_048_576;

/** A fake Kinesis `send` that records every PutRecords and answers entries through `answer`. */
function fakeKinesis(
  answer: (key: string, call: number) => PutRecordsResultEntry,
  opts: { delayMs?: number } = {},
) {
  const calls: string[][] = [];
  let inFlight = 0;
  let maxInFlight = 0;
  let seq = 0;
  const client = {
    send: async (command: PutRecordsCommand): Promise<PutRecordsCommandOutput> => {
      assert.ok(command instanceof PutRecordsCommand);
      const records = command.input.Records!;
      // The real API's limits, enforced here so a batching bug fails the test like it fails on AWS.
      assert.ok(records.length <= MAX_BATCH_RECORDS, `${records.length} records in one call`);
      const bytes = records.reduce((s, r) => s + r.Data!.byteLength + Buffer.byteLength(r.PartitionKey!), 0);
      assert.ok(bytes <= MAX_BATCH_BYTES, `${bytes} bytes in one call`);
      const keys = records.map((r) => r.PartitionKey!);
      calls.push(keys);
      const call = calls.length;
      inFlight += 1;
      maxInFlight = Math.max(maxInFlight, inFlight);
      await new Promise((r) => setTimeout(r, opts.delayMs ?? 0));
      inFlight -= 1;
      const entries = keys.map((k) => {
        const a = answer(k, call);
        return a.ErrorCode ? a : { ShardId: 'shardId-000000000000', SequenceNumber: `${k}@${++seq}` };
      });
      return {
        $metadata: {},
        FailedRecordCount: entries.filter((e) => e.ErrorCode).length,
        Records: entries,
      };
    },
  };
  return {
    client: client as unknown as KinesisClient,
    calls,
    get maxInFlight() {
      return maxInFlight;
    },
  };
}

const ok = (): PutRecordsResultEntry => ({});
const fast = { backoffBaseMs: 1, backoffMaxMs: 2 };

describe('batchRecords', () => {
  it('splits at 500 records', () => {
    const batches = batchRecords(Array.from({ length: 1_001 }, (_, i) => rec(`k${i}`, 10)));
    assert.deepEqual(
      batches.map((b) => b.length),
      [500, 500, 1],
    );
  });

  it('splits at 5 MiB counting partition key bytes too, and keeps order', () => {
    // Six records of 873,800 data bytes fit in 5 MiB (5,242,800 bytes); with their 200-byte partition keys
    // they do not (5,244,000), so a batcher that ignored keys would send calls AWS and kinesalite reject.
    const records = Array.from({ length: 12 }, (_, i) => rec(`${i}`.padStart(200, 'k'), 873_800));
    const batches = batchRecords(records);
    assert.deepEqual(
      batches.map((b) => b.length),
      [5, 5, 2],
    );
    assert.deepEqual(batches.flat(), records);
    for (const b of batches) assert.ok(b.reduce((s, r) => s + recordSize(r), 0) <= MAX_BATCH_BYTES);
    // Exactly 5 MiB is allowed: five records of exactly 1 MiB (data + key) share one call.
    const exact = Array.from({ length: 10 }, (_, i) => rec(String(i), MiB - 1));
    assert.deepEqual(
      batchRecords(exact).map((b) => b.length),
      [5, 5],
    );
  });

  it('counts partition keys as UTF-8 bytes', () => {
    assert.equal(recordSize({ partitionKey: 'é', data: new Uint8Array(3) }), 5);
  });

  it('rejects a record over 1 MiB (data + partition key) before sending anything', async () => {
    assert.throws(
      () => batchRecords([rec('k', MAX_RECORD_BYTES)]),
      /1048577 bytes \(data \+ partition key\) exceeds the Kinesis limit of 1048576 bytes/,
    );
    assert.doesNotThrow(() => batchRecords([rec('k', MAX_RECORD_BYTES - 1)]));
    const fake = fakeKinesis(ok);
    const producer = new KinesisProducer(fake.client, 's');
    await assert.rejects(producer.put([rec('a', 10), rec('b', MAX_RECORD_BYTES + 1)]), /record 1: /);
    assert.equal(fake.calls.length, 0, 'nothing is sent when one record is invalid');
  });

  it('rejects empty or too long partition keys and malformed hash keys', () => {
    assert.throws(() => batchRecords([rec('', 1)]), /partition key must be 1 to 256/);
    assert.throws(() => batchRecords([rec('x'.repeat(257), 1)]), /partition key must be 1 to 256/);
    assert.throws(
      () => batchRecords([{ ...rec('k', 1), explicitHashKey: (2n ** 128n).toString() }]),
      /explicitHashKey/,
    );
  });
});

describe('KinesisProducer with a fake send', () => {
  it('retries exactly the failed entries and returns results in input order', async () => {
    // Each of these keys fails the first time it is sent, as a throttled shard would.
    const failOnce = new Set(['k3', 'k250', 'k499', 'k700']);
    const fake = fakeKinesis((key) =>
      failOnce.delete(key)
        ? { ErrorCode: 'ProvisionedThroughputExceededException', ErrorMessage: 'Rate exceeded for shard' }
        : {},
    );
    const producer = new KinesisProducer(fake.client, 's', { ...fast, concurrency: 1 });
    const keys = Array.from({ length: 800 }, (_, i) => `k${i}`);
    const out = await producer.put(keys.map((k) => rec(k, 100)));
    assert.deepEqual(
      fake.calls.map((c) => c.length),
      [500, 3, 300, 1],
    );
    assert.deepEqual(fake.calls[1], ['k3', 'k250', 'k499'], 'the retry carries only the failed entries');
    assert.deepEqual(fake.calls[3], ['k700']);
    assert.deepEqual(
      out.map((r) => r.sequenceNumber.split('@')[0]),
      keys,
    );
    assert.equal(producer.stats.records, 800);
    assert.equal(producer.stats.retriedEntries, 4);
    assert.equal(producer.stats.errors.ProvisionedThroughputExceededException, 4);
  });

  it('keeps at most `concurrency` PutRecords calls in flight', async () => {
    const fake = fakeKinesis(ok, { delayMs: 20 });
    const producer = new KinesisProducer(fake.client, 's', { concurrency: 3 });
    const out = await producer.put(Array.from({ length: 5_000 }, (_, i) => rec(`k${i}`, 10)));
    assert.equal(fake.calls.length, 10);
    assert.equal(fake.maxInFlight, 3);
    assert.equal(out.length, 5_000);
    assert.equal(out[4_999]!.sequenceNumber.split('@')[0], 'k4999');
  });

  it('gives up after maxAttempts with the failing count and last error code', async () => {
    const fake = fakeKinesis((key) => (key === 'b' ? { ErrorCode: 'InternalFailure' } : {}));
    const producer = new KinesisProducer(fake.client, 's', { ...fast, maxAttempts: 3 });
    const err = await producer.put([rec('a', 1), rec('b', 1), rec('c', 1)]).catch((e: unknown) => e);
    assert.ok(err instanceof ProducerError);
    assert.match(err.message, /1 records still failing after 3 attempts; last error: InternalFailure/);
    assert.deepEqual(err.failedIndexes, [1]);
    assert.deepEqual(fake.calls, [['a', 'b', 'c'], ['b'], ['b']]);
  });

  it('gives up when the retry time budget is spent', async () => {
    const fake = fakeKinesis(() => ({ ErrorCode: 'ProvisionedThroughputExceededException' }));
    const producer = new KinesisProducer(fake.client, 's', {
      maxAttempts: 1_000,
      retryBudgetMs: 50,
      backoffBaseMs: 20,
      backoffMaxMs: 20,
    });
    const started = Date.now();
    await assert.rejects(producer.put([rec('a', 1)]), /retry budget of 50 ms spent/);
    assert.ok(Date.now() - started < 1_000);
    assert.ok(fake.calls.length < 100);
  });

  it('backs off exponentially with full jitter between retries', async () => {
    const fake = fakeKinesis((_k, call) =>
      call <= 4 ? { ErrorCode: 'ProvisionedThroughputExceededException' } : {},
    );
    // random() = 1 - epsilon takes the ceiling of each delay: 10, 20, 40, 80 ms.
    const producer = new KinesisProducer(
      fake.client,
      's',
      { backoffBaseMs: 10, backoffMaxMs: 1_000 },
      () => 0.9999,
    );
    const started = Date.now();
    await producer.put([rec('a', 1)]);
    const elapsed = Date.now() - started;
    assert.equal(fake.calls.length, 5);
    assert.ok(elapsed >= 140, `waited ${elapsed} ms, expected about 150`);
    const zero = new KinesisProducer(
      fakeKinesis((_k, call) => (call <= 4 ? { ErrorCode: 'ProvisionedThroughputExceededException' } : {}))
        .client,
      's',
      { backoffBaseMs: 10_000, backoffMaxMs: 10_000 },
      () => 0,
    );
    const t0 = Date.now();
    await zero.put([rec('a', 1)]);
    assert.ok(Date.now() - t0 < 500, 'jitter of 0 retries at once');
  });

  it('retries a whole call that was throttled, but not a validation error', async () => {
    let call = 0;
    const throttled = {
      send: async (command: PutRecordsCommand) => {
        call += 1;
        if (call === 1) {
          throw Object.assign(new Error('Rate exceeded'), {
            name: 'ProvisionedThroughputExceededException',
            $metadata: { httpStatusCode: 400 },
          });
        }
        return { Records: command.input.Records!.map((_, i) => ({ ShardId: 's', SequenceNumber: `${i}` })) };
      },
    } as unknown as KinesisClient;
    const out = await new KinesisProducer(throttled, 's', fast).put([rec('a', 1), rec('b', 1)]);
    assert.equal(call, 2);
    assert.deepEqual(
      out.map((r) => r.sequenceNumber),
      ['0', '1'],
    );
    const invalid = {
      send: async () => {
        throw Object.assign(new Error('1 validation error'), {
          name: 'ValidationException',
          $metadata: { httpStatusCode: 400 },
        });
      },
    } as unknown as KinesisClient;
    await assert.rejects(new KinesisProducer(invalid, 's', fast).put([rec('a', 1)]), /validation error/);
  });

  it('stops when its signal aborts', async () => {
    const fake = fakeKinesis(() => ({ ErrorCode: 'ProvisionedThroughputExceededException' }));
    const producer = new KinesisProducer(fake.client, 's', { backoffBaseMs: 60_000, backoffMaxMs: 60_000 });
    const controller = new AbortController();
    const put = producer.put([rec('a', 1)], { signal: controller.signal });
    setTimeout(() => controller.abort(), 30);
    const started = Date.now();
    await assert.rejects(put, { name: 'AbortError' });
    assert.ok(Date.now() - started < 5_000);
  });

  it('addresses a stream by ARN when given one', async () => {
    let input: PutRecordsCommand['input'] | undefined;
    const client = {
      send: async (command: PutRecordsCommand) => {
        input = command.input;
        return { Records: [{ ShardId: 's', SequenceNumber: '1' }] };
      },
    } as unknown as KinesisClient;
    const arn = 'arn:aws:kinesis:us-east-1:123456789012:stream/spans';
    await new KinesisProducer(client, arn).put([rec('a', 1)]);
    assert.equal(input?.StreamARN, arn);
    assert.equal(input?.StreamName, undefined);
  });
});

describe('KinesisProducer against kinesalite', () => {
  let t: TestStack;
  beforeAll(async () => {
    t = await startTestStack();
    await createStream(t.aws.kinesis, 'producer-test', 4);
  });
  afterAll(async () => {
    await t?.stop();
  });

  it('splits 12 MiB into calls kinesalite accepts (it answers 413 to bodies over 7 MiB, about 5.2 MiB of data)', async () => {
    const records = Array.from({ length: 12 }, (_, i) => ({
      partitionKey: `big-${i}`,
      data: new Uint8Array(MAX_RECORD_BYTES - 10).fill(i),
    }));
    const sizes: number[] = [];
    t.aws.kinesis.middlewareStack.add(
      (next) => async (args) => {
        const input = (args.input as PutRecordsCommand['input']).Records;
        if (input) sizes.push(input.length);
        return next(args);
      },
      { step: 'initialize', name: 'countBatchSizes' },
    );
    try {
      const out = await new KinesisProducer(t.aws.kinesis, 'producer-test').put(records);
      assert.equal(out.length, 12);
      assert.ok(out.every((r) => /^\d+$/.test(r.sequenceNumber) && r.shardId.startsWith('shardId-')));
      assert.deepEqual(
        sizes.sort((a, b) => b - a),
        [5, 5, 2],
      );
    } finally {
      t.aws.kinesis.middlewareStack.remove('countBatchSizes');
    }
  });

  it('resends exactly the entries a middleware failed, and every record lands once', async () => {
    // Fault injection: on the first call, rewrite some entries' answers as throttled. Kinesalite did write
    // them, so a producer that retried blindly would produce duplicates as well as wrong sequence numbers.
    const sent: string[][] = [];
    let call = 0;
    const failKeys = new Set(['p-1', 'p-7', 'p-42', 'p-199']);
    t.aws.kinesis.middlewareStack.add(
      (next) => async (args) => {
        const input = args.input as PutRecordsCommand['input'];
        if (!input.Records) return next(args);
        const keys = input.Records.map((r) => r.PartitionKey!);
        sent.push(keys);
        call += 1;
        // Send only the entries that should succeed, then answer the others as throttled.
        const keep = call === 1 ? input.Records.filter((r) => !failKeys.has(r.PartitionKey!)) : input.Records;
        const result = await next({ ...args, input: { ...input, Records: keep } });
        if (call !== 1) return result;
        const answers = [...((result.output as PutRecordsCommandOutput).Records ?? [])];
        const merged = keys.map((k) =>
          failKeys.has(k)
            ? { ErrorCode: 'ProvisionedThroughputExceededException', ErrorMessage: 'Rate exceeded' }
            : answers.shift()!,
        );
        return {
          ...result,
          output: { ...(result.output as PutRecordsCommandOutput), FailedRecordCount: 4, Records: merged },
        };
      },
      { step: 'initialize', name: 'failSome' },
    );
    try {
      const records = Array.from({ length: 200 }, (_, i) => ({
        partitionKey: `p-${i}`,
        data: Buffer.from(JSON.stringify({ i })),
      }));
      const producer = new KinesisProducer(t.aws.kinesis, 'producer-test', fast);
      const out = await producer.put(records);
      assert.equal(sent.length, 2);
      assert.deepEqual(sent[1], ['p-1', 'p-7', 'p-42', 'p-199']);
      assert.equal(new Set(out.map((r) => `${r.shardId}/${r.sequenceNumber}`)).size, 200);
      assert.equal(producer.stats.retriedEntries, 4);
    } finally {
      t.aws.kinesis.middlewareStack.remove('failSome');
    }
  });
});
