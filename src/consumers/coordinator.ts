/**
 * The shard coordinator: discovers shards, keeps a lease per shard in the lease table, runs a reader for
 * every lease it holds, renews its leases, and checkpoints each shard's contiguous watermark.
 *
 * Lease rules (the KCL's): an unowned lease, a lease owned by this worker id (restart after a crash),
 * or a lease whose counter did not move for `failoverMs` may be taken. A child shard is started only when
 * every parent lease reached SHARD_END (or the parent is gone), so per-key order holds across reshards.
 * Balancing between several workers comes with the fleet issue; this worker takes all it may.
 */
import { type KinesisClient, ListShardsCommand, type Shard } from '@aws-sdk/client-kinesis';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import { z } from 'zod';
import type { Sink } from '../core/component.js';
import type { SourceRecord } from '../core/records.js';
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
import { type PollingConsumerConfig, PollingShardReader, type StartingPoint } from './polling.js';

export const checkpointConfigSchema = z
  .object({
    table: z
      .string()
      .min(3)
      .default('ksw-leases')
      .describe('DynamoDB lease table (KCL 2.x row format). One table per application, like the KCL.'),
    createTable: z
      .boolean()
      .default(true)
      .describe('Create the table (on-demand billing) when it is missing.'),
    intervalMs: z
      .number()
      .int()
      .min(100)
      .default(10_000)
      .describe('How often each shard checkpoints its watermark (also done at shutdown and at SHARD_END).'),
    failoverMs: z
      .number()
      .int()
      .min(1_000)
      .default(10_000)
      .describe(
        'A lease whose counter has not moved for this long is expired and may be taken by another worker.',
      ),
    shardSyncIntervalMs: z
      .number()
      .int()
      .min(500)
      .default(30_000)
      .describe(
        'How often to list shards and look for leases to take (new shards after a reshard, expired leases).',
      ),
  })
  .strict()
  .describe('Checkpoints and leases.');

export type CheckpointConfig = z.infer<typeof checkpointConfigSchema>;

interface HeldShard {
  readonly stream: string;
  readonly shardId: string;
  lease: Lease;
  readonly watermark: ShardWatermark;
  readonly reader: PollingShardReader;
  lastCheckpointed: ShardPosition | undefined;
  lastRenewedAt: number;
  /** Serialises lease writes (renew, checkpoint, release): each is conditional on the counter. */
  chain: Promise<unknown>;
  done?: Promise<void>;
  lost: boolean;
}

export interface CoordinatorDeps {
  readonly kinesis: KinesisClient;
  readonly leases: LeaseTable;
  readonly logger: Logger;
  readonly metrics: Registry;
  readonly workerId: string;
  readonly sinks: readonly Sink[];
  readonly deliver: (records: SourceRecord[]) => Promise<void>;
  readonly onBackpressure: () => void;
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

export class ShardCoordinator {
  private readonly held = new Map<string, HeldShard>();
  /** leaseKey -> (counter, time first seen with it): how expiry is judged, from our own clock. */
  private readonly observed = new Map<string, { counter: number; since: number }>();
  private readonly timers: NodeJS.Timeout[] = [];
  private stopping = false;
  private syncing: Promise<void> | undefined;
  private readonly log: Logger;
  private readonly m;

  constructor(
    private readonly consumers: readonly PollingConsumerConfig[],
    private readonly config: CheckpointConfig,
    private readonly deps: CoordinatorDeps,
  ) {
    this.log = deps.logger.child({ component: 'coordinator' });
    const r = deps.metrics;
    const shardLabels = ['stream', 'shard'] as const;
    this.m = {
      leasesHeld: gauge(r, { name: 'ksw_leases_held', help: 'Leases held by this worker' }),
      leaseTakes: counter(r, { name: 'ksw_lease_takes_total', help: 'Leases taken' }),
      leaseLosses: counter(r, {
        name: 'ksw_lease_losses_total',
        help: 'Leases lost to another worker or to expiry',
      }),
      checkpoints: counter(r, {
        name: 'ksw_checkpoints_total',
        help: 'Checkpoints written',
        labelNames: shardLabels,
      }),
      checkpointErrors: counter(r, { name: 'ksw_checkpoint_errors_total', help: 'Failed checkpoint writes' }),
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

  async start(): Promise<void> {
    await this.deps.leases.ensureTable(this.config.createTable);
    await this.sync();
    const every = (ms: number, fn: () => Promise<void>) => {
      const t = setInterval(
        () => void fn().catch((err) => this.log.error({ err }, 'periodic task failed')),
        ms,
      );
      t.unref();
      this.timers.push(t);
    };
    every(Math.max(200, Math.floor(this.config.failoverMs / 3)), () => this.renewAll());
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
    return this.held.size;
  }

  /** Lists shards and leases, creates missing leases and takes what this worker may take. */
  sync(): Promise<void> {
    if (this.stopping) return Promise.resolve();
    this.syncing ??= this.doSync().finally(() => {
      this.syncing = undefined;
    });
    return this.syncing;
  }

  private async doSync(): Promise<void> {
    const now = Date.now();
    const leases = new Map((await this.deps.leases.list()).map((l) => [l.leaseKey, l]));
    for (const consumer of this.consumers) {
      const shards = await this.listShards(consumer.stream);
      const live = new Set(shards.map((s) => s.ShardId!));
      for (const shard of shards) {
        const key = this.leaseKey(consumer.stream, shard.ShardId!);
        let lease = leases.get(key);
        if (!lease) {
          const parents = [shard.ParentShardId, shard.AdjacentParentShardId].filter((p): p is string => !!p);
          // A child of a reshard starts at its beginning: TRIM_HORIZON, whatever the configured start.
          const initial: InitialPosition = parents.some((p) => live.has(p))
            ? 'TRIM_HORIZON'
            : consumer.startPosition;
          lease = await this.deps.leases.createIfMissing(key, initial, parents);
          leases.set(key, lease);
        }
      }
      for (const shard of shards) {
        if (this.stopping) return;
        const key = this.leaseKey(consumer.stream, shard.ShardId!);
        const lease = leases.get(key)!;
        if (this.held.has(key) || lease.checkpoint === SHARD_END) continue;
        if (!this.mayTake(lease, now)) continue;
        const parentsDone = lease.parentShardIds.every((p) => {
          const parent = leases.get(this.leaseKey(consumer.stream, p));
          return !parent ? !live.has(p) : parent.checkpoint === SHARD_END;
        });
        if (!parentsDone) continue;
        await this.takeAndStart(consumer, shard.ShardId!, lease);
      }
    }
    this.m.leasesHeld.set(this.held.size);
  }

  private mayTake(lease: Lease, now: number): boolean {
    if (!lease.leaseOwner || lease.leaseOwner === this.deps.workerId) return true;
    const seen = this.observed.get(lease.leaseKey);
    if (!seen || seen.counter !== lease.leaseCounter) {
      this.observed.set(lease.leaseKey, { counter: lease.leaseCounter, since: now });
      return false;
    }
    return now - seen.since >= this.config.failoverMs;
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

  private async takeAndStart(consumer: PollingConsumerConfig, shardId: string, lease: Lease): Promise<void> {
    const key = lease.leaseKey;
    let taken: Lease;
    try {
      taken = await this.deps.leases.take(lease, this.deps.workerId);
    } catch (err) {
      if (err instanceof LeaseLostError) return; // someone else was faster
      throw err;
    }
    this.m.leaseTakes.inc();
    const position = checkpointPosition(taken);
    const start: StartingPoint = position
      ? { kind: 'after', position }
      : {
          kind: 'initial',
          position: taken.checkpoint as InitialPosition,
          ...(consumer.startTimestamp ? { timestamp: new Date(consumer.startTimestamp) } : {}),
        };
    const watermark = new ShardWatermark(consumer.maxInFlightBytes, position);
    for (const sink of this.deps.sinks)
      await sink.openShard?.({ stream: consumer.stream, shardId }, position);
    const reader = new PollingShardReader(consumer, shardId, start, {
      kinesis: this.deps.kinesis,
      logger: this.deps.logger,
      metrics: this.deps.metrics,
      watermark,
      deliver: this.deps.deliver,
      onBackpressure: this.deps.onBackpressure,
    });
    const held: HeldShard = {
      stream: consumer.stream,
      shardId,
      lease: taken,
      watermark,
      reader,
      lastCheckpointed: position,
      lastRenewedAt: Date.now(),
      chain: Promise.resolve(),
      lost: false,
    };
    this.held.set(key, held);
    this.log.info(
      { stream: consumer.stream, shard: shardId, checkpoint: taken.checkpoint },
      'lease taken; reading shard',
    );
    held.done = reader.run().then(
      (end) => this.onReaderEnd(key, held, end),
      (err) => {
        this.log.error({ err, shard: shardId }, 'shard reader crashed; releasing the shard');
        this.drop(key, held);
      },
    );
  }

  private async onReaderEnd(key: string, held: HeldShard, end: string): Promise<void> {
    if (end !== 'shard-end' || held.lost) return;
    // SHARD_END only once every record of the parent is acked, so children never overtake it.
    await held.watermark.drained();
    if (held.lost || this.stopping) return;
    try {
      await this.writeLease(held, (l) => this.deps.leases.checkpoint(l, SHARD_END));
      this.m.checkpoints.inc({ stream: held.stream, shard: held.shardId });
      this.log.info({ shard: held.shardId }, 'checkpointed SHARD_END; children may start');
      await this.writeLease(held, (l) => this.deps.leases.release(l));
    } catch (err) {
      this.log.warn(
        { err, shard: held.shardId },
        'could not record SHARD_END; will retry after the lease is re-taken',
      );
    }
    this.held.delete(key);
    this.m.leasesHeld.set(this.held.size);
    await this.sync();
  }

  private writeLease(held: HeldShard, write: (lease: Lease) => Promise<Lease>): Promise<void> {
    const next = held.chain.then(async () => {
      if (held.lost) throw new LeaseLostError(held.lease.leaseKey, 'write');
      held.lease = await write(held.lease);
      held.lastRenewedAt = Date.now();
    });
    held.chain = next.catch(() => undefined);
    return next;
  }

  private drop(key: string, held: HeldShard): void {
    held.lost = true;
    held.reader.stop();
    this.held.delete(key);
    this.m.leasesHeld.set(this.held.size);
  }

  private async renewAll(): Promise<void> {
    await Promise.all(
      [...this.held.entries()].map(async ([key, held]) => {
        try {
          await this.writeLease(held, (l) => this.deps.leases.renew(l));
        } catch (err) {
          if (err instanceof LeaseLostError) {
            this.m.leaseLosses.inc();
            this.log.warn({ shard: held.shardId }, 'lease lost to another worker; stopping the shard');
            this.drop(key, held);
          } else if (Date.now() - held.lastRenewedAt > this.config.failoverMs) {
            // Others may consider the lease expired by now: stop before two workers process the shard.
            this.m.leaseLosses.inc();
            this.log.error(
              { err, shard: held.shardId },
              'could not renew the lease within failoverMs; stopping the shard',
            );
            this.drop(key, held);
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
    if (!wm || held.lost) return;
    const last = held.lastCheckpointed;
    if (last && last.sequenceNumber === wm.sequenceNumber && last.subSequenceNumber === wm.subSequenceNumber)
      return;
    try {
      await this.writeLease(held, (l) => this.deps.leases.checkpoint(l, wm));
      held.lastCheckpointed = wm;
      this.m.checkpoints.inc({ stream: held.stream, shard: held.shardId });
    } catch (err) {
      this.m.checkpointErrors.inc();
      this.log.warn({ err, shard: held.shardId }, 'checkpoint failed; the next one will cover it');
    }
  }

  private exportGauges(): void {
    for (const h of this.held.values()) {
      const labels = { stream: h.stream, shard: h.shardId };
      this.m.inFlightBytes.set(labels, h.watermark.inFlightBytes);
      this.m.inFlightRecords.set(labels, h.watermark.inFlightRecords);
      this.m.oldestUnacked.set(labels, h.watermark.oldestUnackedAgeMs / 1000);
    }
  }

  /** Stops fetching on every shard (first step of a graceful shutdown). */
  async stopReading(): Promise<void> {
    this.stopping = true;
    for (const t of this.timers) clearInterval(t);
    await this.syncing?.catch(() => undefined);
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

  /** Final checkpoint of every shard, then gives the leases up so another worker takes over at once. */
  async checkpointAndRelease(): Promise<void> {
    await this.checkpointAll();
    await Promise.all(
      [...this.held.values()].map(async (h) => {
        try {
          await this.writeLease(h, (l) => this.deps.leases.release(l));
        } catch (err) {
          this.log.warn({ err, shard: h.shardId }, 'could not release the lease; it will expire');
        }
      }),
    );
    this.held.clear();
    this.m.leasesHeld.set(0);
  }
}
