/**
 * A shard this worker holds a lease for: its tenure, watermark and reader, and the one serialized command
 * queue through which every path that changes the shard (renewal, checkpoints, a handoff, the shard's end,
 * a release) goes, so no two of them change its lease or phase at once.
 *
 * Every lease write of the shard is made here (`write`): it gets a timeout that ends before the tenure's
 * fencing deadline, and when it succeeds the deadline moves to its send time + failoverMs - fencingMarginMs.
 * Why that is safe: another worker takes a lease only after it saw the lease's counter unchanged for
 * failoverMs by its own clock, starting after it read that counter, so after our last successful write.
 * Our shard therefore stops (the deadline timer ends the tenure, and `tenure.active` turns false before
 * that) at least fencingMarginMs before anyone else may start reading it.
 *
 * The one transition that does not wait in the queue is the end of the tenure (`ShardTenure.end`): it is
 * immediate, terminal and idempotent, and every command checks it first (lease writes of an ended tenure
 * are refused, except the release that hands the lease back).
 */
import type { Logger } from 'pino';
import { awsErrorName } from '../core/aws-errors.js';
import { type Clock, withTimeout } from '../core/clock.js';
import type { ShardTenure } from '../core/tenure.js';
import type { ShardPosition, ShardWatermark } from '../core/watermark.js';
import type { CoordinatorMetrics } from './coordinator-metrics.js';
import { type CallOptions, type Lease, LeaseLostError } from './lease-table.js';
import type { KinesisConsumerConfig } from './registry.js';
import type { ShardReader } from './shard-reader.js';

/**
 * opening: taken, sinks opening the shard · reading · ending: read to its end, draining before SHARD_END ·
 * handing-off: asked to hand over, draining before the last checkpoint · ended: the tenure is over.
 */
export type ShardPhase = 'opening' | 'reading' | 'ending' | 'handing-off' | 'ended';

/** The timing every held shard shares (derived from the checkpoints config). */
export interface LeaseTiming {
  readonly failoverMs: number;
  readonly fencingMarginMs: number;
  /** Longest a lease call may take (also capped by the time left before the deadline). */
  readonly callTimeoutMs: number;
}

export interface HeldShardDeps {
  readonly clock: Clock;
  readonly timing: LeaseTiming;
  readonly metrics: CoordinatorMetrics;
  readonly logger: Logger;
}

/** A lease write refused because the tenure is over (not sent at all). */
export class TenureOverError extends Error {
  constructor(key: string) {
    super(`lease ${key}: the tenure has ended; no lease write is sent for it`);
    this.name = 'TenureOverError';
  }
}

export class HeldShard {
  phase: ShardPhase = 'opening';
  reader: ShardReader | undefined;
  /** The reader's run (settles when it stopped). */
  done: Promise<void> | undefined;
  /** The running handoff, when one was asked for. */
  handoff: Promise<void> | undefined;
  lastCheckpointed: ShardPosition | undefined;
  /** Send time of the last successful lease write (the take, at first): when the next renewal is due. */
  lastWriteSentAt: number;
  private tail: Promise<unknown> = Promise.resolve();

  constructor(
    readonly key: string,
    readonly consumer: KinesisConsumerConfig,
    readonly shardId: string,
    public lease: Lease,
    readonly tenure: ShardTenure,
    readonly watermark: ShardWatermark,
    private readonly deps: HeldShardDeps,
    takenAt: number = deps.clock.now(),
  ) {
    this.lastWriteSentAt = takenAt;
  }

  get stream(): string {
    return this.consumer.stream;
  }

  /** True while the lease is this worker's to read and checkpoint (not handing off, not ended). */
  get owned(): boolean {
    return (
      (this.phase === 'opening' || this.phase === 'reading' || this.phase === 'ending') && this.tenure.active
    );
  }

  /** Runs `command` after every earlier command of this shard has settled. */
  run<T>(command: () => Promise<T>): Promise<T> {
    const next = this.tail.then(command);
    this.tail = next.catch(() => undefined);
    return next;
  }

  /**
   * One conditional lease write, to be called inside a command. Refused once the tenure is over unless
   * `afterEnd` (the release that gives the lease back). Its timeout ends before the fencing deadline; on
   * success the lease is updated and the deadline moves.
   */
  async write(
    operation: string,
    op: (lease: Lease, opts: CallOptions) => Promise<Lease>,
    afterEnd = false,
  ): Promise<Lease> {
    const { clock, timing, metrics } = this.deps;
    if (!afterEnd && !this.tenure.active) throw new TenureOverError(this.key);
    const sentAt = clock.now();
    const left = this.tenure.active ? this.tenure.deadline - sentAt : Number.POSITIVE_INFINITY;
    const timeoutMs = Math.max(1, Math.min(timing.callTimeoutMs, left));
    try {
      const lease = await withTimeout(clock, timeoutMs, `lease ${operation}`, (signal) =>
        op(this.lease, { signal }),
      );
      this.lease = lease;
      this.lastWriteSentAt = Math.max(this.lastWriteSentAt, sentAt);
      metrics.leaseWriteSeconds.observe({ operation }, (clock.now() - sentAt) / 1000);
      // Every successful conditional write moved the counter: others start their expiry wait again.
      if (this.tenure.active) this.tenure.setDeadline(sentAt + timing.failoverMs - timing.fencingMarginMs);
      return lease;
    } catch (err) {
      metrics.leaseWriteErrors.inc({
        error: err instanceof LeaseLostError ? 'LeaseLost' : awsErrorName(err),
      });
      throw err;
    }
  }

  /** Seconds left before the fencing deadline (for the slack gauge). */
  slackSeconds(): number {
    return Math.max(0, (this.tenure.deadline - this.deps.clock.now()) / 1000);
  }
}
