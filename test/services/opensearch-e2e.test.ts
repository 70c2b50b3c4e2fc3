/**
 * Acceptance of the OpenSearch sink, end to end: Kinesis (kinesalite) -> worker -> a real OpenSearch node,
 * checkpoints in dynalite, DLQ on s3rver.
 *  - the document count equals the distinct records (producer duplicates included), and replaying the
 *    same shard range (a fresh lease table: TRIM_HORIZON again) leaves it unchanged;
 *  - a mapping conflict lands in the DLQ with the server's reason, and `ksw redrive` re-indexes it once
 *    the mapping is fixed (and a second redrive finds nothing to do);
 *  - under a 429 storm injected by a proxy in front of the node nothing is lost, and concurrency recovers.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { CreateBucketCommand, GetObjectCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, it } from 'vitest';
import { stringify } from 'yaml';
import { validateConfig } from '../../src/config/load.js';
import { Worker } from '../../src/runtime/worker.js';
import { FaultProxy, openSearchBulk, openSearchError } from '../helpers/fault-proxy.js';
import { countDocuments, type OpenSearchNode, startOpenSearch } from '../helpers/opensearch.js';
import { listKeys } from '../helpers/parquet.js';
import {
  createStream,
  putRecords,
  silentLogger,
  startTestStack,
  type TestStack,
  waitFor,
} from '../helpers/stack.js';

const ROOT = path.resolve(import.meta.dirname, '../..');
const CLI = path.join(ROOT, 'src/cli/main.ts');
const BASE_NANOS = 1_714_979_289_000_000_000n; // 2024-05-06T07:08:09Z

function span(i: number) {
  const start = BASE_NANOS + BigInt(i) * 1_000_003n;
  return {
    traceId: i.toString(16).padStart(32, '0'),
    spanId: (i * 7 + 1).toString(16).padStart(16, '0'),
    parentSpanId: '',
    name: `GET /item/${i % 10}`,
    kind: 'SPAN_KIND_SERVER',
    serviceName: `svc-${i % 3}`,
    startTimeUnixNano: start.toString(),
    endTimeUnixNano: (start + 2_000_000n).toString(),
    durationNano: '2000000',
    status: { code: i % 10 === 0 ? 2 : 1, message: '' },
    attributes: { 'http.route': `/item/${i % 10}` },
    resource: { 'service.name': `svc-${i % 3}` },
  };
}

function redWindow(i: number, extra: Record<string, unknown> = {}) {
  return {
    windowStart: new Date(Date.UTC(2024, 4, 6, 7, i)).toISOString(),
    windowEnd: new Date(Date.UTC(2024, 4, 6, 7, i + 1)).toISOString(),
    service: 'checkout',
    operation: 'POST /pay',
    spanKind: 'SPAN_KIND_SERVER',
    statusCode: 'OK',
    dimensions: {},
    overflow: false,
    requestCount: 10 + i,
    errorCount: 0,
    durationSumMs: 100,
    durationMinMs: 1,
    durationMaxMs: 20,
    durationBucketBoundsMs: [5, 50],
    durationBucketCounts: [3, 7, 0],
    sourceStream: 'spans',
    sourceShardId: 'shardId-000000000000',
    ...extra,
  };
}

async function metric(worker: Worker, name: string, labels: Record<string, string> = {}): Promise<number> {
  const m = await worker.metrics.getSingleMetric(name)?.get();
  return (m?.values ?? [])
    .filter((v) => Object.entries(labels).every(([k, want]) => v.labels[k] === want))
    .reduce((sum, v) => sum + v.value, 0);
}

describe('OpenSearch sink end to end from Kinesis', { timeout: 900_000 }, () => {
  let t: TestStack;
  let node: OpenSearchNode;

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
    await Promise.all([t?.stop(), node?.stop()]);
  });

  function config(stream: string, table: string, bucket: string, sink: Record<string, unknown>) {
    return {
      app: { name: 'os-e2e', workerId: `w-${table}` },
      aws: t.stack.awsConfig,
      consumers: [{ type: 'polling', stream, idleIntervalMs: 100, busyIntervalMs: 0 }],
      checkpoints: { table, intervalMs: 300, shardSyncIntervalMs: 1_000 },
      sinks: { search: { type: 'opensearch', ...sink } },
      dlq: { type: 's3', bucket, prefix: 'dlq/', maxBatchAgeMs: 200 },
      server: { port: 0 },
      shutdown: { deadlineMs: 20_000 },
    };
  }

  it('indexes one document per distinct record; a replay of the same shard range changes nothing', async () => {
    const stream = 'os-spans';
    const bucket = 'os-spans-dlq';
    await t.aws.s3.send(new CreateBucketCommand({ Bucket: bucket }));
    await createStream(t.aws.kinesis, stream, 4);
    const distinct = 3_000;
    const spans = Array.from({ length: distinct }, (_, i) => span(i));
    // A producer retry puts 300 records twice: distinct documents stay 3,000.
    const records = [...spans, ...spans.slice(0, 300)].map((s) => ({
      partitionKey: s.traceId,
      data: JSON.stringify(s),
    }));
    await putRecords(t.aws.kinesis, stream, records);
    const sink = {
      endpoint: node.endpoint,
      index: 'traces-%{yyyy.MM.dd}',
      timestampField: 'startTimeUnixNano',
      timestampUnit: 'ns',
      documentId: { template: '{traceId}-{spanId}' },
      template: { kind: 'spans', replicas: 0 },
      bulk: { flushIntervalMs: 200 },
    };
    const first = await Worker.start(validateConfig(config(stream, 'os-spans-leases', bucket, sink)), {
      logger: silentLogger,
    });
    try {
      await waitFor(
        async () =>
          (await metric(first, 'ksw_opensearch_documents_total', { result: 'indexed' })) +
            (await metric(first, 'ksw_opensearch_documents_total', { result: 'exists' })) >=
          records.length,
        120_000,
        'every record written',
      );
    } finally {
      assert.ok((await first.stop()).drained);
    }
    assert.equal(await countDocuments(node, 'traces-*'), distinct);
    assert.equal(await metric(first, 'ksw_opensearch_documents_total', { result: 'indexed' }), distinct);
    assert.equal(await metric(first, 'ksw_opensearch_dead_letters_total'), 0);

    // Replay: a new lease table starts every shard at TRIM_HORIZON again.
    const replay = await Worker.start(validateConfig(config(stream, 'os-spans-replay', bucket, sink)), {
      logger: silentLogger,
    });
    try {
      await waitFor(
        async () =>
          (await metric(replay, 'ksw_opensearch_documents_total', { result: 'exists' })) >= records.length,
        120_000,
        'every replayed record answered 409 (already there)',
      );
    } finally {
      assert.ok((await replay.stop()).drained);
    }
    assert.equal(await metric(replay, 'ksw_opensearch_documents_total', { result: 'indexed' }), 0);
    assert.equal(await countDocuments(node, 'traces-*'), distinct, 'count unchanged after the replay');
    assert.equal(
      await countDocuments(node, 'traces-2024.05.06'),
      distinct,
      'indexed by span time, not processing time',
    );
  });

  it('dead-letters a mapping conflict with the server reason; redrive re-indexes it after the mapping fix', async () => {
    const stream = 'os-red';
    const bucket = 'os-red-dlq';
    await t.aws.s3.send(new CreateBucketCommand({ Bucket: bucket }));
    await createStream(t.aws.kinesis, stream, 2);
    // A newer processor emits a field the shipped (strict) RED template does not know yet.
    const windows = [...Array.from({ length: 20 }, (_, i) => redWindow(i)), redWindow(30, { p99Ms: 17.5 })];
    await putRecords(
      t.aws.kinesis,
      stream,
      windows.map((w) => ({ partitionKey: w.windowStart, data: JSON.stringify(w) })),
    );
    const sink = {
      endpoint: node.endpoint,
      index: 'red-%{yyyy.MM.dd}',
      timestampField: 'windowStart',
      documentId: {
        template:
          '{sourceStream}/{sourceShardId}/{windowStart}/{service}/{operation}/{spanKind}/{statusCode}/{dimensions}',
        hash: true,
      },
      template: { kind: 'red_windows', replicas: 0 },
      bulk: { flushIntervalMs: 100 },
    };
    const cfg = config(stream, 'os-red-leases', bucket, sink);
    const worker = await Worker.start(validateConfig(cfg), { logger: silentLogger });
    try {
      await waitFor(
        async () => (await listKeys(t.aws.s3, bucket, 'dlq/')).length > 0,
        60_000,
        'a DLQ object',
      );
      await waitFor(async () => (await countDocuments(node, 'red-*')) === 20, 60_000, '20 windows indexed');
    } finally {
      assert.ok((await worker.stop()).drained);
    }
    const [key] = await listKeys(t.aws.s3, bucket, 'dlq/');
    const object = await t.aws.s3.send(new GetObjectCommand({ Bucket: bucket, Key: key! }));
    const lines = (await object.Body!.transformToString())
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    assert.equal(lines.length, 1);
    assert.equal(lines[0].component, 'sink:search');
    assert.match(
      lines[0].reason,
      /status 400: strict_dynamic_mapping_exception: mapping set to strict, dynamic introduction of \[p99Ms\] within \[_doc\] is not allowed/,
    );
    assert.deepEqual(JSON.parse(Buffer.from(lines[0].data, 'base64').toString()), windows[20]);

    const cfgFile = path.join(t.dir, 'red.yaml');
    writeFileSync(cfgFile, stringify(cfg));
    const runRedrive = () =>
      new Promise<{ code: number | null; out: string; err: string }>((resolve) => {
        const child = spawn(
          process.execPath,
          ['--import', 'tsx', CLI, 'redrive', '-c', cfgFile, '--sink', 'search'],
          {
            cwd: ROOT,
            stdio: ['ignore', 'pipe', 'pipe'],
          },
        );
        let out = '';
        let err = '';
        child.stdout!.on('data', (d) => {
          out += d;
        });
        child.stderr!.on('data', (d) => {
          err += d;
        });
        child.once('exit', (code) => resolve({ code, out, err }));
      });

    // Before the fix: the letter fails again and stays, with the new reason.
    const before = await runRedrive();
    assert.equal(before.code, 3, before.err);
    assert.equal(JSON.parse(before.out.trim().split('\n').at(-1)!).failedAgain, 1);
    assert.equal((await listKeys(t.aws.s3, bucket, 'dlq/')).length, 1);

    // The fix: add the field to the live index (and the template would ship it in the next release).
    const fix = await node.request('PUT', '/red-*/_mapping', { properties: { p99Ms: { type: 'double' } } });
    assert.equal(fix.status, 200, JSON.stringify(fix.body));
    const after = await runRedrive();
    assert.equal(after.code, 0, after.err);
    const summary = JSON.parse(after.out.trim().split('\n').at(-1)!);
    assert.equal(summary.written, 1);
    assert.equal(summary.deletedObjects, 1);
    assert.equal(await countDocuments(node, 'red-*'), 21);
    assert.equal(await countDocuments(node, 'red-*', { range: { p99Ms: { gte: 17 } } }), 1);
    assert.deepEqual(await listKeys(t.aws.s3, bucket, 'dlq/'), [], 'the redriven letter is removed');

    // Safe to re-run: nothing left to do, nothing duplicated.
    const again = await runRedrive();
    assert.equal(again.code, 0, again.err);
    assert.equal(JSON.parse(again.out.trim().split('\n').at(-1)!).letters, 0);
    assert.equal(await countDocuments(node, 'red-*'), 21);
  });

  it('loses nothing under a 429 storm and its concurrency recovers', async () => {
    const stream = 'os-storm';
    const bucket = 'os-storm-dlq';
    await t.aws.s3.send(new CreateBucketCommand({ Bucket: bucket }));
    await createStream(t.aws.kinesis, stream, 4);
    const proxy = await FaultProxy.start(node.endpoint);
    const wave = 3_000;
    const warmUp = 500;
    const spans = Array.from({ length: 3 * wave + warmUp }, (_, i) => span(100_000 + i));
    const put = (from: number) =>
      putRecords(
        t.aws.kinesis,
        stream,
        spans.slice(from, from + wave).map((s) => ({ partitionKey: s.traceId, data: JSON.stringify(s) })),
      );
    const sink = {
      endpoint: proxy.endpoint,
      index: 'storm-%{yyyy.MM.dd}',
      timestampField: 'startTimeUnixNano',
      timestampUnit: 'ns',
      documentId: { template: '{traceId}-{spanId}' },
      template: { kind: 'spans', replicas: 0 },
      bulk: { maxDocuments: 250, concurrency: 4, flushIntervalMs: 200 },
      retry: { initialBackoffMs: 100, maxBackoffMs: 4_000 },
    };
    const worker = await Worker.start(validateConfig(config(stream, 'os-storm-leases', bucket, sink)), {
      logger: silentLogger,
    });
    const written = async () =>
      (await metric(worker, 'ksw_opensearch_documents_total', { result: 'indexed' })) +
      (await metric(worker, 'ksw_opensearch_documents_total', { result: 'exists' }));
    let stormEndedAt = 0;
    const report: Record<string, number> = {};
    try {
      // Warm-up (JIT, the daily index created from the template, shard readers started), not measured.
      await putRecords(
        t.aws.kinesis,
        stream,
        spans.slice(3 * wave).map((s) => ({ partitionKey: s.traceId, data: JSON.stringify(s) })),
      );
      await waitFor(async () => (await written()) >= warmUp, 120_000, 'warm-up');
      const offset = warmUp;
      const writtenSinceWarmUp = async () => (await written()) - offset;
      // Wave 1, no faults: the baseline rate.
      let started = Date.now();
      await put(0);
      await waitFor(async () => (await writtenSinceWarmUp()) >= wave, 120_000, 'wave 1');
      report.baselineDocsPerSec = Math.round(wave / ((Date.now() - started) / 1000));

      // Wave 2 under a storm: every bulk request answers 429 for 8 s.
      proxy.setRules([
        {
          name: 'storm',
          rate: 1,
          matches: openSearchBulk(),
          fault: openSearchError(
            429,
            'es_rejected_execution_exception',
            'rejected execution of coordinating operation',
          ),
        },
      ]);
      await put(wave);
      await new Promise((r) => setTimeout(r, 8_000));
      report.writtenDuringStorm = (await writtenSinceWarmUp()) - wave;
      report.limitDuringStorm = await metric(worker, 'ksw_opensearch_concurrency_limit');
      proxy.clear();
      stormEndedAt = Date.now();
      await waitFor(async () => (await writtenSinceWarmUp()) >= 2 * wave, 120_000, 'wave 2 after the storm');
      report.recoverySeconds = (Date.now() - stormEndedAt) / 1000;

      // Wave 3, no faults: the rate after recovery.
      started = Date.now();
      await put(2 * wave);
      await waitFor(async () => (await writtenSinceWarmUp()) >= 3 * wave, 120_000, 'wave 3');
      report.afterDocsPerSec = Math.round(wave / ((Date.now() - started) / 1000));
      report.limitAfter = await metric(worker, 'ksw_opensearch_concurrency_limit');
    } finally {
      assert.ok((await worker.stop()).drained);
      await proxy.stop();
    }
    report.injected429 = proxy.count('storm');
    report.retried429 = await metric(worker, 'ksw_opensearch_retries_total', { status_class: '429' });
    // The figures the README quotes come from this line.
    process.stdout.write(`# 429 storm: ${JSON.stringify(report)}\n`);
    assert.ok(report.injected429 > 0);
    assert.equal(report.writtenDuringStorm, 0, 'nothing gets through a full storm');
    assert.equal(report.limitDuringStorm, 1, 'concurrency backed off to 1');
    assert.equal(await countDocuments(node, 'storm-*'), 3 * wave + warmUp, 'nothing lost');
    assert.equal(await metric(worker, 'ksw_opensearch_dead_letters_total'), 0);
    assert.deepEqual(await listKeys(t.aws.s3, bucket, 'dlq/'), []);
    // Recovery is asserted on the sink's own state, not on a rate: docs/s on a shared 2-core machine say more
    // about the neighbours than about the sink (the rates are reported above, and in the bench). The
    // adaptive limit must climb back from 1 once bulk requests succeed again.
    assert.ok(
      report.limitAfter! > report.limitDuringStorm!,
      `concurrency limit rose again after the storm: ${report.limitDuringStorm} -> ${report.limitAfter} (rates ${report.baselineDocsPerSec} -> ${report.afterDocsPerSec} docs/s)`,
    );
  });
});
