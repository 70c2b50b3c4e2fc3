/**
 * The worker as Prometheus sees it: a worker reads synthetic spans from the emulators; its exposition
 * passes `promtool check metrics`; a real Prometheus server (127.0.0.1, stopped by PID) scrapes it,
 * loads the alert rules without errors, answers every dashboard query, and counts exactly the records
 * that were produced. Every metric named by the dashboard or the alert rules must exist in the exposition.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { CreateBucketCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, it } from 'vitest';
import { parse } from 'yaml';
import { validateConfig } from '../../src/config/load.js';
import { KinesisProducer } from '../../src/producer/kinesis-producer.js';
import { generateSpans, spanRecord } from '../../src/producer/synthetic-spans.js';
import { Worker } from '../../src/runtime/worker.js';
import { type PrometheusServer, promtoolProblems, startPrometheus } from '../helpers/prometheus.js';
import { createStream, silentLogger, startTestStack, type TestStack, waitFor } from '../helpers/stack.js';

const ROOT = path.resolve(import.meta.dirname, '../..');
const BIN = process.env.KSW_OPS_BIN ?? path.join(ROOT, '.local/ops/bin');
const SPANS = 3_000;

function dashboardQueries(): string[] {
  const dashboard = JSON.parse(readFileSync(path.join(ROOT, 'deploy/grafana/dashboards/ksw.json'), 'utf8'));
  return dashboard.panels.flatMap((p: { targets: Array<{ expr: string }> }) => p.targets.map((t) => t.expr));
}

function alertExpressions(): string[] {
  const rules = parse(readFileSync(path.join(ROOT, 'deploy/prometheus/alerts.yaml'), 'utf8'));
  return rules.groups.flatMap((g: { rules: Array<{ expr: string }> }) => g.rules.map((r) => String(r.expr)));
}

/** Dashboard variables replaced the way Grafana would for "All" and a short range. */
function concrete(expr: string): string {
  return expr.replaceAll('$app', '.*').replaceAll('$__rate_interval', '30s');
}

describe('worker metrics in a real Prometheus', () => {
  let t: TestStack;
  let worker: Worker;
  let prometheus: PrometheusServer | undefined;
  let exposition = '';

  beforeAll(async () => {
    t = await startTestStack();
    const stream = 'ops-spans';
    const bucket = 'ops-lake';
    await t.aws.s3.send(new CreateBucketCommand({ Bucket: bucket }));
    await createStream(t.aws.kinesis, stream, 2);
    // The traces pipeline of examples/traces.yaml: every metric family the dashboard and the alert rules
    // name is registered by it (the OpenSearch sink is configured but routed nothing: no node runs here).
    const config = validateConfig({
      app: { name: 'ksw', workerId: 'ops-1' },
      aws: t.stack.awsConfig,
      consumers: [{ type: 'polling', stream, idleIntervalMs: 100, busyIntervalMs: 0 }],
      checkpoints: { table: 'ops-leases', intervalMs: 300, shardSyncIntervalMs: 1_000 },
      processors: [
        { type: 'otel_spans' },
        { type: 'red_metrics', windowMs: 1_000, sinks: ['red'] },
        {
          type: 'tail_sampling',
          decisionWaitMs: 1_000,
          quietPeriodMs: 200,
          policies: [
            { name: 'errors', type: 'status_code' },
            { name: 'slow', type: 'latency', thresholdMs: 1000, probability: 0.8 },
            { name: 'rest', type: 'probabilistic', probability: 0.2 },
          ],
        },
      ],
      sinks: {
        lake: { type: 's3_parquet', bucket, prefix: 'spans/', schema: 'spans', roll: { maxFileAgeMs: 500 } },
        red: {
          type: 's3_parquet',
          bucket,
          prefix: 'red/',
          schema: 'red_metrics',
          roll: { maxFileAgeMs: 500 },
        },
        search: { type: 'opensearch', endpoint: 'http://127.0.0.1:9', index: 'traces' },
      },
      // Configured so their metrics are registered: the dashboard shows them.
      decode: { s3Pointers: { enabled: true, allowedBuckets: [bucket] } },
      routing: {
        routes: [
          { name: 'errors', where: ['status.code == 2'], sinks: ['lake'] },
          { name: 'never', where: ['attributes["ksw.ops.never"] exists'], sinks: ['search'] },
        ],
        default: { sinks: ['lake'] },
      },
      dlq: { type: 's3', bucket, prefix: 'dlq/', maxBatchAgeMs: 200 },
      server: { host: '127.0.0.1', port: 0 },
      shutdown: { deadlineMs: 10_000 },
    });
    worker = await Worker.start(config, { logger: silentLogger });
    const producer = new KinesisProducer(t.aws.kinesis, stream);
    await producer.put([...generateSpans(SPANS)].map(spanRecord));
    const value = async (name: string, labels: Record<string, string> = {}) =>
      ((await worker.metrics.getSingleMetric(name)?.get())?.values ?? [])
        .filter((v) => Object.entries(labels).every(([k, l]) => v.labels[k] === l))
        .reduce((sum, v) => sum + v.value, 0);
    await waitFor(
      async () =>
        (await value('ksw_tail_sampling_spans_total')) >= SPANS &&
        (await value('ksw_parquet_rows_total', { sink: 'lake' })) ===
          (await value('ksw_tail_sampling_spans_total', { decision: 'kept' })),
      60_000,
      'every span decided and every kept span written',
    );
    const { host, port } = worker.address;
    exposition = await (await fetch(`http://${host}:${port}/metrics`)).text();

    prometheus = await startPrometheus({
      bin: BIN,
      dir: path.join(t.dir, 'prometheus'),
      job: 'ksw',
      target: `${host}:${port}`,
      ruleFiles: [path.join(ROOT, 'deploy/prometheus/alerts.yaml')],
    });
  });

  afterAll(async () => {
    await prometheus?.stop();
    await worker?.stop();
    await t?.stop();
  });

  const query = (expr: string) => prometheus!.query(expr);

  it('the exposition passes promtool check metrics, with no exception', () => {
    assert.deepEqual(promtoolProblems(BIN, exposition), []);
  });

  it('every metric the dashboard and the alert rules use exists in the exposition', () => {
    const families = new Set([...exposition.matchAll(/^# TYPE (\S+) (\S+)/gm)].map((m) => m[1]!));
    const histograms = [...exposition.matchAll(/^# TYPE (\S+) histogram/gm)].map((m) => m[1]!);
    for (const h of histograms) for (const s of ['_bucket', '_sum', '_count']) families.add(`${h}${s}`);
    const used = new Set(
      [...dashboardQueries(), ...alertExpressions()].flatMap((e) =>
        [...e.matchAll(/\bksw_[a-z0-9_]+/g)].map((m) => m[0]),
      ),
    );
    const missing = [...used].filter((name) => !families.has(name));
    assert.deepEqual(missing, [], 'metrics named in deploy/ but not exported by the worker');
    assert.ok(used.size >= 15);
  });

  it('Prometheus counts exactly the produced records and evaluates every rule without error', async () => {
    await waitFor(
      async () =>
        (await query('sum(ksw_kinesis_records_fetched_total)')).data?.result[0]?.value[1] === String(SPANS),
      30_000,
      `Prometheus to see ${SPANS} records fetched`,
    );
    // RED sees 100 % of the spans; the lake holds exactly the spans tail sampling kept.
    await waitFor(
      async () => (await query('sum(ksw_red_requests_total)')).data?.result[0]?.value[1] === String(SPANS),
      30_000,
      `Prometheus to see ${SPANS} spans in the RED request counters`,
    );
    const kept = await query('sum(ksw_tail_sampling_spans_total{decision="kept"})');
    const rows = await query('sum(ksw_parquet_rows_total{sink="lake"})');
    assert.equal(rows.data.result[0]?.value[1], kept.data.result[0]?.value[1]);
    const errors = await query('sum by (service) (ksw_red_errors_total)');
    assert.ok(errors.data.result.length > 0, 'RED error counters per service');
    await waitFor(
      async () => {
        const rules = (await (await fetch(`${prometheus!.url}/api/v1/rules`)).json()) as {
          data: { groups: Array<{ rules: Array<{ health: string; name: string; lastError?: string }> }> };
        };
        const all = rules.data.groups.flatMap((g) => g.rules);
        assert.ok(all.length >= 10);
        const bad = all.filter((r) => r.health === 'err');
        assert.deepEqual(
          bad.map((r) => `${r.name}: ${r.lastError}`),
          [],
        );
        return all.every((r) => r.health === 'ok');
      },
      20_000,
      'every rule evaluated',
    );
    // A healthy worker: no alert firing, and none even pending. (KswWorkerAbsent may be pending from an
    // evaluation before the first scrape; it must clear at the next one.)
    let pending: unknown[] = [];
    await waitFor(
      async () => {
        pending = (await query('ALERTS')).data.result.map((r: { metric: unknown }) => r.metric);
        return pending.length === 0;
      },
      20_000,
      'no alert pending or firing',
    ).catch(() => assert.deepEqual(pending, [], 'alerts pending or firing on a healthy worker'));
  });

  it('answers every dashboard query', async () => {
    const queries = dashboardQueries();
    for (const expr of queries) {
      const r = await query(concrete(expr));
      assert.equal(r.status, 'success', `${expr}: ${r.error}`);
    }
    // rate() needs two scrapes inside its window; the server has been scraping for a few seconds only.
    await waitFor(
      async () => (await query(concrete(queries[0]!))).data.result.length > 0,
      20_000,
      'data in the throughput panel',
    );
  });
});
