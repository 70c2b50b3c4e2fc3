/**
 * Leases and checkpoints in DynamoDB, in the row format of the Java KCL (DynamoDBLeaseSerializer), so a
 * fleet can move between the KCL and this worker without losing its place:
 *
 *   leaseKey (S, hash key) = shard id · leaseOwner (S) · leaseCounter (N) · checkpoint (S: sequence number
 *   or TRIM_HORIZON / LATEST / AT_TIMESTAMP / SHARD_END) · checkpointSubSequenceNumber (N) ·
 *   pendingCheckpoint (S) + pendingCheckpointSubSequenceNumber (N) · ownerSwitchesSinceCheckpoint (N) ·
 *   parentShardId (SS) · childShardIds (SS) · startingHashKey / endingHashKey (S) · checkpointOwner (S)
 *
 * Every write is conditional on the leaseCounter we last saw (and on who holds the lease), so two workers
 * can never both believe a write of theirs succeeded: the loser gets `LeaseLostError`.
 * Attributes we do not know are never touched (UpdateItem only sets named attributes).
 *
 * Graceful handoff uses the KCL 3.x convention: the taker sets `leaseOwner` to itself and `checkpointOwner`
 * to the previous owner, which stops reading, checkpoints (allowed while it is the checkpointOwner) and
 * removes `checkpointOwner`; only then does the new owner start. A `pendingCheckpoint` (the KCL's two-phase
 * checkpoint) is read and kept as it is; processing resumes from `checkpoint`, as the KCL does, and a
 * checkpoint write clears it, as the KCL's does.
 *
 * One attribute is ours: `kswTenure` (S), the tenure token of the owner's current take (`<process
 * instance>.<take>`, written by `take`, kept through a handoff request, removed by `release`). The counter
 * alone keeps two writers apart; the token tells a worker whether a lease owned by its own `workerId` was
 * taken by this very process (its own write, whose answer may have been lost) or by another process
 * started with the same id. The KCL ignores and keeps it.
 *
 * `SHARD_END` is final: every checkpoint write is conditional on the stored checkpoint not being
 * SHARD_END, so a periodic checkpoint that was queued behind it can never overwrite it. Each call takes
 * an optional AbortSignal (lease writes get a timeout below the writer's fencing deadline).
 */
import {
  type AttributeValue,
  ConditionalCheckFailedException,
  CreateTableCommand,
  DeleteItemCommand,
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

/** Condition: the stored checkpoint is not SHARD_END (`:end`). */
const NOT_SHARD_END = '(attribute_not_exists(checkpoint) OR checkpoint <> :end)';
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
  readonly childShardIds: readonly string[];
  /** A prepared (two-phase) checkpoint of a KCL application; kept, never acted on. */
  readonly pendingCheckpoint:
    | { readonly sequenceNumber: string; readonly subSequenceNumber: number }
    | undefined;
  /** During a graceful handoff: the previous owner, still draining and allowed to checkpoint. */
  readonly checkpointOwner: string | undefined;
  readonly hashKeyRange: { readonly start: string; readonly end: string } | undefined;
  /** Tenure token of the owner's current take (ours; undefined for rows written by the KCL). */
  readonly tenure: string | undefined;
}

/** Per-call options: an AbortSignal (e.g. a timeout below the caller's fencing deadline). */
export interface CallOptions {
  readonly signal?: AbortSignal;
}

/** Who holds a lease for a write: its owner, or the previous owner finishing a handoff. */
type Holder = 'leaseOwner' | 'checkpointOwner';

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
  const pending = item.pendingCheckpoint?.S;
  const start = item.startingHashKey?.S;
  const end = item.endingHashKey?.S;
  return {
    leaseKey: item.leaseKey?.S ?? '',
    leaseOwner: item.leaseOwner?.S,
    leaseCounter: Number(item.leaseCounter?.N ?? '0'),
    checkpoint: item.checkpoint?.S ?? 'TRIM_HORIZON',
    checkpointSubSequenceNumber: Number(item.checkpointSubSequenceNumber?.N ?? '0'),
    ownerSwitchesSinceCheckpoint: Number(item.ownerSwitchesSinceCheckpoint?.N ?? '0'),
    parentShardIds: item.parentShardId?.SS ?? [],
    childShardIds: item.childShardIds?.SS ?? [],
    pendingCheckpoint: pending
      ? {
          sequenceNumber: pending,
          subSequenceNumber: Number(item.pendingCheckpointSubSequenceNumber?.N ?? '0'),
        }
      : undefined,
    checkpointOwner: item.checkpointOwner?.S,
    hashKeyRange: start && end ? { start, end } : undefined,
    tenure: item.kswTenure?.S,
  };
}

function sendOptions(opts: CallOptions | undefined): { abortSignal?: AbortSignal } {
  return opts?.signal ? { abortSignal: opts.signal } : {};
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

  async get(leaseKey: string, opts?: CallOptions): Promise<Lease | undefined> {
    const out = await this.client.send(
      new GetItemCommand({
        TableName: this.tableName,
        Key: { leaseKey: { S: leaseKey } },
        ConsistentRead: true,
      }),
      sendOptions(opts),
    );
    return out.Item ? fromItem(out.Item) : undefined;
  }

  async list(opts?: CallOptions): Promise<Lease[]> {
    const leases: Lease[] = [];
    let start: Record<string, AttributeValue> | undefined;
    do {
      const out = await this.client.send(
        new ScanCommand({ TableName: this.tableName, ConsistentRead: true, ExclusiveStartKey: start }),
        sendOptions(opts),
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
    hashKeyRange?: { start: string; end: string },
  ): Promise<Lease> {
    const item: Record<string, AttributeValue> = {
      leaseKey: { S: leaseKey },
      leaseCounter: { N: '0' },
      checkpoint: { S: initial },
      checkpointSubSequenceNumber: { N: '0' },
      ownerSwitchesSinceCheckpoint: { N: '0' },
    };
    if (parentShardIds.length > 0) item.parentShardId = { SS: [...parentShardIds] };
    if (hashKeyRange) {
      item.startingHashKey = { S: hashKeyRange.start };
      item.endingHashKey = { S: hashKeyRange.end };
    }
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

  /**
   * Takes a lease (unowned, expired, handed to us, or forcibly from a handoff that did not finish) for the
   * tenure `token`; conditional on its counter and on its owner being still the one we saw. Ends any
   * handoff. Not a lease at SHARD_END: a finished shard is never read again.
   */
  async take(lease: Lease, owner: string, token: string, opts?: CallOptions): Promise<Lease> {
    // As the KCL counts: a switch is a change from one owner to another, not the first take of a lease.
    const switched = lease.leaseOwner !== undefined && lease.leaseOwner !== owner;
    try {
      const out = await this.client.send(
        new UpdateItemCommand({
          TableName: this.tableName,
          Key: { leaseKey: { S: lease.leaseKey } },
          UpdateExpression:
            'SET leaseOwner = :owner, kswTenure = :token, leaseCounter = :next, ownerSwitchesSinceCheckpoint = if_not_exists(ownerSwitchesSinceCheckpoint, :zero) + :switch REMOVE checkpointOwner',
          ConditionExpression: `leaseCounter = :expected AND ${
            lease.leaseOwner === undefined ? 'attribute_not_exists(leaseOwner)' : 'leaseOwner = :previous'
          } AND ${NOT_SHARD_END}`,
          ExpressionAttributeValues: {
            ':owner': { S: owner },
            ':token': { S: token },
            ':next': { N: String(lease.leaseCounter + 1) },
            ':expected': { N: String(lease.leaseCounter) },
            ':zero': { N: '0' },
            ':switch': { N: switched ? '1' : '0' },
            ':end': { S: SHARD_END },
            ...(lease.leaseOwner === undefined ? {} : { ':previous': { S: lease.leaseOwner } }),
          },
          ReturnValues: 'ALL_NEW',
        }),
        sendOptions(opts),
      );
      return fromItem(out.Attributes ?? {});
    } catch (err) {
      if (isConditionFailure(err)) throw new LeaseLostError(lease.leaseKey, 'take');
      throw err;
    }
  }

  /**
   * Starts a graceful handoff of a lease another live worker holds (balancing): we become `leaseOwner`, the
   * holder becomes `checkpointOwner` and finishes (stop, drain, checkpoint, `finishHandoff`) before we read.
   * `kswTenure` keeps the holder's token, so the holder knows the request is for its tenure.
   */
  async startHandoff(lease: Lease, newOwner: string, opts?: CallOptions): Promise<Lease> {
    if (!lease.leaseOwner || lease.checkpointOwner) throw new LeaseLostError(lease.leaseKey, 'hand off');
    try {
      const out = await this.client.send(
        new UpdateItemCommand({
          TableName: this.tableName,
          Key: { leaseKey: { S: lease.leaseKey } },
          UpdateExpression:
            'SET leaseOwner = :new, checkpointOwner = :old, leaseCounter = :next, ownerSwitchesSinceCheckpoint = if_not_exists(ownerSwitchesSinceCheckpoint, :zero) + :one',
          ConditionExpression: `leaseCounter = :expected AND leaseOwner = :old AND attribute_not_exists(checkpointOwner) AND ${NOT_SHARD_END}`,
          ExpressionAttributeValues: {
            ':new': { S: newOwner },
            ':old': { S: lease.leaseOwner },
            ':next': { N: String(lease.leaseCounter + 1) },
            ':expected': { N: String(lease.leaseCounter) },
            ':zero': { N: '0' },
            ':one': { N: '1' },
            ':end': { S: SHARD_END },
          },
          ReturnValues: 'ALL_NEW',
        }),
        sendOptions(opts),
      );
      return fromItem(out.Attributes ?? {});
    } catch (err) {
      if (isConditionFailure(err)) throw new LeaseLostError(lease.leaseKey, 'hand off');
      throw err;
    }
  }

  /** The previous owner ends its part of a handoff (after its last checkpoint): the new owner may start. */
  finishHandoff(lease: Lease, opts?: CallOptions): Promise<Lease> {
    return this.heldUpdate(
      lease,
      'checkpointOwner',
      'finish handoff',
      'SET leaseCounter = :next REMOVE checkpointOwner',
      {},
      opts,
    );
  }

  /**
   * The previous owner, asked to hand a lease over, moves the counter once as `checkpointOwner`: the new
   * owner overrules the handoff only after the counter stood still for failoverMs, so this gives the
   * holder a full fencing period to drain and checkpoint.
   */
  renewHandoff(lease: Lease, opts?: CallOptions): Promise<Lease> {
    return this.heldUpdate(
      lease,
      'checkpointOwner',
      'renew for a handoff',
      'SET leaseCounter = :next',
      {},
      opts,
    );
  }

  /** Deletes the lease of a finished shard that no longer exists in the stream (past retention). */
  async remove(lease: Lease, opts?: CallOptions): Promise<boolean> {
    try {
      await this.client.send(
        new DeleteItemCommand({
          TableName: this.tableName,
          Key: { leaseKey: { S: lease.leaseKey } },
          ConditionExpression: 'leaseCounter = :expected AND checkpoint = :end',
          ExpressionAttributeValues: {
            ':expected': { N: String(lease.leaseCounter) },
            ':end': { S: SHARD_END },
          },
        }),
        sendOptions(opts),
      );
      return true;
    } catch (err) {
      if (isConditionFailure(err)) return false;
      throw err;
    }
  }

  /** Renews a held lease by incrementing its counter. */
  renew(lease: Lease, opts?: CallOptions): Promise<Lease> {
    return this.heldUpdate(lease, 'leaseOwner', 'renew', 'SET leaseCounter = :next', {}, opts);
  }

  /**
   * Records a checkpoint (a position, or SHARD_END with the shard's children) on a lease we own, or on one
   * we are handing off (`as: 'checkpointOwner'`). Clears a pending checkpoint, as the KCL does. Fails
   * (LeaseLostError) when the stored checkpoint is SHARD_END: that one is final.
   */
  checkpoint(
    lease: Lease,
    position: ShardPosition | typeof SHARD_END,
    opts: { childShardIds?: readonly string[]; as?: Holder } & CallOptions = {},
  ): Promise<Lease> {
    const seq = position === SHARD_END ? SHARD_END : position.sequenceNumber;
    const sub = position === SHARD_END ? 0 : position.subSequenceNumber;
    const children =
      opts.childShardIds && opts.childShardIds.length > 0 ? [...opts.childShardIds] : undefined;
    return this.heldUpdate(
      lease,
      opts.as ?? 'leaseOwner',
      'checkpoint',
      `SET leaseCounter = :next, checkpoint = :cp, checkpointSubSequenceNumber = :sub, ownerSwitchesSinceCheckpoint = :zero${
        children ? ', childShardIds = :children' : ''
      } REMOVE pendingCheckpoint, pendingCheckpointSubSequenceNumber`,
      {
        ':cp': { S: seq },
        ':sub': { N: String(sub) },
        ':zero': { N: '0' },
        ':end': { S: SHARD_END },
        ...(children ? { ':children': { SS: children } } : {}),
      },
      opts,
      NOT_SHARD_END,
    );
  }

  /** Gives a lease up (graceful shutdown) so another worker can take it without waiting for expiry. */
  release(lease: Lease, opts?: CallOptions): Promise<Lease> {
    return this.heldUpdate(
      lease,
      'leaseOwner',
      'release',
      'SET leaseCounter = :next REMOVE leaseOwner, kswTenure',
      {},
      opts,
    );
  }

  private async heldUpdate(
    lease: Lease,
    holder: Holder,
    action: string,
    update: string,
    values: Record<string, AttributeValue>,
    opts?: CallOptions,
    extraCondition?: string,
  ): Promise<Lease> {
    const who = holder === 'leaseOwner' ? lease.leaseOwner : lease.checkpointOwner;
    if (!who) throw new LeaseLostError(lease.leaseKey, action);
    // An owner may not write while a previous owner is still finishing a handoff of the lease.
    const handoffGuard = holder === 'leaseOwner' ? ' AND attribute_not_exists(checkpointOwner)' : '';
    const extra = extraCondition ? ` AND ${extraCondition}` : '';
    try {
      const out = await this.client.send(
        new UpdateItemCommand({
          TableName: this.tableName,
          Key: { leaseKey: { S: lease.leaseKey } },
          UpdateExpression: update,
          ConditionExpression: `leaseCounter = :expected AND ${holder} = :holder${handoffGuard}${extra}`,
          ExpressionAttributeValues: {
            ...values,
            ':next': { N: String(lease.leaseCounter + 1) },
            ':expected': { N: String(lease.leaseCounter) },
            ':holder': { S: who },
          },
          ReturnValues: 'ALL_NEW',
        }),
        sendOptions(opts),
      );
      return fromItem(out.Attributes ?? {});
    } catch (err) {
      if (isConditionFailure(err)) throw new LeaseLostError(lease.leaseKey, action);
      throw err;
    }
  }
}
