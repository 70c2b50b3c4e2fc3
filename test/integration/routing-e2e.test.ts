/**
 * Routing through the whole worker: Kinesis -> routes -> two Parquet sinks. Every record must land in
 * exactly the sinks its route names (read back from S3 with DuckDB), records matching nothing are acked
 * without being written, and each shard's checkpoint reaches its last record.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { CreateBucketCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, it } from 'vitest';
import { validateConfig } from '../../src/config/load.js';
import { LeaseTable } from '../../src/consumers/lease-table.js';
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

describe('routing end to end', () => {
  let t: TestStack;
  beforeAll(async () => {
    t = await startTestStack();
  });
  afterAll(async () => {
    await t.stop();
  });

  it('writes each record to exactly the sinks of its route and acks unrouted ones', async () => {
    const stream = 'routed';
    const bucket = 'routed-bucket';
    await t.aws.s3.send(new CreateBucketCommand({ Bucket: bucket }));
    await createStream(t.aws.kinesis, stream, 2);
    const docs = Array.from({ length: 600 }, (_, i) => {
      const status = [200, 201, 404, 500, 503][i % 5]!;
      // every 7th record has no status: it matches no route and the default route writes nowhere
      return i % 7 === 0 ? { n: i, service: 'cron' } : { n: i, status, service: i % 2 ? 'checkout' : 'cart' };
    });
    const put = await putRecords(
      t.aws.kinesis,
      stream,
      docs.map((d) => ({ partitionKey: `${d.service}-${d.n % 13}`, data: JSON.stringify(d) })),
    );
    const expect = (d: (typeof docs)[number]): string[] => {
      if (!('status' in d)) return [];
      const sinks = new Set<string>();
      if ((d.status ?? 0) >= 500) {
        sinks.add('errors');
        sinks.add('lake');
      }
      if ((d.status ?? 0) < 500) sinks.add('lake');
      if (d.service === 'checkout' && d.status === 404) sinks.add('errors');
      return [...sinks].sort();
    };
    const config = validateConfig({
      app: { name: 'routing', workerId: 'routing-1' },
      aws: t.stack.awsConfig,
      consumers: [{ type: 'polling', stream, idleIntervalMs: 100, busyIntervalMs: 0 }],
      checkpoints: { table: 'routing-leases', intervalMs: 300, shardSyncIntervalMs: 1_000 },
      routing: {
        routes: [
          { name: 'server-errors', where: ['status >= 500'], sinks: ['errors', 'lake'] },
          { name: 'ok', where: ['status < 500'], sinks: ['lake'] },
          {
            name: 'checkout-404',
            partitionKey: { prefix: 'checkout-' },
            where: ['status == 404'],
            sinks: ['errors'],
          },
        ],
        default: { sinks: [] },
      },
      sinks: Object.fromEntries(
        ['lake', 'errors'].map((name) => [
          name,
          {
            type: 's3_parquet',
            bucket,
            prefix: `${name}/`,
            roll: { maxFileAgeMs: 500 },
            columns: [{ name: 'n', type: 'int64' }],
          },
        ]),
      ),
      dlq: { type: 's3', bucket, prefix: 'dlq/', maxBatchAgeMs: 200 },
      server: { port: 0 },
      shutdown: { deadlineMs: 15_000 },
    });
    const worker = await Worker.start(config, { logger: silentLogger });
    const leases = new LeaseTable(t.aws.dynamodb, 'routing-leases');
    const lastPerShard = new Map<string, string>();
    for (const p of put) lastPerShard.set(p.shardId, p.sequenceNumber);
    try {
      await waitFor(
        async () => {
          for (const [shard, last] of lastPerShard) {
            const lease = await leases.get(shard);
            if (lease?.checkpoint !== last) return false;
          }
          return true;
        },
        60_000,
        'checkpoints at the last record of each shard',
      );
      const routed = await worker.metrics.getSingleMetric('ksw_route_unmatched_total')?.get();
      assert.equal(routed?.values[0]?.value, docs.filter((d) => !('status' in d)).length);
    } finally {
      await worker.stop();
    }
    const dir = path.join(t.dir, 'routed');
    await download(t.aws.s3, bucket, '', dir);
    const actual = new Map<number, string[]>();
    for (const sink of ['lake', 'errors']) {
      const rows = await duck(`SELECT n::INT AS n FROM read_parquet('${dir}/${sink}/**/*.parquet')`);
      for (const r of rows) actual.set(r.n as number, [...(actual.get(r.n as number) ?? []), sink].sort());
    }
    let checked = 0;
    for (const d of docs) {
      assert.deepEqual(actual.get(d.n) ?? [], expect(d), `record ${d.n} (${JSON.stringify(d)})`);
      checked += 1;
    }
    assert.equal(checked, 600);
  });
});
