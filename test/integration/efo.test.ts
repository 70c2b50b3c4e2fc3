/**
 * Enhanced fan-out against kinesis-local (over HTTP/1.1, the handler injected through
 * aws.subscribeProtocol): idempotent registration, two workers subscribed to a 2-shard stream, frequent
 * resubscription from ContinuationSequenceNumber without loss or repetition, KPL aggregates, a split
 * (closed parent detected, children subscribed after it), a restart resuming from checkpoints, and a
 * batch the chain rejects (read again, not skipped: issue 15, finding 1).
 */
import assert from 'node:assert/strict';
import {
  DescribeStreamSummaryCommand,
  ListShardsCommand,
  ListStreamConsumersCommand,
  SplitShardCommand,
} from '@aws-sdk/client-kinesis';
import { NodeHttp2Handler } from '@smithy/node-http-handler';
import { afterAll, beforeAll, describe, it } from 'vitest';
import { registerStreamConsumer } from '../../src/consumers/efo.js';
import { aggregate } from '../../src/consumers/kpl.js';
import { LeaseTable } from '../../src/consumers/lease-table.js';
import { awsConfigSchema, createAwsClients } from '../../src/core/aws.js';
import { orderViolations, TestFleet } from '../helpers/fleet.js';
import {
  createStream,
  putRecords,
  silentLogger,
  startTestStack,
  type TestStack,
  waitFor,
} from '../helpers/stack.js';

describe('enhanced fan-out (kinesis-local)', () => {
  let t: TestStack;
  beforeAll(async () => {
    t = await startTestStack({ kinesis: 'kinesis-local' });
  });
  afterAll(async () => {
    await t.stop();
  });

  it('uses HTTP/2 for subscriptions unless configured otherwise', () => {
    const aws = createAwsClients(awsConfigSchema.parse({}));
    try {
      assert.ok(aws.kinesisSubscribe.config.requestHandler instanceof NodeHttp2Handler);
      assert.ok(!(aws.kinesis.config.requestHandler instanceof NodeHttp2Handler));
    } finally {
      aws.destroy();
    }
  });

  it('registers the stream consumer idempotently (concurrent workers) and waits until ACTIVE', async () => {
    await createStream(t.aws.kinesis, 'efo-register', 1);
    const arns = await Promise.all(
      [1, 2, 3].map(() =>
        registerStreamConsumer(t.aws.kinesisSubscribe, 'efo-register', 'app', {
          timeoutMs: 20_000,
          logger: silentLogger,
        }),
      ),
    );
    assert.equal(new Set(arns).size, 1);
    const arn = (await t.aws.kinesis.send(new DescribeStreamSummaryCommand({ StreamName: 'efo-register' })))
      .StreamDescriptionSummary!.StreamARN!;
    const listed = await t.aws.kinesis.send(new ListStreamConsumersCommand({ StreamARN: arn }));
    assert.equal(listed.Consumers?.length, 1);
    assert.equal(listed.Consumers?.[0]?.ConsumerStatus, 'ACTIVE');
  });

  it('two workers read over subscriptions renewed every 6 s: every record once, in order, through a split', async () => {
    const stream = 'efo-fleet';
    await createStream(t.aws.kinesis, stream, 2);
    const table = 'efo-fleet-leases';
    const consumer = {
      type: 'efo',
      stream,
      consumerName: 'efo-test',
      resubscribeIntervalMs: 6_000,
      closedShardProbeMs: 1_000,
      backoffBaseMs: 50,
      backoffMaxMs: 500,
    };
    const fleet = new TestFleet({
      kinesis: t.aws.kinesis,
      kinesisSubscribe: t.aws.kinesisSubscribe,
      dynamodb: t.aws.dynamodb,
      table,
      consumers: [consumer],
      checkpoints: { failoverMs: 3_000, intervalMs: 300, shardSyncIntervalMs: 1_000 },
      maxAckDelayMs: 50,
    });
    let n = 0;
    const expected = new Set<string>();
    const produce = async (count: number) => {
      const records = Array.from({ length: count }, () => {
        const i = n++;
        expected.add(String(i));
        return { partitionKey: `key-${i % 13}`, data: JSON.stringify({ n: i }) };
      });
      await putRecords(t.aws.kinesis, stream, records);
    };
    const produceAggregate = async (count: number) => {
      const users = Array.from({ length: count }, () => {
        const i = n++;
        expected.add(String(i));
        return { partitionKey: 'agg-key', data: JSON.stringify({ n: i }) };
      });
      await putRecords(t.aws.kinesis, stream, [{ partitionKey: 'agg-key', data: aggregate(users) }]);
    };
    const seen = () => new Set([...fleet.distinct().values()].map((d) => String(JSON.parse(d.data).n)));
    try {
      await fleet.start('w1');
      await fleet.start('w2');
      await waitFor(
        () => JSON.stringify(fleet.held()) === JSON.stringify({ w1: 1, w2: 1 }),
        30_000,
        `one shard each (now ${JSON.stringify(fleet.held())})`,
      );
      // Long enough for every shard's subscription to be renewed at least once (6 s, then 5 s apart).
      for (let b = 0; b < 10; b++) {
        await produce(15);
        await produceAggregate(5);
        await new Promise((r) => setTimeout(r, 1_200));
      }
      await waitFor(() => seen().size >= n, 30_000, `first ${n} records`);
      const subscriptions = async () => {
        let total = 0;
        for (const m of fleet.members.values())
          total += (await m.metrics.getSingleMetric('ksw_efo_subscriptions_total')!.get()).values.reduce(
            (s, v) => s + v.value,
            0,
          );
        return total;
      };
      assert.ok((await subscriptions()) >= 4, 'subscriptions renewed (resubscribeIntervalMs)');

      // Split shard 0 while reading: the closed parent is finished, then its children are subscribed.
      const shards = (await t.aws.kinesis.send(new ListShardsCommand({ StreamName: stream }))).Shards!;
      const s0 = shards[0]!;
      const mid = (BigInt(s0.HashKeyRange!.StartingHashKey!) + BigInt(s0.HashKeyRange!.EndingHashKey!)) / 2n;
      await produce(20);
      await t.aws.kinesis.send(
        new SplitShardCommand({
          StreamName: stream,
          ShardToSplit: s0.ShardId!,
          NewStartingHashKey: mid.toString(),
        }),
      );
      await waitFor(
        async () =>
          (await t.aws.kinesis.send(new DescribeStreamSummaryCommand({ StreamName: stream })))
            .StreamDescriptionSummary?.StreamStatus === 'ACTIVE',
        20_000,
        'split done',
      );
      await produce(40);
      await waitFor(() => seen().size >= n, 45_000, `all ${n} records after the split (have ${seen().size})`);
      const children = [...fleet.distinct().values()].filter(
        (d) => !shards.some((s) => s.ShardId === d.shardId),
      );
      assert.ok(children.length > 0, 'children were read');
      const parentLastAck = Math.max(
        ...fleet.deliveries.filter((d) => d.shardId === s0.ShardId).map((d) => d.ackOrder ?? Infinity),
      );
      assert.ok(Math.min(...children.map((d) => d.order)) > parentLastAck, 'children after the parent');
      assert.deepEqual(orderViolations(fleet.deliveries), []);
      assert.deepEqual(
        [...expected].filter((k) => !seen().has(k)),
        [],
        'nothing lost',
      );
      assert.equal(fleet.duplicates(), 0, 'resubscribing AFTER the continuation repeats nothing');

      // A restart resumes from the checkpoints: nothing old is read again.
      await fleet.stopAll();
      const before = fleet.deliveries.length;
      const again = new TestFleet({
        kinesis: t.aws.kinesis,
        kinesisSubscribe: t.aws.kinesisSubscribe,
        dynamodb: t.aws.dynamodb,
        table,
        consumers: [consumer],
        checkpoints: { failoverMs: 3_000, intervalMs: 300, shardSyncIntervalMs: 1_000 },
      });
      try {
        await again.start('w3');
        await produce(10);
        await waitFor(() => again.distinct().size >= 10, 30_000, '10 new records after the restart');
        await new Promise((r) => setTimeout(r, 1_500));
        assert.equal(again.distinct().size, 10, 'only the new records');
        process.stdout.write(
          `efo: ${n} records, ${await subscriptions()} subscriptions, ${before} deliveries before restart, 0 duplicates\n`,
        );
      } finally {
        await again.stopAll();
      }
    } finally {
      await fleet.stopAll();
    }
  });

  it('a batch the chain rejects is not skipped by resubscribing after it: the shard is released, counted and read again (finding 1)', async () => {
    const stream = 'efo-deliver-fails';
    await createStream(t.aws.kinesis, stream, 1);
    const table = 'efo-deliver-fails-leases';
    const produce = (from: number, count: number) =>
      putRecords(
        t.aws.kinesis,
        stream,
        Array.from({ length: count }, (_, i) => ({
          partitionKey: `key-${(from + i) % 7}`,
          data: JSON.stringify({ n: from + i }),
        })),
      );
    let failed = 0;
    const fleet = new TestFleet({
      kinesis: t.aws.kinesis,
      kinesisSubscribe: t.aws.kinesisSubscribe,
      dynamodb: t.aws.dynamodb,
      table,
      consumers: [{ type: 'efo', stream, consumerName: 'efo-fails', backoffBaseMs: 50, backoffMaxMs: 500 }],
      checkpoints: { failoverMs: 3_000, intervalMs: 200, shardSyncIntervalMs: 1_000 },
      maxAckDelayMs: 20,
      // The first batch holding a record of the second lot is rejected once, as a sink write that throws.
      failDeliver: (_w, records) => {
        const hit = records.some(
          (r) => (JSON.parse(Buffer.from(r.data).toString('utf8')) as { n: number }).n >= 10,
        );
        if (hit && failed === 0) {
          failed += 1;
          return true;
        }
        return false;
      },
    });
    const seen = () => new Set([...fleet.distinct().values()].map((d) => String(JSON.parse(d.data).n)));
    const metric = async (name: string, labels: Record<string, string> = {}) =>
      ((await fleet.members.get('solo')!.metrics.getSingleMetric(name)?.get())?.values ?? [])
        .filter((v) => Object.entries(labels).every(([k, want]) => v.labels[k] === want))
        .reduce((a, v) => a + v.value, 0);
    try {
      await produce(0, 10);
      await fleet.start('solo');
      await waitFor(() => seen().size >= 10, 30_000, `first 10 records (have ${seen().size})`);
      await produce(10, 20);
      await waitFor(() => failed === 1, 20_000, 'the injected failure happened');
      await produce(30, 10);
      await waitFor(
        () => seen().size >= 40,
        30_000,
        `all 40 records, the rejected batch read again (have ${seen().size}; before the fix the rejected batch was skipped)`,
      );
      const last = [...fleet.distinct().values()]
        .sort((a, b) => a.sequenceNumber.localeCompare(b.sequenceNumber))
        .at(-1)!;
      const leases = new LeaseTable(t.aws.dynamodb, table);
      await waitFor(
        async () => (await leases.get('shardId-000000000000'))?.checkpoint === last.sequenceNumber,
        15_000,
        'the checkpoint reaches the last record',
      );
      assert.equal(await metric('ksw_shard_failures_total', { stage: 'deliver' }), 1);
      assert.equal(await metric('ksw_lease_takes_total'), 2, 'taken, released, taken again');
      assert.deepEqual(orderViolations(fleet.deliveries), []);
    } finally {
      await fleet.stopAll();
    }
  });
});
