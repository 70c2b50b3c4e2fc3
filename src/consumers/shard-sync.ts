/**
 * Shard sync and resharding: lists every stream's shards (every shardSyncIntervalMs), creates leases for
 * new shards (a child of a reshard starts at TRIM_HORIZON whatever the configured start), creates a closed
 * shard's child leases before its SHARD_END is written (from the ChildShards of its last read, else the
 * listing), tells whether a lease's parents are finished, and deletes SHARD_END leases of shards that left
 * the stream (retention), as the KCL's ShardSyncer and LeaseCleanupManager do.
 */
import { type KinesisClient, ListShardsCommand, type Shard } from '@aws-sdk/client-kinesis';
import type { Logger } from 'pino';
import type { CoordinatorMetrics } from './coordinator-metrics.js';
import type { LeaseKeys } from './lease-keys.js';
import { type InitialPosition, type Lease, type LeaseTable, SHARD_END } from './lease-table.js';
import type { KinesisConsumerConfig } from './registry.js';

export interface ShardSyncOptions {
  readonly deleteFinishedLeases: boolean;
}

export class ShardSyncer {
  /** Shards each stream listed at the last sync. */
  private readonly listed = new Map<string, Map<string, Shard>>();
  private running: Promise<void> | undefined;
  private stopped = false;

  constructor(
    private readonly consumers: readonly KinesisConsumerConfig[],
    private readonly keys: LeaseKeys,
    private readonly kinesis: KinesisClient,
    private readonly leases: LeaseTable,
    private readonly options: ShardSyncOptions,
    private readonly metrics: CoordinatorMetrics,
    private readonly log: Logger,
    /** Called after a sync created leases (a lease scan should take them now). */
    private readonly onCreated: () => Promise<void>,
  ) {}

  stop(): void {
    this.stopped = true;
  }

  async settle(): Promise<void> {
    await this.running?.catch(() => undefined);
  }

  /** Lists every stream's shards, creates missing leases and deletes finished leases of vanished shards. */
  sync(): Promise<void> {
    if (this.stopped) return Promise.resolve();
    this.running ??= this.syncOnce().finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  /** The shard's hash key range from the last listing. */
  hashKeyRange(stream: string, shardId: string): { start: string; end: string } | undefined {
    const r = this.listed.get(stream)?.get(shardId)?.HashKeyRange;
    return r?.StartingHashKey && r.EndingHashKey
      ? { start: r.StartingHashKey, end: r.EndingHashKey }
      : undefined;
  }

  /** True when every parent lease reached SHARD_END (a parent without a lease: when it left the stream). */
  parentsDone(lease: Lease, stream: string, all: ReadonlyMap<string, Lease>): boolean {
    const listed = this.listed.get(stream);
    return lease.parentShardIds.every((p) => {
      const parent = all.get(this.keys.of(stream, p));
      return parent ? parent.checkpoint === SHARD_END : !listed?.has(p);
    });
  }

  private async syncOnce(): Promise<void> {
    const leases = new Map((await this.leases.list()).map((l) => [l.leaseKey, l]));
    let created = false;
    for (const consumer of this.consumers) {
      const shards = await this.listShards(consumer.stream);
      const byId = new Map(shards.map((s) => [s.ShardId!, s]));
      this.listed.set(consumer.stream, byId);
      for (const shard of shards) {
        if (this.stopped) return;
        const key = this.keys.of(consumer.stream, shard.ShardId!);
        if (leases.has(key)) continue;
        const parents = [shard.ParentShardId, shard.AdjacentParentShardId].filter((p): p is string => !!p);
        // A child of a reshard starts at its beginning: TRIM_HORIZON, whatever the configured start.
        const initial: InitialPosition = parents.some(
          (p) => byId.has(p) || leases.has(this.keys.of(consumer.stream, p)),
        )
          ? 'TRIM_HORIZON'
          : consumer.startPosition;
        const range = shard.HashKeyRange;
        leases.set(
          key,
          await this.leases.createIfMissing(
            key,
            initial,
            parents,
            range ? { start: range.StartingHashKey!, end: range.EndingHashKey! } : undefined,
          ),
        );
        this.metrics.leasesCreated.inc();
        created = true;
      }
      if (this.options.deleteFinishedLeases) await this.deleteFinished(consumer, leases, byId);
    }
    if (created) await this.onCreated();
  }

  private async deleteFinished(
    consumer: KinesisConsumerConfig,
    leases: ReadonlyMap<string, Lease>,
    byId: ReadonlyMap<string, Shard>,
  ): Promise<void> {
    for (const lease of leases.values()) {
      const parsed = this.keys.parse(lease.leaseKey);
      if (!parsed || parsed.consumer.stream !== consumer.stream) continue;
      if (lease.checkpoint !== SHARD_END || byId.has(parsed.shardId)) continue;
      if (await this.leases.remove(lease)) {
        this.metrics.leasesDeleted.inc();
        this.log.info(
          { lease: lease.leaseKey },
          'deleted the lease of a finished shard that left the stream',
        );
      }
    }
  }

  /**
   * Creates the leases of a closed shard's children (from the ChildShards of its last read, else from
   * ListShards) before SHARD_END is written, so no child is ever without a lease. Returns their ids.
   */
  async createChildLeases(
    consumer: KinesisConsumerConfig,
    shardId: string,
    reported: readonly { shardId: string; parentShardIds: readonly string[] }[] | undefined,
  ): Promise<string[]> {
    let children = reported ? [...reported] : [];
    let shards = this.listed.get(consumer.stream);
    const fromListing = () =>
      [...(shards?.values() ?? [])]
        .filter((s) => s.ParentShardId === shardId || s.AdjacentParentShardId === shardId)
        .map((s) => ({
          shardId: s.ShardId!,
          parentShardIds: [s.ParentShardId, s.AdjacentParentShardId].filter((p): p is string => !!p),
        }));
    if (children.length === 0) children = fromListing();
    if (children.length === 0) {
      const listed = await this.listShards(consumer.stream);
      shards = new Map(listed.map((s) => [s.ShardId!, s]));
      this.listed.set(consumer.stream, shards);
      children = fromListing();
    }
    for (const child of children) {
      await this.leases.createIfMissing(
        this.keys.of(consumer.stream, child.shardId),
        'TRIM_HORIZON',
        child.parentShardIds,
        this.hashKeyRange(consumer.stream, child.shardId),
      );
    }
    return children.map((c) => c.shardId);
  }

  private async listShards(stream: string): Promise<Shard[]> {
    const shards: Shard[] = [];
    let token: string | undefined;
    do {
      const out = await this.kinesis.send(
        new ListShardsCommand(token ? { NextToken: token } : { StreamName: stream }),
      );
      shards.push(...(out.Shards ?? []));
      token = out.NextToken;
    } while (token);
    return shards;
  }
}
