/**
 * Fault injection against a running worker, through HTTP proxies in front of the emulators: Kinesis
 * throttling, expired iterators and connection resets; S3 500/503, slow answers and resets on uploads;
 * DynamoDB throttling and conditional-check failures on lease writes. The faults run for a while, then
 * stop. Nothing may be lost, the same worker recovers without a restart, the final object set holds each
 * record once, and the worker's metrics show the faults. Prints a table of injected faults next to what
 * the metrics counted.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { CreateBucketCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, it } from 'vitest';
import { validateConfig } from '../../src/config/load.js';
import { LeaseTable } from '../../src/consumers/lease-table.js';
import { Worker } from '../../src/runtime/worker.js';
import { type ChaosRow, reportChaos } from '../helpers/chaos-report.js';
import { amzTarget, awsJsonError, FaultProxy, s3XmlError } from '../helpers/fault-proxy.js';
import { download, duck } from '../helpers/parquet.js';
import {
  createStream,
  putRecords,
  silentLogger,
  startTestStack,
  type TestStack,
  waitFor,
} from '../helpers/stack.js';

const RECORDS = Number(process.env.CHAOS_RECORDS ?? 2_000);
const FAULT_SECONDS = Number(process.env.CHAOS_FAULT_SECONDS ?? 8);

async function metric(worker: Worker, name: string, labels: Record<string, string> = {}): Promise<number> {
  const m = await worker.metrics.getSingleMetric(name)?.get();
  return (m?.values ?? [])
    .filter((v) => Object.entries(labels).every(([k, want]) => v.labels[k] === want))
    .reduce((sum, v) => sum + v.value, 0);
}

async function byLabel(worker: Worker, name: string, label: string): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for (const v of (await worker.metrics.getSingleMetric(name)?.get())?.values ?? []) {
    const key = String(v.labels[label]);
    out[key] = (out[key] ?? 0) + v.value;
  }
  return out;
}

describe('fault injection: nothing lost, recovery without restart', () => {
  let t: TestStack;
  const proxies: FaultProxy[] = [];
  beforeAll(async () => {
    t = await startTestStack();
  });
  afterAll(async () => {
    for (const p of proxies) await p.stop();
    await t.stop();
  });

  it('survives Kinesis, S3 and DynamoDB faults with every record written exactly once', async () => {
    const stream = 'chaos-faults';
    const bucket = 'chaos-lake';
    await t.aws.s3.send(new CreateBucketCommand({ Bucket: bucket }));
    await createStream(t.aws.kinesis, stream, 4);
    const put = await putRecords(
      t.aws.kinesis,
      stream,
      Array.from({ length: RECORDS }, (_, i) => ({
        partitionKey: `key-${i % 97}`,
        data: JSON.stringify({ id: i }),
      })),
    );

    const [kinesis, s3, dynamodb] = await Promise.all([
      FaultProxy.start(t.stack.awsConfig.endpoints.kinesis),
      FaultProxy.start(t.stack.awsConfig.endpoints.s3),
      FaultProxy.start(t.stack.awsConfig.endpoints.dynamodb),
    ]);
    proxies.push(kinesis, s3, dynamodb);
    kinesis.setRules([
      {
        name: 'kinesis throttled',
        matches: amzTarget('GetRecords'),
        rate: 0.3,
        fault: awsJsonError('ProvisionedThroughputExceededException', 'Rate exceeded for shard'),
      },
      {
        name: 'kinesis iterator expired',
        matches: amzTarget('GetRecords'),
        rate: 0.1,
        fault: awsJsonError('ExpiredIteratorException', 'Iterator expired'),
      },
      {
        name: 'kinesis connection reset',
        matches: amzTarget('GetRecords'),
        rate: 0.05,
        fault: { kind: 'reset' },
      },
    ]);
    const isUpload = (r: { method: string; url: string }) => r.method === 'PUT' && r.url.includes('/lake/');
    s3.setRules([
      {
        name: 's3 500',
        matches: isUpload,
        rate: 0.3,
        fault: s3XmlError('InternalError', 'We encountered an internal error', 500),
      },
      {
        name: 's3 503 SlowDown',
        matches: isUpload,
        rate: 0.2,
        fault: s3XmlError('SlowDown', 'Please reduce your request rate', 503),
      },
      { name: 's3 slow (1.5 s)', matches: isUpload, rate: 0.2, fault: { kind: 'delay', ms: 1_500 } },
      { name: 's3 connection reset', matches: isUpload, rate: 0.1, fault: { kind: 'reset' } },
    ]);
    // Every 8th lease write fails its condition (deterministic, so some always hit held leases, not only
    // the takes at start-up); half of the others are throttled.
    let leaseWrites = 0;
    dynamodb.setRules([
      {
        name: 'dynamodb conditional check failed',
        matches: (req) => amzTarget('UpdateItem')(req) && ++leaseWrites % 8 === 0,
        rate: 1,
        fault: awsJsonError(
          'com.amazonaws.dynamodb.v20120810#ConditionalCheckFailedException',
          'The conditional request failed',
        ),
      },
      {
        name: 'dynamodb throttled',
        matches: amzTarget('UpdateItem'),
        rate: 0.5,
        fault: awsJsonError(
          'com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException',
          'Throughput exceeded',
        ),
      },
    ]);

    const config = validateConfig({
      app: { name: 'chaos', workerId: 'chaos-1' },
      aws: {
        ...t.stack.awsConfig,
        endpoints: { kinesis: kinesis.endpoint, s3: s3.endpoint, dynamodb: dynamodb.endpoint },
      },
      consumers: [
        { type: 'polling', stream, idleIntervalMs: 100, busyIntervalMs: 0, maxRecordsPerCall: 100 },
      ],
      checkpoints: { table: 'chaos-leases', intervalMs: 300, shardSyncIntervalMs: 1_000, failoverMs: 3_000 },
      sinks: {
        lake: {
          type: 's3_parquet',
          bucket,
          prefix: 'lake/',
          roll: { maxFileRows: 100, maxFileAgeMs: 300 },
          columns: [{ name: 'id', type: 'int64' }],
        },
      },
      dlq: { type: 's3', bucket, prefix: 'dlq/', maxBatchAgeMs: 200 },
      server: { port: 0 },
      shutdown: { deadlineMs: 20_000 },
    });
    const worker = await Worker.start(config, { logger: silentLogger });
    const faultRows: Array<Pick<ChaosRow, 'scenario' | 'injected' | 'observed'>> = [];
    const leases = new LeaseTable(t.aws.dynamodb, 'chaos-leases');
    const lastPerShard = new Map<string, string>();
    for (const p of put) lastPerShard.set(p.shardId, p.sequenceNumber);
    try {
      await new Promise((r) => setTimeout(r, FAULT_SECONDS * 1000));
      for (const p of proxies) p.clear();
      await waitFor(
        async () => {
          for (const [shard, last] of lastPerShard)
            if ((await leases.get(shard))?.checkpoint !== last) return false;
          return true;
        },
        180_000,
        'every shard checkpointed at its last record after the faults stopped',
      );
      assert.equal(worker.status().ready, true, 'the same worker recovered without a restart');
      const seen = {
        throttled: await metric(worker, 'ksw_kinesis_read_errors_total', {
          error: 'ProvisionedThroughputExceededException',
        }),
        expired: await metric(worker, 'ksw_kinesis_expired_iterators_total'),
        uploadErrors: await metric(worker, 'ksw_parquet_upload_errors_total'),
        leaseWriteErrors: await byLabel(worker, 'ksw_lease_write_errors_total', 'error'),
        sdkRetries: await byLabel(worker, 'ksw_aws_retries_total', 'service'),
      };
      const readErrors = await byLabel(worker, 'ksw_kinesis_read_errors_total', 'error');
      const otherErrors = Object.entries(readErrors).filter(
        ([e]) => !['ProvisionedThroughputExceededException', 'ExpiredIteratorException'].includes(e),
      );
      const resetsSeen = otherErrors.reduce((a, [, n]) => a + n, 0);
      faultRows.push(
        {
          scenario: 'fault: Kinesis ProvisionedThroughputExceeded (GetRecords, 30 %)',
          injected: String(kinesis.count('kinesis throttled')),
          observed: `${seen.throttled} ksw_kinesis_read_errors_total{error="ProvisionedThroughputExceededException"}`,
        },
        {
          scenario: 'fault: Kinesis ExpiredIterator (GetRecords, 10 %)',
          injected: String(kinesis.count('kinesis iterator expired')),
          observed: `${seen.expired} ksw_kinesis_expired_iterators_total`,
        },
        {
          scenario: 'fault: Kinesis connection reset (GetRecords, 5 %)',
          injected: String(kinesis.count('kinesis connection reset')),
          observed: `${resetsSeen} ksw_kinesis_read_errors_total{error=~"${otherErrors.map(([e]) => e).join('|')}"}`,
        },
        {
          scenario: 'fault: S3 500 / 503 SlowDown / 1.5 s delay / reset (Parquet uploads)',
          injected: ['s3 500', 's3 503 SlowDown', 's3 slow (1.5 s)', 's3 connection reset']
            .map((n) => s3.count(n))
            .join(' / '),
          observed: `${seen.sdkRetries.s3 ?? 0} ksw_aws_retries_total{service="s3"}, ${seen.uploadErrors} ksw_parquet_upload_errors_total (failed after the SDK's attempts)`,
        },
        {
          scenario: 'fault: DynamoDB throttling (lease writes, 50 %)',
          injected: String(dynamodb.count('dynamodb throttled')),
          observed: `${seen.sdkRetries.dynamodb ?? 0} ksw_aws_retries_total{service="dynamodb"}, ${seen.leaseWriteErrors.ProvisionedThroughputExceededException ?? 0} ksw_lease_write_errors_total{error="ProvisionedThroughputExceededException"} (failed after the SDK's attempts)`,
        },
        {
          scenario: 'fault: DynamoDB conditional-check failure (every 8th lease write)',
          injected: String(dynamodb.count('dynamodb conditional check failed')),
          observed: `${seen.leaseWriteErrors.LeaseLost ?? 0} ksw_lease_write_errors_total{error="LeaseLost"} (takes that lose a race are not counted)`,
        },
      );
      assert.ok(
        kinesis.count('kinesis throttled') > 0 && seen.throttled > 0,
        'throttling injected and counted',
      );
      assert.ok(
        kinesis.count('kinesis iterator expired') > 0 && seen.expired > 0,
        'expired iterators injected and counted',
      );
      assert.ok(
        s3.count('s3 500') + s3.count('s3 503 SlowDown') > 0 && seen.uploadErrors > 0,
        'S3 errors injected and counted',
      );
      assert.ok(dynamodb.count('dynamodb throttled') > 0, 'DynamoDB throttling injected');
      assert.ok((seen.sdkRetries.dynamodb ?? 0) > 0, 'DynamoDB throttling retried by the SDK is counted');
      assert.ok((seen.sdkRetries.s3 ?? 0) > 0, 'S3 errors retried by the SDK are counted');
      assert.ok(
        dynamodb.count('dynamodb conditional check failed') > 0 && (seen.leaseWriteErrors.LeaseLost ?? 0) > 0,
        'DynamoDB conditional failures injected and counted',
      );
    } finally {
      await worker.stop();
    }
    const dir = path.join(t.dir, 'chaos-parquet');
    await download(t.aws.s3, bucket, 'lake/', dir);
    const [stats] = await duck(
      `SELECT count(*)::INT AS total, count(DISTINCT id)::INT AS ids, count(DISTINCT (_shard_id, _sequence_number))::INT AS positions FROM read_parquet('${dir}/**/*.parquet')`,
    );
    reportChaos(
      faultRows.map((r) => ({
        ...r,
        scenario: `${r.scenario}, ${FAULT_SECONDS} s`,
        observed: `${r.observed}; same worker recovered`,
        lost: RECORDS - (stats!.ids as number),
        duplicates: `${(stats!.total as number) - (stats!.ids as number)} rows`,
      })),
    );
    assert.equal(stats!.ids, RECORDS, 'records lost');
    assert.equal(stats!.positions, RECORDS);
    assert.equal(stats!.total, RECORDS, 'duplicate rows in the final object set');
  });
});
