/**
 * Checkpoints: every intervalMs (and at handoff, shutdown and shard end) each held shard's contiguous
 * watermark is written when it moved. Only the shard's current tenure writes, only forward (the watermark
 * of a tenure never goes back and starts at the checkpoint the tenure took the lease with), and never over
 * SHARD_END, which is final (the lease table makes every checkpoint write conditional on that).
 */
import type { Logger } from 'pino';
import { compareSequence } from '../core/records.js';
import type { ShardPosition } from '../core/watermark.js';
import type { CoordinatorMetrics } from './coordinator-metrics.js';
import { type HeldShard, TenureOverError } from './held-shard.js';
import { LeaseLostError, type LeaseTable, SHARD_END } from './lease-table.js';

export interface CheckpointerHost {
  held(): Iterable<HeldShard>;
  onConditionFailed(held: HeldShard): Promise<void>;
}

function after(a: ShardPosition, b: ShardPosition | undefined): boolean {
  if (!b) return true;
  return (
    compareSequence(a.sequenceNumber, b.sequenceNumber) > 0 ||
    (a.sequenceNumber === b.sequenceNumber && a.subSequenceNumber > b.subSequenceNumber)
  );
}

export class Checkpointer {
  constructor(
    private readonly leases: LeaseTable,
    private readonly host: CheckpointerHost,
    private readonly metrics: CoordinatorMetrics,
    private readonly log: Logger,
  ) {}

  async checkpointAll(): Promise<void> {
    await Promise.all([...this.host.held()].map((held) => this.checkpoint(held)));
  }

  /** Queues a checkpoint of the shard's watermark (skipped unless the shard is still ours and it moved). */
  checkpoint(held: HeldShard): Promise<void> {
    return held.run(async () => {
      if (!held.owned) return;
      try {
        await this.write(held, 'leaseOwner');
      } catch (err) {
        if (err instanceof TenureOverError) return;
        this.metrics.checkpointErrors.inc({ stream: held.stream, shard: held.shardId });
        if (err instanceof LeaseLostError) await this.host.onConditionFailed(held);
        else this.log.warn({ err, shard: held.shardId }, 'checkpoint failed; the next one will cover it');
      }
    });
  }

  /**
   * Writes the watermark now if it is ahead of the last checkpoint (inside a command of the shard), as the
   * owner or, during a handoff, as the checkpointOwner. True when something was written.
   */
  async write(held: HeldShard, as: 'leaseOwner' | 'checkpointOwner'): Promise<boolean> {
    const wm = held.watermark.watermark;
    if (!wm || !after(wm, held.lastCheckpointed)) return false;
    await held.write('checkpoint', (lease, opts) => this.leases.checkpoint(lease, wm, { ...opts, as }));
    held.lastCheckpointed = wm;
    this.metrics.checkpoints.inc({ stream: held.stream, shard: held.shardId });
    return true;
  }

  /** Writes SHARD_END with the children (inside a command); the watermark covers the last record. */
  async shardEnd(held: HeldShard, children: readonly string[]): Promise<void> {
    await held.write('shard-end', (lease, opts) =>
      this.leases.checkpoint(lease, SHARD_END, { ...opts, childShardIds: children }),
    );
    this.metrics.checkpoints.inc({ stream: held.stream, shard: held.shardId });
    this.metrics.shardEnds.inc({ stream: held.stream });
  }
}
