/**
 * Adaptive take scans (lease-taker.ts, lease-plan.ts): a worker that is not a watcher scans at
 * stableTakeIntervalMs while every lease is owned, its counter moves and the owners stay the same, and
 * at takeIntervalMs as soon as a lease stands still, is unowned, or the owners change; the watchers (the
 * lowest live ids) always scan at takeIntervalMs and take a dead worker's leases at once, beyond their
 * fair share.
 */
import assert from 'node:assert/strict';
import pino from 'pino';
import { Registry } from 'prom-client';
import { describe, it } from 'vitest';
import { coordinatorMetrics } from '../../src/consumers/coordinator-metrics.js';
import { leaseTiming } from '../../src/consumers/lease-config.js';
import { type PlanInput, planLeases } from '../../src/consumers/lease-plan.js';
import type { Lease, LeaseTable } from '../../src/consumers/lease-table.js';
import { LeaseTaker } from '../../src/consumers/lease-taker.js';
import { ManualClock } from '../helpers/manual-clock.js';

function lease(key: string, over: Partial<Lease> = {}): Lease {
  return {
    leaseKey: key,
    leaseOwner: undefined,
    leaseCounter: 1,
    checkpoint: 'TRIM_HORIZON',
    checkpointSubSequenceNumber: 0,
    ownerSwitchesSinceCheckpoint: 0,
    parentShardIds: [],
    childShardIds: [],
    pendingCheckpoint: undefined,
    checkpointOwner: undefined,
    hashKeyRange: undefined,
    tenure: undefined,
    ...over,
  };
}

const TIMING = {
  failoverMs: 8_000,
  takeIntervalMs: 1_000,
  stableTakeIntervalMs: 16_000,
  renewIntervalMs: 2_000,
};

/** A fleet of w1, w2 (two leases each) and `me` (two held leases), all renewing. */
function setup(me: string, over: Partial<typeof TIMING> = {}) {
  const clock = new ManualClock();
  let counter = 10;
  let rows: Lease[] = [];
  const owners: Record<string, string> = { a: 'w1', b: 'w1', c: 'w2', d: 'w2', e: me, f: me };
  const stalled = new Set<string>();
  const counters = new Map<string, number>();
  const refresh = () => {
    counter += 1;
    rows = Object.entries(owners).map(([k, o]) =>
      lease(k, {
        leaseOwner: o,
        leaseCounter: stalled.has(k) ? (counters.get(k) ?? 1) : counters.set(k, counter).get(k)!,
        checkpoint: '100',
        tenure: o === me ? 'mine.1' : undefined,
      }),
    );
  };
  refresh();
  let lists = 0;
  const taken: string[] = [];
  const table = {
    list: async () => {
      lists += 1;
      return rows;
    },
    startHandoff: async (l: Lease) => l,
  } as unknown as LeaseTable;
  const taker = new LeaseTaker(
    table,
    {
      heldKeys: () => new Set(Object.keys(owners).filter((k) => owners[k] === me)),
      onHeldRow: () => {},
      readable: () => true,
      take: async (l) => {
        taken.push(l.leaseKey);
        owners[l.leaseKey] = me;
        stalled.delete(l.leaseKey);
      },
      retryLater: (err) => {
        throw err;
      },
    },
    {
      me,
      instance: 'mine',
      ...TIMING,
      ...over,
      scanWatchers: 2,
      maxLeasesForWorker: undefined,
      maxLeasesToStealAtOnce: 1,
      failureCooldownMs: 8_000,
      random: () => 0.5,
    },
    clock,
    coordinatorMetrics(new Registry()),
    pino({ level: 'silent' }),
  );
  return { clock, taker, refresh, stalled, owners, taken, lists: () => lists };
}

describe('adaptive take scans', () => {
  it('a non-watcher backs off to stableTakeIntervalMs while stable, and scans at takeIntervalMs once a lease stands still', async () => {
    const s = setup('w9');
    await s.taker.scan();
    assert.equal(s.taker.nextScanInMs, TIMING.takeIntervalMs, 'first scan: the owners are new');
    await s.clock.advance(1_000);
    s.refresh();
    await s.taker.scanIfDue();
    assert.equal(s.taker.nextScanInMs, TIMING.stableTakeIntervalMs, 'stable: backs off');
    const lists = s.lists();
    await s.clock.advance(5_000);
    await s.taker.scanIfDue();
    assert.equal(s.lists(), lists, 'not due: no scan');
    await s.clock.advance(11_000);
    s.stalled.add('c'); // w2 died: its counters stop
    s.stalled.add('d');
    s.refresh();
    await s.taker.scanIfDue();
    assert.equal(s.lists(), lists + 1);
    assert.equal(s.taker.nextScanInMs, TIMING.takeIntervalMs, 'a lease stood still: scans at takeIntervalMs');
  });

  it('owners that change make a non-watcher scan at takeIntervalMs', async () => {
    const s = setup('w9');
    await s.taker.scan();
    await s.clock.advance(1_000);
    s.refresh();
    await s.taker.scan();
    assert.equal(s.taker.nextScanInMs, TIMING.stableTakeIntervalMs);
    s.owners.a = 'w3';
    s.refresh();
    await s.clock.advance(1_000);
    await s.taker.scan();
    assert.equal(s.taker.nextScanInMs, TIMING.takeIntervalMs);
  });

  it('not adaptive (stableTakeIntervalMs = takeIntervalMs): every tick scans, no rescue beyond the fair share', async () => {
    const s = setup('w9', { stableTakeIntervalMs: TIMING.takeIntervalMs });
    await s.taker.scan();
    const lists = s.lists();
    await s.taker.scanIfDue();
    await s.taker.scanIfDue();
    assert.equal(s.lists(), lists + 2);
  });

  it('a watcher (lowest live ids) scans at takeIntervalMs however stable the fleet', async () => {
    const s = setup('w0');
    await s.taker.scan();
    for (let i = 0; i < 3; i++) {
      await s.clock.advance(1_000);
      s.refresh();
      await s.taker.scan();
      assert.equal(s.taker.nextScanInMs, TIMING.takeIntervalMs);
    }
  });

  it('a watcher takes all of a dead worker’s leases once expired, beyond its fair share', async () => {
    const s = setup('w0');
    s.owners.g = 'w2';
    s.owners.h = 'w2';
    s.refresh();
    await s.taker.scan();
    s.stalled.add('c');
    s.stalled.add('d');
    s.stalled.add('g');
    s.stalled.add('h');
    for (let t = 0; t < 10_000; t += 1_000) {
      await s.clock.advance(1_000);
      s.refresh();
      await s.taker.scan();
    }
    assert.deepEqual(s.taken.sort(), ['c', 'd', 'g', 'h'], 'all four, though the fair share is 3');
  });

  it('defaults: stableTakeIntervalMs is takeIntervalMs (not adaptive), never below it', () => {
    assert.equal(leaseTiming({ failoverMs: 10_000 }).stableTakeIntervalMs, 1_250);
    assert.equal(leaseTiming({ failoverMs: 10_000, takeIntervalMs: 30_000 }).stableTakeIntervalMs, 30_000);
    assert.equal(
      leaseTiming({ failoverMs: 10_000, stableTakeIntervalMs: 5_000 }).stableTakeIntervalMs,
      5_000,
    );
  });
});

describe('planLeases rescue', () => {
  const base = (over: Partial<PlanInput>) =>
    planLeases({
      me: 'w1',
      instance: 'mine',
      active: [],
      held: new Set(),
      incoming: new Set(),
      expired: () => false,
      liveElsewhere: () => false,
      coolingDown: () => false,
      maxLeasesForWorker: undefined,
      maxLeasesToStealAtOnce: 1,
      random: () => 0.5,
      ...over,
    });
  const active = [
    lease('x', { leaseOwner: 'w1', tenure: 'mine.1' }),
    lease('y', { leaseOwner: 'w2' }),
    lease('z1', { leaseOwner: 'dead' }),
    lease('z2', { leaseOwner: 'dead' }),
    lease('z3', { leaseOwner: 'dead' }),
    lease('n1'), // new (no checkpoint): taken up to the fair share only
    lease('r1', { checkpoint: '42' }), // released: taken up to the fair share only
  ];
  const expired = (k: string) => k.startsWith('z');

  it('without rescue: up to the fair share; with rescue: every expired lease too', () => {
    const held = new Set(['x']);
    const plain = base({ active, held, expired });
    assert.equal(plain.target, 4);
    assert.equal(plain.take.length, 3);
    const rescue = base({ active, held, expired, rescue: true });
    const keys = rescue.take.map((t) => t.lease.leaseKey).sort();
    assert.ok(
      ['z1', 'z2', 'z3'].every((k) => keys.includes(k)),
      keys.join(),
    );
    assert.equal(keys.length, 4, 'the three expired ones, and one more up to the fair share');
    assert.equal(rescue.steal.length, 0);
    const capped = base({ active, held, expired, rescue: true, maxLeasesForWorker: 3 });
    assert.equal(capped.take.length, 2, 'maxLeasesForWorker still bounds it');
  });
});
