/**
 * The Parquet sink and lease tenures (s3rver): a tenure's open files and uploads die with it, a lost
 * CompleteMultipartUpload answer is recognised, and S3 errors that retrying cannot cure fail the tenure
 * instead of being retried forever (issue 15, findings 4a and 7).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { S3Client } from '@aws-sdk/client-s3';
import pino from 'pino';
import { afterAll, beforeAll, describe, test } from 'vitest';
import { Ack } from '../../src/core/ack.js';
import type { AwsClients } from '../../src/core/aws.js';
import type { ComponentContext } from '../../src/core/component.js';
import type { PipelineEvent } from '../../src/core/records.js';
import { ShardTenure } from '../../src/core/tenure.js';
import { ShardWatermark } from '../../src/core/watermark.js';
import { createRegistry } from '../../src/metrics/registry.js';
import { parquetSinkConfigSchema } from '../../src/sinks/s3-parquet/config.js';
import { S3ParquetSink } from '../../src/sinks/s3-parquet/index.js';
import { MemoryDeadLetterQueue } from '../helpers/fakes.js';
import { download, duck, listKeys } from '../helpers/parquet.js';
import { startS3Only } from '../helpers/stack.js';

const BUCKET = 'tenure-lake';
const STREAM = 'spans';
const SHARD = 'shardId-000000000000';

function seq(n: number): string {
  return `4959${String(n).padStart(52, '0')}`;
}

/** Events of a tenure, registered with its watermark in order (as a reader would). */
function events(tenure: ShardTenure, from: number, values: Array<Record<string, unknown>>): PipelineEvent[] {
  const wm = new ShardWatermark(1 << 30, undefined, Date.now, tenure);
  return values.map((value, i) => ({
    origin: {
      stream: STREAM,
      shardId: SHARD,
      sequenceNumber: seq(from + i),
      subSequenceNumber: 0,
      partitionKey: `pk-${from + i}`,
      arrivalTime: new Date(1_700_000_000_000 + from + i),
    },
    index: 0,
    value,
    raw: Buffer.from(JSON.stringify(value)),
    ack: wm.register({ sequenceNumber: seq(from + i), subSequenceNumber: 0 }, 1),
  }));
}

async function metricSum(ctx: ComponentContext, name: string, labels: Record<string, string> = {}) {
  const m = await ctx.metrics.getSingleMetric(name)?.get();
  return (m?.values ?? [])
    .filter((v) => Object.entries(labels).every(([k, want]) => v.labels[k] === want))
    .reduce((a, v) => a + v.value, 0);
}

describe('Parquet sink and lease tenures (s3rver)', () => {
  let s3: Awaited<ReturnType<typeof startS3Only>>;
  let aws: AwsClients;
  let dir: string;

  beforeAll(async () => {
    s3 = await startS3Only([BUCKET]);
    aws = s3.aws;
    dir = s3.dir;
  });
  afterAll(async () => {
    await s3.stop();
  });

  function context(client: S3Client = aws.s3): ComponentContext {
    return {
      logger: pino({ level: 'silent' }),
      metrics: createRegistry(false),
      aws: { ...aws, s3: client },
      dlq: new MemoryDeadLetterQueue(),
    };
  }

  function sink(prefix: string, ctx: ComponentContext, extra: Record<string, unknown> = {}) {
    return new S3ParquetSink(
      'lake',
      parquetSinkConfigSchema.parse({
        type: 's3_parquet',
        bucket: BUCKET,
        prefix,
        tmpDir: path.join(dir, 'tmp'),
        columns: [{ name: 'n', type: 'int64' }],
        ...extra,
      }),
      ctx,
      { backoff: { baseMs: 5, maxMs: 50 } },
    );
  }

  /** A client of its own, so a test can add middleware without touching the others. */
  async function freshClient(): Promise<S3Client> {
    const endpoint = await aws.s3.config.endpoint!();
    return new S3Client({
      region: 'us-east-1',
      endpoint: `${endpoint.protocol}//${endpoint.hostname}:${endpoint.port}`,
      forcePathStyle: true,
      credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' },
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      maxAttempts: 1,
    });
  }

  async function rowsPerSequence(prefix: string, into: string) {
    const files = await download(aws.s3, BUCKET, prefix, path.join(dir, into));
    const data = files.filter((f) => f.endsWith('.parquet'));
    if (data.length === 0) return [];
    return duck(
      `SELECT _sequence_number AS s, count(*) AS c FROM read_parquet([${data.map((f) => `'${f}'`).join(', ')}]) GROUP BY ALL ORDER BY s`,
    );
  }

  test('a worker that loses and retakes a lease writes the replay once, not appended to the old file (finding 4a)', async () => {
    const ctx = context();
    const lake = sink('retake/', ctx);
    const first = new ShardTenure(STREAM, SHARD, 'p.1');
    await lake.openShard(first, undefined);
    // Three events buffered (no roll yet), then the lease is lost.
    await lake.write(events(first, 1, [{ n: 1 }, { n: 2 }, { n: 3 }]));
    first.end('lost');
    await lake.closeShard(first);
    // The same worker takes the lease again and reads the three records again from the checkpoint.
    const second = new ShardTenure(STREAM, SHARD, 'p.2');
    await lake.openShard(second, undefined);
    const again = events(second, 1, [{ n: 1 }, { n: 2 }, { n: 3 }]);
    await lake.write(again);
    await lake.flush();
    assert.ok(again.every((e) => e.ack.completed));
    await lake.close();
    const rows = await rowsPerSequence('retake/', 'retake');
    assert.deepEqual(
      rows.map((r) => Number(r.c)),
      [1, 1, 1],
      'before the fix one object held 6 rows for the 3 events',
    );
  });

  test('events of an ended tenure are not buffered, and a tenure ending mid-upload stops its upload', async () => {
    const client = await freshClient();
    let hold: (() => void) | undefined;
    const puts: string[] = [];
    client.middlewareStack.add(
      (next, context) => async (args) => {
        if (context.commandName === 'PutObjectCommand') {
          const key = (args.input as { Key: string }).Key;
          puts.push(key);
          // The manifest write waits until the test lets it go: the tenure ends meanwhile.
          if (key.includes('_ksw/') && hold === undefined) await new Promise<void>((r) => (hold = r));
        }
        return next(args);
      },
      { step: 'initialize', name: 'holdManifest' },
    );
    const ctx = context(client);
    const lake = sink('midway/', ctx);
    const tenure = new ShardTenure(STREAM, SHARD, 'q.1');
    await lake.openShard(tenure, undefined);
    const batch = events(tenure, 10, [{ n: 10 }, { n: 11 }]);
    await lake.write(batch);
    const flushed = lake.flush();
    while (!hold) await new Promise((r) => setTimeout(r, 5));
    tenure.end('fenced');
    const closed = lake.closeShard(tenure);
    hold();
    await closed;
    await flushed;
    await lake.write(events(tenure, 20, [{ n: 20 }]));
    await lake.close();
    client.destroy();
    assert.equal(
      batch.some((e) => e.ack.completed),
      false,
    );
    assert.deepEqual(
      puts.filter((k) => k.endsWith('.parquet')),
      [],
      'no data object of the fenced tenure was sent',
    );
    assert.deepEqual(
      (await listKeys(aws.s3, BUCKET, 'midway/')).filter((k) => k.endsWith('.parquet')),
      [],
    );
  });

  test("a CompleteMultipartUpload whose answer was lost is recognised by the object's file id (finding 7)", async () => {
    const client = await freshClient();
    let lost = 0;
    let completes = 0;
    client.middlewareStack.add(
      (next, context) => async (args) => {
        if (context.commandName !== 'CompleteMultipartUploadCommand') return next(args);
        completes += 1;
        // AWS answers a Complete of an upload it completed already with NoSuchUpload (s3rver: a 500).
        if (lost > 0)
          throw Object.assign(new Error('The specified upload does not exist.'), {
            name: 'NoSuchUpload',
            $metadata: { httpStatusCode: 404 },
          });
        await next(args);
        // The first Complete went through, but its answer never came back.
        lost += 1;
        throw Object.assign(new Error('socket hang up'), { name: 'TimeoutError', code: 'ECONNRESET' });
      },
      { step: 'initialize', name: 'loseCompleteAnswer' },
    );
    const ctx = context(client);
    const lake = sink('lostcomplete/', ctx, {
      compression: 'snappy',
      upload: { multipartThresholdBytes: 5 * 1024 * 1024, partSizeBytes: 5 * 1024 * 1024 },
      columns: [{ name: 'blob', type: 'string' }],
      recordColumn: false,
    });
    const tenure = new ShardTenure(STREAM, SHARD, 'r.1');
    await lake.openShard(tenure, undefined);
    const blobs = Array.from({ length: 36 }, () => randomBytes(192 * 1024).toString('base64'));
    const batch = events(
      tenure,
      100,
      blobs.map((blob) => ({ blob })),
    );
    await lake.write(batch);
    const flushed = lake.flush();
    const finished = await Promise.race([
      flushed.then(() => true),
      new Promise((r) => setTimeout(() => r(false), 20_000)),
    ]);
    assert.equal(finished, true, 'before the fix every retry answered NoSuchUpload, forever');
    assert.ok(batch.every((e) => e.ack.completed));
    assert.equal(completes, 2, "the second Complete answered NoSuchUpload; the object had this file's id");
    await lake.close();
    client.destroy();
    const keys = (await listKeys(aws.s3, BUCKET, 'lostcomplete/')).filter((k) => k.endsWith('.parquet'));
    assert.equal(keys.length, 1);
  });

  test('an S3 error retrying cannot cure fails the tenure with a clear metric instead of retrying forever (finding 7)', async () => {
    const client = await freshClient();
    let denied = 0;
    client.middlewareStack.add(
      (next, context) => async (args) => {
        if (context.commandName === 'PutObjectCommand') {
          denied += 1;
          throw Object.assign(new Error('Access Denied'), {
            name: 'AccessDenied',
            $metadata: { httpStatusCode: 403 },
          });
        }
        return next(args);
      },
      { step: 'initialize', name: 'deny' },
    );
    const ctx = context(client);
    const lake = sink('denied/', ctx);
    const tenure = new ShardTenure(STREAM, SHARD, 's.1');
    const failures: Array<{ stage: string; err: unknown }> = [];
    tenure.whenFailed((stage, err) => failures.push({ stage, err }));
    await lake.openShard(tenure, undefined);
    const batch = events(tenure, 1, [{ n: 1 }]);
    await lake.write(batch);
    const flushed = await Promise.race([
      lake.flush().then(() => true),
      new Promise((r) => setTimeout(() => r(false), 10_000)),
    ]);
    assert.equal(flushed, true, 'before the fix the upload was retried silently forever');
    assert.equal(denied, 1, 'not retried');
    assert.deepEqual(
      failures.map((f) => f.stage),
      ['sink'],
    );
    assert.match(String((failures[0]!.err as Error).message), /AccessDenied \(403\)/);
    assert.equal(await metricSum(ctx, 'ksw_parquet_permanent_errors_total', { error: 'AccessDenied' }), 1);
    assert.equal(batch[0]!.ack.completed, false);
    await lake.close();
    client.destroy();
  });

  test("flushShard writes the tenure's open files now and leaves the others open", async () => {
    const ctx = context();
    const lake = sink('flushshard/', ctx, { roll: { maxFileAgeMs: 600_000 } });
    const a = new ShardTenure(STREAM, SHARD, 't.1');
    const b = new ShardTenure(STREAM, 'shardId-000000000001', 't.2');
    await lake.openShard(a, undefined);
    await lake.openShard(b, undefined);
    const ofA = events(a, 1, [{ n: 1 }]);
    const ofB = events(b, 1, [{ n: 2 }]).map((e) => ({
      ...e,
      origin: { ...e.origin, shardId: 'shardId-000000000001' },
    }));
    await lake.write([...ofA, ...ofB]);
    await lake.flushShard(a);
    assert.equal(ofA[0]!.ack.completed, true);
    assert.equal(ofB[0]!.ack.completed, false);
    await lake.close();
    assert.equal(ofB[0]!.ack.completed, true);
    // An event acked without a detached tenure would not be accepted as such: the acks are the tenure's.
    assert.notEqual(ofA[0]!.ack.tenure, new Ack(() => undefined).tenure);
  });
});
