import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { type DynamoDBClient, GetItemCommand, PutItemCommand } from '@aws-sdk/client-dynamodb';
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

    before(async () => {
      const peer = await setup();
      t = { aws: { dynamodb: peer.dynamodb }, stop: () => peer.stop() };
      table = new LeaseTable(t.aws.dynamodb, 'leases-test');
      await table.ensureTable(true);
      await table.ensureTable(true); // idempotent
    });
    after(async () => {
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
      const taken = await table.take(lease, 'worker-a');
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
      const taken = await table.take(lease, 'ksw-1');
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
        Array.from({ length: 10 }, (_, i) => table.take(lease, `racer-${i}`)),
      );
      const won = results.filter((r) => r.status === 'fulfilled');
      assert.equal(won.length, 1);
      for (const r of results) if (r.status === 'rejected') assert.ok(r.reason instanceof LeaseLostError);
    });

    it('a stale holder cannot checkpoint or renew after another worker took the lease', async () => {
      const lease = await table.createIfMissing('shardId-000000000003', 'TRIM_HORIZON', []);
      const mine = await table.take(lease, 'old-owner');
      await table.take(mine, 'new-owner');
      await assert.rejects(
        table.checkpoint(mine, { sequenceNumber: '1', subSequenceNumber: 0 }),
        LeaseLostError,
      );
      await assert.rejects(table.renew(mine), LeaseLostError);
    });

    it('release removes the owner; SHARD_END is a checkpoint', async () => {
      const lease = await table.take(
        await table.createIfMissing('shardId-000000000004', 'TRIM_HORIZON', []),
        'w',
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
