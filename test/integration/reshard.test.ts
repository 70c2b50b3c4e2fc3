/**
 * Resharding while producing, with 3 workers (coordinators in this process): split one shard and merge two
 * others. Every record is delivered, per-partition-key order holds across parent -> child, and no child
 * record is delivered before the last record of each of its parents was acked. Run against kinesalite (more
 * volume; children found by ListShards) and kinesis-local (ChildShards in GetRecords, and UpdateShardCount),
 * with smaller volume there because kinesis-local slows down as data grows.
 */
import assert from 'node:assert/strict';
import {
  DescribeStreamSummaryCommand,
  type KinesisClient,
  ListShardsCommand,
  MergeShardsCommand,
  type Shard,
  SplitShardCommand,
  UpdateShardCountCommand,
} from '@aws-sdk/client-kinesis';
import { afterAll, beforeAll, describe, it } from 'vitest';
import { LeaseTable, SHARD_END } from '../../src/consumers/lease-table.js';
import { type Delivery, orderViolations, TestFleet } from '../helpers/fleet.js';
import { createStream, putRecords, startTestStack, type TestStack, waitFor } from '../helpers/stack.js';

async function waitActive(kinesis: KinesisClient, stream: string): Promise<void> {
  await waitFor(
    async () =>
      (await kinesis.send(new DescribeStreamSummaryCommand({ StreamName: stream }))).StreamDescriptionSummary
        ?.StreamStatus === 'ACTIVE',
    30_000,
    `${stream} ACTIVE`,
  );
}

async function listShards(kinesis: KinesisClient, stream: string): Promise<Shard[]> {
  return (await kinesis.send(new ListShardsCommand({ StreamName: stream }))).Shards ?? [];
}

/** Checks the parent -> child rule on the delivery log and returns the number of parent/child pairs. */
function checkParentsFirst(deliveries: readonly Delivery[], shards: readonly Shard[]): number {
  let pairs = 0;
  for (const child of shards) {
    const parents = [child.ParentShardId, child.AdjacentParentShardId].filter((p): p is string => !!p);
    const childFirst = Math.min(...deliveries.filter((d) => d.shardId === child.ShardId).map((d) => d.order));
    if (!Number.isFinite(childFirst)) continue;
    for (const parent of parents) {
      const parentAcks = deliveries.filter((d) => d.shardId === parent).map((d) => d.ackOrder ?? Infinity);
      if (parentAcks.length === 0) continue;
      assert.ok(
        childFirst > Math.max(...parentAcks),
        `${child.ShardId} delivered a record (order ${childFirst}) before its parent ${parent}'s last ack (${Math.max(...parentAcks)})`,
      );
      pairs++;
    }
  }
  return pairs;
}

function reshardSuite(
  emulator: 'kinesalite' | 'kinesis-local',
  volume: { batches: number; perBatch: number; burst: number },
) {
  describe(`resharding under load (${emulator})`, () => {
    let t: TestStack;
    beforeAll(async () => {
      t = await startTestStack({ kinesis: emulator });
    });
    afterAll(async () => {
      await t.stop();
    });

    it('split one shard and merge two others while producing: all delivered, order kept, parents first', async () => {
      const stream = `reshard-${emulator}`;
      await createStream(t.aws.kinesis, stream, 3);
      const table = `reshard-${emulator}-leases`;
      const fleet = new TestFleet({
        kinesis: t.aws.kinesis,
        dynamodb: t.aws.dynamodb,
        table,
        // Small reads keep the parents behind when they close, so children are ready (leases from the frequent
        // shard sync) while their parents still have records to deliver: the case the rule exists for.
        consumers: [
          { type: 'polling', stream, idleIntervalMs: 100, busyIntervalMs: 50, maxRecordsPerCall: 10 },
        ],
        checkpoints: { failoverMs: 3_000, intervalMs: 300, shardSyncIntervalMs: 500 },
        // Sinks ack late: the parent's last acks arrive well after its last read, as with a buffering sink.
        maxAckDelayMs: 400,
      });
      const put: Array<{ shardId: string; sequenceNumber: string }> = [];
      let produced = 0;
      const produce = async (count = volume.perBatch) => {
        const out = await putRecords(
          t.aws.kinesis,
          stream,
          Array.from({ length: count }, (_, i) => ({
            partitionKey: `key-${(produced + i) % 41}`,
            data: JSON.stringify({ n: produced + i }),
          })),
        );
        put.push(...out);
        produced += count;
      };
      try {
        await Promise.all(['a', 'b', 'c'].map((id) => fleet.start(id)));
        const third = volume.batches / 3;
        for (let b = 0; b < volume.batches; b++) {
          await produce();
          if (b === Math.floor(third)) {
            await produce(volume.burst);
            const [s0] = await listShards(t.aws.kinesis, stream);
            const lo = BigInt(s0!.HashKeyRange!.StartingHashKey!);
            const hi = BigInt(s0!.HashKeyRange!.EndingHashKey!);
            await t.aws.kinesis.send(
              new SplitShardCommand({
                StreamName: stream,
                ShardToSplit: s0!.ShardId!,
                NewStartingHashKey: ((lo + hi) / 2n).toString(),
              }),
            );
            await waitActive(t.aws.kinesis, stream);
          }
          if (b === Math.floor(2 * third)) {
            await produce(volume.burst);
            const shards = await listShards(t.aws.kinesis, stream);
            await t.aws.kinesis.send(
              new MergeShardsCommand({
                StreamName: stream,
                ShardToMerge: shards[1]!.ShardId!,
                AdjacentShardToMerge: shards[2]!.ShardId!,
              }),
            );
            await waitActive(t.aws.kinesis, stream);
          }
          await new Promise((r) => setTimeout(r, 30));
        }
        await waitFor(
          () => fleet.distinct().size >= produced,
          90_000,
          `all ${produced} records delivered (have ${fleet.distinct().size})`,
        );
        const shards = await listShards(t.aws.kinesis, stream);
        const delivered = new Set(
          [...fleet.distinct().values()].map((d) => `${d.shardId}/${d.sequenceNumber}`),
        );
        for (const p of put)
          assert.ok(
            delivered.has(`${p.shardId}/${p.sequenceNumber}`),
            `lost ${p.shardId}/${p.sequenceNumber}`,
          );
        assert.deepEqual(orderViolations(fleet.deliveries), [], 'per-key order across parent -> child');
        const pairs = checkParentsFirst(fleet.deliveries, shards);
        assert.ok(pairs >= 4, `split (2 children) and merge (2 parents) checked: ${pairs}`);
        // Lease rows: parents at SHARD_END naming their children, children naming their parents.
        const leases = new LeaseTable(t.aws.dynamodb, table);
        await waitFor(
          async () => (await leases.list()).filter((l) => l.checkpoint === SHARD_END).length === 3,
          20_000,
          '3 parents at SHARD_END',
        );
        const rows = await leases.list();
        for (const parent of rows.filter((l) => l.checkpoint === SHARD_END)) {
          const children = shards
            .filter((s) => s.ParentShardId === parent.leaseKey || s.AdjacentParentShardId === parent.leaseKey)
            .map((s) => s.ShardId!)
            .sort();
          assert.deepEqual([...parent.childShardIds].sort(), children, `childShardIds of ${parent.leaseKey}`);
        }
        const merged = shards.find((s) => s.AdjacentParentShardId)!;
        assert.deepEqual(
          [...rows.find((l) => l.leaseKey === merged.ShardId)!.parentShardIds].sort(),
          [merged.ParentShardId!, merged.AdjacentParentShardId!].sort(),
        );
        process.stdout.write(
          `${emulator}: ${produced} records through a split and a merge, ${fleet.duplicates()} duplicate deliveries, ${pairs} parent/child pairs checked\n`,
        );
        assert.equal(fleet.duplicates(), 0);

        if (emulator === 'kinesis-local') {
          // UpdateShardCount: the same path (children from ChildShards of the parents' last reads).
          const before = produced;
          await t.aws.kinesis.send(
            new UpdateShardCountCommand({
              StreamName: stream,
              TargetShardCount: 6,
              ScalingType: 'UNIFORM_SCALING',
            }),
          );
          await waitActive(t.aws.kinesis, stream);
          for (let b = 0; b < 5; b++) await produce();
          await waitFor(() => fleet.distinct().size >= produced, 60_000, 'records after UpdateShardCount');
          const after = await listShards(t.aws.kinesis, stream);
          assert.deepEqual(orderViolations(fleet.deliveries), []);
          checkParentsFirst(fleet.deliveries, after);
          const ends = await Promise.all(
            [...fleet.members.values()].map(async (m) =>
              (await m.metrics.getSingleMetric('ksw_shard_ends_total')!.get()).values.reduce(
                (s, v) => s + v.value,
                0,
              ),
            ),
          );
          assert.ok(ends.reduce((a, b) => a + b, 0) >= 4, `shard ends seen: ${ends}`);
          process.stdout.write(
            `kinesis-local: UpdateShardCount 3 -> 6, ${produced - before} more records, order kept\n`,
          );
        }
      } finally {
        await fleet.stopAll();
      }
    });
  });
}

reshardSuite('kinesalite', { batches: 30, perBatch: 40, burst: 300 });
reshardSuite('kinesis-local', { batches: 12, perBatch: 15, burst: 60 });
