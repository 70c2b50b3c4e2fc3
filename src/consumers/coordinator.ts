/**
 * The shard coordinator: keeps a lease per shard in the lease table, takes and balances leases across the
 * workers of a fleet, runs a reader for every lease it holds, renews its leases, and checkpoints each
 * shard's contiguous watermark.
 *
 * Lease taking runs every `takeIntervalMs` (failover cadence, not shard-sync cadence), as the KCL's
 * LeaseTaker does, and follows its rules:
 *  - a lease may be taken when it is unowned, owned by this worker id (restart), or expired: its counter did
 *    not move for `failoverMs` by our own clock (no clock is compared across workers);
 *  - live workers are the owners of unexpired leases (plus us); each worker's fair share is
 *    ceil(leases / live workers); a worker below its share takes available leases, and when there are
 *    none it moves at most `maxLeasesToStealAtOnce` leases from the most loaded worker;
 *  - moving a lease is a graceful handoff (KCL 3.x `checkpointOwner`): the holder stops reading, lets its
 *    records drain into the sinks, checkpoints, then lets go; the new owner starts from that checkpoint.
 *    A holder that does not finish within `handoffTimeoutMs` is overruled (its late writes fail).
 *
 * Resharding: leases are created for new shards at every shard sync and at once from the ChildShards of a
 * closed shard's last read. A child is started only when every parent lease reached SHARD_END, and
 * SHARD_END (with the children in `childShardIds`) is written only once the parent's watermark covers its
 * last record, so per-key order holds across splits and merges. Leases of finished shards that left the
 * stream (retention) are deleted.
 */
import { type KinesisClient, ListShardsCommand, type Shard } from '@aws-sdk/client-kinesis';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import { z } from 'zod';
import { awsErrorName, isRetryableAwsError } from '../core/aws-errors.js';
import type { DeadLetterQueue, ShardChain } from '../core/component.js';
import { ShardTenure, type TenureEnd, TenureTokens } from '../core/tenure.js';
import { type ShardPosition, ShardWatermark } from '../core/watermark.js';
import { counter, gauge } from '../metrics/registry.js';
import {
  checkpointPosition,
  type InitialPosition,
  type Lease,
  LeaseLostError,
  type LeaseTable,
  SHARD_END,
} from './lease-table.js';
import { type ConsumerConfig, type ConsumerContext, openConsumer, type StreamConsumer } from './registry.js';
import { DeliveryError, type ReaderEnd, type ShardReader, type StartingPoint } from './shard-reader.js';

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
        'A lease whose counter has not moved for this long is expired and may be taken by another worker.',
      ),
    renewIntervalMs: z
      .number()
      .int()
      .min(100)
      .optional()
      .describe('How often held leases are renewed. Default: failoverMs / 3.'),
    takeIntervalMs: z
      .number()
      .int()
      .min(100)
      .optional()
      .describe(
        "How often the lease table is scanned to take expired or unowned leases and to balance. Default: failoverMs / 8, so a dead worker's shards are taken within failoverMs + one renewal interval. Each scan reads the whole table (consistent reads).",
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
        'How long a graceful handoff may take (holder drains and checkpoints) before the new owner overrules it. Default: failoverMs / 2.',
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
  .describe('Checkpoints and leases.');

export type CheckpointConfig = z.infer<typeof checkpointConfigSchema>;

type HeldState = 'reading' | 'ending' | 'handing-off' | 'lost';

interface HeldShard {
  readonly key: string;
  readonly stream: string;
  readonly shardId: string;
  lease: Lease;
  /** This take of the lease: every ack of the shard's records belongs to it. */
  readonly tenure: ShardTenure;
  readonly watermark: ShardWatermark;
  readonly reader: ShardReader;
  lastCheckpointed: ShardPosition | undefined;
  lastRenewedAt: number;
  /** Serialises lease writes (renew, checkpoint, release): each is conditional on the counter. */
  chain: Promise<unknown>;
  done?: Promise<void>;
  state: HeldState;
  handoff?: Promise<void>;
}

export interface CoordinatorDeps {
  readonly kinesis: KinesisClient;
  /** Kinesis client for enhanced fan-out subscriptions (HTTP/2 against AWS); default `kinesis`. */
  readonly kinesisSubscribe?: KinesisClient;
  readonly leases: LeaseTable;
  readonly logger: Logger;
  readonly metrics: Registry;
  readonly workerId: string;
  /** The processing chain: records in, and each tenure's lifecycle (open, flush, close). */
  readonly chain: ShardChain;
  /** Where bad KPL aggregates go. */
  readonly dlq?: DeadLetterQueue;
  /** Default enhanced fan-out consumer name. */
  readonly appName?: string;
}

export interface ShardStatus {
  readonly stream: string;
  readonly shardId: string;
  readonly watermark: string | undefined;
  readonly checkpoint: string | undefined;
  readonly inFlightRecords: number;
  readonly inFlightBytes: number;
  readonly oldestUnackedAgeMs: number;
}

/** Per-shard series this worker exports; removed when the shard leaves it so stale lag does not linger. */
const PER_SHARD_METRICS = [
  'ksw_kinesis_millis_behind_latest',
  'ksw_shard_in_flight_bytes',
  'ksw_shard_in_flight_records',
  'ksw_shard_oldest_unacked_age_seconds',
];

function sleepMs(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function shuffle<T>(items: T[]): T[] {
  for (let i = items.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [items[i], items[j]] = [items[j]!, items[i]!];
  }
  return items;
}

export class ShardCoordinator {
  private readonly held = new Map<string, HeldShard>();
  /** leaseKey -> (counter, time first seen with it): how expiry is judged, from our own clock. */
  private readonly observed = new Map<string, { counter: number; since: number }>();
  /** Leases handed to us whose previous owner is still finishing: leaseKey -> when we first saw it. */
  private readonly incoming = new Map<string, number>();
  /** Shard ids each stream listed at the last shard sync. */
  private readonly listed = new Map<string, Map<string, Shard>>();
  private readonly opened = new Map<string, StreamConsumer>();
  private readonly timers: NodeJS.Timeout[] = [];
  private stopping = false;
  private syncing: Promise<void> | undefined;
  private taking: Promise<void> | undefined;
  private takeAgain = false;
  private readonly abort = new AbortController();
  private readonly tokens = new TenureTokens();
  /** Ended tenures whose components are still letting go (closeShard): the next take of the key waits. */
  private readonly closing = new Map<string, Promise<void>>();
  private readonly log: Logger;
  private readonly m;
  readonly renewIntervalMs: number;
  readonly takeIntervalMs: number;
  readonly handoffTimeoutMs: number;

  constructor(
    private readonly consumers: readonly ConsumerConfig[],
    private readonly config: CheckpointConfig,
    private readonly deps: CoordinatorDeps,
  ) {
    this.log = deps.logger.child({ component: 'coordinator' });
    this.renewIntervalMs = config.renewIntervalMs ?? Math.max(100, Math.floor(config.failoverMs / 3));
    this.takeIntervalMs = config.takeIntervalMs ?? Math.max(100, Math.floor(config.failoverMs / 8));
    this.handoffTimeoutMs = config.handoffTimeoutMs ?? Math.floor(config.failoverMs / 2);
    const r = deps.metrics;
    const shardLabels = ['stream', 'shard'] as const;
    this.m = {
      leasesHeld: gauge(r, { name: 'ksw_leases_held', help: 'Leases held by this worker' }),
      fairShare: gauge(r, {
        name: 'ksw_lease_fair_share',
        help: 'Leases this worker aims to hold: ceil(active leases / live workers)',
      }),
      workers: gauge(r, {
        name: 'ksw_fleet_workers',
        help: 'Live workers seen in the lease table (owners of unexpired leases, this one included)',
      }),
      leaseTakes: counter(r, {
        name: 'ksw_lease_takes_total',
        help: 'Leases taken, by reason: unowned, expired, own (restart), handoff (received), forced (handoff timed out)',
        labelNames: ['reason'],
      }),
      leaseSteals: counter(r, {
        name: 'ksw_lease_steals_total',
        help: 'Graceful handoffs this worker started to move a lease from the most loaded worker (balancing)',
      }),
      handoffsGiven: counter(r, {
        name: 'ksw_lease_handoffs_given_total',
        help: 'Leases this worker handed to another after draining and checkpointing, by outcome',
        labelNames: ['outcome'],
      }),
      leaseLosses: counter(r, {
        name: 'ksw_lease_losses_total',
        help: 'Leases lost without a handoff: taken by another worker, or not renewed within failoverMs',
        labelNames: ['reason'],
      }),
      shardEnds: counter(r, {
        name: 'ksw_shard_ends_total',
        help: 'Shards read to their end and checkpointed SHARD_END (after a split, merge or UpdateShardCount)',
        labelNames: ['stream'],
      }),
      shardFailures: counter(r, {
        name: 'ksw_shard_failures_total',
        help: 'Shards taken but not read on: a sink could not open the shard (stage sink_open), the chain failed on its records (stage deliver: a processor threw, a sink write failed; or a sink stage for uploads that cannot succeed) or its reader crashed (stage reader). The lease is released and taken again later; a count that keeps rising means a shard nobody reads.',
        labelNames: ['stream', 'stage'],
      }),
      leasesCreated: counter(r, { name: 'ksw_leases_created_total', help: 'Leases created for new shards' }),
      leasesDeleted: counter(r, {
        name: 'ksw_leases_deleted_total',
        help: 'SHARD_END leases deleted because their shard left the stream',
      }),
      checkpoints: counter(r, {
        name: 'ksw_checkpoints_total',
        help: 'Checkpoints written',
        labelNames: shardLabels,
      }),
      checkpointErrors: counter(r, {
        name: 'ksw_checkpoint_errors_total',
        help: 'Failed checkpoint writes',
        labelNames: shardLabels,
      }),
      leaseWriteErrors: counter(r, {
        name: 'ksw_lease_write_errors_total',
        help: 'Failed lease table writes (take, renew, checkpoint, handoff, SHARD_END, release) after the SDK retries, by error: LeaseLost (a conditional check failed) or the AWS error name (throttling, 5xx, network). A lost race to take a lease is not counted.',
        labelNames: ['error'],
      }),
      inFlightBytes: gauge(r, {
        name: 'ksw_shard_in_flight_bytes',
        help: 'Record bytes fetched but not yet covered by the watermark',
        labelNames: shardLabels,
      }),
      inFlightRecords: gauge(r, {
        name: 'ksw_shard_in_flight_records',
        help: 'Records fetched but not yet covered by the watermark',
        labelNames: shardLabels,
      }),
      oldestUnacked: gauge(r, {
        name: 'ksw_shard_oldest_unacked_age_seconds',
        help: 'Age of the oldest record not yet covered by the watermark',
        labelNames: shardLabels,
      }),
    };
  }

  /** Lease key of a shard: the shard id (KCL single-stream format) unless several streams share the table. */
  leaseKey(stream: string, shardId: string): string {
    return this.consumers.length === 1 ? shardId : `${stream}:${shardId}`;
  }

  /** The stream and shard of a lease key of this application, or undefined for foreign rows. */
  private parseKey(key: string): { consumer: ConsumerConfig; shardId: string } | undefined {
    if (this.consumers.length === 1) return { consumer: this.consumers[0]!, shardId: key };
    const at = key.indexOf(':');
    if (at < 0) return undefined;
    const consumer = this.consumers.find((c) => c.stream === key.slice(0, at));
    return consumer ? { consumer, shardId: key.slice(at + 1) } : undefined;
  }

  async start(): Promise<void> {
    await this.deps.leases.ensureTable(this.config.createTable);
    const ctx: ConsumerContext = {
      kinesis: this.deps.kinesis,
      kinesisSubscribe: this.deps.kinesisSubscribe ?? this.deps.kinesis,
      logger: this.log,
      appName: this.deps.appName ?? 'ksw',
      signal: this.abort.signal,
    };
    for (const consumer of this.consumers)
      this.opened.set(consumer.stream, await openConsumer(consumer, ctx));
    // A throttled or unavailable lease table or ListShards at start-up is not fatal: the periodic shard
    // sync and lease scan below try again within their intervals, as the KCL's do. Anything else (access
    // denied, a missing stream) still fails the start with its error.
    await this.sync().catch((err) => this.retryLater(err, 'shard sync'));
    await this.takeLeases().catch((err) => this.retryLater(err, 'lease scan'));
    const every = (ms: number, fn: () => Promise<void>) => {
      const t = setInterval(
        () => void fn().catch((err) => this.log.error({ err }, 'periodic task failed')),
        ms,
      );
      t.unref();
      this.timers.push(t);
    };
    every(this.renewIntervalMs, () => this.renewAll());
    every(this.takeIntervalMs, () => this.takeLeases());
    every(this.config.intervalMs, () => this.checkpointAll());
    every(this.config.shardSyncIntervalMs, () => this.sync());
    every(1_000, async () => this.exportGauges());
  }

  status(): ShardStatus[] {
    return [...this.held.values()].map((h) => ({
      stream: h.stream,
      shardId: h.shardId,
      watermark: h.watermark.watermark?.sequenceNumber,
      checkpoint: h.lastCheckpointed?.sequenceNumber,
      inFlightRecords: h.watermark.inFlightRecords,
      inFlightBytes: h.watermark.inFlightBytes,
      oldestUnackedAgeMs: h.watermark.oldestUnackedAgeMs,
    }));
  }

  get heldCount(): number {
    return [...this.held.values()].filter((h) => h.state === 'reading' || h.state === 'ending').length;
  }

  /** Lease keys this worker reads now. */
  heldKeys(): string[] {
    return [...this.held.values()].filter((h) => h.state === 'reading').map((h) => h.key);
  }

  // --- shard sync: leases for new shards, cleanup of finished ones ---------------------------------------

  /** Lists every stream's shards, creates missing leases and deletes finished leases of vanished shards. */
  sync(): Promise<void> {
    if (this.stopping) return Promise.resolve();
    this.syncing ??= this.doSync().finally(() => {
      this.syncing = undefined;
    });
    return this.syncing;
  }

  private async doSync(): Promise<void> {
    const leases = new Map((await this.deps.leases.list()).map((l) => [l.leaseKey, l]));
    let created = false;
    for (const consumer of this.consumers) {
      const shards = await this.listShards(consumer.stream);
      const byId = new Map(shards.map((s) => [s.ShardId!, s]));
      this.listed.set(consumer.stream, byId);
      for (const shard of shards) {
        if (this.stopping) return;
        const key = this.leaseKey(consumer.stream, shard.ShardId!);
        if (leases.has(key)) continue;
        const parents = [shard.ParentShardId, shard.AdjacentParentShardId].filter((p): p is string => !!p);
        // A child of a reshard starts at its beginning: TRIM_HORIZON, whatever the configured start.
        const initial: InitialPosition = parents.some(
          (p) => byId.has(p) || leases.has(this.leaseKey(consumer.stream, p)),
        )
          ? 'TRIM_HORIZON'
          : consumer.startPosition;
        const range = shard.HashKeyRange;
        leases.set(
          key,
          await this.deps.leases.createIfMissing(
            key,
            initial,
            parents,
            range ? { start: range.StartingHashKey!, end: range.EndingHashKey! } : undefined,
          ),
        );
        this.m.leasesCreated.inc();
        created = true;
      }
      if (this.config.deleteFinishedLeases) {
        for (const lease of leases.values()) {
          const parsed = this.parseKey(lease.leaseKey);
          if (!parsed || parsed.consumer.stream !== consumer.stream) continue;
          if (lease.checkpoint !== SHARD_END || byId.has(parsed.shardId)) continue;
          if (await this.deps.leases.remove(lease)) {
            this.m.leasesDeleted.inc();
            this.log.info(
              { lease: lease.leaseKey },
              'deleted the lease of a finished shard that left the stream',
            );
          }
        }
      }
    }
    if (created) await this.takeLeases();
  }

  private async listShards(stream: string): Promise<Shard[]> {
    const shards: Shard[] = [];
    let token: string | undefined;
    do {
      const out = await this.deps.kinesis.send(
        new ListShardsCommand(token ? { NextToken: token } : { StreamName: stream }),
      );
      shards.push(...(out.Shards ?? []));
      token = out.NextToken;
    } while (token);
    return shards;
  }

  // --- lease taking and balancing -------------------------------------------------------------------------

  /** Scans the lease table; takes, balances and notices handoffs. One scan at a time. */
  takeLeases(): Promise<void> {
    if (this.stopping) return Promise.resolve();
    if (this.taking) {
      this.takeAgain = true;
      return this.taking;
    }
    this.taking = (async () => {
      do {
        this.takeAgain = false;
        await this.doTakeLeases();
      } while (this.takeAgain && !this.stopping);
    })().finally(() => {
      this.taking = undefined;
    });
    return this.taking;
  }

  private parentsDone(lease: Lease, stream: string, leases: Map<string, Lease>): boolean {
    const listed = this.listed.get(stream);
    return lease.parentShardIds.every((p) => {
      const parent = leases.get(this.leaseKey(stream, p));
      // A parent without a lease is done when the stream no longer lists it (past retention).
      return parent ? parent.checkpoint === SHARD_END : !listed?.has(p);
    });
  }

  /** Logs a retryable AWS error of a periodic task (it runs again on its own); rethrows anything else. */
  private retryLater(err: unknown, what: string): void {
    if (!isRetryableAwsError(err)) throw err;
    this.log.warn({ err, error: awsErrorName(err) }, `${what} failed; the next interval tries again`);
  }

  private async doTakeLeases(): Promise<void> {
    const now = Date.now();
    const me = this.deps.workerId;
    const leases = new Map((await this.deps.leases.list()).map((l) => [l.leaseKey, l]));
    const expired = (lease: Lease): boolean => {
      const seen = this.observed.get(lease.leaseKey);
      if (!seen || seen.counter !== lease.leaseCounter) {
        this.observed.set(lease.leaseKey, { counter: lease.leaseCounter, since: now });
        return false;
      }
      return now - seen.since >= this.config.failoverMs;
    };
    for (const key of this.observed.keys()) if (!leases.has(key)) this.observed.delete(key);

    // Leases we hold: has someone started a handoff from us, or taken them?
    for (const held of this.held.values()) {
      const row = leases.get(held.key);
      if ((held.state !== 'reading' && held.state !== 'ending') || !row) continue;
      if (row.leaseOwner !== me) await this.onLeaseChanged(held, row);
    }

    const active: Array<{ lease: Lease; consumer: ConsumerConfig; shardId: string }> = [];
    for (const lease of leases.values()) {
      const parsed = this.parseKey(lease.leaseKey);
      if (!parsed || lease.checkpoint === SHARD_END) continue;
      if (!this.parentsDone(lease, parsed.consumer.stream, leases)) continue;
      active.push({ lease, ...parsed });
    }
    // Expiry bookkeeping for every active lease, then liveness from it.
    const isExpired = new Map(active.map((a) => [a.lease.leaseKey, expired(a.lease)]));
    const load = new Map<string, string[]>([[me, []]]);
    for (const { lease } of active) {
      if (!lease.leaseOwner || isExpired.get(lease.leaseKey)) continue;
      const list = load.get(lease.leaseOwner) ?? [];
      list.push(lease.leaseKey);
      load.set(lease.leaseOwner, list);
    }
    const workers = load.size;
    let target = active.length === 0 ? 0 : Math.ceil(active.length / workers);
    if (this.config.maxLeasesForWorker !== undefined)
      target = Math.min(target, this.config.maxLeasesForWorker);
    this.m.workers.set(workers);
    this.m.fairShare.set(target);

    const toTake: Array<{ lease: Lease; consumer: ConsumerConfig; shardId: string; reason: string }> = [];
    // Ours but not read by us: a restart with the same id, or a handoff to us (finished or overdue).
    for (const a of active) {
      const { lease } = a;
      if (lease.leaseOwner !== me || this.held.has(lease.leaseKey)) {
        if (lease.leaseOwner !== me) this.incoming.delete(lease.leaseKey);
        continue;
      }
      if (lease.checkpointOwner && lease.checkpointOwner !== me) {
        const since = this.incoming.get(lease.leaseKey) ?? now;
        this.incoming.set(lease.leaseKey, since);
        if (now - since < this.handoffTimeoutMs) continue;
        this.log.warn(
          { lease: lease.leaseKey, previousOwner: lease.checkpointOwner },
          'handoff not finished within handoffTimeoutMs; taking the lease from its checkpoint',
        );
        toTake.push({ ...a, reason: 'forced' });
      } else {
        toTake.push({ ...a, reason: this.incoming.has(lease.leaseKey) ? 'handoff' : 'own' });
      }
      this.incoming.delete(lease.leaseKey);
    }
    for (const key of this.incoming.keys()) if (!leases.has(key)) this.incoming.delete(key);
    // Ours: held, being handed to us, or ours from before a restart (taken just above).
    const mine = active.filter((a) => a.lease.leaseOwner === me).length;
    const available = shuffle(
      active.filter(
        (a) => a.lease.leaseOwner !== me && (!a.lease.leaseOwner || isExpired.get(a.lease.leaseKey)),
      ),
    );
    const free = available.slice(0, Math.max(0, target - mine));
    for (const a of free) toTake.push({ ...a, reason: a.lease.leaseOwner ? 'expired' : 'unowned' });

    // One lease that cannot be taken now (throttled) must not keep the others, or balancing, from going on.
    const taken = await Promise.allSettled(
      toTake.map(async (t) => {
        if (this.stopping) return;
        await this.takeAndStart(t.consumer, t.shardId, t.lease, t.reason);
      }),
    );
    for (const r of taken) if (r.status === 'rejected') this.retryLater(r.reason, 'lease take');

    // Balancing: below the fair share with nothing free, move leases from the most loaded worker.
    const needed = target - mine - free.length;
    if (needed <= 0 || this.stopping) return;
    let victim: string | undefined;
    let victimLoad = 0;
    for (const [owner, keys] of load) {
      if (owner !== me && keys.length > victimLoad) {
        victim = owner;
        victimLoad = keys.length;
      }
    }
    if (!victim || victimLoad < target) return;
    let steal = Math.min(needed, victimLoad - target);
    if (needed > 1 && steal === 0) steal = 1;
    steal = Math.min(steal, this.config.maxLeasesToStealAtOnce);
    const candidates = shuffle(
      (load.get(victim) ?? []).map((k) => leases.get(k)!).filter((l) => !l.checkpointOwner),
    );
    for (const lease of candidates.slice(0, steal)) {
      try {
        await this.deps.leases.startHandoff(lease, me);
        this.incoming.set(lease.leaseKey, now);
        this.m.leaseSteals.inc();
        this.log.info(
          { lease: lease.leaseKey, from: victim, fairShare: target, workers },
          'balancing: asked the most loaded worker to hand a lease over',
        );
      } catch (err) {
        if (!(err instanceof LeaseLostError)) throw err;
      }
    }
  }

  private async takeAndStart(
    consumer: ConsumerConfig,
    shardId: string,
    lease: Lease,
    reason: string,
  ): Promise<void> {
    const key = lease.leaseKey;
    const stream = this.opened.get(consumer.stream);
    if (!stream || this.held.has(key)) return;
    let taken: Lease;
    try {
      taken = await this.deps.leases.take(lease, this.deps.workerId);
    } catch (err) {
      if (err instanceof LeaseLostError) return; // someone else was faster
      this.m.leaseWriteErrors.inc({ error: awsErrorName(err) });
      throw err;
    }
    if (this.stopping) {
      await this.deps.leases.release(taken).catch(() => undefined);
      return;
    }
    this.m.leaseTakes.inc({ reason });
    const position = checkpointPosition(taken);
    const start: StartingPoint = position
      ? { kind: 'after', position }
      : {
          kind: 'initial',
          position: taken.checkpoint as InitialPosition,
          ...(consumer.startTimestamp ? { timestamp: new Date(consumer.startTimestamp) } : {}),
        };
    const tenure = new ShardTenure(consumer.stream, shardId, this.tokens.next());
    const watermark = new ShardWatermark(consumer.maxInFlightBytes, position, Date.now, tenure);
    const range = taken.hashKeyRange ?? this.hashKeyRange(consumer.stream, shardId);
    const chain = this.deps.chain;
    const reader = stream.createReader(shardId, start, {
      kinesis: this.deps.kinesis,
      logger: this.deps.logger,
      metrics: this.deps.metrics,
      watermark,
      deliver: (records) => chain.deliver(records),
      onBackpressure: () => chain.relievePressure(),
      ...(this.deps.dlq ? { dlq: this.deps.dlq } : {}),
      ...(range ? { hashKeyRange: { start: BigInt(range.start), end: BigInt(range.end) } } : {}),
    });
    const held: HeldShard = {
      key,
      stream: consumer.stream,
      shardId,
      lease: taken,
      tenure,
      watermark,
      reader,
      lastCheckpointed: position,
      lastRenewedAt: Date.now(),
      chain: Promise.resolve(),
      state: 'reading',
    };
    this.held.set(key, held);
    this.m.leasesHeld.set(this.heldCount);
    tenure.whenFailed((stage, err) => {
      this.log.error(
        { err, shard: shardId, stage },
        'the chain failed on the shard; releasing it to be read again from its checkpoint',
      );
      this.m.shardFailures.inc({ stream: consumer.stream, stage });
      void this.releaseBroken(held, 'failed');
    });
    try {
      // A previous tenure of this shard on this worker lets go of its state first.
      await this.closing.get(key);
      await chain.openShard(tenure, position);
    } catch (err) {
      this.log.error({ err, shard: shardId }, 'a sink could not open the shard; releasing the lease');
      this.m.shardFailures.inc({ stream: consumer.stream, stage: 'sink_open' });
      this.held.delete(key);
      this.endTenure(held, 'failed');
      await this.deps.leases.release(taken).catch(() => undefined);
      this.m.leasesHeld.set(this.heldCount);
      return;
    }
    if (taken.pendingCheckpoint) {
      this.log.warn(
        {
          shard: shardId,
          checkpoint: taken.checkpoint,
          pendingCheckpoint: taken.pendingCheckpoint.sequenceNumber,
        },
        'the lease has a prepared (pending) checkpoint from a KCL application; resuming from the committed checkpoint, as the KCL does',
      );
    }
    this.log.info(
      { stream: consumer.stream, shard: shardId, checkpoint: taken.checkpoint, reason },
      'lease taken; reading shard',
    );
    if (this.stopping || held.state !== 'reading') return;
    held.done = reader.run().then(
      (end) => this.onReaderEnd(held, end),
      (err) => {
        if (err instanceof DeliveryError) {
          // Already reported by the chain through the tenure, unless the chain failed before routing.
          held.tenure.fail('deliver', err.cause);
          return;
        }
        this.log.error({ err, shard: shardId }, 'shard reader crashed; releasing the shard');
        this.m.shardFailures.inc({ stream: consumer.stream, stage: 'reader' });
        void this.releaseBroken(held, 'failed');
      },
    );
  }

  private hashKeyRange(stream: string, shardId: string): { start: string; end: string } | undefined {
    const r = this.listed.get(stream)?.get(shardId)?.HashKeyRange;
    return r?.StartingHashKey && r.EndingHashKey
      ? { start: r.StartingHashKey, end: r.EndingHashKey }
      : undefined;
  }

  /** Our lease row names another owner: a handoff to finish, or a loss. */
  private async onLeaseChanged(held: HeldShard, row: Lease): Promise<void> {
    if (held.state !== 'reading' && held.state !== 'ending') return;
    if (row.checkpoint === SHARD_END && !row.leaseOwner) return; // our own SHARD_END and release, just done
    if (row.checkpointOwner === this.deps.workerId) {
      held.lease = row;
      this.handOff(held);
      return;
    }
    this.m.leaseLosses.inc({ reason: 'taken' });
    this.log.warn(
      { shard: held.shardId, owner: row.leaseOwner },
      'lease lost to another worker; stopping the shard',
    );
    this.drop(held);
  }

  /** A write failed its condition: read the row to tell a handoff request from a loss. */
  private async inspectLoss(held: HeldShard): Promise<void> {
    const row = await this.deps.leases.get(held.key).catch(() => undefined);
    if (row && row.leaseOwner === this.deps.workerId && !row.checkpointOwner) {
      held.lease = row; // only the counter moved (e.g. a handoff was started and taken back); carry on
      return;
    }
    if (row) await this.onLeaseChanged(held, row);
    else {
      this.m.leaseLosses.inc({ reason: 'deleted' });
      this.drop(held);
    }
  }

  /**
   * Graceful handoff of a held lease to the worker that asked for it: stop reading, let in-flight records
   * drain into the sinks (nudging them to flush), checkpoint the watermark as checkpointOwner, then remove
   * checkpointOwner so the new owner starts right after it.
   */
  private handOff(held: HeldShard): void {
    // A shard waiting to write SHARD_END is handed over too: the new owner finds its end again.
    if (held.state !== 'reading' && held.state !== 'ending') return;
    held.state = 'handing-off';
    held.handoff = (async () => {
      held.reader.stop();
      await held.done;
      const deadline =
        Date.now() + Math.max(0, this.handoffTimeoutMs - Math.min(1_000, this.handoffTimeoutMs / 4));
      // Processors release what they hold of the shard (pending traces, open windows) and sinks write it.
      const flushed = this.deps.chain.flushShard(held.tenure).catch((err) => {
        this.log.warn({ err, shard: held.shardId }, 'flushing the shard for a handoff failed');
      });
      while (held.watermark.inFlightRecords > 0 && Date.now() < deadline) {
        await Promise.race([held.watermark.drained(), flushed.then(() => sleepMs(200))]);
        if (held.watermark.inFlightRecords > 0) await sleepMs(50);
      }
      const drained = held.watermark.inFlightRecords === 0;
      let outcome = drained ? 'drained' : 'partial';
      try {
        await this.writeLease(held, async (l) => {
          let lease = l;
          const wm = held.watermark.watermark;
          const last = held.lastCheckpointed;
          if (
            wm &&
            !(
              last &&
              last.sequenceNumber === wm.sequenceNumber &&
              last.subSequenceNumber === wm.subSequenceNumber
            )
          ) {
            lease = await this.deps.leases.checkpoint(lease, wm, { as: 'checkpointOwner' });
            held.lastCheckpointed = wm;
            this.m.checkpoints.inc({ stream: held.stream, shard: held.shardId });
          }
          return this.deps.leases.finishHandoff(lease);
        });
      } catch (err) {
        outcome = 'overruled';
        this.log.warn({ err, shard: held.shardId }, 'handoff overruled by the new owner before it finished');
      }
      this.m.handoffsGiven.inc({ outcome });
      this.log.info(
        { shard: held.shardId, checkpoint: held.lastCheckpointed?.sequenceNumber, outcome },
        'lease handed over',
      );
      this.endTenure(held, 'handed-off');
      this.forget(held);
    })();
  }

  private async onReaderEnd(held: HeldShard, end: ReaderEnd): Promise<void> {
    if (held.state !== 'reading') return;
    if (end === 'stream-gone') {
      await this.releaseBroken(held, 'failed');
      return;
    }
    if (end !== 'shard-end' || this.stopping) return;
    held.state = 'ending';
    // What processors hold of the shard is released now rather than on their own clocks.
    void this.deps.chain.flushShard(held.tenure).catch((err) => {
      this.log.warn({ err, shard: held.shardId }, 'flushing the closed shard failed');
    });
    // SHARD_END only once every record of the parent is acked, so children never overtake it.
    while (held.watermark.inFlightRecords > 0 && held.state === 'ending') {
      await Promise.race([held.watermark.drained(), sleepMs(1_000)]);
    }
    if (held.state !== 'ending' || this.stopping) return;
    const parsed = this.parseKey(held.key)!;
    try {
      const children = await this.createChildLeases(parsed.consumer, held.shardId, held.reader.childShards);
      await this.writeLease(held, (l) =>
        this.deps.leases.checkpoint(l, SHARD_END, { childShardIds: children }),
      );
      this.m.checkpoints.inc({ stream: held.stream, shard: held.shardId });
      this.m.shardEnds.inc({ stream: held.stream });
      this.log.info({ shard: held.shardId, children }, 'checkpointed SHARD_END; children may start');
      await this.writeLease(held, (l) => this.deps.leases.release(l));
    } catch (err) {
      this.log.warn(
        { err, shard: held.shardId },
        'could not record SHARD_END; will retry after the lease is re-taken',
      );
      if (err instanceof LeaseLostError) this.m.leaseLosses.inc({ reason: 'taken' });
    }
    this.endTenure(held, 'shard-end');
    this.forget(held);
    await this.takeLeases();
  }

  /**
   * Creates the leases of a closed shard's children (from the ChildShards of its last read, else from
   * ListShards) before SHARD_END is written, so no child is ever without a lease. Returns their ids.
   */
  private async createChildLeases(
    consumer: ConsumerConfig,
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
      const range = this.hashKeyRange(consumer.stream, child.shardId);
      await this.deps.leases.createIfMissing(
        this.leaseKey(consumer.stream, child.shardId),
        'TRIM_HORIZON',
        child.parentShardIds,
        range,
      );
    }
    return children.map((c) => c.shardId);
  }

  private writeLease(held: HeldShard, write: (lease: Lease) => Promise<Lease>): Promise<void> {
    const next = held.chain.then(async () => {
      if (held.state === 'lost') throw new LeaseLostError(held.lease.leaseKey, 'write');
      try {
        held.lease = await write(held.lease);
      } catch (err) {
        this.m.leaseWriteErrors.inc({
          error: err instanceof LeaseLostError ? 'LeaseLost' : awsErrorName(err),
        });
        throw err;
      }
      held.lastRenewedAt = Date.now();
    });
    held.chain = next.catch(() => undefined);
    return next;
  }

  /** Stops a shard whose lease is gone; its unacked records will be read again by the new owner. */
  private drop(held: HeldShard, reason: TenureEnd = 'lost'): void {
    held.state = 'lost';
    this.endTenure(held, reason);
    this.forget(held);
  }

  private async releaseBroken(held: HeldShard, reason: TenureEnd): Promise<void> {
    if (held.state === 'lost') return;
    // The tenure ends before the release: nothing of it may be written once another worker can take it.
    this.endTenure(held, reason);
    await this.writeLease(held, (l) => this.deps.leases.release(l)).catch(() => undefined);
    held.state = 'lost';
    this.forget(held);
  }

  /**
   * Ends the shard's tenure: the reader stops, the watermark freezes, and every component drops what it
   * still holds of the tenure (the next take of this lease here waits until they have).
   */
  private endTenure(held: HeldShard, reason: TenureEnd): void {
    if (!held.tenure.end(reason)) return;
    held.reader.stop();
    held.watermark.close();
    const closed = this.deps.chain
      .closeShard(held.tenure)
      .catch((err) =>
        this.log.warn({ err, shard: held.shardId }, 'a component failed to let go of the shard'),
      )
      .finally(() => {
        if (this.closing.get(held.key) === closed) this.closing.delete(held.key);
      });
    this.closing.set(held.key, closed);
  }

  private forget(held: HeldShard): void {
    if (this.held.get(held.key) === held) this.held.delete(held.key);
    this.m.leasesHeld.set(this.heldCount);
    const labels = { stream: held.stream, shard: held.shardId };
    for (const name of PER_SHARD_METRICS) {
      const metric = this.deps.metrics.getSingleMetric(name) as { remove?: (l: object) => void } | undefined;
      metric?.remove?.(labels);
    }
  }

  private async renewAll(): Promise<void> {
    await Promise.all(
      [...this.held.values()].map(async (held) => {
        if (held.state !== 'reading' && held.state !== 'ending') return;
        try {
          await this.writeLease(held, (l) => this.deps.leases.renew(l));
        } catch (err) {
          if (err instanceof LeaseLostError) {
            await this.inspectLoss(held);
          } else if (Date.now() - held.lastRenewedAt > this.config.failoverMs) {
            // Others may consider the lease expired by now: stop before two workers process the shard.
            this.m.leaseLosses.inc({ reason: 'renewal-timeout' });
            this.log.error(
              { err, shard: held.shardId },
              'could not renew the lease within failoverMs; stopping the shard',
            );
            this.drop(held, 'fenced');
          } else {
            this.log.warn({ err, shard: held.shardId }, 'lease renewal failed; will retry');
          }
        }
      }),
    );
  }

  /** Writes each shard's watermark if it moved since the last checkpoint. */
  async checkpointAll(): Promise<void> {
    await Promise.all([...this.held.values()].map((h) => this.checkpointShard(h)));
  }

  private async checkpointShard(held: HeldShard): Promise<void> {
    const wm = held.watermark.watermark;
    if (!wm || (held.state !== 'reading' && held.state !== 'ending')) return;
    const last = held.lastCheckpointed;
    if (last && last.sequenceNumber === wm.sequenceNumber && last.subSequenceNumber === wm.subSequenceNumber)
      return;
    try {
      await this.writeLease(held, (l) => this.deps.leases.checkpoint(l, wm));
      held.lastCheckpointed = wm;
      this.m.checkpoints.inc({ stream: held.stream, shard: held.shardId });
    } catch (err) {
      this.m.checkpointErrors.inc({ stream: held.stream, shard: held.shardId });
      if (err instanceof LeaseLostError) await this.inspectLoss(held);
      else this.log.warn({ err, shard: held.shardId }, 'checkpoint failed; the next one will cover it');
    }
  }

  private exportGauges(): void {
    for (const h of this.held.values()) {
      if (h.state === 'lost') continue;
      const labels = { stream: h.stream, shard: h.shardId };
      this.m.inFlightBytes.set(labels, h.watermark.inFlightBytes);
      this.m.inFlightRecords.set(labels, h.watermark.inFlightRecords);
      this.m.oldestUnacked.set(labels, h.watermark.oldestUnackedAgeMs / 1000);
    }
  }

  /** Stops fetching on every shard (first step of a graceful shutdown). */
  async stopReading(): Promise<void> {
    this.stopping = true;
    this.abort.abort();
    for (const t of this.timers) clearInterval(t);
    await this.syncing?.catch(() => undefined);
    await this.taking?.catch(() => undefined);
    for (const h of this.held.values()) h.reader.stop();
    await Promise.all([...this.held.values()].map((h) => h.done));
  }

  /** Resolves when every held shard's records are all acked, or after `timeoutMs`. */
  async waitDrained(timeoutMs: number): Promise<boolean> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<boolean>((resolve) => {
      timer = setTimeout(() => resolve(false), Math.max(0, timeoutMs));
    });
    const drained = Promise.all([...this.held.values()].map((h) => h.watermark.drained())).then(() => true);
    const result = await Promise.race([drained, timeout]);
    clearTimeout(timer);
    return result;
  }

  /**
   * Final checkpoint of every shard, then gives the leases up so another worker takes over at once
   * (handoffs in progress finish their own way).
   */
  async checkpointAndRelease(): Promise<void> {
    await this.checkpointAll();
    await Promise.all(
      [...this.held.values()].map(async (h) => {
        if (h.state === 'handing-off') {
          await h.handoff;
          return;
        }
        if (h.state !== 'reading' && h.state !== 'ending') return;
        // The tenure ends first: once the lease is free, another worker may read the shard.
        this.endTenure(h, 'released');
        try {
          await this.writeLease(h, (l) => this.deps.leases.release(l));
        } catch (err) {
          this.log.warn({ err, shard: h.shardId }, 'could not release the lease; it will expire');
        }
      }),
    );
    await Promise.all([...this.closing.values()]);
    await this.releaseUnread();
    this.held.clear();
    this.m.leasesHeld.set(0);
  }

  /**
   * Leases that are ours in the table but were not read yet (a handoff to us just finished or is finishing):
   * let the handoff finish (bounded by handoffTimeoutMs), then release them too, so nobody waits for expiry.
   */
  private async releaseUnread(): Promise<void> {
    const me = this.deps.workerId;
    const rows = await this.deps.leases.list().catch(() => [] as Lease[]);
    const deadline = Date.now() + this.handoffTimeoutMs;
    await Promise.all(
      rows
        .filter((l) => l.leaseOwner === me && !this.held.has(l.leaseKey))
        .map(async (row) => {
          let lease: Lease | undefined = row;
          while (lease?.checkpointOwner && Date.now() < deadline) {
            await new Promise((r) => setTimeout(r, 100));
            lease = await this.deps.leases.get(row.leaseKey).catch(() => lease);
          }
          if (!lease || lease.leaseOwner !== me || lease.checkpointOwner) return; // it will expire
          await this.deps.leases.release(lease).catch(() => undefined);
        }),
    );
  }
}
