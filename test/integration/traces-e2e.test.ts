/**
 * Traces through a live worker: flat spans and OTLP/JSON requests (traceId as partition key) ->
 * otel_spans -> red_metrics -> tail_sampling -> Parquet. RED window documents land in their own Parquet
 * sink and add up exactly to the produced spans; every error trace is kept whole with its sampling policy;
 * malformed OTLP goes to the DLQ; each shard's checkpoint reaches its last record (windows and pending
 * traces did not hold it forever); the exemplars show up when /metrics is asked for OpenMetrics.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { CreateBucketCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, it } from 'vitest';
import { validateConfig } from '../../src/config/load.js';
import { LeaseTable } from '../../src/consumers/lease-table.js';
import { generateSpans, type SyntheticSpan } from '../../src/producer/synthetic-spans.js';
import { Worker } from '../../src/runtime/worker.js';
import { download, duck } from '../helpers/parquet.js';
import {
  createStream,
  putRecords,
  silentLogger,
  startTestStack,
  type TestStack,
  waitFor,
} from '../helpers/stack.js';

const STATUS = ['UNSET', 'OK', 'ERROR'];

/** One trace as an OTLP/JSON ExportTraceServiceRequest, attributes as KeyValue lists, enums as numbers. */
function otlpRequest(spans: SyntheticSpan[]) {
  const kv = (o: Record<string, string | number>) =>
    Object.entries(o).map(([key, v]) => ({
      key,
      value: typeof v === 'number' ? { intValue: String(v) } : { stringValue: v },
    }));
  return {
    resourceSpans: spans.map((s) => ({
      resource: { attributes: kv(s.resource) },
      scopeSpans: [
        {
          scope: { name: 'shop', version: '1.0.0' },
          spans: [
            {
              traceId: s.traceId,
              spanId: s.spanId,
              parentSpanId: s.parentSpanId,
              name: s.name,
              kind: 2,
              startTimeUnixNano: s.startTimeUnixNano,
              endTimeUnixNano: s.endTimeUnixNano,
              status: s.status,
              attributes: kv(s.attributes),
            },
          ],
        },
      ],
    })),
  };
}

describe('traces end to end', () => {
  let t: TestStack;
  beforeAll(async () => {
    t = await startTestStack();
  });
  afterAll(async () => {
    await t.stop();
  });

  it('writes exact RED windows and the sampled traces, and checkpoints every shard', async () => {
    const stream = 'traces';
    const bucket = 'traces-bucket';
    await t.aws.s3.send(new CreateBucketCommand({ Bucket: bucket }));
    await createStream(t.aws.kinesis, stream, 2);
    const spans = [...generateSpans(2_000, { seed: 77, errorRate: 0.1, slowRate: 0.1 })];
    const traces = new Map<string, SyntheticSpan[]>();
    for (const s of spans) traces.set(s.traceId, [...(traces.get(s.traceId) ?? []), s]);
    // Every 4th trace is sent as one OTLP request; the rest as flat spans, one record each.
    const records: Array<{ partitionKey: string; data: string }> = [];
    let i = 0;
    for (const [traceId, list] of traces) {
      if (i++ % 4 === 0) records.push({ partitionKey: traceId, data: JSON.stringify(otlpRequest(list)) });
      else for (const s of list) records.push({ partitionKey: traceId, data: JSON.stringify(s) });
    }
    records.push({ partitionKey: 'bad', data: JSON.stringify({ resourceSpans: [{ scopeSpans: 'nope' }] }) });
    const put = await putRecords(t.aws.kinesis, stream, records);

    const config = validateConfig({
      app: { name: 'traces', workerId: 'traces-1' },
      aws: t.stack.awsConfig,
      consumers: [{ type: 'polling', stream, idleIntervalMs: 100, busyIntervalMs: 0 }],
      checkpoints: { table: 'traces-leases', intervalMs: 300, shardSyncIntervalMs: 1_000 },
      processors: [
        { type: 'otel_spans' },
        { type: 'red_metrics', windowMs: 1_000, sinks: ['red'], seriesIdleMs: 60_000 },
        {
          type: 'tail_sampling',
          decisionWaitMs: 3_000,
          quietPeriodMs: 500,
          policies: [
            { name: 'errors', type: 'status_code' },
            { name: 'slow', type: 'latency', thresholdMs: 1000, probability: 0.8 },
            { name: 'rest', type: 'probabilistic', probability: 0.2 },
          ],
        },
      ],
      routing: { routes: [], default: { sinks: ['lake'] } },
      sinks: {
        lake: {
          type: 's3_parquet',
          bucket,
          prefix: 'spans/',
          roll: { maxFileAgeMs: 500 },
          columns: [
            { name: 'traceId', type: 'string' },
            { name: 'spanId', type: 'string' },
            { name: 'startTimeUnixNano', type: 'int64' },
            { name: 'policy', type: 'string', path: 'sampling.policy' },
            { name: 'probability', type: 'double', path: 'sampling.probability' },
          ],
          recordColumn: false,
        },
        red: {
          type: 's3_parquet',
          bucket,
          prefix: 'red/',
          roll: { maxFileAgeMs: 500 },
          columns: [
            { name: 'windowStart', type: 'timestamp_ms' },
            { name: 'service', type: 'string' },
            { name: 'operation', type: 'string' },
            { name: 'spanKind', type: 'string' },
            { name: 'statusCode', type: 'string' },
            { name: 'requestCount', type: 'int64' },
            { name: 'errorCount', type: 'int64' },
            { name: 'sourceShardId', type: 'string' },
            { name: 'durationBucketCounts', type: 'json' },
          ],
          recordColumn: false,
        },
      },
      dlq: { type: 's3', bucket, prefix: 'dlq/', maxBatchAgeMs: 200 },
      server: { port: 0 },
      shutdown: { deadlineMs: 15_000 },
    });
    const worker = await Worker.start(config, { logger: silentLogger });
    const leases = new LeaseTable(t.aws.dynamodb, 'traces-leases');
    const lastPerShard = new Map<string, string>();
    for (const p of put) lastPerShard.set(p.shardId, p.sequenceNumber);
    let exposition = '';
    try {
      await waitFor(
        async () => {
          for (const [shard, last] of lastPerShard) {
            if ((await leases.get(shard))?.checkpoint !== last) return false;
          }
          return true;
        },
        90_000,
        'checkpoints at the last record of each shard',
      );
      const res = await fetch(`http://127.0.0.1:${worker.address.port}/metrics`, {
        headers: { accept: 'application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5' },
      });
      exposition = await res.text();
    } finally {
      await worker.stop();
    }
    assert.match(
      exposition,
      /^ksw_red_requests_total\{[^}]*service="frontend"[^}]*\} \d+ # \{trace_id="[0-9a-f]{32}"\}/m,
    );
    assert.match(
      exposition,
      /^ksw_spans_rejected_total\{processor="otel_spans",reason="malformed",app="traces"\} 1$/m,
    );

    const dir = path.join(t.dir, 'traces-out');
    await download(t.aws.s3, bucket, '', dir);
    // RED: the window documents add up to exactly the produced spans, series by series.
    const red = await duck(
      `SELECT service, operation, spanKind, statusCode, SUM(requestCount)::INT AS n, SUM(errorCount)::INT AS e,
              COUNT(DISTINCT sourceShardId)::INT AS shards
       FROM read_parquet('${dir}/red/**/*.parquet') GROUP BY ALL`,
    );
    const truth = new Map<string, { n: number; e: number }>();
    for (const s of spans) {
      const key = [s.serviceName, s.name, s.kind, STATUS[s.status.code]].join('|');
      const v = truth.get(key) ?? { n: 0, e: 0 };
      v.n += 1;
      if (s.status.code === 2) v.e += 1;
      truth.set(key, v);
    }
    assert.equal(red.length, truth.size);
    for (const r of red) {
      const key = [r.service, r.operation, r.spanKind, r.statusCode].join('|');
      assert.deepEqual({ n: r.n, e: r.e }, truth.get(key), key);
    }
    const windows = await duck(
      `SELECT COUNT(DISTINCT windowStart)::INT AS w FROM read_parquet('${dir}/red/**/*.parquet')`,
    );
    assert.ok((windows[0]!.w as number) >= 1);

    // Sampling: error traces kept whole, recorded as kept by "errors"; no span duplicated.
    const kept = await duck(
      `SELECT traceId, spanId, policy, probability FROM read_parquet('${dir}/spans/**/*.parquet')`,
    );
    assert.equal(new Set(kept.map((r) => r.spanId)).size, kept.length, 'no duplicate spans');
    const keptByTrace = new Map<string, typeof kept>();
    for (const r of kept)
      keptByTrace.set(r.traceId as string, [...(keptByTrace.get(r.traceId as string) ?? []), r]);
    let errorTraces = 0;
    for (const [traceId, list] of traces) {
      const k = keptByTrace.get(traceId);
      if (k) assert.equal(k.length, list.length, `trace ${traceId} kept whole`);
      if (list.some((s) => s.status.code === 2)) {
        errorTraces += 1;
        assert.ok(k, `error trace ${traceId} kept`);
        assert.ok(k.every((r) => r.policy === 'errors' && r.probability === 1));
      }
    }
    assert.ok(errorTraces > 10);
    assert.ok(keptByTrace.size < traces.size, 'some traces were sampled out');
    // The malformed OTLP record is in the DLQ with its reason.
    const letters = await duck(
      `SELECT * FROM read_json_auto('${dir}/dlq/**/*.jsonl', format='newline_delimited')`,
    );
    assert.ok(letters.some((l) => /scopeSpans must be a list/.test(String(l.reason))));
  });
});
