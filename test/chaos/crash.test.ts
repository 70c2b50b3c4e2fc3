/**
 * Crash test: 3 worker processes share an 8-shard stream while records with known ids are produced; a
 * random worker is SIGKILLed at a random moment and restarted, CHAOS_ROUNDS times (CI: 4), and one shard is
 * split and one child of it merged with its neighbour during the run (while producing, with a worker
 * dead). After quiescence the final Parquet object set holds every produced id exactly once, per-key order
 * holds along parent -> child, no child object was uploaded before its parents' last one, and the
 * duplicate deliveries (records read more than once) are reported. See test/helpers/crash-run.ts.
 */
import assert from 'node:assert/strict';
import { afterAll, beforeAll, describe, it } from 'vitest';
import { reportChaos } from '../helpers/chaos-report.js';
import { runCrashScenario } from '../helpers/crash-run.js';
import { startTestStack, type TestStack } from '../helpers/stack.js';

const ROUNDS = Number(process.env.CHAOS_ROUNDS ?? 4);
const SEED = Number(process.env.CHAOS_SEED ?? 1234);

describe('crash test: random SIGKILLs of 3 workers, a split and a merge', () => {
  let t: TestStack;
  beforeAll(async () => {
    t = await startTestStack();
  });
  afterAll(async () => {
    await t?.stop();
  });

  it(`loses nothing and duplicates nothing over ${ROUNDS} kills with resharding`, async () => {
    const r = await runCrashScenario({ t, name: 'chaos-crash', rounds: ROUNDS, seed: SEED, reshard: true });
    const takes = r.metric('ksw_lease_takes_total');
    const expired = r.metric('ksw_lease_takes_total', { reason: 'expired' });
    const retaken = r.metric('ksw_lease_takes_total', { reason: 'own' });
    const shardEnds = r.metric('ksw_shard_ends_total');
    const replaySkipped = r.metric('ksw_parquet_replay_skipped_events_total');
    // Duplicate deliveries (records handed to a pipeline more than once) lie between what the workers' own
    // counters show (their last scrape before each SIGKILL misses the last moments) and what GetRecords
    // served again (a record served to a worker that died before delivering it counts too).
    const redeliveredAtLeast = Math.max(0, r.fetchedByWorkers - r.produced);
    process.stdout.write(
      `${r.kills.join('\n')}\n${r.reshards.join(', ')}\n` +
        `produced ${r.produced}, distinct ids in Parquet ${r.lake.distinct}, rows ${r.lake.rows}, lost ${r.lake.lost}, ` +
        `duplicate rows ${r.lake.duplicateRows}; GetRecords served ${r.deliveries.served} records ` +
        `(${r.deliveries.servedDistinct} distinct, ${r.deliveries.resumePoints} resume points): ` +
        `${r.deliveries.readMoreThanOnce} read more than once, ${r.deliveries.extraReads} extra reads; ` +
        `workers' ksw_kinesis_records_fetched_total over ${r.incarnations} incarnations >= ${r.fetchedByWorkers}; ` +
        `replay-skipped by the Parquet sink ${replaySkipped}; ${r.deliveries.rewrittenObjects} of ` +
        `${r.deliveries.uploads} Parquet uploads rewrote an object; keys ${r.order.keys} ` +
        `(${r.order.keysAcrossShards} across parent -> child), ${r.order.parentChildPairs} parent/child pairs; ` +
        `lease takes ${takes} (${expired} expired), shard ends ${shardEnds}; exit codes after SIGTERM ${r.exits.join(', ')}\n`,
    );
    reportChaos([
      {
        scenario: `crash: 3 workers, 8 shards, ${ROUNDS} rounds (seed ${SEED})`,
        injected: `${r.kills.length} SIGKILL + restart; 1 split, 1 merge; ${r.produced} records`,
        observed:
          `leases taken as expired ${expired} (a restarted worker, a new process, waits for its old leases to expire too), taken back by the same process ${retaken}; ${r.order.keysAcrossShards} keys in order across parent -> child; ` +
          `${r.order.parentChildPairs} parent/child pairs written parents first`,
        lost: r.lake.lost,
        duplicates:
          `${r.lake.duplicateRows} rows; duplicate deliveries ${redeliveredAtLeast}-${r.deliveries.extraReads} ` +
          `(${replaySkipped} skipped by replay detection, ${r.deliveries.rewrittenObjects} objects rewritten)`,
      },
    ]);

    assert.deepEqual(r.crashes, [], 'no worker exits unless killed or stopped');
    assert.equal(r.lake.lost, 0, 'records lost');
    assert.equal(r.lake.outOfRange, 0);
    assert.equal(r.lake.duplicateRows, 0, 'duplicate rows in the final object set');
    assert.equal(r.deadLetters, 0, 'nothing dead-lettered');
    assert.equal(r.deliveries.servedDistinct, r.produced, 'GetRecords served every produced record');
    assert.ok(
      r.fetchedByWorkers <= r.deliveries.served - r.deliveries.resumePoints,
      `workers cannot count more fetched records (${r.fetchedByWorkers}) than Kinesis served (${r.deliveries.served})`,
    );
    assert.deepEqual(r.order.violations, [], 'per-key order along the shard lineage');
    assert.deepEqual(r.order.parentsFirstViolations, [], 'children written only after their parents');
    assert.ok(r.order.keysAcrossShards > 0, 'some keys moved from a parent to a child');
    assert.ok(
      r.order.parentChildPairs >= 4,
      `split (2 children) and merge (2 parents): ${r.order.parentChildPairs}`,
    );
    assert.deepEqual(r.exits, [0, 0, 0], 'graceful exit on SIGTERM');
  });
});
