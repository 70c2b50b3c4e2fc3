/**
 * The lease renewer: each held lease's counter is moved (conditional on the counter and owner we last
 * wrote) once renewIntervalMs passed since its last successful lease write (the take, a checkpoint, a
 * renewal), which also moves the shard's fencing deadline (held-shard.ts). Due renewals are looked for
 * four times per interval, so a lease taken at any moment (or one whose checkpoint renewed it) is renewed
 * on its own schedule, never up to a whole interval late. A renewal that
 * fails its condition is inspected by the coordinator (our own write whose answer was lost, a handoff
 * asked of us, or a loss); one that fails otherwise (throttling, timeout, network) is tried again at the
 * next interval, and if none succeeds before the deadline, the shard fences itself.
 */
import type { Logger } from 'pino';
import { awsErrorName } from '../core/aws-errors.js';
import { type HeldShard, TenureOverError } from './held-shard.js';
import { LeaseLostError, type LeaseTable } from './lease-table.js';

export interface RenewerHost {
  /** Shards held now. */
  held(): Iterable<HeldShard>;
  /** A lease write of the shard failed its condition: read the row and act (inside the shard's command). */
  onConditionFailed(held: HeldShard): Promise<void>;
}

export class LeaseRenewer {
  /** Shards whose renewal is still on its way: the next interval does not queue another behind it. */
  private readonly renewing = new Set<HeldShard>();

  constructor(
    private readonly leases: LeaseTable,
    private readonly host: RenewerHost,
    private readonly log: Logger,
  ) {}

  /**
   * Starts a renewal of every held shard whose last lease write is at least `dueAfterMs` old (0: all) and
   * that is not renewing already; resolves when they settled.
   */
  renewAll(now = 0, dueAfterMs = 0): Promise<void> {
    const started: Promise<void>[] = [];
    for (const held of this.host.held()) {
      if (this.renewing.has(held)) continue;
      if (dueAfterMs > 0 && now - held.lastWriteSentAt < dueAfterMs) continue;
      this.renewing.add(held);
      started.push(this.renew(held).finally(() => this.renewing.delete(held)));
    }
    return Promise.all(started).then(() => undefined);
  }

  renew(held: HeldShard): Promise<void> {
    return held.run(async () => {
      if (!held.owned) return;
      try {
        await held.write('renew', (lease, opts) => this.leases.renew(lease, opts));
      } catch (err) {
        if (err instanceof LeaseLostError) await this.host.onConditionFailed(held);
        else if (!(err instanceof TenureOverError)) {
          this.log.warn(
            { err, error: awsErrorName(err), shard: held.shardId, slackSeconds: held.slackSeconds() },
            'lease renewal failed; trying again at the next interval (the shard fences itself at its deadline)',
          );
        }
      }
    });
  }
}
