/**
 * The lease taking rules on their own (lease-plan.ts): expiry by the scanner's clock from the scan's
 * answer, process identity under one worker id, fair share and balancing, and how a held shard's row is
 * judged.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'vitest';
import { ExpiryTracker, judgeRow, type PlanInput, planLeases } from '../../src/consumers/lease-plan.js';
import type { Lease } from '../../src/consumers/lease-table.js';

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

function plan(active: Lease[], over: Partial<PlanInput> = {}) {
  return planLeases({
    me: 'w1',
    instance: 'mine',
    active,
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
}

describe('ExpiryTracker', () => {
  it('counts failoverMs from the first answer that showed the counter, and resets when it moves', () => {
    const t = new ExpiryTracker(1_000);
    t.observe([lease('a', { leaseCounter: 5 })], 100);
    assert.equal(t.expired('a', 1_099), false);
    assert.equal(t.expired('a', 1_100), true);
    assert.equal(t.live('a', 1_100), false, 'never seen moving: not live');
    t.observe([lease('a', { leaseCounter: 6 })], 1_200);
    assert.equal(t.expired('a', 2_199), false);
    assert.equal(t.live('a', 1_300), true, 'it moved while watched');
    t.observe([], 1_300);
    assert.equal(t.expired('a', 9_999), false, 'a vanished lease is forgotten');
  });
});

describe('planLeases', () => {
  it('takes unowned leases up to the fair share, expired ones of other owners, never live ones', () => {
    const p = plan(
      [
        lease('a'),
        lease('b'),
        lease('c', { leaseOwner: 'w2', tenure: 'x.1' }),
        lease('d', { leaseOwner: 'w2' }),
      ],
      { expired: (k) => k === 'd' },
    );
    // Live workers: w1 (us) and w2 (owner of unexpired c): target ceil(4 / 2) = 2.
    assert.equal(p.workers, 2);
    assert.equal(p.target, 2);
    assert.equal(p.take.length, 2);
    assert.ok(p.take.every((t) => t.lease.leaseKey !== 'c'));
    const reasons = Object.fromEntries(p.take.map((t) => [t.lease.leaseKey, t.reason]));
    for (const [key, reason] of Object.entries(reasons))
      assert.equal(reason, key === 'd' ? 'expired' : 'unowned');
  });

  it('a lease under our id but another process instance is taken only once expired, and reported while live', () => {
    const row = lease('a', { leaseOwner: 'w1', tenure: 'other.3' });
    const live = plan([row], { liveElsewhere: () => true });
    assert.deepEqual(
      live.take,
      [],
      "two processes with one id: the second does not read the first one's shard",
    );
    assert.deepEqual(
      live.conflicts.map((l) => l.leaseKey),
      ['a'],
    );
    assert.equal(live.workers, 2, 'the other process counts as a worker of its own');
    // A restart of this worker (the previous process is gone): the lease expires, then it is taken.
    const expired = plan([row], { expired: () => true });
    assert.deepEqual(
      expired.take.map((t) => t.reason),
      ['expired'],
    );
    assert.deepEqual(expired.conflicts, []);
    // A row without a token (written by the KCL or an older ksw) under our id: the same.
    assert.deepEqual(plan([lease('b', { leaseOwner: 'w1' })]).take, []);
  });

  it('a lease a tenure of this very process left behind is taken at once; cooling down leases are left alone', () => {
    const row = lease('a', { leaseOwner: 'w1', tenure: 'mine.7' });
    assert.deepEqual(
      plan([row]).take.map((t) => t.reason),
      ['own'],
    );
    assert.deepEqual(plan([row], { coolingDown: () => true }).take, []);
    assert.deepEqual(plan([lease('b')], { coolingDown: () => true }).take, []);
  });

  it('a handoff we asked for is taken once finished, or forced once its counter stood still for failoverMs', () => {
    const finished = lease('a', { leaseOwner: 'w1', tenure: 'prev.1' });
    assert.deepEqual(
      plan([finished], { incoming: new Set(['a']) }).take.map((t) => t.reason),
      ['handoff'],
    );
    const draining = lease('a', { leaseOwner: 'w1', checkpointOwner: 'w2', tenure: 'prev.1' });
    assert.deepEqual(plan([draining], { incoming: new Set(['a']) }).take, []);
    assert.deepEqual(
      plan([draining], { incoming: new Set(['a']), expired: () => true }).take.map((t) => t.reason),
      ['forced'],
    );
  });

  it('balances by asking the most loaded worker, never a process with our own id', () => {
    const w2 = ['a', 'b', 'c', 'd'].map((k) => lease(k, { leaseOwner: 'w2', tenure: 'x.1' }));
    const p = plan(w2);
    assert.equal(p.target, 2);
    assert.equal(p.steal.length, 1);
    assert.equal(p.steal[0]!.from, 'w2');
    const sameId = ['a', 'b', 'c', 'd'].map((k) => lease(k, { leaseOwner: 'w1', tenure: 'other.1' }));
    assert.deepEqual(plan(sameId).steal, []);
  });

  it('held leases count towards the share; maxLeasesForWorker caps it', () => {
    const held = lease('a', { leaseOwner: 'w1', tenure: 'mine.1' });
    const p = plan([held, lease('b'), lease('c')], { held: new Set(['a']), maxLeasesForWorker: 2 });
    assert.equal(p.target, 2);
    assert.equal(p.take.length, 1);
  });
});

describe('judgeRow', () => {
  it('ours only with our token and no handoff; a handoff asked of us keeps our token', () => {
    assert.equal(judgeRow(lease('a', { leaseOwner: 'w1', tenure: 't.1' }), 'w1', 't.1').kind, 'ours');
    assert.equal(
      judgeRow(lease('a', { leaseOwner: 'w2', checkpointOwner: 'w1', tenure: 't.1' }), 'w1', 't.1').kind,
      'handoff-requested',
    );
    // Same id, another process's token: lost, and it says so.
    assert.deepEqual(judgeRow(lease('a', { leaseOwner: 'w1', tenure: 'o.1' }), 'w1', 't.1'), {
      kind: 'lost',
      reason: 'taken',
      sameId: true,
    });
    assert.deepEqual(judgeRow(lease('a', { leaseOwner: 'w2', tenure: 'o.1' }), 'w1', 't.1'), {
      kind: 'lost',
      reason: 'taken',
      sameId: false,
    });
    assert.deepEqual(judgeRow(undefined, 'w1', 't.1'), { kind: 'lost', reason: 'deleted', sameId: false });
  });
});
