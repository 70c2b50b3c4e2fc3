/**
 * A worker that starts while its lease table is throttled: every lease write (UpdateItem) is answered
 * ProvisionedThroughputExceeded until the SDK's retries give up several times. The start must not fail
 * (the periodic lease scan tries again, as the KCL's lease taker does), and once the throttling stops the
 * worker takes every lease and checkpoints every record. A non-retryable error still fails the start.
 */
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { CreateBucketCommand } from '@aws-sdk/client-s3';
import pino from 'pino';
import { afterAll, beforeAll, describe, it } from 'vitest';
import { validateConfig } from '../../src/config/load.js';
import { LeaseTable } from '../../src/consumers/lease-table.js';
import { Worker } from '../../src/runtime/worker.js';
import { amzTarget, awsJsonError, FaultProxy } from '../helpers/fault-proxy.js';
import { createStream, putRecords, startTestStack, type TestStack, waitFor } from '../helpers/stack.js';

describe('worker start-up while the lease table is throttled', () => {
  let t: TestStack;
  let proxy: FaultProxy;
  beforeAll(async () => {
    t = await startTestStack();
    proxy = await FaultProxy.start(t.stack.awsConfig.endpoints.dynamodb);
    await t.aws.s3.send(new CreateBucketCommand({ Bucket: 'startup-lake' }));
  });
  afterAll(async () => {
    await proxy?.stop();
    await t?.stop();
  });

  function config(stream: string, table: string, dynamodb: string) {
    return validateConfig({
      app: { name: 'startup-throttle', workerId: 'startup-1' },
      aws: { ...t.stack.awsConfig, endpoints: { ...t.stack.awsConfig.endpoints, dynamodb } },
      consumers: [{ type: 'polling', stream, idleIntervalMs: 100, busyIntervalMs: 0 }],
      checkpoints: { table, intervalMs: 300, shardSyncIntervalMs: 1_000, failoverMs: 3_000 },
      sinks: {
        lake: {
          type: 's3_parquet',
          bucket: 'startup-lake',
          prefix: 'lake/',
          roll: { maxFileAgeMs: 300 },
          columns: [{ name: 'i', type: 'int64' }],
        },
      },
      dlq: { type: 's3', bucket: 'startup-lake', prefix: 'dlq/', maxBatchAgeMs: 200 },
      server: { port: 0 },
      shutdown: { deadlineMs: 10_000 },
    });
  }

  it('starts anyway, then takes every lease and checkpoints every record once the throttling stops', async () => {
    const stream = 'startup-throttled';
    const table = 'startup-throttled-leases';
    await createStream(t.aws.kinesis, stream, 3);
    const put = await putRecords(
      t.aws.kinesis,
      stream,
      Array.from({ length: 30 }, (_, i) => ({ partitionKey: `k-${i}`, data: JSON.stringify({ i }) })),
    );
    // Throttle the first 12 lease writes: with the SDK's 3 attempts per call, at least 4 takes fail.
    let throttled = 0;
    proxy.setRules([
      {
        name: 'throttled',
        rate: 1,
        matches: (req) => amzTarget('UpdateItem')(req) && throttled++ < 12,
        fault: awsJsonError(
          'com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException',
          'Throughput exceeded',
        ),
      },
    ]);
    let log = '';
    const logger = pino(
      { level: 'warn' },
      new Writable({
        write(chunk, _enc, cb) {
          log += String(chunk);
          cb();
        },
      }),
    );
    const worker = await Worker.start(config(stream, table, proxy.endpoint), { logger });
    try {
      assert.ok(proxy.count('throttled') >= 3, `lease writes were throttled (${proxy.count('throttled')})`);
      assert.match(log, /lease take failed; the next interval tries again/);
      const leases = new LeaseTable(t.aws.dynamodb, table);
      const last = new Map(put.map((p) => [p.shardId, p.sequenceNumber]));
      await waitFor(
        async () => {
          for (const [shard, seq] of last) if ((await leases.get(shard))?.checkpoint !== seq) return false;
          return true;
        },
        60_000,
        'every shard taken and checkpointed at its last record',
      );
      assert.equal(worker.status().ready, true);
      assert.equal(worker.status().shards.length, 3);
      const errors = await worker.metrics.getSingleMetric('ksw_lease_write_errors_total')!.get();
      const throttledTakes = errors.values
        .filter((v) => v.labels.error === 'ProvisionedThroughputExceededException')
        .reduce((a, v) => a + v.value, 0);
      assert.ok(throttledTakes >= 1, `throttled takes are counted (${throttledTakes})`);
      // Every throttled answer was either retried by the SDK or ended a call as an error.
      const retried = (await worker.metrics.getSingleMetric('ksw_aws_retries_total')!.get()).values
        .filter((v) => v.labels.service === 'dynamodb' && v.labels.operation === 'UpdateItemCommand')
        .reduce((a, v) => a + v.value, 0);
      assert.equal(
        retried + 3 * throttledTakes >= 12,
        true,
        `${retried} SDK retries, ${throttledTakes} failed takes`,
      );
      assert.ok(retried >= 8, `the SDK's retries of throttled lease writes are counted (${retried})`);
    } finally {
      await worker.stop();
    }
  });

  it('still fails the start on an error that retrying cannot fix', async () => {
    const stream = 'startup-denied';
    await createStream(t.aws.kinesis, stream, 1);
    proxy.setRules([
      {
        name: 'denied',
        rate: 1,
        matches: amzTarget('UpdateItem'),
        fault: awsJsonError('com.amazonaws.dynamodb.v20120810#AccessDeniedException', 'not authorized'),
      },
    ]);
    try {
      await assert.rejects(
        Worker.start(config(stream, 'startup-denied-leases', proxy.endpoint), {
          logger: pino({ level: 'silent' }),
        }),
        /not authorized/,
      );
    } finally {
      proxy.clear();
    }
  });
});
