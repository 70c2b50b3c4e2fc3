/**
 * What an operator's Prometheus sees right after a worker starts: every labelled counter an alert takes
 * `increase()` or `rate()` of already exists at 0 (else the first burst after start is invisible: the series
 * appears with its first value and increase() over it reads 0), and the per-shard "last answer from Kinesis"
 * gauge exists for every held shard and moves with the answers.
 */
import assert from 'node:assert/strict';
import { CreateBucketCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, it } from 'vitest';
import { validateConfig } from '../../src/config/load.js';
import { Worker } from '../../src/runtime/worker.js';
import {
  createStream,
  putRecords,
  silentLogger,
  startTestStack,
  type TestStack,
  waitFor,
} from '../helpers/stack.js';

type Sample = { name: string; labels: Record<string, string>; value: number };

/** The samples of a Prometheus text exposition. */
function samples(exposition: string): Sample[] {
  const out: Sample[] = [];
  for (const line of exposition.split('\n')) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)/.exec(line);
    if (!m) continue;
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g))
      labels[l[1]!] = l[2]!;
    out.push({ name: m[1]!, labels, value: Number(m[3]) });
  }
  return out;
}

function find(all: Sample[], name: string, labels: Record<string, string>): Sample | undefined {
  return all.find((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
}

describe('metrics right after start', () => {
  let t: TestStack;
  let worker: Worker;
  let shards: string[];
  const stream = 'opm-spans';

  beforeAll(async () => {
    t = await startTestStack();
    await t.aws.s3.send(new CreateBucketCommand({ Bucket: 'opm-lake' }));
    shards = await createStream(t.aws.kinesis, stream, 2);
    const config = validateConfig({
      app: { name: 'opm', workerId: 'opm-1' },
      aws: t.stack.awsConfig,
      consumers: [{ type: 'polling', stream, idleIntervalMs: 100, busyIntervalMs: 0 }],
      checkpoints: { table: 'opm-leases', intervalMs: 300, shardSyncIntervalMs: 1_000 },
      processors: [{ type: 'otel_spans' }],
      sinks: {
        lake: { type: 's3_parquet', bucket: 'opm-lake', prefix: 'spans/', schema: 'spans' },
        search: { type: 'opensearch', endpoint: 'http://127.0.0.1:9', index: 'traces' },
      },
      routing: { routes: [], default: { sinks: ['lake'] } },
      dlq: { type: 's3', bucket: 'opm-lake', prefix: 'dlq/', maxBatchAgeMs: 200 },
      server: { host: '127.0.0.1', port: 0 },
      shutdown: { deadlineMs: 10_000 },
    });
    worker = await Worker.start(config, { logger: silentLogger });
  });

  afterAll(async () => {
    await worker?.stop();
    await t?.stop();
  });

  const scrape = async () =>
    samples(await (await fetch(`http://127.0.0.1:${worker.address.port}/metrics`)).text());

  it('every labelled error counter the alerts watch is exported at 0 before any error', async () => {
    await waitFor(
      async () => find(await scrape(), 'ksw_leases_held', {})?.value === 2,
      30_000,
      'both leases held',
    );
    const all = await scrape();
    const zero = (name: string, labels: Record<string, string>) => {
      const s = find(all, name, { app: 'opm', ...labels });
      assert.ok(s, `${name}${JSON.stringify(labels)} is not exported before its first increment`);
      assert.equal(s.value, 0, `${name}${JSON.stringify(labels)}`);
    };
    for (const component of [
      'decode',
      'decode.chunks',
      'kpl',
      'processor:otel_spans',
      'sink:lake',
      'sink:search',
    ])
      zero('ksw_dlq_records_total', { component });
    for (const reason of ['taken', 'deleted', 'fenced']) zero('ksw_lease_losses_total', { reason });
    for (const error of ['LeaseLost', 'TimeoutError']) zero('ksw_lease_write_errors_total', { error });
    for (const stage of ['sink_open', 'deliver', 'sink', 'reader'])
      zero('ksw_shard_failures_total', { stream, stage });
    for (const name of [
      'ksw_parquet_upload_errors_total',
      'ksw_parquet_quarantined_events_total',
      'ksw_parquet_dead_letters_total',
      'ksw_parquet_partition_registration_errors_total',
    ])
      zero(name, { sink: 'lake' });
    for (const reason of ['rejected', 'retry_budget', 'invalid'])
      zero('ksw_opensearch_dead_letters_total', { sink: 'search', reason });
    zero('ksw_opensearch_offload_errors_total', { sink: 'search' });
    for (const shard of shards) {
      zero('ksw_checkpoint_errors_total', { stream, shard });
      zero('ksw_kinesis_read_errors_total', {
        stream,
        shard,
        error: 'ProvisionedThroughputExceededException',
      });
    }
  });

  it('each held shard exports the time of its last Kinesis answer, moving with the answers', async () => {
    const first = await scrape();
    const at = (all: Sample[], shard: string) =>
      find(all, 'ksw_kinesis_last_answer_timestamp_seconds', { stream, shard })?.value;
    for (const shard of shards) {
      const v = at(first, shard);
      assert.ok(v !== undefined, `no last-answer gauge for ${shard}`);
      assert.ok(Math.abs(v - Date.now() / 1000) < 30, `last answer of ${shard} is recent: ${v}`);
    }
    // Polled every 100 ms: the gauge keeps moving while the reader is answered.
    await new Promise((r) => setTimeout(r, 1_200));
    const second = await scrape();
    for (const shard of shards) assert.ok(at(second, shard)! > at(first, shard)!);
    // Records arriving give the hot-key detector its per-shard series, at 0 until a key is hot.
    await putRecords(
      t.aws.kinesis,
      stream,
      Array.from({ length: 20 }, (_, i) => ({ partitionKey: `k${i}`, data: `not a span ${i}` })),
    );
    await waitFor(
      async () =>
        (await scrape())
          .filter((x) => x.name === 'ksw_dlq_records_total')
          .reduce((sum, x) => sum + x.value, 0) >= 20,
      30_000,
      'the 20 malformed records dead-lettered',
    );
    const after = await scrape();
    for (const s of after.filter((x) => x.name === 'ksw_hot_partition_keys_total')) assert.equal(s.value, 0);
    assert.ok(
      after.some((x) => x.name === 'ksw_hot_partition_keys_total' && x.labels.stream === stream),
      'hot-key series exists once a shard has records',
    );
  });
});
