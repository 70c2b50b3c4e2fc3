/**
 * The `checkpoints:` config (leases and checkpoints) and the lease timing derived from it.
 */
import { z } from 'zod';

export const checkpointConfigSchema = z
  .object({
    table: z
      .string()
      .min(3)
      .default('ksw-leases')
      .describe(
        'DynamoDB lease table (KCL row format). One table per application, like the KCL: point it at a Java KCL application table to take over its place.',
      ),
    createTable: z
      .boolean()
      .default(true)
      .describe('Create the table (on-demand billing) when it is missing.'),
    intervalMs: z
      .number()
      .int()
      .min(100)
      .default(10_000)
      .describe(
        'How often each shard checkpoints its watermark (also done at shutdown, handoff and SHARD_END).',
      ),
    failoverMs: z
      .number()
      .int()
      .min(1_000)
      .default(10_000)
      .describe(
        "A lease whose counter has not moved for this long (by the reading worker's clock, from the first scan that showed it) is expired and may be taken by another worker.",
      ),
    fencingMarginMs: z
      .number()
      .int()
      .min(50)
      .optional()
      .describe(
        'A worker that cannot renew a lease stops the shard (reading, sink writes and uploads) at the send time of its last successful lease write + failoverMs - fencingMarginMs: this long before anyone else may take it. Covers late timers and requests already on the way. Default: failoverMs / 5.',
      ),
    renewIntervalMs: z
      .number()
      .int()
      .min(100)
      .optional()
      .describe(
        'How often held leases are renewed. Default: failoverMs / 3. Each lease call times out after this long (or earlier, at the fencing deadline).',
      ),
    takeIntervalMs: z
      .number()
      .int()
      .min(100)
      .optional()
      .describe(
        "How often the lease table is scanned while something is going on (a lease stopped moving, unowned leases, a take or handoff under way, the owners changed) and by the watchers (see scanWatchers). Default: failoverMs / 8, so a dead worker's shards are taken within failoverMs + one renewal interval. Each scan reads the whole table (consistent reads).",
      ),
    stableTakeIntervalMs: z
      .number()
      .int()
      .min(100)
      .optional()
      .describe(
        'Adaptive take scans (experimental, see docs/fleet.md): when above takeIntervalMs, a worker that is not a watcher scans this often while the fleet is stable (every lease owned, its counter moving, owners unchanged, nothing to take or steal), so fleet-wide scans grow with the watchers, not the workers; e.g. 2 x failoverMs (the Java KCL 2.x cadence at the default failoverMs). A lease released by a leaving worker may then wait up to this long when the watchers are at their fair share. Default: takeIntervalMs (every worker scans every takeIntervalMs).',
      ),
    scanWatchers: z
      .number()
      .int()
      .min(1)
      .default(2)
      .describe(
        'With adaptive take scans (stableTakeIntervalMs above takeIntervalMs): how many workers keep scanning every takeIntervalMs while the fleet is stable, the live workers with the lowest ids. A watcher takes every expired lease at once, beyond its fair share (up to maxLeasesForWorker); balancing moves them on afterwards.',
      ),
    maxLeasesForWorker: z
      .number()
      .int()
      .min(1)
      .optional()
      .describe('Upper bound of leases this worker holds, whatever its fair share (default: no bound).'),
    maxLeasesToStealAtOnce: z
      .number()
      .int()
      .min(1)
      .default(1)
      .describe('Leases moved at most per scan from the most loaded worker when balancing.'),
    handoffTimeoutMs: z
      .number()
      .int()
      .min(100)
      .optional()
      .describe(
        'How long the holder of a lease asked for by a balancing worker drains and checkpoints before it finishes the handoff anyway (outcome partial); must end before its fencing deadline. The new owner overrules a holder that does not finish only after the lease counter stood still for failoverMs. Default: failoverMs / 2.',
      ),
    shardSyncIntervalMs: z
      .number()
      .int()
      .min(500)
      .default(30_000)
      .describe(
        'How often to list shards: creates leases for new shards (a closed shard also reports its children at once) and deletes finished leases whose shard left the stream.',
      ),
    deleteFinishedLeases: z
      .boolean()
      .default(true)
      .describe(
        'Delete SHARD_END leases of shards no longer listed by the stream (past retention), as the KCL does.',
      ),
  })
  .strict()
  .superRefine((c, ctx) => {
    const t = leaseTiming(c);
    if (t.fencingMarginMs >= c.failoverMs / 2) {
      ctx.addIssue({
        code: 'custom',
        path: ['fencingMarginMs'],
        message: `must be below failoverMs / 2 (${c.failoverMs / 2}), or a shard fences itself too soon after each renewal`,
      });
    }
    if (t.renewIntervalMs * 2 > c.failoverMs - t.fencingMarginMs) {
      ctx.addIssue({
        code: 'custom',
        path: ['renewIntervalMs'],
        message: `must be at most (failoverMs - fencingMarginMs) / 2 = ${Math.floor((c.failoverMs - t.fencingMarginMs) / 2)}, so a failed renewal is tried again before the shard fences itself`,
      });
    }
    if (t.handoffTimeoutMs >= c.failoverMs - t.fencingMarginMs) {
      ctx.addIssue({
        code: 'custom',
        path: ['handoffTimeoutMs'],
        message: `must be below failoverMs - fencingMarginMs (${c.failoverMs - t.fencingMarginMs}), so a handoff finishes before the holder's fencing deadline`,
      });
    }
  })
  .describe('Checkpoints and leases.');

export type CheckpointConfig = z.infer<typeof checkpointConfigSchema>;

/** Intervals and bounds of the lease protocol, with their defaults applied. */
export interface LeaseTimingConfig {
  readonly failoverMs: number;
  readonly fencingMarginMs: number;
  readonly renewIntervalMs: number;
  readonly takeIntervalMs: number;
  readonly stableTakeIntervalMs: number;
  readonly handoffTimeoutMs: number;
  /** Longest a lease call may take (also capped by the time left before the shard's deadline). */
  readonly callTimeoutMs: number;
}

export function leaseTiming(c: {
  failoverMs: number;
  fencingMarginMs?: number | undefined;
  renewIntervalMs?: number | undefined;
  takeIntervalMs?: number | undefined;
  stableTakeIntervalMs?: number | undefined;
  handoffTimeoutMs?: number | undefined;
}): LeaseTimingConfig {
  const renewIntervalMs = c.renewIntervalMs ?? Math.max(100, Math.floor(c.failoverMs / 3));
  const takeIntervalMs = c.takeIntervalMs ?? Math.max(100, Math.floor(c.failoverMs / 8));
  return {
    failoverMs: c.failoverMs,
    fencingMarginMs: c.fencingMarginMs ?? Math.floor(c.failoverMs / 5),
    renewIntervalMs,
    takeIntervalMs,
    stableTakeIntervalMs: Math.max(takeIntervalMs, c.stableTakeIntervalMs ?? takeIntervalMs),
    handoffTimeoutMs: c.handoffTimeoutMs ?? Math.floor(c.failoverMs / 2),
    callTimeoutMs: renewIntervalMs,
  };
}
