/**
 * What one scan of the lease table decides, as pure functions of what the scan read (no I/O, no clock of
 * its own), so the rules can be checked on their own and under a virtual clock.
 *
 * Expiry: a lease is expired when its counter has not moved for failoverMs by this worker's clock, counted
 * from the first scan *answer* that showed the counter's current value (never from before the request: the
 * owner's renewal may have been sent just before the scan read the row). No clock is compared across
 * workers, and an owner that fences itself at (send time of its last successful write + failoverMs -
 * margin) is stopped before any scanner can count its lease as expired.
 *
 * Taking (the KCL's LeaseTaker rules, plus process identity):
 *  - unowned leases may be taken;
 *  - leases of other owners only once expired;
 *  - a lease owned by this worker id is this process's to take at once only when this very process owns
 *    it: a handoff it asked for, or a tenure of this process (its token's instance) that ended while the
 *    row stayed its own (fenced, a release that failed). A lease owned by this id but another process
 *    instance (a restart of this worker, or a second live process started with the same id) is treated
 *    like any other owner's: taken only once expired. When such a lease keeps being renewed, two live
 *    processes share the id: reported as a conflict, never read;
 *  - live workers are the owners of unexpired leases (this process, and a second process under its id,
 *    each count once); each aims at ceil(active leases / live workers) (capped by maxLeasesForWorker);
 *    below it a worker takes available leases, and with none available it asks the most loaded worker
 *    for at most maxLeasesToStealAtOnce leases (a graceful handoff), never a process with its own id.
 */
import { tokenInstance } from '../core/tenure.js';
import type { Lease } from './lease-table.js';

export type TakeReason = 'unowned' | 'expired' | 'own' | 'handoff' | 'forced';

interface Observation {
  counter: number;
  since: number;
  /** The counter changed at least once while this worker watched it (someone is writing the lease). */
  moved: boolean;
}

/** Tracks, per lease key, since when its counter stood still by this worker's clock. */
export class ExpiryTracker {
  private readonly seen = new Map<string, Observation>();

  constructor(private readonly failoverMs: number) {}

  /** Records the counters of one scan whose answer arrived at `observedAt`; forgets vanished leases. */
  observe(leases: readonly Lease[], observedAt: number): void {
    const keys = new Set<string>();
    for (const lease of leases) {
      keys.add(lease.leaseKey);
      const seen = this.seen.get(lease.leaseKey);
      if (!seen)
        this.seen.set(lease.leaseKey, { counter: lease.leaseCounter, since: observedAt, moved: false });
      else if (seen.counter !== lease.leaseCounter) {
        seen.counter = lease.leaseCounter;
        seen.since = observedAt;
        seen.moved = true;
      }
    }
    for (const key of this.seen.keys()) if (!keys.has(key)) this.seen.delete(key);
  }

  /** How long the lease's counter has stood still by this worker's clock (0 for a lease not seen yet). */
  stillFor(key: string, now: number): number {
    const seen = this.seen.get(key);
    return seen === undefined ? 0 : now - seen.since;
  }

  expired(key: string, now: number): boolean {
    const seen = this.seen.get(key);
    return seen !== undefined && now - seen.since >= this.failoverMs;
  }

  /** True when the lease's counter moved while watched and has not stood still for failoverMs since. */
  live(key: string, now: number): boolean {
    const seen = this.seen.get(key);
    return seen?.moved === true && now - seen.since < this.failoverMs;
  }
}

export interface PlanInput {
  /** This worker's id. */
  readonly me: string;
  /** This process instance (the prefix of its tenure tokens). */
  readonly instance: string;
  /** Leases that may be read now: ours, not SHARD_END, parents finished. */
  readonly active: readonly Lease[];
  /** Keys this process holds a tenure for (reading, opening, ending; not handing off). */
  readonly held: ReadonlySet<string>;
  /** Keys of handoffs this process asked for and still waits for. */
  readonly incoming: ReadonlySet<string>;
  readonly expired: (key: string) => boolean;
  /** Leases owned by this id that another process keeps renewing. */
  readonly liveElsewhere: (key: string) => boolean;
  /** Leases this process must not take now (it released them after a failure a moment ago). */
  readonly coolingDown: (key: string) => boolean;
  readonly maxLeasesForWorker: number | undefined;
  readonly maxLeasesToStealAtOnce: number;
  /**
   * A watcher: takes every expired lease beyond its fair share, so a dead worker's shards are read again
   * at once although the other workers scan rarely; balancing moves them on. (Released leases are taken
   * up to the fair share only: taking them beyond it duplicated records in the fleet balance test.)
   */
  readonly rescue?: boolean;
  readonly random: () => number;
}

export interface Plan {
  readonly take: ReadonlyArray<{ readonly lease: Lease; readonly reason: TakeReason }>;
  /** Graceful handoffs to ask for: the lease and its current owner. */
  readonly steal: ReadonlyArray<{ readonly lease: Lease; readonly from: string }>;
  /** Leases owned by this id, live, but written by another process. */
  readonly conflicts: readonly Lease[];
  readonly workers: number;
  readonly target: number;
}

/** The load key of a second process using this worker's id (it counts as a worker of its own). */
const OTHER_PROCESS = '\u0000other process with this id';

export function planLeases(input: PlanInput): Plan {
  const { me, instance, active } = input;
  const ownedHere = (lease: Lease) =>
    lease.leaseOwner === me &&
    (input.held.has(lease.leaseKey) ||
      input.incoming.has(lease.leaseKey) ||
      tokenInstance(lease.tenure) === instance);

  const load = new Map<string, Lease[]>([[me, []]]);
  const conflicts: Lease[] = [];
  for (const lease of active) {
    if (!lease.leaseOwner || input.expired(lease.leaseKey)) continue;
    let owner = lease.leaseOwner;
    if (owner === me && !ownedHere(lease)) {
      owner = OTHER_PROCESS;
      if (input.liveElsewhere(lease.leaseKey)) conflicts.push(lease);
    }
    const list = load.get(owner) ?? [];
    list.push(lease);
    load.set(owner, list);
  }
  const workers = load.size;
  let target = active.length === 0 ? 0 : Math.ceil(active.length / workers);
  if (input.maxLeasesForWorker !== undefined) target = Math.min(target, input.maxLeasesForWorker);

  const take: Array<{ lease: Lease; reason: TakeReason }> = [];
  let mine = 0;
  const available: Lease[] = [];
  for (const lease of active) {
    const key = lease.leaseKey;
    if (input.held.has(key)) {
      if (lease.leaseOwner === me) mine += 1;
      continue;
    }
    if (!lease.leaseOwner) {
      if (!input.coolingDown(key)) available.push(lease);
      continue;
    }
    if (lease.leaseOwner !== me || !ownedHere(lease)) {
      // Another owner, or this id in another process: only once expired.
      if (input.expired(key) && !input.coolingDown(key)) available.push(lease);
      continue;
    }
    // Ours, in this process: a handoff we asked for, or a row a tenure of ours left behind.
    mine += 1;
    if (lease.checkpointOwner && lease.checkpointOwner !== me) {
      // The previous owner is still draining; it moved the counter when it started, and is overruled
      // only once the counter stood still for failoverMs (it has fenced itself by then).
      if (input.expired(key)) take.push({ lease, reason: 'forced' });
      continue;
    }
    if (input.coolingDown(key)) continue;
    take.push({ lease, reason: input.incoming.has(key) ? 'handoff' : 'own' });
  }

  const shuffled = shuffle(available, input.random);
  const free = shuffled.slice(0, Math.max(0, target - mine));
  if (input.rescue) {
    const cap = (input.maxLeasesForWorker ?? Number.POSITIVE_INFINITY) - mine - free.length;
    const rescued = shuffled
      .slice(free.length)
      .filter((l) => l.leaseOwner !== undefined)
      .slice(0, Math.max(0, cap));
    for (const lease of rescued) take.push({ lease, reason: lease.leaseOwner ? 'expired' : 'unowned' });
  }
  for (const lease of free) take.push({ lease, reason: lease.leaseOwner ? 'expired' : 'unowned' });

  const steal: Array<{ lease: Lease; from: string }> = [];
  const needed = target - mine - take.filter((t) => t.reason === 'expired' || t.reason === 'unowned').length;
  if (needed > 0) {
    let victim: string | undefined;
    let victimLoad = 0;
    for (const [owner, leases] of load) {
      if (owner !== me && owner !== OTHER_PROCESS && leases.length > victimLoad) {
        victim = owner;
        victimLoad = leases.length;
      }
    }
    if (victim && victimLoad >= target) {
      let count = Math.min(needed, victimLoad - target);
      if (needed > 1 && count === 0) count = 1;
      count = Math.min(count, input.maxLeasesToStealAtOnce);
      const candidates = shuffle(
        (load.get(victim) ?? []).filter((l) => !l.checkpointOwner),
        input.random,
      );
      for (const lease of candidates.slice(0, count)) steal.push({ lease, from: victim });
    }
  }
  return { take, steal, conflicts, workers, target };
}

function shuffle<T>(items: T[], random: () => number): T[] {
  for (let i = items.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [items[i], items[j]] = [items[j]!, items[i]!];
  }
  return items;
}

/** How a held shard's row, as a scan or a failed write read it, relates to our tenure. */
export type RowVerdict =
  | { readonly kind: 'ours' }
  | { readonly kind: 'handoff-requested' }
  | { readonly kind: 'lost'; readonly reason: 'taken' | 'deleted'; readonly sameId: boolean };

/**
 * Judges a held shard's current row: still ours (this tenure's token, no handoff), a handoff asked of us
 * (checkpointOwner is our id and the token still ours), or lost (anything else: another owner, this id
 * with another process's token, deleted).
 */
export function judgeRow(row: Lease | undefined, me: string, token: string): RowVerdict {
  if (!row) return { kind: 'lost', reason: 'deleted', sameId: false };
  if (row.tenure === token && row.leaseOwner === me && !row.checkpointOwner) return { kind: 'ours' };
  if (row.tenure === token && row.checkpointOwner === me && row.leaseOwner !== me)
    return { kind: 'handoff-requested' };
  return { kind: 'lost', reason: 'taken', sameId: row.leaseOwner === me };
}
