/**
 * The giving side of a graceful handoff (KCL 3.x `checkpointOwner`): another worker asked for a lease we
 * hold (balancing). We move the counter once as checkpointOwner (the new owner overrules us only after the
 * counter stood still for failoverMs, so this renews our fencing deadline for the drain), stop reading,
 * have processors release what they hold of the shard and the sinks write it (`flushShard`), wait until
 * the watermark covers every record read (at most handoffTimeoutMs), checkpoint it, and remove
 * checkpointOwner: the new owner starts right after that checkpoint. Balancing so neither loses nor
 * repeats records; a holder that cannot finish is overruled and its tenure is fenced by then.
 */
import type { Logger } from 'pino';
import { type Clock, sleepOn } from '../core/clock.js';
import type { ShardChain } from '../core/component.js';
import type { TenureEnd } from '../core/tenure.js';
import type { Checkpointer } from './checkpointer.js';
import type { CoordinatorMetrics } from './coordinator-metrics.js';
import type { HeldShard } from './held-shard.js';
import type { Lease, LeaseTable } from './lease-table.js';

export interface HandoffDeps {
  readonly leases: LeaseTable;
  readonly chain: ShardChain;
  readonly checkpointer: Checkpointer;
  readonly clock: Clock;
  readonly metrics: CoordinatorMetrics;
  readonly log: Logger;
  readonly handoffTimeoutMs: number;
  /** The drain ends this long before the fencing deadline at the latest, leaving time for the last writes. */
  readonly fencingMarginMs: number;
  /** Ends the shard's tenure and forgets it; resolves once its components let go (no request in flight). */
  readonly end: (held: HeldShard, reason: TenureEnd) => Promise<void>;
}

export async function handOff(held: HeldShard, row: Lease, deps: HandoffDeps): Promise<void> {
  const { leases, clock, log } = deps;
  const started = await held.run(async () => {
    if (!held.owned) return false;
    held.phase = 'handing-off';
    held.lease = row;
    try {
      await held.write('handoff-renew', (lease, opts) => leases.renewHandoff(lease, opts));
      return true;
    } catch (err) {
      log.warn({ err, shard: held.shardId }, 'handoff overruled before it started');
      return false;
    }
  });
  if (!started) {
    if (held.phase === 'handing-off') {
      deps.metrics.handoffsGiven.inc({ outcome: 'overruled' });
      await deps.end(held, 'handed-off');
    }
    return;
  }
  held.reader?.stop();
  await held.done;
  // At most handoffTimeoutMs, and never so long that the last checkpoint would miss the fencing deadline
  // (then the handoff would be overruled instead of finishing partial).
  const deadline = Math.min(clock.now() + deps.handoffTimeoutMs, held.tenure.deadline - deps.fencingMarginMs);
  // Pending traces, open windows, buffered files of the shard: released and written now.
  void deps.chain.flushShard(held.tenure).catch((err) => {
    log.warn({ err, shard: held.shardId }, 'flushing the shard for a handoff failed');
  });
  const stopWaiting = new AbortController();
  while (held.watermark.inFlightRecords > 0 && held.tenure.active && clock.now() < deadline) {
    await Promise.race([
      held.watermark.drained(),
      sleepOn(clock, Math.min(100, deadline - clock.now()), stopWaiting.signal),
    ]);
  }
  stopWaiting.abort();
  let outcome = held.watermark.inFlightRecords === 0 ? 'drained' : 'partial';
  await held.run(async () => {
    try {
      await deps.checkpointer.write(held, 'checkpointOwner');
    } catch (err) {
      outcome = 'overruled';
      log.warn({ err, shard: held.shardId }, 'handoff overruled by the new owner before it finished');
      return;
    }
    // The tenure ends and its requests settle before the new owner may start: a partial handoff's
    // uploads still on their way are aborted first, never raced.
    await deps.end(held, 'handed-off');
    try {
      await held.write('finish-handoff', (lease, opts) => leases.finishHandoff(lease, opts), true);
    } catch (err) {
      outcome = 'overruled';
      log.warn({ err, shard: held.shardId }, 'handoff overruled by the new owner before it finished');
    }
  });
  deps.metrics.handoffsGiven.inc({ outcome });
  log.info(
    { shard: held.shardId, checkpoint: held.lastCheckpointed?.sequenceNumber, outcome },
    'lease handed over',
  );
  await deps.end(held, 'handed-off');
}
