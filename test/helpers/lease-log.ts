/**
 * Records every lease write that DynamoDB accepted, as seen by fault proxies in front of it (one proxy per
 * worker, all feeding one log), and checks the lease protocol on the record: per lease, successful
 * conditional writes form one chain of counters (each write expected the counter the previous one left),
 * the checkpoint never moves backwards along that chain, and nothing is written over SHARD_END.
 */
import { compareSequence } from '../../src/core/records.js';
import { amzTarget, type FaultProxy } from './fault-proxy.js';

export interface LeaseWrite {
  readonly key: string;
  /** Who sent it (the proxy's name). */
  readonly via: string;
  readonly operation: string;
  /** When the proxy received the request and when DynamoDB's answer came back (Date.now()). */
  readonly sentAt: number;
  readonly answeredAt: number;
  readonly counter: number;
  readonly owner: string | undefined;
  readonly checkpointOwner: string | undefined;
  readonly checkpoint: string | undefined;
  readonly sub: number;
  readonly tenure: string | undefined;
}

type Attr = { S?: string; N?: string };

function operationOf(update: string): string {
  if (update.includes('kswTenure = :token')) return 'take';
  if (update.includes('checkpointOwner = :old')) return 'startHandoff';
  if (update.includes('checkpoint = :cp')) return 'checkpoint';
  if (update.includes('REMOVE leaseOwner')) return 'release';
  if (update.includes('REMOVE checkpointOwner')) return 'finishHandoff';
  return 'renew';
}

export class LeaseWriteLog {
  readonly writes: LeaseWrite[] = [];

  /** Records the accepted UpdateItem calls forwarded by `proxy` (named `via` in the log). */
  watch(proxy: FaultProxy, via: string): void {
    proxy.observe({
      matches: amzTarget('UpdateItem'),
      response: (req, status, body) => {
        // When the worker sent it (when it began to arrive at the proxy), even if the proxy then held it back.
        const sentAt = req.startedAt;
        if (status !== 200) return;
        const ask = JSON.parse(req.body.toString('utf8')) as {
          Key: { leaseKey: Attr };
          UpdateExpression: string;
        };
        const out = JSON.parse(body.toString('utf8')) as { Attributes?: Record<string, Attr> };
        const a = out.Attributes ?? {};
        this.writes.push({
          key: ask.Key.leaseKey.S ?? '',
          via,
          operation: operationOf(ask.UpdateExpression),
          sentAt,
          answeredAt: Date.now(),
          counter: Number(a.leaseCounter?.N ?? 0),
          owner: a.leaseOwner?.S,
          checkpointOwner: a.checkpointOwner?.S,
          checkpoint: a.checkpoint?.S,
          sub: Number(a.checkpointSubSequenceNumber?.N ?? 0),
          tenure: a.kswTenure?.S,
        });
      },
    });
  }

  /** The accepted writes of one lease in the order DynamoDB applied them (by the counter they set). */
  chain(key: string): LeaseWrite[] {
    return this.writes.filter((w) => w.key === key).sort((a, b) => a.counter - b.counter);
  }

  keys(): string[] {
    return [...new Set(this.writes.map((w) => w.key))];
  }

  /**
   * Protocol violations: two accepted writes setting the same counter (two writers both believed they
   * held the lease), a checkpoint that moved backwards, anything accepted after SHARD_END.
   */
  violations(): string[] {
    const problems: string[] = [];
    for (const key of this.keys()) {
      const chain = this.chain(key);
      let last: { seq: string; sub: number } | undefined;
      let ended = false;
      for (let i = 0; i < chain.length; i++) {
        const w = chain[i]!;
        if (i > 0 && chain[i - 1]!.counter === w.counter)
          problems.push(
            `${key}: two accepted writes set counter ${w.counter} (${chain[i - 1]!.via}, ${w.via})`,
          );
        if (ended && w.operation !== 'release')
          problems.push(`${key}: ${w.operation} by ${w.via} accepted after SHARD_END`);
        const cp = w.checkpoint;
        if (cp === 'SHARD_END') {
          ended = true;
          continue;
        }
        if (!cp || !/^\d+$/.test(cp)) continue;
        if (last) {
          const c = compareSequence(cp, last.seq);
          if (c < 0 || (c === 0 && w.sub < last.sub))
            problems.push(
              `${key}: checkpoint moved back from ${last.seq}.${last.sub} to ${cp}.${w.sub} (${w.via})`,
            );
        }
        last = { seq: cp, sub: w.sub };
      }
    }
    return problems;
  }

  /**
   * The tenures each proxy's worker held, per lease: from its accepted take to its last accepted write of
   * that tenure (the deadline is computed from that write's send time by the caller).
   */
  tenures(): Array<{
    key: string;
    via: string;
    tenure: string;
    takenAt: number;
    lastWriteSentAt: number;
    end: string;
  }> {
    const out = new Map<
      string,
      { key: string; via: string; tenure: string; takenAt: number; lastWriteSentAt: number; end: string }
    >();
    for (const key of this.keys()) {
      for (const w of this.chain(key)) {
        if (w.operation === 'take' && w.tenure) {
          out.set(`${key}\n${w.tenure}`, {
            key,
            via: w.via,
            tenure: w.tenure,
            takenAt: w.sentAt,
            lastWriteSentAt: w.sentAt,
            end: 'open',
          });
          continue;
        }
        // A write of the holder (renew, checkpoint, release, handoff steps) keeps the token it held.
        const current = [...out.values()].filter((t) => t.key === key && t.via === w.via).at(-1);
        if (current && (w.tenure === current.tenure || w.operation === 'release')) {
          current.lastWriteSentAt = Math.max(current.lastWriteSentAt, w.sentAt);
          if (w.operation === 'release' || w.operation === 'finishHandoff') current.end = w.operation;
        }
      }
    }
    return [...out.values()];
  }
}
