/**
 * The shard coordinator: keeps a lease per shard in the lease table, takes and balances leases across the
 * workers of a fleet, runs a reader for every lease it holds, renews its leases, and checkpoints each
 * shard's contiguous watermark. It wires the modules that do each part (the Java KCL's split is the
 * reference for the seams):
 *
 *   lease-renewer.ts   renewal (and with held-shard.ts, self-fencing by a local deadline)
 *   lease-taker.ts     scans, taking, balancing (rules in lease-plan.ts, pure)
 *   handoff.ts         the giving side of a graceful handoff
 *   shard-sync.ts      shard listing, new and child leases, deleting finished leases
 *   shard-end.ts       a closed shard's SHARD_END
 *   checkpointer.ts    checkpoints, forward only, SHARD_END final
 *   held-shard.ts      one held shard: tenure, watermark, reader, and its serialized command queue
 *
 * Each take of a lease starts a tenure (src/core/tenure.ts) whose token is written into the lease row;
 * the tenure ends when the lease is lost, fenced, handed off, released, at shard end, or when the chain
 * fails on its records, and then every component lets go of what it holds of it (`ShardChain.closeShard`)
 * before this worker takes the same lease again. Time comes from an injectable clock and the lease table
 * is a dependency, so the lease logic can run under a virtual clock.
 */
import type { KinesisClient } from '@aws-sdk/client-kinesis';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import { awsErrorName, isRetryableAwsError } from '../core/aws-errors.js';
import { type Clock, sleepOn, systemClock, withTimeout } from '../core/clock.js';
import type { DeadLetterQueue, ShardChain } from '../core/component.js';
import { ShardTenure, type TenureEnd, TenureTokens, tokenInstance } from '../core/tenure.js';
import { ShardWatermark } from '../core/watermark.js';
import { Checkpointer } from './checkpointer.js';
import { type CoordinatorMetrics, coordinatorMetrics, PER_SHARD_METRICS } from './coordinator-metrics.js';
import { handOff } from './handoff.js';
import { HeldShard } from './held-shard.js';
import { type CheckpointConfig, type LeaseTimingConfig, leaseTiming } from './lease-config.js';
import { LeaseKeys } from './lease-keys.js';
import { judgeRow, type TakeReason } from './lease-plan.js';
import { LeaseRenewer } from './lease-renewer.js';
import {
  checkpointPosition,
  type InitialPosition,
  type Lease,
  LeaseLostError,
  type LeaseTable,
} from './lease-table.js';
import { LeaseTaker } from './lease-taker.js';
import {
  type ConsumerContext,
  type KinesisConsumerConfig,
  openConsumer,
  type StreamConsumer,
} from './registry.js';
import { finishClosedShard } from './shard-end.js';
import { DeliveryError, type ReaderEnd, type StartingPoint } from './shard-reader.js';
import { ShardSyncer } from './shard-sync.js';

export { type CheckpointConfig, checkpointConfigSchema } from './lease-config.js';

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
  /** Lease timing runs on this clock (default: the system clock). */
  readonly clock?: Clock;
  /** This process instance, the prefix of its tenure tokens (default: random). */
  readonly instance?: string;
  /** Randomness of balancing choices (tests). */
  readonly random?: () => number;
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
  /** Ended tenures whose components are still letting go (closeShard): the next take of the key waits. */
  private readonly closing = new Map<string, Promise<void>>();
  private readonly opened = new Map<string, StreamConsumer>();
  /** Periodic tasks by name, each with its stop function. */
  private readonly timers = new Map<string, () => void>();
  private stopping = false;
  /** Whether the last shard sync and the last lease scan succeeded (readiness). */
  private syncOk = false;
  private scanOk = false;
  private readonly abort = new AbortController();
  private readonly tokens: TenureTokens;
  private readonly keys: LeaseKeys;
  private readonly clock: Clock;
  private readonly log: Logger;
  private readonly m: CoordinatorMetrics;
  private readonly timing: LeaseTimingConfig;
  private readonly syncer: ShardSyncer;
  private readonly taker: LeaseTaker;
  private readonly renewer: LeaseRenewer;
  private readonly checkpointer: Checkpointer;
  readonly renewIntervalMs: number;
  readonly takeIntervalMs: number;
  readonly handoffTimeoutMs: number;

  constructor(
    private readonly consumers: readonly KinesisConsumerConfig[],
    private readonly config: CheckpointConfig,
    private readonly deps: CoordinatorDeps,
  ) {
    this.log = deps.logger.child({ component: 'coordinator' });
    this.clock = deps.clock ?? systemClock;
    this.tokens = new TenureTokens(deps.instance);
    this.keys = new LeaseKeys(consumers);
    this.timing = leaseTiming(config);
    this.renewIntervalMs = this.timing.renewIntervalMs;
    this.takeIntervalMs = this.timing.takeIntervalMs;
    this.handoffTimeoutMs = this.timing.handoffTimeoutMs;
    this.m = coordinatorMetrics(
      deps.metrics,
      consumers.map((c) => c.stream),
    );
    this.syncer = new ShardSyncer(
      consumers,
      this.keys,
      deps.kinesis,
      deps.leases,
      { deleteFinishedLeases: config.deleteFinishedLeases },
      this.m,
      this.log,
      () => this.takeLeases(),
    );
    this.taker = new LeaseTaker(
      deps.leases,
      {
        heldKeys: () => this.readingKeys(),
        onHeldRow: (key, row) => {
          const held = this.held.get(key);
          if (held) this.onRow(held, row);
        },
        readable: (lease, all) => {
          const parsed = this.keys.parse(lease.leaseKey);
          return !!parsed && this.syncer.parentsDone(lease, parsed.consumer.stream, all);
        },
        take: (lease, reason) => this.takeAndStart(lease, reason),
        retryLater: (err, what) => this.retryLater(err, what),
      },
      {
        me: deps.workerId,
        instance: this.tokens.instance,
        failoverMs: config.failoverMs,
        takeIntervalMs: this.timing.takeIntervalMs,
        stableTakeIntervalMs: this.timing.stableTakeIntervalMs,
        renewIntervalMs: this.timing.renewIntervalMs,
        scanWatchers: config.scanWatchers,
        maxLeasesForWorker: config.maxLeasesForWorker,
        maxLeasesToStealAtOnce: config.maxLeasesToStealAtOnce,
        failureCooldownMs: config.failoverMs,
        ...(deps.random ? { random: deps.random } : {}),
      },
      this.clock,
      this.m,
      this.log,
    );
    const host = {
      held: () => this.held.values(),
      onConditionFailed: (held: HeldShard) => this.inspect(held),
    };
    this.renewer = new LeaseRenewer(deps.leases, host, this.log);
    this.checkpointer = new Checkpointer(deps.leases, host, this.m, this.log);
  }

  /** Lease key of a shard: the shard id (KCL single-stream format) unless several streams share the table. */
  leaseKey(stream: string, shardId: string): string {
    return this.keys.of(stream, shardId);
  }

  /** The prefix of this process's tenure tokens (tells it apart from another process with the same id). */
  get instance(): string {
    return this.tokens.instance;
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
    // Stopped during start-up (a signal): start no periodic task that would outlive the stop.
    if (this.stopping) return;
    // Renewals first: a lease taken by the first scan below is renewed on time however long the scan and
    // the sinks' openShard take. Each shard's renewal runs on its own (one slow call does not hold the
    // others back), once renewIntervalMs passed since its last successful lease write.
    const renewMs = this.timing.renewIntervalMs;
    this.every('renew', Math.max(25, Math.floor(renewMs / 4)), async () => {
      void this.renewer.renewAll(this.clock.now(), renewMs);
    });
    // A throttled or unavailable lease table or ListShards at start-up is not fatal: the periodic shard
    // sync and lease scan below try again within their intervals, as the KCL's do. Anything else (access
    // denied, a missing stream) still fails the start with its error.
    try {
      await this.sync().catch((err) => this.retryLater(err, 'shard sync'));
      await this.takeLeases().catch((err) => this.retryLater(err, 'lease scan'));
    } catch (err) {
      this.stopTimers();
      throw err;
    }
    if (this.stopping) {
      this.stopTimers();
      return;
    }
    // Ticks at takeIntervalMs; each scan decides when the next periodic one is due (adaptive cadence).
    this.every('scan', this.timing.takeIntervalMs, () =>
      this.stopping ? Promise.resolve() : this.tracked(this.taker.scanIfDue(), (ok) => (this.scanOk = ok)),
    );
    this.every('checkpoint', this.config.intervalMs, () => this.checkpointer.checkpointAll());
    this.every('sync', this.config.shardSyncIntervalMs, () => this.sync());
    this.every('gauges', 1_000, async () => this.exportGauges());
  }

  /**
   * Runs `task` every `ms` on the clock, at a fixed rate (a slow run does not push the next one back); a
   * run still going when the next is due makes that one be skipped.
   */
  private every(name: string, ms: number, task: () => Promise<void>): void {
    let stopped = false;
    let running = false;
    let handle: unknown;
    const tick = () => {
      if (stopped) return;
      handle = this.clock.setTimeout(tick, ms);
      if (running) return;
      running = true;
      void task()
        .catch((err) => this.log.error({ err, task: name }, 'periodic task failed'))
        .finally(() => {
          running = false;
        });
    };
    handle = this.clock.setTimeout(tick, ms);
    this.timers.set(name, () => {
      stopped = true;
      this.clock.clearTimeout(handle);
    });
  }

  private stopTimers(keep: readonly string[] = []): void {
    for (const [name, stop] of [...this.timers]) {
      if (keep.includes(name)) continue;
      stop();
      this.timers.delete(name);
    }
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
    return this.readingKeys().size;
  }

  /** Lease keys this worker reads now. */
  heldKeys(): string[] {
    return [...this.held.values()].filter((h) => h.phase === 'reading' && h.tenure.active).map((h) => h.key);
  }

  /** Lists every stream's shards, creates missing leases and deletes finished leases of vanished shards. */
  sync(): Promise<void> {
    return this.stopping ? Promise.resolve() : this.tracked(this.syncer.sync(), (ok) => (this.syncOk = ok));
  }

  /** Scans the lease table; takes, balances and notices handoffs. One scan at a time. */
  takeLeases(): Promise<void> {
    return this.stopping ? Promise.resolve() : this.tracked(this.taker.scan(), (ok) => (this.scanOk = ok));
  }

  private async tracked(run: Promise<void>, set: (ok: boolean) => void): Promise<void> {
    try {
      await run;
      set(true);
    } catch (err) {
      set(false);
      throw err;
    }
  }

  /**
   * Why this worker is not ready, or undefined when it is: ready means it holds leases or may take them
   * (its last lease scan succeeded), and its last shard sync succeeded (it can see the streams).
   */
  get notReadyReason(): string | undefined {
    if (this.stopping) return 'stopping';
    if (!this.syncOk) return 'the last shard sync failed';
    if (this.heldCount === 0 && !this.scanOk) return 'no lease held and the last lease scan failed';
    return undefined;
  }

  /** Writes each shard's watermark if it moved since the last checkpoint. */
  checkpointAll(): Promise<void> {
    return this.checkpointer.checkpointAll();
  }

  /** Keys of shards held and owned here (opening, reading, ending), for the taker. */
  private readingKeys(): Set<string> {
    const keys = new Set<string>();
    for (const h of this.held.values()) if (h.owned) keys.add(h.key);
    return keys;
  }

  /** Logs a retryable AWS error of a periodic task (it runs again on its own); rethrows anything else. */
  private retryLater(err: unknown, what: string): void {
    if (!isRetryableAwsError(err)) throw err;
    this.log.warn({ err, error: awsErrorName(err) }, `${what} failed; the next interval tries again`);
  }

  // --- taking a lease: a new tenure --------------------------------------------------------------------

  private async takeAndStart(lease: Lease, reason: TakeReason): Promise<void> {
    const key = lease.leaseKey;
    const parsed = this.keys.parse(key);
    const stream = parsed && this.opened.get(parsed.consumer.stream);
    if (!parsed || !stream || this.held.has(key) || this.stopping) return;
    const { consumer, shardId } = parsed;
    // A previous tenure of this lease here must have let go of its state (closeShard) before the next one
    // may start; the next scan tries again (the scan does not wait for it: other takes go on).
    if (this.closing.has(key)) return;
    const token = this.tokens.next();
    const sentAt = this.clock.now();
    let taken: Lease;
    try {
      // A take answered later than this would start a tenure already past its fencing deadline.
      const timeoutMs = this.timing.failoverMs - this.timing.fencingMarginMs;
      taken = await withTimeout(this.clock, timeoutMs, 'lease take', (signal) =>
        this.deps.leases.take(lease, this.deps.workerId, token, { signal }),
      );
    } catch (err) {
      if (err instanceof LeaseLostError) return; // someone else was faster
      this.m.leaseWriteErrors.inc({ error: awsErrorName(err) });
      throw err;
    }
    this.m.leaseWriteSeconds.observe({ operation: 'take' }, (this.clock.now() - sentAt) / 1000);
    // Writes stop half a margin before the deadline: one checked just then is on the wire by the deadline.
    const tenure = new ShardTenure(
      consumer.stream,
      shardId,
      token,
      this.clock,
      this.timing.fencingMarginMs / 2,
    );
    tenure.setDeadline(sentAt + this.timing.failoverMs - this.timing.fencingMarginMs);
    const position = checkpointPosition(taken);
    const watermark = new ShardWatermark(consumer.maxInFlightBytes, position, Date.now, tenure);
    const held = new HeldShard(
      key,
      consumer,
      shardId,
      taken,
      tenure,
      watermark,
      { clock: this.clock, timing: this.timing, metrics: this.m, logger: this.log },
      sentAt,
    );
    held.lastCheckpointed = position;
    this.held.set(key, held);
    this.m.leasesHeld.set(this.heldCount);
    tenure.whenFenced(() => this.fence(held));
    tenure.whenFailed((stage, err) => this.onFailure(held, stage, err));
    if (this.stopping) {
      await this.release(held, 'released');
      return;
    }
    this.m.leaseTakes.inc({ reason });
    this.m.checkpointErrors.inc({ stream: held.stream, shard: held.shardId }, 0);
    try {
      await this.deps.chain.openShard(tenure, position);
    } catch (err) {
      this.log.error({ err, shard: shardId }, 'a sink could not open the shard; releasing the lease');
      this.m.shardFailures.inc({ stream: consumer.stream, stage: 'sink_open' });
      await this.release(held, 'failed');
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
    const started = await held.run(async () => {
      if (held.phase !== 'opening' || !tenure.active || this.stopping) return false;
      held.phase = 'reading';
      return true;
    });
    if (!started) return;
    this.log.info(
      { stream: consumer.stream, shard: shardId, checkpoint: taken.checkpoint, reason, tenure: token },
      'lease taken; reading shard',
    );
    const start: StartingPoint = position
      ? { kind: 'after', position }
      : {
          kind: 'initial',
          position: taken.checkpoint as InitialPosition,
          ...(consumer.startTimestamp ? { timestamp: new Date(consumer.startTimestamp) } : {}),
        };
    const range = taken.hashKeyRange ?? this.syncer.hashKeyRange(consumer.stream, shardId);
    const chain = this.deps.chain;
    const reader = stream.createReader(shardId, start, {
      kinesis: this.deps.kinesis,
      logger: this.deps.logger,
      metrics: this.deps.metrics,
      watermark,
      deliver: (records) => chain.deliver(records),
      onBackpressure: () => chain.relievePressure(tenure),
      ...(this.deps.dlq ? { dlq: this.deps.dlq } : {}),
      ...(range ? { hashKeyRange: { start: BigInt(range.start), end: BigInt(range.end) } } : {}),
    });
    held.reader = reader;
    // The reader stops when the tenure ends, whoever ends it.
    tenure.signal.addEventListener('abort', () => reader.stop(), { once: true });
    held.done = reader.run().then(
      (end) => this.onReaderEnd(held, end),
      (err) => {
        if (err instanceof DeliveryError) {
          // Usually reported by the chain already (through the tenure); this covers a failure before it.
          held.tenure.fail('deliver', err.cause);
          return;
        }
        this.log.error({ err, shard: shardId }, 'shard reader crashed; releasing the shard');
        held.tenure.fail('reader', err);
      },
    );
  }

  // --- what a row or a failed write tells about a held shard --------------------------------------------

  /** A scan's row of a shard we hold: a handoff asked of us, a loss, or nothing new. */
  private onRow(held: HeldShard, row: Lease | undefined): void {
    if (!held.owned) return;
    const verdict = judgeRow(row, this.deps.workerId, held.tenure.token);
    if (verdict.kind === 'ours') return;
    if (verdict.kind === 'handoff-requested') {
      this.startHandoff(held, row!);
      return;
    }
    this.lose(held, verdict.reason, verdict.sameId, row);
  }

  /**
   * A lease write failed its condition (inside the shard's command): read the row. Still ours with our
   * token (our own earlier write went through but its answer was lost): adopt it and carry on. Anything
   * else is a handoff request or a loss, acted on outside the command.
   */
  private async inspect(held: HeldShard): Promise<void> {
    let row: Lease | undefined;
    try {
      row = await withTimeout(this.clock, this.timing.callTimeoutMs, 'lease read', (signal) =>
        this.deps.leases.get(held.key, { signal }),
      );
    } catch {
      return; // unknown: the next write or scan tells, and the deadline fences the shard meanwhile
    }
    const verdict = judgeRow(row, this.deps.workerId, held.tenure.token);
    if (verdict.kind === 'ours') {
      held.lease = row!;
      return;
    }
    if (verdict.kind === 'handoff-requested') {
      this.startHandoff(held, row!);
      return;
    }
    this.lose(held, verdict.reason, verdict.sameId, row);
  }

  private startHandoff(held: HeldShard, row: Lease): void {
    if (held.handoff) return;
    held.handoff = handOff(held, row, {
      leases: this.deps.leases,
      chain: this.deps.chain,
      checkpointer: this.checkpointer,
      clock: this.clock,
      metrics: this.m,
      log: this.log,
      handoffTimeoutMs: this.timing.handoffTimeoutMs,
      fencingMarginMs: this.timing.fencingMarginMs,
      end: (h, reason) => this.endTenure(h, reason),
    }).catch((err) => {
      this.log.error({ err, shard: held.shardId }, 'handoff failed');
      void this.endTenure(held, 'handed-off');
    });
  }

  private lose(held: HeldShard, reason: 'taken' | 'deleted', sameId: boolean, row: Lease | undefined): void {
    if (!held.tenure.active) return;
    this.m.leaseLosses.inc({ reason });
    if (sameId) {
      this.m.idConflicts.inc();
      this.log.error(
        {
          shard: held.shardId,
          workerId: this.deps.workerId,
          otherTenure: row?.tenure,
          ourTenure: held.tenure.token,
        },
        `another process uses this workerId (${this.deps.workerId}) and took this lease; stopping the shard. Give every replica its own app.workerId`,
      );
    } else {
      this.log.warn(
        { shard: held.shardId, owner: row?.leaseOwner, reason },
        'lease lost to another worker; stopping the shard',
      );
    }
    void this.endTenure(held, 'lost');
  }

  /** The fencing deadline passed without a successful lease write: stop before anyone may take over. */
  private fence(held: HeldShard): void {
    if (held.tenure.ended) return;
    this.m.leaseLosses.inc({ reason: 'fenced' });
    this.log.error(
      {
        shard: held.shardId,
        tenure: held.tenure.token,
        deadline: new Date(held.tenure.deadline).toISOString(),
      },
      'no lease write succeeded within failoverMs - fencingMarginMs; stopped the shard (fenced) before another worker may take it',
    );
    void this.endTenure(held, 'fenced');
  }

  /** The chain failed on the shard's records: release it to be read again from its checkpoint. */
  private onFailure(held: HeldShard, stage: string, err: unknown): void {
    this.log.error(
      { err, shard: held.shardId, stage },
      'the chain failed on the shard; releasing it to be read again from its checkpoint',
    );
    this.m.shardFailures.inc({ stream: held.stream, stage });
    this.taker.coolDown(held.key);
    void this.release(held, 'failed');
  }

  private async onReaderEnd(held: HeldShard, end: ReaderEnd): Promise<void> {
    if (!held.tenure.active) return;
    if (end === 'stream-gone') {
      await this.release(held, 'failed');
      return;
    }
    if (end !== 'shard-end' || this.stopping) return;
    await finishClosedShard(held, {
      leases: this.deps.leases,
      chain: this.deps.chain,
      checkpointer: this.checkpointer,
      syncer: this.syncer,
      clock: this.clock,
      metrics: this.m,
      log: this.log,
      stopping: () => this.stopping,
      end: (h, reason) => this.endTenure(h, reason),
    });
    await this.takeLeases();
  }

  // --- the end of a tenure ------------------------------------------------------------------------------

  /**
   * Ends the shard's tenure: the reader stops, the watermark freezes, the shard is forgotten, and every
   * component drops what it still holds of the tenure (the next take of this lease here waits until then).
   * Resolves once they have: no request of the tenure can still be sent or be in flight. A lease is given
   * back (release, finished handoff) only after that, so the next owner never races a late write.
   */
  private endTenure(held: HeldShard, reason: TenureEnd): Promise<void> {
    if (!held.tenure.end(reason)) return this.closing.get(held.key) ?? Promise.resolve();
    held.phase = 'ended';
    held.reader?.stop();
    held.watermark.close();
    if (this.held.get(held.key) === held) this.held.delete(held.key);
    this.m.leasesHeld.set(this.heldCount);
    const labels = { stream: held.stream, shard: held.shardId };
    for (const name of PER_SHARD_METRICS) {
      const metric = this.deps.metrics.getSingleMetric(name) as { remove?: (l: object) => void } | undefined;
      metric?.remove?.(labels);
    }
    const closed = this.deps.chain
      .closeShard(held.tenure)
      .catch((err) =>
        this.log.warn({ err, shard: held.shardId }, 'a component failed to let go of the shard'),
      )
      .finally(() => {
        if (this.closing.get(held.key) === closed) this.closing.delete(held.key);
      });
    this.closing.set(held.key, closed);
    return closed;
  }

  /**
   * Ends the tenure, then gives the lease back so another worker (or this one later) takes it at once.
   * Harmless when the lease is someone else's by now: the release is conditional on our last write.
   */
  private async release(held: HeldShard, reason: TenureEnd): Promise<void> {
    await held.run(async () => {
      // The tenure ends first, and its requests settle: nothing of it may be written once another worker
      // can take the lease.
      await this.endTenure(held, reason);
      try {
        await held.write('release', (lease, opts) => this.deps.leases.release(lease, opts), true);
      } catch (err) {
        this.log.warn({ err, shard: held.shardId }, 'could not release the lease; it will expire');
      }
    });
  }

  private exportGauges(): void {
    for (const h of this.held.values()) {
      if (!h.tenure.active) continue;
      const labels = { stream: h.stream, shard: h.shardId };
      this.m.inFlightBytes.set(labels, h.watermark.inFlightBytes);
      this.m.inFlightRecords.set(labels, h.watermark.inFlightRecords);
      this.m.oldestUnacked.set(labels, h.watermark.oldestUnackedAgeMs / 1000);
      this.m.fencingSlack.set(labels, h.slackSeconds());
    }
  }

  // --- shutdown -----------------------------------------------------------------------------------------

  /**
   * Stops fetching on every shard (first step of a graceful shutdown). Renewals and checkpoints go on
   * until `checkpointAndRelease`, so a long drain does not let the leases expire under the sinks.
   */
  async stopReading(): Promise<void> {
    this.stopping = true;
    this.abort.abort();
    this.taker.stop();
    this.syncer.stop();
    this.stopTimers(['renew', 'checkpoint']);
    await this.syncer.settle();
    await this.taker.settle();
    for (const h of this.held.values()) h.reader?.stop();
    await Promise.all([...this.held.values()].map((h) => h.done));
  }

  /** Resolves when every held shard's records are all acked, or after `timeoutMs`. */
  async waitDrained(timeoutMs: number): Promise<boolean> {
    const stop = new AbortController();
    const drained = Promise.all([...this.held.values()].map((h) => h.watermark.drained())).then(() => true);
    const result = await Promise.race([
      drained,
      sleepOn(this.clock, Math.max(0, timeoutMs), stop.signal).then(() => false),
    ]);
    stop.abort();
    return result;
  }

  /**
   * Final checkpoint of every shard, then gives the leases up so another worker takes over at once
   * (handoffs in progress finish their own way).
   */
  async checkpointAndRelease(): Promise<void> {
    await Promise.all(
      [...this.held.values()].map(async (h) => {
        if (h.handoff) {
          await h.handoff;
          return;
        }
        await h.run(async () => {
          if (!h.owned) return;
          try {
            await this.checkpointer.write(h, 'leaseOwner');
          } catch (err) {
            this.log.warn({ err, shard: h.shardId }, 'final checkpoint failed');
          }
        });
        await this.release(h, 'released');
      }),
    );
    this.stopTimers();
    await this.releaseUnread();
    await Promise.all([...this.closing.values()]);
    this.m.leasesHeld.set(0);
  }

  /**
   * Leases this process owns in the table but does not read (a handoff to us just finished or is
   * finishing): let the handoff finish (bounded by handoffTimeoutMs), then release them too, so nobody
   * waits for expiry. Leases under our id but another process's token are not ours to release.
   */
  private async releaseUnread(): Promise<void> {
    const me = this.deps.workerId;
    const rows = await this.deps.leases.list().catch(() => [] as Lease[]);
    const deadline = this.clock.now() + this.timing.handoffTimeoutMs;
    // Ours in this process: a handoff we asked for (it keeps the previous holder's token) or a row a tenure
    // of ours left. A lease under our id with another process's token is that process's, not ours.
    const ours = (l: Lease) =>
      this.taker.asked(l.leaseKey) || tokenInstance(l.tenure) === this.tokens.instance;
    await Promise.all(
      rows
        .filter((l) => l.leaseOwner === me && !this.held.has(l.leaseKey) && ours(l))
        .map(async (row) => {
          let lease: Lease | undefined = row;
          while (lease?.checkpointOwner && this.clock.now() < deadline) {
            await sleepOn(this.clock, 100);
            lease = await this.deps.leases.get(row.leaseKey).catch(() => lease);
          }
          if (!lease || lease.leaseOwner !== me || lease.checkpointOwner) return; // it will expire
          await this.deps.leases.release(lease).catch(() => undefined);
        }),
    );
  }
}
