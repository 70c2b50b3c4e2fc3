/**
 * The end of a closed shard (after a split, merge or UpdateShardCount): its reader read the last record.
 * Processors release what they hold of the shard and the sinks write it (`flushShard`), then we wait until
 * the watermark covers the last record (renewals go on meanwhile), create the children's leases, write
 * SHARD_END (with the children) and release the lease. Children start only once every parent is at
 * SHARD_END, so per-key order holds across the reshard; SHARD_END is written once and is final.
 */
import type { Logger } from 'pino';
import { type Clock, sleepOn } from '../core/clock.js';
import type { ShardChain } from '../core/component.js';
import type { TenureEnd } from '../core/tenure.js';
import type { Checkpointer } from './checkpointer.js';
import type { CoordinatorMetrics } from './coordinator-metrics.js';
import type { HeldShard } from './held-shard.js';
import { LeaseLostError, type LeaseTable } from './lease-table.js';
import type { ShardSyncer } from './shard-sync.js';

export interface ShardEndDeps {
  readonly leases: LeaseTable;
  readonly chain: ShardChain;
  readonly checkpointer: Checkpointer;
  readonly syncer: ShardSyncer;
  readonly clock: Clock;
  readonly metrics: CoordinatorMetrics;
  readonly log: Logger;
  readonly stopping: () => boolean;
  /** Ends the shard's tenure; resolves once its components let go (no request in flight). */
  readonly end: (held: HeldShard, reason: TenureEnd) => Promise<void>;
}

export async function finishClosedShard(held: HeldShard, deps: ShardEndDeps): Promise<void> {
  const { log } = deps;
  const ending = await held.run(async () => {
    if (held.phase !== 'reading' || !held.tenure.active) return false;
    held.phase = 'ending';
    return true;
  });
  if (!ending) return;
  void deps.chain.flushShard(held.tenure).catch((err) => {
    log.warn({ err, shard: held.shardId }, 'flushing the closed shard failed');
  });
  // SHARD_END only once every record of the parent is acked, so children never overtake it.
  while (held.watermark.inFlightRecords > 0 && held.phase === 'ending' && held.tenure.active) {
    await Promise.race([held.watermark.drained(), sleepOn(deps.clock, 1_000)]);
  }
  if (held.phase !== 'ending' || !held.tenure.active || deps.stopping()) return;
  try {
    const children = await deps.syncer.createChildLeases(
      held.consumer,
      held.shardId,
      held.reader?.childShards,
    );
    await held.run(async () => {
      if (held.phase !== 'ending') return;
      await deps.checkpointer.shardEnd(held, children);
      log.info({ shard: held.shardId, children }, 'checkpointed SHARD_END; children may start');
      await deps.end(held, 'shard-end');
      await held.write('release', (lease, opts) => deps.leases.release(lease, opts), true);
    });
    await deps.end(held, 'shard-end');
  } catch (err) {
    log.warn(
      { err, shard: held.shardId },
      'could not record SHARD_END; will retry after the lease is re-taken',
    );
    if (err instanceof LeaseLostError) deps.metrics.leaseLosses.inc({ reason: 'taken' });
    await deps.end(held, err instanceof LeaseLostError ? 'lost' : 'failed');
  }
}
