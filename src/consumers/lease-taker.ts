/**
 * The lease taker and balancer: one scan of the lease table at a time (every takeIntervalMs, and at once
 * after a shard sync created leases or a shard ended). A scan reads every row, updates the expiry
 * tracker, tells the coordinator about the rows of the shards it holds (a loss, a handoff asked of it),
 * plans (lease-plan.ts), then takes what the plan says and asks the most loaded worker for handoffs.
 */
import type { Logger } from 'pino';
import { type Clock, withTimeout } from '../core/clock.js';
import type { CoordinatorMetrics } from './coordinator-metrics.js';
import { ExpiryTracker, planLeases, type TakeReason } from './lease-plan.js';
import { type Lease, LeaseLostError, type LeaseTable, SHARD_END } from './lease-table.js';

export interface TakerHost {
  /** Keys of shards this process holds and reads (opening, reading, ending). */
  heldKeys(): ReadonlySet<string>;
  /** The current row of a shard this process holds (undefined: deleted). */
  onHeldRow(key: string, row: Lease | undefined): void;
  /** Whether a row is one of this application's leases that may be read now (parents finished...). */
  readable(lease: Lease, all: ReadonlyMap<string, Lease>): boolean;
  /** Takes the lease and starts its tenure; resolves when the take is done (reading may follow later). */
  take(lease: Lease, reason: TakeReason): Promise<void>;
  /** Logs a retryable error of a background task; rethrows anything else. */
  retryLater(err: unknown, what: string): void;
}

export interface TakerOptions {
  readonly me: string;
  readonly instance: string;
  readonly failoverMs: number;
  /** Scan cadence while something is going on, and of the watchers. */
  readonly takeIntervalMs: number;
  /** Scan cadence of the other workers while the fleet is stable. */
  readonly stableTakeIntervalMs: number;
  /** A lease whose counter stood still this long makes the worker scan at takeIntervalMs. */
  readonly renewIntervalMs: number;
  readonly scanWatchers: number;
  readonly maxLeasesForWorker: number | undefined;
  readonly maxLeasesToStealAtOnce: number;
  /** How long this process leaves alone a lease it released after a failure (others may take it). */
  readonly failureCooldownMs: number;
  readonly random?: () => number;
}

export class LeaseTaker {
  private readonly expiry: ExpiryTracker;
  /** Handoffs this process asked for, not finished yet. */
  private readonly incoming = new Set<string>();
  /** Leases released after a failure: key -> until when this process leaves them alone. */
  private readonly cooldown = new Map<string, number>();
  /** Conflicts already logged: lease key -> the other process's token. */
  private readonly reported = new Map<string, string | undefined>();
  private running: Promise<void> | undefined;
  private again = false;
  private stopped = false;
  private readonly random: () => number;
  /** When the next periodic scan is due (set after each scan: soon while anything moves, later when stable). */
  private nextDueAt = 0;
  /** Owner of every active lease at the previous scan ("key=owner" lines). */
  private lastOwners = '';

  constructor(
    private readonly leases: LeaseTable,
    private readonly host: TakerHost,
    private readonly options: TakerOptions,
    private readonly clock: Clock,
    private readonly metrics: CoordinatorMetrics,
    private readonly log: Logger,
  ) {
    this.expiry = new ExpiryTracker(options.failoverMs);
    this.random = options.random ?? Math.random;
  }

  /** This process released the lease after a failure: it leaves it to others for a while. */
  coolDown(key: string): void {
    this.cooldown.set(key, this.clock.now() + this.options.failureCooldownMs);
  }

  stop(): void {
    this.stopped = true;
  }

  /** True while a handoff this process asked for is not finished (the lease is coming to it). */
  asked(key: string): boolean {
    return this.incoming.has(key);
  }

  /** Runs a scan, or (when one is running) one more right after it. */
  scan(): Promise<void> {
    if (this.stopped) return Promise.resolve();
    if (this.running) {
      this.again = true;
      return this.running;
    }
    this.running = (async () => {
      do {
        this.again = false;
        await this.scanOnce();
      } while (this.again && !this.stopped);
    })().finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  /** The periodic scan: runs only when due (takeIntervalMs while anything moves, else stableTakeIntervalMs). */
  scanIfDue(): Promise<void> {
    if (!this.adaptive) return this.scan();
    // Half a tick of slack: the timer ticks every takeIntervalMs, the due time counts from the scan's answer.
    if (this.clock.now() + this.options.takeIntervalMs / 2 < this.nextDueAt) return Promise.resolve();
    return this.scan();
  }

  /** Adaptive take scans: stableTakeIntervalMs is above takeIntervalMs. */
  private get adaptive(): boolean {
    return this.options.stableTakeIntervalMs > this.options.takeIntervalMs;
  }

  /** The delay before the next periodic scan, as decided by the last scan. */
  get nextScanInMs(): number {
    return Math.max(0, this.nextDueAt - this.clock.now());
  }

  /** Waits for a running scan (shutdown). */
  async settle(): Promise<void> {
    await this.running?.catch(() => undefined);
  }

  private async scanOnce(): Promise<void> {
    const rows = await withTimeout(this.clock, this.options.failoverMs, 'lease scan', (signal) =>
      this.leases.list({ signal }),
    );
    // After the answer: the row's counter may have moved just before the scan read it.
    const now = this.clock.now();
    this.expiry.observe(rows, now);
    const all = new Map(rows.map((l) => [l.leaseKey, l]));
    for (const key of this.incoming) {
      const row = all.get(key);
      if (!row || row.leaseOwner !== this.options.me) this.incoming.delete(key);
    }
    for (const [key, until] of this.cooldown) if (until <= now) this.cooldown.delete(key);

    const held = this.host.heldKeys();
    for (const key of held) this.host.onHeldRow(key, all.get(key));
    const heldNow = this.host.heldKeys();

    const active = rows.filter((l) => l.checkpoint !== SHARD_END && this.host.readable(l, all));
    // Live workers (owners of unexpired leases, and this one): the lowest `scanWatchers` ids are watchers.
    const live = new Set<string>([this.options.me]);
    for (const l of active) if (l.leaseOwner && !this.expiry.expired(l.leaseKey, now)) live.add(l.leaseOwner);
    const watcher = this.adaptive && [...live].sort().indexOf(this.options.me) < this.options.scanWatchers;
    const plan = planLeases({
      me: this.options.me,
      instance: this.options.instance,
      active,
      held: heldNow,
      incoming: this.incoming,
      expired: (key) => this.expiry.expired(key, now),
      liveElsewhere: (key) => this.expiry.live(key, now),
      coolingDown: (key) => this.cooldown.has(key),
      maxLeasesForWorker: this.options.maxLeasesForWorker,
      maxLeasesToStealAtOnce: this.options.maxLeasesToStealAtOnce,
      rescue: watcher,
      random: this.random,
    });
    this.schedule(active, heldNow, plan.take.length + plan.steal.length > 0, watcher, now);
    this.metrics.workers.set(plan.workers);
    this.metrics.fairShare.set(plan.target);
    for (const lease of plan.conflicts) this.reportConflict(lease);

    // One lease that cannot be taken now (throttled) must not keep the others, or balancing, from going on.
    const taken = await Promise.allSettled(
      plan.take.map(async ({ lease, reason }) => {
        if (this.stopped) return;
        this.incoming.delete(lease.leaseKey);
        await this.host.take(lease, reason);
      }),
    );
    for (const r of taken) if (r.status === 'rejected') this.host.retryLater(r.reason, 'lease take');

    for (const { lease, from } of plan.steal) {
      if (this.stopped) return;
      try {
        await this.leases.startHandoff(lease, this.options.me);
        this.incoming.add(lease.leaseKey);
        this.metrics.leaseSteals.inc();
        this.log.info(
          { lease: lease.leaseKey, from, fairShare: plan.target, workers: plan.workers },
          'balancing: asked the most loaded worker to hand a lease over',
        );
      } catch (err) {
        if (!(err instanceof LeaseLostError)) this.host.retryLater(err, 'handoff request');
      }
    }
  }

  /**
   * Sets when the next periodic scan is due: at takeIntervalMs for a watcher and whenever anything is
   * going on (a take or handoff, a lease with no owner, a lease whose counter stood still for longer
   * than a renewal interval and a scan, owners that changed since the previous scan); else at
   * stableTakeIntervalMs. A live owner moves its counter every renewIntervalMs, so a dead worker's lease
   * shows up as standing still at the next scan of every worker, which then scans at takeIntervalMs.
   */
  private schedule(
    active: readonly Lease[],
    held: ReadonlySet<string>,
    acted: boolean,
    watcher: boolean,
    now: number,
  ): void {
    const o = this.options;
    const owners = active.map((l) => `${l.leaseKey}=${l.leaseOwner ?? ''}`).join('\n');
    const changed = owners !== this.lastOwners;
    this.lastOwners = owners;
    const stillLimit = o.renewIntervalMs + o.takeIntervalMs;
    const suspect = active.some(
      (l) => !held.has(l.leaseKey) && (!l.leaseOwner || this.expiry.stillFor(l.leaseKey, now) > stillLimit),
    );
    const busy = watcher || acted || changed || suspect || this.incoming.size > 0;
    this.nextDueAt = now + (busy ? o.takeIntervalMs : o.stableTakeIntervalMs);
    this.metrics.scanIntervalSeconds.set((busy ? o.takeIntervalMs : o.stableTakeIntervalMs) / 1000);
  }

  /** A live lease owned by our id but another process: logged once per lease and process, counted. */
  private reportConflict(lease: Lease): void {
    if (this.reported.has(lease.leaseKey) && this.reported.get(lease.leaseKey) === lease.tenure) return;
    this.reported.set(lease.leaseKey, lease.tenure);
    this.metrics.idConflicts.inc();
    this.log.error(
      {
        workerId: this.options.me,
        lease: lease.leaseKey,
        otherTenure: lease.tenure,
        thisProcess: this.options.instance,
      },
      `another live process uses this workerId (${this.options.me}) and holds this lease: not reading it (waiting for it to expire). Give every replica its own app.workerId`,
    );
  }
}
