/**
 * Leases and checkpoints in DynamoDB, in the row format of the Java KCL 2.x (DynamoDBLeaseSerializer),
 * so a fleet can move between KCL and this worker without losing its place:
 *
 *   leaseKey (S, hash key) = shard id · leaseOwner (S) · leaseCounter (N) · checkpoint (S: sequence number
 *   or TRIM_HORIZON / LATEST / AT_TIMESTAMP / SHARD_END) · checkpointSubSequenceNumber (N) ·
 *   ownerSwitchesSinceCheckpoint (N) · parentShardId (SS)
 *
 * Every write is conditional on the leaseCounter we last saw (and on being the owner), so two workers can
 * never both believe a write of theirs succeeded: the loser gets `LeaseLostError` and stops the shard.
 * Attributes we do not know are never touched (UpdateItem only sets named attributes).
 */
import {
  type AttributeValue,
  ConditionalCheckFailedException,
  CreateTableCommand,
  DescribeTableCommand,
  type DynamoDBClient,
  GetItemCommand,
  PutItemCommand,
  ResourceNotFoundException,
  ScanCommand,
  UpdateItemCommand,
} from '@aws-sdk/client-dynamodb';
import type { ShardPosition } from '../core/watermark.js';

export const SHARD_END = 'SHARD_END';
export type InitialPosition = 'TRIM_HORIZON' | 'LATEST' | 'AT_TIMESTAMP';

export interface Lease {
  readonly leaseKey: string;
  readonly leaseOwner: string | undefined;
  readonly leaseCounter: number;
  /** A sequence number, an initial position sentinel, or SHARD_END. */
  readonly checkpoint: string;
  readonly checkpointSubSequenceNumber: number;
  readonly ownerSwitchesSinceCheckpoint: number;
  readonly parentShardIds: readonly string[];
}

export class LeaseLostError extends Error {
  constructor(leaseKey: string, action: string) {
    super(`lease ${leaseKey} lost while trying to ${action}: another worker owns it or it changed`);
    this.name = 'LeaseLostError';
  }
}

/** True when a checkpoint names a real record (as opposed to a sentinel such as TRIM_HORIZON). */
export function isSequenceCheckpoint(checkpoint: string): boolean {
  return /^\d+$/.test(checkpoint);
}

/** The position a lease's checkpoint stands for, or undefined for sentinels. */
export function checkpointPosition(lease: Lease): ShardPosition | undefined {
  return isSequenceCheckpoint(lease.checkpoint)
    ? { sequenceNumber: lease.checkpoint, subSequenceNumber: lease.checkpointSubSequenceNumber }
    : undefined;
}

function fromItem(item: Record<string, AttributeValue>): Lease {
  return {
    leaseKey: item.leaseKey?.S ?? '',
    leaseOwner: item.leaseOwner?.S,
    leaseCounter: Number(item.leaseCounter?.N ?? '0'),
    checkpoint: item.checkpoint?.S ?? 'TRIM_HORIZON',
    checkpointSubSequenceNumber: Number(item.checkpointSubSequenceNumber?.N ?? '0'),
    ownerSwitchesSinceCheckpoint: Number(item.ownerSwitchesSinceCheckpoint?.N ?? '0'),
    parentShardIds: item.parentShardId?.SS ?? [],
  };
}

function isConditionFailure(err: unknown): boolean {
  return (
    err instanceof ConditionalCheckFailedException ||
    (err as Error)?.name === 'ConditionalCheckFailedException'
  );
}

export class LeaseTable {
  constructor(
    private readonly client: DynamoDBClient,
    readonly tableName: string,
  ) {}

  /** Creates the table (on-demand billing) when it does not exist and waits until it is ACTIVE. */
  async ensureTable(create: boolean): Promise<void> {
    try {
      const described = await this.client.send(new DescribeTableCommand({ TableName: this.tableName }));
      if (described.Table?.TableStatus === 'ACTIVE') return;
    } catch (err) {
      if (!(err instanceof ResourceNotFoundException || (err as Error).name === 'ResourceNotFoundException'))
        throw err;
      if (!create) {
        throw new Error(
          `lease table ${this.tableName} does not exist: create it (hash key leaseKey, type S) or set checkpoints.createTable: true`,
        );
      }
      try {
        await this.client.send(
          new CreateTableCommand({
            TableName: this.tableName,
            AttributeDefinitions: [{ AttributeName: 'leaseKey', AttributeType: 'S' }],
            KeySchema: [{ AttributeName: 'leaseKey', KeyType: 'HASH' }],
            BillingMode: 'PAY_PER_REQUEST',
          }),
        );
      } catch (createErr) {
        // Another worker created it first.
        if ((createErr as Error).name !== 'ResourceInUseException') throw createErr;
      }
    }
    for (let i = 0; i < 600; i++) {
      const described = await this.client.send(new DescribeTableCommand({ TableName: this.tableName }));
      if (described.Table?.TableStatus === 'ACTIVE') return;
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`lease table ${this.tableName} did not become ACTIVE`);
  }

  async get(leaseKey: string): Promise<Lease | undefined> {
    const out = await this.client.send(
      new GetItemCommand({
        TableName: this.tableName,
        Key: { leaseKey: { S: leaseKey } },
        ConsistentRead: true,
      }),
    );
    return out.Item ? fromItem(out.Item) : undefined;
  }

  async list(): Promise<Lease[]> {
    const leases: Lease[] = [];
    let start: Record<string, AttributeValue> | undefined;
    do {
      const out = await this.client.send(
        new ScanCommand({ TableName: this.tableName, ConsistentRead: true, ExclusiveStartKey: start }),
      );
      for (const item of out.Items ?? []) leases.push(fromItem(item));
      start = out.LastEvaluatedKey;
    } while (start);
    return leases;
  }

  /** Creates an unowned lease unless one exists; returns the lease as stored. */
  async createIfMissing(
    leaseKey: string,
    initial: InitialPosition,
    parentShardIds: readonly string[],
  ): Promise<Lease> {
    const item: Record<string, AttributeValue> = {
      leaseKey: { S: leaseKey },
      leaseCounter: { N: '0' },
      checkpoint: { S: initial },
      checkpointSubSequenceNumber: { N: '0' },
      ownerSwitchesSinceCheckpoint: { N: '0' },
    };
    if (parentShardIds.length > 0) item.parentShardId = { SS: [...parentShardIds] };
    try {
      await this.client.send(
        new PutItemCommand({
          TableName: this.tableName,
          Item: item,
          ConditionExpression: 'attribute_not_exists(leaseKey)',
        }),
      );
      return fromItem(item);
    } catch (err) {
      if (!isConditionFailure(err)) throw err;
      const existing = await this.get(leaseKey);
      if (!existing) throw new Error(`lease ${leaseKey} vanished while being created`);
      return existing;
    }
  }

  /** Takes a lease (unowned, expired, or our own from before a restart); conditional on its counter. */
  async take(lease: Lease, owner: string): Promise<Lease> {
    const switched = lease.leaseOwner !== owner;
    try {
      const out = await this.client.send(
        new UpdateItemCommand({
          TableName: this.tableName,
          Key: { leaseKey: { S: lease.leaseKey } },
          UpdateExpression:
            'SET leaseOwner = :owner, leaseCounter = :next, ownerSwitchesSinceCheckpoint = if_not_exists(ownerSwitchesSinceCheckpoint, :zero) + :switch',
          ConditionExpression: 'leaseCounter = :expected',
          ExpressionAttributeValues: {
            ':owner': { S: owner },
            ':next': { N: String(lease.leaseCounter + 1) },
            ':expected': { N: String(lease.leaseCounter) },
            ':zero': { N: '0' },
            ':switch': { N: switched ? '1' : '0' },
          },
          ReturnValues: 'ALL_NEW',
        }),
      );
      return fromItem(out.Attributes ?? {});
    } catch (err) {
      if (isConditionFailure(err)) throw new LeaseLostError(lease.leaseKey, 'take');
      throw err;
    }
  }

  /** Renews a held lease by incrementing its counter. */
  renew(lease: Lease): Promise<Lease> {
    return this.ownedUpdate(lease, 'renew', 'SET leaseCounter = :next', {});
  }

  /** Records a checkpoint (a position or SHARD_END) on a held lease. */
  checkpoint(lease: Lease, position: ShardPosition | typeof SHARD_END): Promise<Lease> {
    const seq = position === SHARD_END ? SHARD_END : position.sequenceNumber;
    const sub = position === SHARD_END ? 0 : position.subSequenceNumber;
    return this.ownedUpdate(
      lease,
      'checkpoint',
      'SET leaseCounter = :next, checkpoint = :cp, checkpointSubSequenceNumber = :sub, ownerSwitchesSinceCheckpoint = :zero REMOVE pendingCheckpoint, pendingCheckpointSubSequenceNumber',
      { ':cp': { S: seq }, ':sub': { N: String(sub) }, ':zero': { N: '0' } },
    );
  }

  /** Gives a lease up (graceful shutdown) so another worker can take it without waiting for expiry. */
  release(lease: Lease): Promise<Lease> {
    return this.ownedUpdate(lease, 'release', 'SET leaseCounter = :next REMOVE leaseOwner', {});
  }

  private async ownedUpdate(
    lease: Lease,
    action: string,
    update: string,
    values: Record<string, AttributeValue>,
  ): Promise<Lease> {
    if (!lease.leaseOwner) throw new LeaseLostError(lease.leaseKey, action);
    try {
      const out = await this.client.send(
        new UpdateItemCommand({
          TableName: this.tableName,
          Key: { leaseKey: { S: lease.leaseKey } },
          UpdateExpression: update,
          ConditionExpression: 'leaseCounter = :expected AND leaseOwner = :owner',
          ExpressionAttributeValues: {
            ...values,
            ':next': { N: String(lease.leaseCounter + 1) },
            ':expected': { N: String(lease.leaseCounter) },
            ':owner': { S: lease.leaseOwner },
          },
          ReturnValues: 'ALL_NEW',
        }),
      );
      return fromItem(out.Attributes ?? {});
    } catch (err) {
      if (isConditionFailure(err)) throw new LeaseLostError(lease.leaseKey, action);
      throw err;
    }
  }
}
