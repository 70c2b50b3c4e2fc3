import assert from 'node:assert/strict';
import { type DynamoDBClient, GetItemCommand, PutItemCommand } from '@aws-sdk/client-dynamodb';
import { afterAll, beforeAll, describe, it } from 'vitest';
import {
  checkpointPosition,
  LeaseLostError,
  LeaseTable,
  SHARD_END,
} from '../../src/consumers/lease-table.js';

/**
 * The lease-table contract, run against dynalite (npm, integration tier) and against AWS's own DynamoDB
 * Local (services tier), so the emulator cannot hide a difference from the real implementation.
 */
export function leaseTableSuite(
  name: string,
  setup: () => Promise<{ dynamodb: DynamoDBClient; stop(): Promise<void> }>,
) {
  describe(`LeaseTable against ${name}`, () => {
    let t: { aws: { dynamodb: DynamoDBClient }; stop(): Promise<void> };
    let table: LeaseTable;

    beforeAll(async () => {
      const peer = await setup();
      t = { aws: { dynamodb: peer.dynamodb }, stop: () => peer.stop() };
      table = new LeaseTable(t.aws.dynamodb, 'leases-test');
      await table.ensureTable(true);
      await table.ensureTable(true); // idempotent
    });
    afterAll(async () => {
      await t.stop();
    });

    it('refuses to run on a missing table when createTable is false, naming the fix', async () => {
      await assert.rejects(
        new LeaseTable(t.aws.dynamodb, 'no-such-table').ensureTable(false),
        /createTable: true/,
      );
    });

    it('writes rows in the KCL 2.x format', async () => {
      const lease = await table.createIfMissing('shardId-000000000001', 'TRIM_HORIZON', [
        'shardId-000000000000',
      ]);
      const taken = await table.take(lease, 'worker-a', 'test.1');
      await table.checkpoint(taken, {
        sequenceNumber: '49590338271490256608559692538361571095921575989136588898',
        subSequenceNumber: 0,
      });
      const item = (
        await t.aws.dynamodb.send(
          new GetItemCommand({ TableName: 'leases-test', Key: { leaseKey: { S: 'shardId-000000000001' } } }),
        )
      ).Item!;
      assert.deepEqual(item.leaseKey, { S: 'shardId-000000000001' });
      assert.deepEqual(item.leaseOwner, { S: 'worker-a' });
      assert.deepEqual(item.leaseCounter, { N: '2' });
      assert.deepEqual(item.checkpoint, { S: '49590338271490256608559692538361571095921575989136588898' });
      assert.deepEqual(item.checkpointSubSequenceNumber, { N: '0' });
      assert.deepEqual(item.ownerSwitchesSinceCheckpoint, { N: '0' });
      assert.deepEqual(item.parentShardId, { SS: ['shardId-000000000000'] });
    });

    it('reads a lease written by the Java KCL and keeps attributes it does not know', async () => {
      await t.aws.dynamodb.send(
        new PutItemCommand({
          TableName: 'leases-test',
          Item: {
            leaseKey: { S: 'shardId-000000000007' },
            leaseOwner: { S: 'kcl-worker-1' },
            leaseCounter: { N: '42' },
            checkpoint: { S: '49590338271490256608559692538361571095921575989136588900' },
            checkpointSubSequenceNumber: { N: '3' },
            ownerSwitchesSinceCheckpoint: { N: '1' },
            throughputKBps: { N: '12.5' },
          },
        }),
      );
      const lease = (await table.get('shardId-000000000007'))!;
      assert.deepEqual(checkpointPosition(lease), {
        sequenceNumber: '49590338271490256608559692538361571095921575989136588900',
        subSequenceNumber: 3,
      });
      const taken = await table.take(lease, 'ksw-1', 'test.2');
      assert.equal(taken.ownerSwitchesSinceCheckpoint, 2);
      await table.renew(taken);
      const item = (
        await t.aws.dynamodb.send(
          new GetItemCommand({ TableName: 'leases-test', Key: { leaseKey: { S: 'shardId-000000000007' } } }),
        )
      ).Item!;
      assert.deepEqual(item.throughputKBps, { N: '12.5' }, 'unknown attributes are preserved');
      assert.deepEqual(item.leaseCounter, { N: '44' });
    });

    it('lets exactly one of several racing takers win', async () => {
      const lease = await table.createIfMissing('shardId-000000000002', 'LATEST', []);
      const results = await Promise.allSettled(
        Array.from({ length: 10 }, (_, i) => table.take(lease, `racer-${i}`, 'test.3')),
      );
      const won = results.filter((r) => r.status === 'fulfilled');
      assert.equal(won.length, 1);
      for (const r of results) if (r.status === 'rejected') assert.ok(r.reason instanceof LeaseLostError);
    });

    it('a stale holder cannot checkpoint or renew after another worker took the lease', async () => {
      const lease = await table.createIfMissing('shardId-000000000003', 'TRIM_HORIZON', []);
      const mine = await table.take(lease, 'old-owner', 'test.4');
      await table.take(mine, 'new-owner', 'test.5');
      await assert.rejects(
        table.checkpoint(mine, { sequenceNumber: '1', subSequenceNumber: 0 }),
        LeaseLostError,
      );
      await assert.rejects(table.renew(mine), LeaseLostError);
    });

    it('keeps a KCL pendingCheckpoint on take/renew/release, resumes from checkpoint, and a checkpoint clears it', async () => {
      await t.aws.dynamodb.send(
        new PutItemCommand({
          TableName: 'leases-test',
          Item: {
            leaseKey: { S: 'shardId-000000000008' },
            leaseCounter: { N: '5' },
            checkpoint: { S: '100' },
            checkpointSubSequenceNumber: { N: '2' },
            pendingCheckpoint: { S: '150' },
            pendingCheckpointSubSequenceNumber: { N: '4' },
            ownerSwitchesSinceCheckpoint: { N: '0' },
            startingHashKey: { S: '0' },
            endingHashKey: { S: '340282366920938463463374607431768211455' },
          },
        }),
      );
      const lease = (await table.get('shardId-000000000008'))!;
      assert.deepEqual(lease.pendingCheckpoint, { sequenceNumber: '150', subSequenceNumber: 4 });
      assert.deepEqual(checkpointPosition(lease), { sequenceNumber: '100', subSequenceNumber: 2 });
      assert.deepEqual(lease.hashKeyRange, { start: '0', end: '340282366920938463463374607431768211455' });
      const renewed = await table.renew(await table.take(lease, 'w', 'test.6'));
      assert.deepEqual(renewed.pendingCheckpoint, { sequenceNumber: '150', subSequenceNumber: 4 });
      const released = await table.release(renewed);
      assert.deepEqual(released.pendingCheckpoint, { sequenceNumber: '150', subSequenceNumber: 4 });
      const again = await table.take(released, 'w', 'test.7');
      const cp = await table.checkpoint(again, { sequenceNumber: '160', subSequenceNumber: 0 });
      assert.equal(cp.pendingCheckpoint, undefined);
      const item = (
        await t.aws.dynamodb.send(
          new GetItemCommand({ TableName: 'leases-test', Key: { leaseKey: { S: 'shardId-000000000008' } } }),
        )
      ).Item!;
      assert.equal(item.pendingCheckpoint, undefined);
      assert.deepEqual(item.startingHashKey, { S: '0' }, 'unknown-to-us attributes kept');
    });

    it('SHARD_END records the children in childShardIds (SS), as the KCL does', async () => {
      const lease = await table.take(
        await table.createIfMissing('shardId-000000000009', 'TRIM_HORIZON', [], { start: '0', end: '99' }),
        'w',
        'test.8',
      );
      await table.checkpoint(lease, SHARD_END, {
        childShardIds: ['shardId-000000000010', 'shardId-000000000011'],
      });
      const item = (
        await t.aws.dynamodb.send(
          new GetItemCommand({ TableName: 'leases-test', Key: { leaseKey: { S: 'shardId-000000000009' } } }),
        )
      ).Item!;
      assert.deepEqual(item.checkpoint, { S: 'SHARD_END' });
      assert.deepEqual([...(item.childShardIds?.SS ?? [])].sort(), [
        'shardId-000000000010',
        'shardId-000000000011',
      ]);
      assert.deepEqual(item.startingHashKey, { S: '0' });
      assert.deepEqual(item.endingHashKey, { S: '99' });
      const stored = (await table.get('shardId-000000000009'))!;
      assert.equal(await table.remove(lease), false, 'a stale counter cannot delete');
      assert.equal(await table.remove(stored), true);
      assert.equal(await table.get('shardId-000000000009'), undefined);
    });

    it('graceful handoff: the old owner may checkpoint until it finishes; the new owner may not write before', async () => {
      const held = await table.take(
        await table.createIfMissing('shardId-000000000012', 'TRIM_HORIZON', []),
        'old',
        'test.9',
      );
      const handed = await table.startHandoff(held, 'new');
      assert.equal(handed.leaseOwner, 'new');
      assert.equal(handed.checkpointOwner, 'old');
      assert.equal(handed.ownerSwitchesSinceCheckpoint, 1);
      await assert.rejects(table.renew(held), LeaseLostError, 'the old owner no longer renews');
      await assert.rejects(table.renew(handed), LeaseLostError, 'the new owner waits for the handoff');
      await assert.rejects(table.startHandoff(handed, 'third'), LeaseLostError, 'one handoff at a time');
      const checkpointed = await table.checkpoint(
        handed,
        { sequenceNumber: '42', subSequenceNumber: 0 },
        { as: 'checkpointOwner' },
      );
      const finished = await table.finishHandoff(checkpointed);
      assert.equal(finished.checkpointOwner, undefined);
      assert.equal(finished.leaseOwner, 'new');
      assert.equal(finished.checkpoint, '42');
      await assert.rejects(
        table.checkpoint(finished, { sequenceNumber: '43', subSequenceNumber: 0 }, { as: 'checkpointOwner' }),
        LeaseLostError,
      );
      const taken = await table.take(finished, 'new', 'test.10');
      assert.equal(taken.leaseOwner, 'new');
      await table.renew(taken);
    });

    it('a take is conditional on the owner it saw as well as the counter; it ends a stuck handoff', async () => {
      const lease = await table.take(
        await table.createIfMissing('shardId-000000000013', 'TRIM_HORIZON', []),
        'a',
        'test.11',
      );
      await assert.rejects(
        table.take({ ...lease, leaseOwner: 'someone-else' }, 'b', 'test.12'),
        LeaseLostError,
      );
      const handed = await table.startHandoff(lease, 'b');
      const forced = await table.take(handed, 'b', 'test.13');
      assert.equal(forced.checkpointOwner, undefined);
      assert.equal(forced.leaseOwner, 'b');
      await assert.rejects(
        table.finishHandoff(handed),
        LeaseLostError,
        'the old owner learns it was forced out',
      );
    });

    it('SHARD_END is final: a checkpoint or a take with the current counter cannot overwrite it (finding 6)', async () => {
      const lease = await table.take(
        await table.createIfMissing('shardId-000000000021', 'TRIM_HORIZON', []),
        'w',
        'p.1',
      );
      const ended = await table.checkpoint(lease, SHARD_END, { childShardIds: ['shardId-000000000022'] });
      // A periodic checkpoint queued behind SHARD_END, holding the lease as SHARD_END left it.
      await assert.rejects(
        table.checkpoint(ended, { sequenceNumber: '100', subSequenceNumber: 0 }),
        LeaseLostError,
        'before the fix this overwrote SHARD_END with a sequence number',
      );
      const released = await table.release(ended);
      await assert.rejects(
        table.take(released, 'other', 'q.1'),
        LeaseLostError,
        'a finished shard is never taken',
      );
      assert.equal((await table.get('shardId-000000000021'))?.checkpoint, SHARD_END);
    });

    it("a take writes its tenure token; a handoff request keeps the holder's; a release removes it", async () => {
      const lease = await table.take(
        await table.createIfMissing('shardId-000000000023', 'TRIM_HORIZON', []),
        'a',
        'inst-a.1',
      );
      assert.equal(lease.tenure, 'inst-a.1');
      const renewed = await table.renew(lease);
      assert.equal(renewed.tenure, 'inst-a.1');
      const asked = await table.startHandoff(renewed, 'b');
      assert.equal(asked.tenure, 'inst-a.1', 'the holder recognises the request as one for its tenure');
      const draining = await table.renewHandoff(asked);
      assert.equal(
        draining.leaseCounter,
        asked.leaseCounter + 1,
        'the holder moves the counter as checkpointOwner',
      );
      const finished = await table.finishHandoff(draining);
      const taken = await table.take(finished, 'b', 'inst-b.4');
      assert.equal(taken.tenure, 'inst-b.4');
      assert.equal((await table.release(taken)).tenure, undefined);
    });

    it('release removes the owner; SHARD_END is a checkpoint', async () => {
      const lease = await table.take(
        await table.createIfMissing('shardId-000000000004', 'TRIM_HORIZON', []),
        'w',
        'test.14',
      );
      const ended = await table.checkpoint(lease, SHARD_END);
      const released = await table.release(ended);
      assert.equal(released.leaseOwner, undefined);
      assert.equal(released.checkpoint, 'SHARD_END');
      assert.equal(checkpointPosition(released), undefined);
      assert.ok((await table.list()).length >= 4);
    });
  });
}
