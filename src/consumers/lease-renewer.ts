/**
 * The lease renewer: every renewIntervalMs each held lease's counter is moved (conditional on the counter
 * and owner we last wrote), which also moves the shard's fencing deadline (held-shard.ts). A renewal that
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
  constructor(
    private readonly leases: LeaseTable,
    private readonly host: RenewerHost,
    private readonly log: Logger,
  ) {}

  async renewAll(): Promise<void> {
    await Promise.all([...this.host.held()].map((held) => this.renew(held)));
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
