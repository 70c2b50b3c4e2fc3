/**
 * Correct while alive: worker processes that stay alive while their leases go wrong, each scenario with
 * the crash scenarios' exact-once verification (Parquet rows and OpenSearch documents by record id) plus
 * every lease write DynamoDB accepted (the checkpoint never moves back) and every write each worker sent
 * to S3 and OpenSearch, checked against its tenures (none after its deadline). See test/helpers/alive-run.ts.
 *
 *  (a) one worker's lease writes hang (longer than failoverMs) while it keeps reading, then come back;
 *  (a') one worker is frozen (SIGSTOP, a GC pause or a stalled VM) for twice failoverMs, then thawed;
 *  (b) two processes started with one workerId;
 *  (c) a sink whose write throws for one batch;
 *  (d) balancing handoffs while tail sampling and RED hold spans (RED counts checked exactly);
 *  (e) a lease lost in the middle of a multipart upload.
 * OpenSearch is included when a node is available (scripts/chaos/run.sh fetches it; CHAOS_OPENSEARCH=0
 * leaves it out and the rows say so).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { afterAll, beforeAll, describe, it } from 'vitest';
import { AliveFleet, FAILOVER_MS, MARGIN_MS, type Verification } from '../helpers/alive-run.js';
import { type ChaosRow, reportChaos } from '../helpers/chaos-report.js';
import { amzTarget } from '../helpers/fault-proxy.js';
import { type OpenSearchNode, startOpenSearch } from '../helpers/opensearch.js';
import { download, duck } from '../helpers/parquet.js';
import { startTestStack, type TestStack, waitFor } from '../helpers/stack.js';

const withOpenSearch = Boolean(process.env.KSW_OPENSEARCH_DIR);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const hang = (name: string) => ({
  name,
  rate: 1,
  matches: amzTarget('UpdateItem'),
  fault: { kind: 'delay' as const, ms: 20_000 },
});

function check(v: Verification, f: AliveFleet): void {
  assert.deepEqual(f.unexpectedExits, [], 'no worker exits unless stopped');
  assert.equal(v.lake.lost, 0, 'records lost in Parquet');
  assert.equal(v.lake.duplicateRows, 0, 'duplicate Parquet rows');
  if (v.search) {
    assert.equal(v.search.lost, 0, 'records lost in OpenSearch');
    assert.equal(v.search.duplicates, 0, 'duplicate OpenSearch documents');
  }
  assert.deepEqual(v.leaseViolations, [], 'lease writes: one chain per lease, checkpoint never back');
  assert.deepEqual(v.lateWrites, [], 'writes by a worker after its deadline');
  assert.equal(v.deadLetters, 0, 'nothing dead-lettered');
}

function row(scenario: string, injected: string, observed: string, v: Verification): ChaosRow {
  const search = v.search
    ? `; OpenSearch ${v.search.documents} docs, ${v.search.lost} lost, ${v.search.duplicates} duplicate ids`
    : '; OpenSearch not run';
  return {
    scenario: `alive: ${scenario}`,
    injected,
    observed: `${observed}; ${v.leaseWrites} lease writes recorded over ${v.tenures} tenures, ${v.leaseViolations.length} protocol violations, ${v.lateWrites.length} writes after a deadline${search}`,
    lost: v.lake.lost + (v.search?.lost ?? 0),
    duplicates: `${v.lake.duplicateRows} rows${v.search ? `, ${v.search.duplicates} documents` : ''}`,
  };
}

describe('correct while alive: workers that keep running while their leases go wrong', () => {
  let t: TestStack;
  let node: OpenSearchNode | undefined;
  const rows: ChaosRow[] = [];
  beforeAll(async () => {
    t = await startTestStack();
    if (withOpenSearch) node = await startOpenSearch();
  });
  afterAll(async () => {
    if (rows.length > 0) reportChaos(rows);
    await node?.stop();
    await t?.stop();
  });

  const opensearch = () => (node ? { opensearch: node } : {});

  it('(a) lease writes hang longer than failoverMs while the worker keeps reading: it fences itself first', async () => {
    const f = await AliveFleet.create({ t, name: 'alive-cut', shards: 6, slots: 3, ...opensearch() });
    try {
      for (const n of [0, 1, 2]) await f.start(n);
      f.startProducing(30, 150);
      await waitFor(
        () => JSON.stringify(f.held()) === '{"0":2,"1":2,"2":2}',
        60_000,
        `balanced (${JSON.stringify(f.held())})`,
      );
      const cut = Date.now();
      f.slot(0).ddb.setRules([hang('hang')]);
      await waitFor(
        () => (f.held()[1] ?? 0) + (f.held()[2] ?? 0) === 6,
        30_000,
        `the others take slot 0's shards (${JSON.stringify(f.held())})`,
      );
      const takenOver = Date.now() - cut;
      await sleep(FAILOVER_MS); // slot 0 keeps running (and reading nothing) a while longer
      f.slot(0).ddb.clear();
      await waitFor(
        () => (f.held()[0] ?? 0) >= 1,
        60_000,
        `slot 0 gets shards back (${JSON.stringify(f.held())})`,
      );
      await f.stopProducing();
      await f.quiesce();
      const fenced = f.metric(0, 'ksw_lease_losses_total', { reason: 'fenced' });
      const v = await f.verify();
      process.stdout.write(`(a) ${JSON.stringify(v)}\n`);
      rows.push(
        row(
          '(a) lease writes of 1 of 3 workers hang',
          `UpdateItem of slot 0 held 20 s for ${((Date.now() - cut) / 1000).toFixed(0)} s; ${v.produced} records`,
          `slot 0 fenced ${fenced} shards; its 2 shards taken by the others ${takenOver} ms after the cut (failoverMs ${FAILOVER_MS}, margin ${MARGIN_MS})`,
          v,
        ),
      );
      check(v, f);
      assert.ok(fenced >= 2, `slot 0 fenced its shards (${fenced})`);
    } finally {
      await f.close();
    }
  });

  it("(a') a worker frozen for twice failoverMs (SIGSTOP) writes nothing once thawed before it knows", async () => {
    const f = await AliveFleet.create({ t, name: 'alive-pause', shards: 6, slots: 3, ...opensearch() });
    try {
      for (const n of [0, 1, 2]) await f.start(n);
      f.startProducing(30, 150);
      await waitFor(
        () => JSON.stringify(f.held()) === '{"0":2,"1":2,"2":2}',
        60_000,
        `balanced (${JSON.stringify(f.held())})`,
      );
      await f.pause(1, 2 * FAILOVER_MS);
      await waitFor(
        () => (f.held()[0] ?? 0) + (f.held()[2] ?? 0) === 6 || (f.held()[1] ?? 0) >= 1,
        30_000,
        'after the pause',
      );
      await sleep(2 * FAILOVER_MS);
      await f.stopProducing();
      await f.quiesce();
      await f.rescrape();
      const fenced = f.metric(1, 'ksw_lease_losses_total', { reason: 'fenced' });
      const lost = f.metric(1, 'ksw_lease_losses_total', { reason: 'taken' });
      const v = await f.verify();
      process.stdout.write(`(a') ${JSON.stringify(v)}\n`);
      rows.push(
        row(
          "(a') 1 of 3 workers frozen (SIGSTOP)",
          `slot 1 stopped for ${2 * FAILOVER_MS} ms; ${v.produced} records`,
          `after the thaw slot 1 counted ${fenced} shards fenced and ${lost} lost`,
          v,
        ),
      );
      check(v, f);
      assert.ok(fenced + lost >= 2, `slot 1 let go of its shards (${fenced} fenced, ${lost} lost)`);
    } finally {
      await f.close();
    }
  });

  it('(b) two processes with one workerId: the second reads nothing the first holds, says so, and takes over once it is gone', async () => {
    const f = await AliveFleet.create({ t, name: 'alive-dup', shards: 4, slots: 2, ...opensearch() });
    const workerId = 'alive-dup-shared-id';
    try {
      await f.start(0, { workerId });
      f.startProducing(20, 150);
      await waitFor(() => f.held()[0] === 4, 60_000, 'slot 0 holds the 4 shards');
      await f.start(1, { workerId });
      await sleep(4 * FAILOVER_MS);
      await f.rescrape();
      const heldBySecond = f.held()[1];
      const conflicts = f.metric(1, 'ksw_worker_id_conflicts_total');
      const lostByFirst = f.metric(0, 'ksw_lease_losses_total');
      const readBySecond = f.metric(1, 'ksw_kinesis_records_fetched_total');
      const errors = f.logLines(1, /another live process uses this workerId/).length;
      await f.stop(0);
      await waitFor(
        () => f.held()[1] === 4,
        30_000,
        'the second process takes the shards once the first left',
      );
      await f.stopProducing();
      await f.quiesce();
      const v = await f.verify();
      process.stdout.write(
        `(b) ${JSON.stringify({ heldBySecond, conflicts, lostByFirst, readBySecond, errors, v })}\n`,
      );
      rows.push(
        row(
          '(b) two processes, one workerId',
          `slot 1 started with slot 0's id and ran beside it for ${(4 * FAILOVER_MS) / 1000} s; ${v.produced} records`,
          `meanwhile slot 1 held ${heldBySecond} leases and read ${readBySecond} records, counted ${conflicts} conflicts and logged ${errors} errors naming the id; slot 0 lost ${lostByFirst} leases`,
          v,
        ),
      );
      check(v, f);
      assert.equal(heldBySecond, 0);
      assert.equal(readBySecond, 0);
      assert.ok(conflicts >= 1, 'the conflict is counted');
      assert.ok(errors >= 1, 'and logged as an error naming the id');
      assert.equal(lostByFirst, 0, 'the first process kept its leases');
    } finally {
      await f.close();
    }
  });

  it('(c) a sink that throws for one batch: the shard is released and read again, nothing skipped', async () => {
    const f = await AliveFleet.create({ t, name: 'alive-throw', shards: 4, slots: 2, ...opensearch() });
    try {
      const env = { KSW_TEST_THROW_ONCE: 'lake:300' };
      await f.start(0, { env });
      await f.start(1, { env });
      f.startProducing(25, 150);
      await waitFor(
        () => f.total('ksw_shard_failures_total', { stage: 'deliver' }) >= 1 || f.produced > 2_000,
        60_000,
        'the failure',
      );
      await sleep(2 * FAILOVER_MS);
      await f.stopProducing();
      await f.quiesce();
      await f.rescrape();
      const failures = f.total('ksw_shard_failures_total', { stage: 'deliver' });
      const v = await f.verify();
      process.stdout.write(`(c) ${JSON.stringify({ failures, v })}\n`);
      rows.push(
        row(
          '(c) a sink write throws once',
          `the lake sink rejects the batch holding id 300 once; ${v.produced} records`,
          `ksw_shard_failures_total{stage="deliver"} ${failures}; the shard was released, taken again and read from its checkpoint`,
          v,
        ),
      );
      check(v, f);
      // Each process throws once: when the first releases the shard, the other may take it and throw too.
      assert.ok(failures >= 1 && failures <= 2, `${failures}`);
    } finally {
      await f.close();
    }
  });

  it('(d) balancing handoffs while tail sampling and RED hold spans: neither lost nor counted twice', async () => {
    const f = await AliveFleet.create({
      t,
      name: 'alive-traces',
      shards: 4,
      slots: 3,
      ...opensearch(),
      // A handoff drains within handoffTimeoutMs (default failoverMs / 2 = 3 s here): room for the sinks of a
      // loaded 2-core machine (OpenSearch JVM included) to write what tail sampling and RED release.
      failoverMs: 6_000,
      // Three spans per trace, the traceId as partition key; the first span is the root.
      record: (id) => {
        const trace = Math.floor(id / 3);
        const traceId = trace.toString(16).padStart(32, '0');
        return {
          partitionKey: traceId,
          data: {
            id,
            traceId,
            spanId: id.toString(16).padStart(16, '0'),
            parentSpanId: id % 3 === 0 ? '' : (trace * 3).toString(16).padStart(16, '0'),
            serviceName: `svc-${trace % 5}`,
            name: `op-${id % 3}`,
            kind: 'SERVER',
            status: { code: id % 17 === 0 ? 2 : 0 },
            startTimeUnixNano: String(1_700_000_000_000_000_000n + BigInt(id) * 1_000_000n),
            durationNano: String(1_000_000 + (id % 7) * 500_000),
          },
        };
      },
      worker: {
        checkpoints: {
          table: 'alive-traces-leases',
          intervalMs: 300,
          shardSyncIntervalMs: 1_000,
          failoverMs: 6_000,
        },
        processors: [
          { type: 'red_metrics', windowMs: 5_000, sinks: ['red'], seriesIdleMs: 60_000 },
          {
            type: 'tail_sampling',
            decisionWaitMs: 8_000,
            quietPeriodMs: 2_000,
            policies: [
              { name: 'slow', type: 'latency', thresholdMs: 60_000 },
              { name: 'all', type: 'probabilistic', probability: 1 },
            ],
          },
        ],
        routing: { default: { sinks: node ? ['lake', 'search'] : ['lake'] } },
        sinks: {
          red: {
            type: 's3_parquet',
            bucket: 'alive-traces-lake',
            prefix: 'red/',
            schema: 'red_metrics',
            roll: { maxFileAgeMs: 700 },
          },
        },
      },
    });
    try {
      await f.start(0);
      f.startProducing(30, 150);
      await waitFor(() => f.held()[0] === 4, 60_000, 'slot 0 holds the 4 shards');
      await sleep(3_000);
      await f.start(1);
      await waitFor(
        () => f.held()[1] === 2,
        60_000,
        `slot 1 gets its share by handoffs (${JSON.stringify(f.held())})`,
      );
      await f.start(2);
      await waitFor(
        () => (f.held()[2] ?? 0) >= 1,
        60_000,
        `slot 2 gets a share (${JSON.stringify(f.held())})`,
      );
      await sleep(3_000);
      await f.stop(2); // graceful: pending traces decided, windows written, leases released
      await waitFor(() => (f.held()[0] ?? 0) + (f.held()[1] ?? 0) === 4, 30_000, 'slot 2 left');
      await f.start(2);
      await waitFor(() => (f.held()[2] ?? 0) >= 1, 60_000, `slot 2 back (${JSON.stringify(f.held())})`);
      await sleep(2_000);
      await f.stopProducing();
      await f.quiesce(180_000);
      await f.rescrape();
      const drained = f.total('ksw_lease_handoffs_given_total', { outcome: 'drained' });
      const partial = f.total('ksw_lease_handoffs_given_total', { outcome: 'partial' });
      const overruled = f.total('ksw_lease_handoffs_given_total', { outcome: 'overruled' });
      const handoffDecisions = f.total('ksw_tail_sampling_decision_triggers_total', { trigger: 'handoff' });
      const v = await f.verify();
      const out = path.join(t.dir, 'alive-traces', 'red');
      await download(t.aws.s3, 'alive-traces-lake', 'red/', out);
      const [red] = await duck(
        `SELECT sum(requestCount)::BIGINT AS spans, count(*)::INT AS windows FROM read_parquet('${out}/red/**/*.parquet')`,
      );
      const counted = Number(red!.spans);
      process.stdout.write(
        `(d) ${JSON.stringify({ drained, partial, overruled, handoffDecisions, counted, windows: red!.windows, v })}\n`,
      );
      rows.push(
        row(
          '(d) handoffs with tail sampling + RED',
          `3 workers join and leave while spans flow (decisionWaitMs 8 s, RED windowMs 5 s); ${v.produced} spans`,
          `handoffs: ${drained} drained, ${partial} partial, ${overruled} overruled; ${handoffDecisions} traces decided at a handoff; RED windows count ${counted} spans in ${red!.windows} documents`,
          v,
        ),
      );
      check(v, f);
      assert.ok(drained >= 3, `handoffs happened (${drained})`);
      assert.equal(partial + overruled, 0, 'every handoff drained before its checkpoint');
      assert.equal(counted, v.produced, 'RED counted every span exactly once');
    } finally {
      await f.close();
    }
  });

  it('(e) a lease lost in the middle of a multipart upload: the upload is abandoned, the new owner writes the file', async () => {
    const blob = () => randomBytes(72 * 1024).toString('base64'); // 96 KB of base64
    const f = await AliveFleet.create({
      t,
      name: 'alive-multipart',
      shards: 2,
      slots: 2,
      ...opensearch(),
      record: (id) => ({ partitionKey: `k-${id}`, data: { id, blob: blob() } }),
      lake: {
        // Rolled by size (a little over the multipart threshold), whatever the pace of the sinks.
        roll: { maxFileRows: 100_000, maxFileBytes: 6 * 1024 * 1024, maxFileAgeMs: 10_000 },
        upload: { multipartThresholdBytes: 5 * 1024 * 1024, partSizeBytes: 5 * 1024 * 1024 },
        compression: 'snappy',
        columns: [
          { name: 'id', type: 'int64' },
          { name: 'blob', type: 'string' },
        ],
      },
    });
    try {
      await f.start(0);
      await f.start(1);
      await waitFor(
        () => JSON.stringify(f.held()) === '{"0":1,"1":1}',
        60_000,
        `1/1 (${JSON.stringify(f.held())})`,
      );
      // Watch slot 0's uploads: multipart uploads started, and those completed.
      const created: number[] = [];
      const completed: number[] = [];
      let cutAt = 0;
      f.slot(0).s3.onArrival((a) => {
        if (a.method === 'POST' && a.url.includes('?uploads')) created.push(a.startedAt);
        if (a.method === 'POST' && a.url.includes('uploadId=')) completed.push(a.startedAt);
      });
      // Slot 0's parts crawl (3 s each), so its uploads take a while.
      f.slot(0).s3.setRules([
        {
          name: 'slow part',
          rate: 1,
          matches: (req) => req.method === 'PUT' && /partNumber=/.test(req.url),
          fault: { kind: 'delay', ms: 3_000 },
        },
      ]);
      f.startProducing(24, 500);
      await waitFor(() => created.length > 0, 60_000, 'slot 0 starts a multipart upload');
      // Its lease writes hang from now on: the lease is lost while the upload is on its way.
      cutAt = Date.now();
      f.slot(0).ddb.setRules([hang('hang')]);
      await waitFor(
        () => f.held()[1] === 2,
        30_000,
        `slot 1 takes both shards (${JSON.stringify(f.held())})`,
      );
      await sleep(2_000);
      f.slot(0).s3.clear();
      f.slot(0).ddb.clear();
      await f.stopProducing();
      await f.quiesce(180_000);
      const abandoned = created.length - completed.length;
      const afterCut = completed.filter((at) => at > cutAt).length;
      const v = await f.verify();
      process.stdout.write(
        `(e) ${JSON.stringify({ created: created.length, completed: completed.length, abandoned, v })}\n`,
      );
      rows.push(
        row(
          '(e) lease lost mid multipart upload',
          `slot 0's UploadPart slowed by 3 s and its lease writes held while it uploaded; ${v.produced} records of 96 KB`,
          `slot 0 started ${created.length} multipart uploads and completed ${completed.length} (${afterCut} after the cut, within its deadline); ${abandoned} abandoned`,
          v,
        ),
      );
      check(v, f);
      assert.ok(abandoned >= 1, 'an upload was on its way when the lease was lost, and was not completed');
    } finally {
      await f.close();
    }
  });
});
