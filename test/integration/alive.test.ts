/**
 * Correct while alive (coordinators in one process, kinesalite + dynalite, every lease write recorded by
 * fault proxies in front of DynamoDB): a chain that rejects a batch, two processes with one workerId, and
 * a worker whose lease writes stop going through while it keeps reading. Each fails on the code before
 * tenures and fencing (issue 15, findings 1-3), and a SHARD_END that periodic checkpoints queued behind it
 * must not overwrite (finding 6).
 */
import assert from 'node:assert/strict';
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { DescribeStreamSummaryCommand, SplitShardCommand } from '@aws-sdk/client-kinesis';
import { NodeHttpHandler } from '@smithy/node-http-handler';
import { afterAll, beforeAll, describe, it } from 'vitest';
import { LeaseTable } from '../../src/consumers/lease-table.js';
import { type Arrival, amzTarget, awsJsonError, FaultProxy } from '../helpers/fault-proxy.js';
import { TestFleet } from '../helpers/fleet.js';
import { LeaseWriteLog } from '../helpers/lease-log.js';
import { createStream, putRecords, startTestStack, type TestStack, waitFor } from '../helpers/stack.js';

const FAILOVER_MS = 2_000;
const FAST = { failoverMs: FAILOVER_MS, intervalMs: 200, shardSyncIntervalMs: 1_000 };

async function metric(
  fleet: TestFleet,
  member: string,
  name: string,
  labels: Record<string, string> = {},
): Promise<number> {
  const m = await fleet.members.get(member)!.metrics.getSingleMetric(name)?.get();
  return (m?.values ?? [])
    .filter((v) => Object.entries(labels).every(([k, want]) => v.labels[k] === want))
    .reduce((a, v) => a + v.value, 0);
}

describe('correct while alive', () => {
  let t: TestStack;
  const proxies: FaultProxy[] = [];
  const clients: DynamoDBClient[] = [];
  beforeAll(async () => {
    t = await startTestStack();
  });
  afterAll(async () => {
    for (const c of clients) c.destroy();
    for (const p of proxies) await p.stop();
    await t?.stop();
  });

  /** A DynamoDB client through a fresh fault proxy whose accepted lease writes go to `log`. */
  async function viaProxy(
    log: LeaseWriteLog,
    name: string,
  ): Promise<{ proxy: FaultProxy; client: DynamoDBClient }> {
    const proxy = await FaultProxy.start(t.stack.awsConfig.endpoints.dynamodb);
    proxies.push(proxy);
    log.watch(proxy, name);
    const client = new DynamoDBClient({
      region: 'us-east-1',
      endpoint: proxy.endpoint,
      credentials: { accessKeyId: 'local', secretAccessKey: 'local' },
      maxAttempts: 1,
      requestHandler: new NodeHttpHandler({ connectionTimeout: 2_000, requestTimeout: 10_000 }),
    });
    clients.push(client);
    return { proxy, client };
  }

  async function produce(stream: string, from: number, n: number): Promise<void> {
    await putRecords(
      t.aws.kinesis,
      stream,
      Array.from({ length: n }, (_, i) => ({
        partitionKey: `k-${(from + i) % 31}`,
        data: JSON.stringify({ n: from + i }),
      })),
    );
  }

  it('a batch the chain rejects is read again, not skipped: the shard is released and counted (finding 1)', async () => {
    const stream = 'alive-deliver-fails';
    await createStream(t.aws.kinesis, stream, 1);
    await produce(stream, 0, 40);
    const log = new LeaseWriteLog();
    const { client } = await viaProxy(log, 'solo');
    let failed = 0;
    const fleet = new TestFleet({
      kinesis: t.aws.kinesis,
      dynamodb: client,
      table: 'alive-deliver-fails-leases',
      consumers: [{ type: 'polling', stream, idleIntervalMs: 50, busyIntervalMs: 0, maxRecordsPerCall: 10 }],
      checkpoints: FAST,
      // The second batch (records 10..19) is rejected once, as a sink write that throws would be.
      failDeliver: (_w, records) => {
        const n = (JSON.parse(Buffer.from(records[0]!.data).toString('utf8')) as { n: number }).n;
        if (n === 10 && failed === 0) {
          failed += 1;
          return true;
        }
        return false;
      },
    });
    try {
      await fleet.start('solo');
      const leases = new LeaseTable(t.aws.dynamodb, 'alive-deliver-fails-leases');
      await produce(stream, 40, 10);
      await waitFor(
        () => fleet.distinct().size >= 50,
        20_000,
        `all 50 records delivered (now ${fleet.distinct().size})`,
      );
      const last = [...fleet.distinct().values()]
        .sort((a, b) => a.sequenceNumber.localeCompare(b.sequenceNumber))
        .at(-1)!;
      await waitFor(
        async () => (await leases.get('shardId-000000000000'))?.checkpoint === last.sequenceNumber,
        10_000,
        'the checkpoint reaches the last record (before the fix it froze before the skipped batch)',
      );
      assert.equal(failed, 1);
      assert.equal(await metric(fleet, 'solo', 'ksw_shard_failures_total', { stage: 'deliver' }), 1);
      assert.equal(await metric(fleet, 'solo', 'ksw_lease_takes_total'), 2, 'taken, released, taken again');
      assert.deepEqual(log.violations(), []);
    } finally {
      await fleet.stopAll();
    }
  });

  it("two processes started with one workerId: the second does not read the live one's shards, says so, and takes over once it is gone (finding 2)", async () => {
    const stream = 'alive-same-id';
    await createStream(t.aws.kinesis, stream, 2);
    await produce(stream, 0, 100);
    const log = new LeaseWriteLog();
    const first = await viaProxy(log, 'first');
    const second = await viaProxy(log, 'second');
    const fleet = new TestFleet({
      kinesis: t.aws.kinesis,
      dynamodb: t.aws.dynamodb,
      table: 'alive-same-id-leases',
      consumers: [{ type: 'polling', stream, idleIntervalMs: 50, busyIntervalMs: 0 }],
      checkpoints: FAST,
      dynamodbFor: (name) => (name === 'first' ? first.client : second.client),
    });
    try {
      await fleet.start('dup', 'first');
      await waitFor(() => fleet.held().first === 2, 20_000, 'the first process holds both shards');
      await fleet.start('dup', 'second');
      // Long enough for the second to see the leases renewed several times, and to take them were it
      // (as before) to treat leases owned by its id as its own.
      let n = 100;
      for (let i = 0; i < 6; i++) {
        await produce(stream, n, 20);
        n += 20;
        await new Promise((r) => setTimeout(r, 500));
      }
      const bySecond = fleet.deliveries.filter((d) => d.worker === 'second');
      assert.equal(bySecond.length, 0, 'the second process read nothing while the first was alive');
      assert.equal(fleet.held().second, 0);
      assert.ok(
        (await metric(fleet, 'second', 'ksw_worker_id_conflicts_total')) >= 1,
        'the conflict is counted by the process that found it',
      );
      // The first leaves (graceful): the second takes both shards and reads what is left, once.
      await fleet.stop('first');
      await produce(stream, n, 20);
      n += 20;
      await waitFor(() => fleet.held().second === 2, 10_000, 'the second process takes over');
      await waitFor(
        () => fleet.distinct().size >= n,
        20_000,
        `all ${n} records (now ${fleet.distinct().size})`,
      );
      assert.equal(fleet.duplicates(), 0, 'no record read by both');
      assert.deepEqual(log.violations(), [], 'checkpoints never moved back');
    } finally {
      await fleet.stopAll();
    }
  });

  it('a worker whose lease writes stop going through fences itself before another may take its shard (finding 3)', async () => {
    const stream = 'alive-fenced';
    const [shard] = await createStream(t.aws.kinesis, stream, 1);
    await produce(stream, 0, 20);
    const log = new LeaseWriteLog();
    const a = await viaProxy(log, 'a');
    const b = await viaProxy(log, 'b');
    const fleet = new TestFleet({
      kinesis: t.aws.kinesis,
      dynamodb: t.aws.dynamodb,
      table: 'alive-fenced-leases',
      consumers: [{ type: 'polling', stream, idleIntervalMs: 50, busyIntervalMs: 0 }],
      checkpoints: FAST,
      dynamodbFor: (name) => (name === 'a' ? a.client : b.client),
    });
    let producing = true;
    let n = 20;
    const producer = (async () => {
      while (producing) {
        await produce(stream, n, 5);
        n += 5;
        await new Promise((r) => setTimeout(r, 100));
      }
    })();
    try {
      await fleet.start('a');
      await waitFor(() => fleet.held().a === 1, 20_000, 'a holds the shard');
      await fleet.start('b');
      await new Promise((r) => setTimeout(r, 500));
      // a's lease writes now hang (longer than its calls wait) while it goes on reading.
      const cut = Date.now();
      a.proxy.setRules([
        { name: 'hang', rate: 1, matches: amzTarget('UpdateItem'), fault: { kind: 'delay', ms: 30_000 } },
      ]);
      await waitFor(() => fleet.held().b === 1, 15_000, 'b takes the shard once it expired');
      a.proxy.clear();
      producing = false;
      await producer;
      await waitFor(
        () => fleet.distinct().size >= n,
        20_000,
        `all ${n} records (now ${fleet.distinct().size})`,
      );
      const lastByA = Math.max(...fleet.deliveries.filter((d) => d.worker === 'a').map((d) => d.at));
      const bTake = log.chain(shard!).find((w) => w.via === 'b' && w.operation === 'take')!;
      const aLastOk = Math.max(
        ...log
          .chain(shard!)
          .filter((w) => w.via === 'a' && w.sentAt < cut)
          .map((w) => w.sentAt),
      );
      const fencedAfter = lastByA - aLastOk;
      process.stdout.write(
        `fencing: a's last accepted lease write at +0, a's last delivery at +${fencedAfter} ms, b's take at +${bTake.sentAt - aLastOk} ms (failoverMs ${FAILOVER_MS}, margin ${FAILOVER_MS / 5})\n`,
      );
      assert.ok(lastByA < bTake.sentAt, `a stopped (${lastByA}) before b took the lease (${bTake.sentAt})`);
      assert.ok(
        fencedAfter <= FAILOVER_MS - FAILOVER_MS / 5 + 100,
        `a stopped within failoverMs - margin (${fencedAfter} ms)`,
      );
      assert.ok(
        bTake.sentAt - aLastOk >= FAILOVER_MS,
        "b took it no sooner than failoverMs after a's last write",
      );
      assert.ok((await metric(fleet, 'a', 'ksw_lease_losses_total', { reason: 'fenced' })) >= 1);
      assert.deepEqual(log.violations(), []);
    } finally {
      producing = false;
      await producer;
      await fleet.stopAll();
    }
  });

  it('SHARD_END is final at the coordinator: checkpoints queued behind a slow SHARD_END write are not sent after it, the parent is not taken again and its children are read (finding 6)', async () => {
    const stream = 'alive-shard-end';
    const [parent] = await createStream(t.aws.kinesis, stream, 1);
    await produce(stream, 0, 20);
    const log = new LeaseWriteLog();
    const { proxy, client } = await viaProxy(log, 'solo');
    const arrivals: Arrival[] = [];
    proxy.onArrival((a) => {
      if (String(a.headers['x-amz-target'] ?? '').endsWith('.UpdateItem')) arrivals.push(a);
    });
    /** The checkpoint value an UpdateItem of the parent's lease writes (undefined: another write or lease). */
    const parentCheckpoint = (req: { body: Buffer }): string | undefined => {
      const ask = JSON.parse(req.body.toString('utf8')) as {
        Key: { leaseKey: { S?: string } };
        UpdateExpression: string;
        ExpressionAttributeValues?: Record<string, { S?: string }>;
      };
      if (ask.Key.leaseKey.S !== parent || !ask.UpdateExpression.includes('checkpoint = :cp'))
        return undefined;
      return ask.ExpressionAttributeValues?.[':cp']?.S;
    };
    const fleet = new TestFleet({
      kinesis: t.aws.kinesis,
      dynamodb: client,
      table: 'alive-shard-end-leases',
      consumers: [{ type: 'polling', stream, idleIntervalMs: 50, busyIntervalMs: 0 }],
      // Periodic checkpoints every 100 ms, so several are due while SHARD_END is on its way.
      checkpoints: { failoverMs: 3_000, intervalMs: 100, shardSyncIntervalMs: 500 },
    });
    try {
      await fleet.start('solo');
      await waitFor(() => fleet.distinct().size >= 20, 20_000, 'the first 20 records');
      // From now on the parent's ordinary checkpoints fail (its watermark stays ahead of its checkpoint,
      // so every periodic checkpoint has something to write) and SHARD_END takes 600 ms to arrive.
      proxy.setRules([
        {
          name: 'shard-end-slow',
          rate: 1,
          matches: (req) => amzTarget('UpdateItem')(req) && parentCheckpoint(req) === 'SHARD_END',
          fault: { kind: 'delay', ms: 600 },
        },
        {
          name: 'checkpoint-throttled',
          rate: 1,
          matches: (req) => {
            if (!amzTarget('UpdateItem')(req)) return false;
            const cp = parentCheckpoint(req);
            return cp !== undefined && cp !== 'SHARD_END';
          },
          fault: awsJsonError('ProvisionedThroughputExceededException', 'throttled (injected)'),
        },
      ]);
      await produce(stream, 20, 10);
      await waitFor(() => fleet.distinct().size >= 30, 20_000, 'records 20..29 of the parent');
      await t.aws.kinesis.send(
        new SplitShardCommand({
          StreamName: stream,
          ShardToSplit: parent!,
          NewStartingHashKey: (2n ** 127n).toString(),
        }),
      );
      await waitFor(
        async () =>
          (await t.aws.kinesis.send(new DescribeStreamSummaryCommand({ StreamName: stream })))
            .StreamDescriptionSummary?.StreamStatus === 'ACTIVE',
        20_000,
        'split done',
      );
      await produce(stream, 30, 20);
      await waitFor(
        () => fleet.distinct().size >= 50,
        30_000,
        `all 50 records, the children's after the parent's SHARD_END (now ${fleet.distinct().size})`,
      );
      const leases = new LeaseTable(t.aws.dynamodb, 'alive-shard-end-leases');
      assert.equal((await leases.get(parent!))?.checkpoint, 'SHARD_END');
      const shardEnd = arrivals.find((a) => parentCheckpoint(a) === 'SHARD_END');
      assert.ok(shardEnd, 'SHARD_END was sent');
      const behind = arrivals.filter(
        (a) => a.startedAt >= shardEnd.startedAt && a !== shardEnd && parentCheckpoint(a) !== undefined,
      );
      assert.equal(behind.length, 0, 'no checkpoint of the parent was sent after its SHARD_END');
      assert.ok(proxy.count('checkpoint-throttled') >= 1, 'periodic checkpoints were due meanwhile');
      assert.equal(
        log.chain(parent!).filter((w) => w.operation === 'take').length,
        1,
        'the parent was taken once, never again after SHARD_END',
      );
      assert.deepEqual(log.violations(), []);
      assert.equal(fleet.duplicates(), 0);
    } finally {
      await fleet.stopAll();
    }
  });
});
