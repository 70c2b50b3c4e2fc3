/**
 * Lease coordination across several workers in one process (kinesalite + dynalite): fair-share balancing
 * with graceful handoffs, graceful leave, resuming from a lease table in the Java KCL row format (with a
 * checkpoint in the middle of a shard and in the middle of a KPL aggregate), and several streams per worker.
 */
import assert from 'node:assert/strict';
import { PutItemCommand } from '@aws-sdk/client-dynamodb';
import { afterAll, beforeAll, describe, it } from 'vitest';
import { aggregate } from '../../src/consumers/kpl.js';
import { LeaseTable } from '../../src/consumers/lease-table.js';
import { TestFleet } from '../helpers/fleet.js';
import { createStream, putRecords, startTestStack, type TestStack, waitFor } from '../helpers/stack.js';

const FAST = { failoverMs: 2_000, intervalMs: 200, shardSyncIntervalMs: 1_000 };

describe('fleet of coordinators', () => {
  let t: TestStack;
  beforeAll(async () => {
    t = await startTestStack();
  });
  afterAll(async () => {
    await t.stop();
  });

  it('balances 6 shards over 3 workers by graceful handoffs, and a leaving worker hands over at once; nothing lost, no duplicates', async () => {
    const stream = 'fleet-balance';
    await createStream(t.aws.kinesis, stream, 6);
    const fleet = new TestFleet({
      kinesis: t.aws.kinesis,
      dynamodb: t.aws.dynamodb,
      table: 'fleet-balance-leases',
      consumers: [{ type: 'polling', stream, idleIntervalMs: 50, busyIntervalMs: 0 }],
      checkpoints: FAST,
    });
    let produced = 0;
    const produce = async (n: number) => {
      await putRecords(
        t.aws.kinesis,
        stream,
        Array.from({ length: n }, (_, i) => ({
          partitionKey: `k-${(produced + i) % 97}`,
          data: JSON.stringify({ n: produced + i }),
        })),
      );
      produced += n;
    };
    try {
      await produce(300);
      await fleet.start('a');
      await waitFor(() => fleet.held().a === 6, 20_000, 'worker a holds all 6 shards');
      await fleet.start('b');
      await fleet.start('c');
      let producing = true;
      const producer = (async () => {
        while (producing) {
          await produce(50);
          await new Promise((r) => setTimeout(r, 100));
        }
      })();
      await waitFor(
        () => JSON.stringify(fleet.held()) === JSON.stringify({ a: 2, b: 2, c: 2 }),
        60_000,
        `2/2/2 (now ${JSON.stringify(fleet.held())})`,
      );
      const steals = async (id: string) =>
        (await fleet.members.get(id)!.metrics.getSingleMetric('ksw_lease_steals_total')!.get()).values[0]
          ?.value ?? 0;
      assert.ok((await steals('b')) + (await steals('c')) >= 4, 'moved by handoffs');
      // A worker leaving gracefully: the others take its shards without waiting for expiry.
      const left = Date.now();
      await fleet.stop('c');
      await waitFor(
        () => (fleet.held().a ?? 0) + (fleet.held().b ?? 0) === 6,
        15_000,
        `a and b hold all shards (now ${JSON.stringify(fleet.held())})`,
      );
      const takeover = Date.now() - left;
      assert.ok(
        takeover < FAST.failoverMs + 1_000,
        `taken over in ${takeover} ms, without waiting for expiry`,
      );
      producing = false;
      await producer;
      await produce(100);
      await waitFor(() => fleet.distinct().size >= produced, 30_000, `all ${produced} records delivered`);
      process.stdout.write(
        `balance: ${produced} records, ${fleet.duplicates()} duplicates, graceful-leave takeover ${takeover} ms\n`,
      );
      assert.equal(fleet.distinct().size, produced);
      assert.equal(
        fleet.duplicates(),
        0,
        'graceful handoffs drain and checkpoint before the new owner reads',
      );
    } finally {
      await fleet.stopAll();
    }
  });

  it('maxLeasesForWorker caps a worker below its fair share; the rest is left for others', async () => {
    const stream = 'fleet-cap';
    await createStream(t.aws.kinesis, stream, 4);
    const consumers = [{ type: 'polling', stream, idleIntervalMs: 50 }];
    const capped = new TestFleet({
      kinesis: t.aws.kinesis,
      dynamodb: t.aws.dynamodb,
      table: 'fleet-cap-leases',
      consumers,
      checkpoints: { ...FAST, maxLeasesForWorker: 2 },
    });
    const free = new TestFleet({
      kinesis: t.aws.kinesis,
      dynamodb: t.aws.dynamodb,
      table: 'fleet-cap-leases',
      consumers,
      checkpoints: FAST,
    });
    try {
      const a = await capped.start('capped');
      const share = async () =>
        (await a.metrics.getSingleMetric('ksw_lease_fair_share')!.get()).values[0]?.value;
      const table = new LeaseTable(t.aws.dynamodb, 'fleet-cap-leases');
      await waitFor(
        async () =>
          capped.held().capped === 2 &&
          (await share()) === 2 &&
          (await table.list()).filter((l) => !l.leaseOwner).length === 2,
        20_000,
        'capped at 2 with 2 leases left unowned',
      );
      await free.start('free');
      await waitFor(() => free.held().free === 2, 20_000, 'the other worker takes the other 2');
      assert.equal(capped.held().capped, 2);
    } finally {
      await capped.stopAll();
      await free.stopAll();
    }
  });

  it('resumes from a lease table in the Java KCL row format: right after a checkpoint, and mid-aggregate', async () => {
    const stream = 'fleet-kcl';
    const [shard0, shard1] = (await createStream(t.aws.kinesis, stream, 2)) as [string, string];
    const hashOf = (shard: 0 | 1) => (shard === 0 ? '0' : '340282366920938463463374607431768211455');
    const plain = await putRecords(
      t.aws.kinesis,
      stream,
      Array.from({ length: 40 }, (_, i) => ({
        partitionKey: 'p',
        explicitHashKey: hashOf(0),
        data: JSON.stringify({ n: i }),
      })),
    );
    const users = Array.from({ length: 10 }, (_, i) => ({
      partitionKey: `u${i}`,
      data: JSON.stringify({ u: i }),
    }));
    const aggPut = await putRecords(t.aws.kinesis, stream, [
      { partitionKey: 'agg', explicitHashKey: hashOf(1), data: aggregate(users) },
      { partitionKey: 'agg', explicitHashKey: hashOf(1), data: JSON.stringify({ after: true }) },
    ]);
    assert.ok(plain.every((p) => p.shardId === shard0));
    assert.ok(aggPut.every((p) => p.shardId === shard1));
    const table = 'fleet-kcl-leases';
    const leases = new LeaseTable(t.aws.dynamodb, table);
    await leases.ensureTable(true);
    // Rows exactly as the Java KCL's DynamoDBLeaseSerializer writes them, owned by a KCL worker that is gone.
    const kclRow = (shard: string, checkpoint: string, sub: number) => ({
      leaseKey: { S: shard },
      leaseOwner: { S: 'kcl-worker-7f3a' },
      leaseCounter: { N: '1043' },
      checkpoint: { S: checkpoint },
      checkpointSubSequenceNumber: { N: String(sub) },
      ownerSwitchesSinceCheckpoint: { N: '0' },
      startingHashKey: { S: '0' },
      endingHashKey: { S: '340282366920938463463374607431768211455' },
      throughputKBps: { N: '3.5' },
    });
    await t.aws.dynamodb.send(
      new PutItemCommand({ TableName: table, Item: kclRow(shard0, plain[24]!.sequenceNumber, 0) }),
    );
    await t.aws.dynamodb.send(
      new PutItemCommand({ TableName: table, Item: kclRow(shard1, aggPut[0]!.sequenceNumber, 6) }),
    );
    const fleet = new TestFleet({
      kinesis: t.aws.kinesis,
      dynamodb: t.aws.dynamodb,
      table,
      consumers: [{ type: 'polling', stream, idleIntervalMs: 50, busyIntervalMs: 0 }],
      checkpoints: FAST,
    });
    try {
      const started = Date.now();
      await fleet.start('ksw-1');
      await waitFor(() => fleet.distinct().size >= 15 + 4, 20_000, 'records after the checkpoints');
      const taken = Date.now() - started;
      const s0 = fleet.deliveries.filter((d) => d.shardId === shard0);
      const s1 = fleet.deliveries.filter((d) => d.shardId === shard1);
      assert.equal(
        s0[0]!.sequenceNumber,
        plain[25]!.sequenceNumber,
        'first record right after the checkpoint',
      );
      assert.deepEqual(
        s0.map((d) => JSON.parse(d.data).n),
        Array.from({ length: 15 }, (_, i) => 25 + i),
      );
      assert.deepEqual(
        s1.map((d) => `${d.subSequenceNumber}:${d.data}`),
        [
          `7:${users[7]!.data}`,
          `8:${users[8]!.data}`,
          `9:${users[9]!.data}`,
          `0:${JSON.stringify({ after: true })}`,
        ],
        'resumes with the user record after the checkpointed sub-sequence number',
      );
      assert.deepEqual(
        s1.slice(0, 3).map((d) => d.partitionKey),
        ['u7', 'u8', 'u9'],
      );
      process.stdout.write(
        `kcl table: expired KCL leases taken after ${taken} ms (failoverMs ${FAST.failoverMs})\n`,
      );
      await waitFor(
        async () =>
          (await leases.get(shard1))?.checkpoint === aggPut[1]!.sequenceNumber &&
          (await leases.get(shard0))?.checkpoint === plain[39]!.sequenceNumber,
        10_000,
        'checkpoints advanced to the last records',
      );
      const row = await leases.get(shard0);
      assert.equal(row?.leaseOwner, 'ksw-1');
      assert.equal(row?.ownerSwitchesSinceCheckpoint, 0, 'reset by our checkpoint, as the KCL does');
      assert.deepEqual(row?.hashKeyRange, { start: '0', end: '340282366920938463463374607431768211455' });
    } finally {
      await fleet.stopAll();
    }
  });

  it('reads several streams with one worker pair; lease keys are stream:shardId', async () => {
    const streams = ['fleet-multi-a', 'fleet-multi-b'];
    for (const s of streams) await createStream(t.aws.kinesis, s, 2);
    const fleet = new TestFleet({
      kinesis: t.aws.kinesis,
      dynamodb: t.aws.dynamodb,
      table: 'fleet-multi-leases',
      consumers: streams.map((stream) => ({
        type: 'polling',
        stream,
        idleIntervalMs: 50,
        busyIntervalMs: 0,
      })),
      checkpoints: FAST,
    });
    try {
      await fleet.start('x');
      await fleet.start('y');
      for (const s of streams)
        await putRecords(
          t.aws.kinesis,
          s,
          Array.from({ length: 100 }, (_, i) => ({
            partitionKey: `k${i}`,
            data: JSON.stringify({ n: i, s }),
          })),
        );
      await waitFor(() => fleet.distinct().size >= 200, 20_000, '200 records from two streams');
      await waitFor(
        () => JSON.stringify(fleet.held()) === JSON.stringify({ x: 2, y: 2 }),
        30_000,
        `2/2 (now ${JSON.stringify(fleet.held())})`,
      );
      const keys = (await new LeaseTable(t.aws.dynamodb, 'fleet-multi-leases').list())
        .map((l) => l.leaseKey)
        .sort();
      assert.deepEqual(keys, [
        'fleet-multi-a:shardId-000000000000',
        'fleet-multi-a:shardId-000000000001',
        'fleet-multi-b:shardId-000000000000',
        'fleet-multi-b:shardId-000000000001',
      ]);
      for (const s of streams)
        assert.equal([...fleet.distinct().values()].filter((d) => d.stream === s).length, 100);
    } finally {
      await fleet.stopAll();
    }
  });

  it('a sink that cannot open a shard: the lease goes back, counted in ksw_shard_failures_total, and the shard is read once it can', async () => {
    const stream = 'fleet-open-fails';
    await createStream(t.aws.kinesis, stream, 2);
    await putRecords(
      t.aws.kinesis,
      stream,
      Array.from({ length: 60 }, (_, i) => ({ partitionKey: `k${i}`, data: JSON.stringify({ n: i }) })),
    );
    // shardId-000000000001 cannot be opened three times (say, its replay manifests cannot be read yet).
    const opens: string[] = [];
    let failuresLeft = 3;
    const sink = {
      name: 'flaky-open',
      async openShard(shard: { stream: string; shardId: string }) {
        opens.push(shard.shardId);
        if (shard.shardId === 'shardId-000000000001' && failuresLeft-- > 0)
          throw new Error('manifests not readable yet');
      },
      async write() {},
      async flush() {},
      async close() {},
    } as unknown as import('../../src/core/component.js').Sink;
    const fleet = new TestFleet({
      kinesis: t.aws.kinesis,
      dynamodb: t.aws.dynamodb,
      table: 'fleet-open-fails-leases',
      consumers: [{ type: 'polling', stream, idleIntervalMs: 50, busyIntervalMs: 0 }],
      checkpoints: FAST,
      sinks: [sink],
    });
    try {
      const member = await fleet.start('solo');
      await waitFor(() => fleet.distinct().size >= 60, 30_000, 'every record, the flaky shard included');
      // Every (stream, stage) series exists from the start at 0; only sink_open counted.
      const failures = (await member.metrics.getSingleMetric('ksw_shard_failures_total')!.get()).values;
      assert.equal(failures.length, 4);
      assert.deepEqual(
        failures.filter((v) => v.value > 0).map((v) => ({ ...v.labels, value: v.value })),
        [{ stream, stage: 'sink_open', value: 3 }],
      );
      assert.equal(
        opens.filter((s) => s === 'shardId-000000000001').length,
        4,
        'three failed opens, then one',
      );
      assert.equal(fleet.duplicates(), 0);
      assert.equal(fleet.held().solo, 2);
    } finally {
      await fleet.stopAll();
    }
  });
});
