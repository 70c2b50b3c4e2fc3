/**
 * The committed bad-input corpus (test/fixtures/bad-input, see generate.ts there) through a running
 * worker: every bad record lands in the DLQ with its reason and its exact original bytes, every good
 * one in Parquet; the worker never stops, its memory stays bounded, and its info-level log carries
 * neither record payloads nor credentials. The span corpus (spans-manifest.json) goes through otel_spans and
 * red_metrics: spans with absurd times are dead-lettered one by one with their reasons (inside an OTLP
 * request, only the bad span), and a flood of 10,000 unique http.route values stops at the RED cardinality
 * cap: the series count and the exported series stay at maxSeries, the rest is counted as overflow.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { Writable } from 'node:stream';
import { CreateBucketCommand, GetObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import pino from 'pino';
import { afterAll, beforeAll, describe, it } from 'vitest';
import { validateConfig } from '../../src/config/load.js';
import { LeaseTable } from '../../src/consumers/lease-table.js';
import { Worker } from '../../src/runtime/worker.js';
import { parseDeadLetterLine } from '../../src/sinks/s3-dead-letter.js';
import type { Fixture, SpanFixture } from '../fixtures/bad-input/generate.js';
import { download, duck, listKeys } from '../helpers/parquet.js';
import {
  createStream,
  putRecords,
  silentLogger,
  startTestStack,
  type TestStack,
  waitFor,
} from '../helpers/stack.js';

const FIXTURES = path.resolve(import.meta.dirname, '../fixtures/bad-input');

describe('bad-input corpus through the worker', () => {
  let t: TestStack;
  beforeAll(async () => {
    t = await startTestStack();
  });
  afterAll(async () => {
    await t.stop();
  });

  it('dead-letters each bad record with its reason and bytes, keeps the good ones, never stops', async () => {
    const manifest = JSON.parse(readFileSync(path.join(FIXTURES, 'manifest.json'), 'utf8')) as Fixture[];
    const stream = 'bad-input';
    const lake = 'fixtures-lake';
    for (const b of [lake, 'fixtures-payloads', 'fixtures-foreign']) {
      await t.aws.s3.send(new CreateBucketCommand({ Bucket: b }));
    }
    await t.aws.s3.send(
      new PutObjectCommand({ Bucket: 'fixtures-payloads', Key: 'tampered.json', Body: '{"original":false}' }),
    );
    await t.aws.s3.send(
      new PutObjectCommand({
        Bucket: 'fixtures-foreign',
        Key: 'secret.json',
        Body: '{"secret":"do-not-read"}',
      }),
    );
    await createStream(t.aws.kinesis, stream, 1);
    const bytes = manifest.map((f) => readFileSync(path.join(FIXTURES, f.file)));
    // One put per fixture keeps every request under the 5 MiB PutRecords limit whatever the sizes.
    const sequences: string[] = [];
    for (let i = 0; i < manifest.length; i++) {
      const [r] = await putRecords(t.aws.kinesis, stream, [
        { partitionKey: manifest[i]!.partitionKey, data: bytes[i]! },
      ]);
      sequences.push(r!.sequenceNumber);
    }

    let log = '';
    const logger = pino(
      { level: 'info' },
      new Writable({
        write(chunk, _enc, cb) {
          log += String(chunk);
          cb();
        },
      }),
    );
    const config = validateConfig({
      app: { name: 'bad-input', workerId: 'bad-input-1' },
      aws: t.stack.awsConfig,
      consumers: [{ type: 'polling', stream, idleIntervalMs: 100, busyIntervalMs: 0 }],
      checkpoints: { table: 'bad-input-leases', intervalMs: 300, shardSyncIntervalMs: 1_000 },
      decode: { s3Pointers: { enabled: true, allowedBuckets: ['fixtures-payloads'] } },
      sinks: {
        lake: {
          type: 's3_parquet',
          bucket: lake,
          prefix: 'lake/',
          roll: { maxFileAgeMs: 500 },
          columns: [{ name: 'traceId', type: 'string' }],
        },
      },
      dlq: { type: 's3', bucket: lake, prefix: 'dlq/', maxBatchAgeMs: 200 },
      server: { port: 0 },
      shutdown: { deadlineMs: 15_000 },
    });
    const rssBefore = process.memoryUsage().rss;
    let rssPeak = rssBefore;
    const sampler = setInterval(() => {
      rssPeak = Math.max(rssPeak, process.memoryUsage().rss);
    }, 50);
    const worker = await Worker.start(config, { logger });
    const leases = new LeaseTable(t.aws.dynamodb, 'bad-input-leases');
    const shardId = (await leases.list())[0]?.leaseKey ?? 'shardId-000000000000';
    try {
      await waitFor(
        async () => (await leases.get(shardId))?.checkpoint === sequences.at(-1),
        90_000,
        'the checkpoint to reach the last fixture',
      );
      assert.equal(worker.status().ready, true, 'the worker is still running');
    } finally {
      clearInterval(sampler);
      await worker.stop();
    }

    const letters = new Map<string, { reason: string; data: Buffer }>();
    for (const key of await listKeys(t.aws.s3, lake, 'dlq/')) {
      const out = await t.aws.s3.send(new GetObjectCommand({ Bucket: lake, Key: key }));
      for (const line of (await out.Body!.transformToString()).split('\n').filter(Boolean)) {
        const l = parseDeadLetterLine(line);
        letters.set(l.sequenceNumber, { reason: l.reason, data: Buffer.from(l.data, 'base64') });
      }
    }
    const dir = path.join(t.dir, 'bad-input-parquet');
    await download(t.aws.s3, lake, 'lake/', dir);
    const rows = await duck(
      `SELECT _sequence_number AS s, count(*)::INT AS n FROM read_parquet('${dir}/**/*.parquet') GROUP BY 1`,
    );
    const written = new Map(rows.map((r) => [r.s as string, r.n as number]));

    const table: string[] = [];
    manifest.forEach((f, i) => {
      const seq = sequences[i]!;
      const letter = letters.get(seq);
      if (f.dlqReason) {
        assert.ok(letter, `${f.file} (${f.what}) must be dead-lettered`);
        assert.match(letter.reason, new RegExp(f.dlqReason), f.file);
        assert.ok(letter.data.equals(bytes[i]!), `${f.file}: the DLQ keeps the exact original bytes`);
        assert.equal(written.get(seq), undefined, `${f.file} must not reach the sink`);
        table.push(`DLQ   ${f.what}: ${letter.reason.slice(0, 100)}`);
      } else {
        assert.equal(letter, undefined, `${f.file} (${f.what}) must not be dead-lettered: ${letter?.reason}`);
        assert.equal(written.get(seq), f.events, `${f.file}: rows written`);
        table.push(`ok    ${f.what}`);
      }
    });
    process.stdout.write(`${table.join('\n')}\n`);
    const growthMiB = (rssPeak - rssBefore) / 1048576;
    // The gzip bomb inflates to 256 MiB; the limit (64 MiB) must stop it long before that.
    assert.ok(growthMiB < 400, `RSS grew by ${growthMiB.toFixed(0)} MiB`);
    // Security: the info-level log names problems, never payloads or secrets.
    assert.ok(log.length > 0);
    for (const secret of [
      'do-not-read',
      'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx',
      '"original"',
      t.stack.awsConfig.credentials.secretAccessKey,
    ]) {
      assert.ok(!log.includes(secret), `the log must not contain ${secret}`);
    }
  });
  it('span corpus through otel_spans and red_metrics: absurd times dead-lettered, the cardinality flood capped', async () => {
    const manifest = JSON.parse(
      readFileSync(path.join(FIXTURES, 'spans-manifest.json'), 'utf8'),
    ) as SpanFixture[];
    const stream = 'bad-spans';
    const lake = 'fixtures-spans-lake';
    const maxSeries = 100;
    await t.aws.s3.send(new CreateBucketCommand({ Bucket: lake }));
    await createStream(t.aws.kinesis, stream, 1);
    const bytes = manifest.map((f) => readFileSync(path.join(FIXTURES, f.file)));
    const sequences: string[] = [];
    for (let i = 0; i < manifest.length; i++) {
      const [r] = await putRecords(t.aws.kinesis, stream, [
        { partitionKey: manifest[i]!.partitionKey, data: bytes[i]! },
      ]);
      sequences.push(r!.sequenceNumber);
    }
    const config = validateConfig({
      app: { name: 'bad-spans', workerId: 'bad-spans-1' },
      aws: t.stack.awsConfig,
      consumers: [{ type: 'polling', stream, idleIntervalMs: 100, busyIntervalMs: 0 }],
      checkpoints: { table: 'bad-spans-leases', intervalMs: 300, shardSyncIntervalMs: 1_000 },
      processors: [
        { type: 'otel_spans' },
        { type: 'red_metrics', dimensions: ['http.route'], maxSeries, exemplars: true },
      ],
      sinks: {
        lake: {
          type: 's3_parquet',
          bucket: lake,
          prefix: 'lake/',
          roll: { maxFileAgeMs: 500 },
          columns: [
            { name: 'spanId', type: 'string' },
            { name: 'startTimeUnixNano', type: 'int64' },
          ],
        },
      },
      dlq: { type: 's3', bucket: lake, prefix: 'dlq/', maxBatchAgeMs: 200 },
      server: { port: 0 },
      shutdown: { deadlineMs: 15_000 },
    });
    const worker = await Worker.start(config, { logger: silentLogger });
    const leases = new LeaseTable(t.aws.dynamodb, 'bad-spans-leases');
    const shardId = (await leases.list())[0]?.leaseKey ?? 'shardId-000000000000';
    let exposition = '';
    const heapBefore = process.memoryUsage().heapUsed;
    try {
      await waitFor(
        async () => (await leases.get(shardId))?.checkpoint === sequences.at(-1),
        90_000,
        'the checkpoint to reach the last span fixture',
      );
      assert.equal(worker.status().ready, true, 'the worker is still running');
      const res = await fetch(`http://127.0.0.1:${worker.address.port}/metrics`);
      exposition = await res.text();
    } finally {
      await worker.stop();
    }
    const heapGrowthMiB = (process.memoryUsage().heapUsed - heapBefore) / 1048576;
    const sample = (name: string, labels = '') =>
      exposition
        .split('\n')
        .filter((l) => l.startsWith(`${name}{`) && l.includes(labels))
        .reduce((a, l) => a + Number(l.slice(l.lastIndexOf(' ') + 1)), 0);

    const letters = new Map<string, string[]>();
    for (const key of await listKeys(t.aws.s3, lake, 'dlq/')) {
      const out = await t.aws.s3.send(new GetObjectCommand({ Bucket: lake, Key: key }));
      for (const line of (await out.Body!.transformToString()).split('\n').filter(Boolean)) {
        const l = parseDeadLetterLine(line);
        letters.set(l.sequenceNumber, [...(letters.get(l.sequenceNumber) ?? []), l.reason]);
      }
    }
    const dir = path.join(t.dir, 'bad-spans-parquet');
    await download(t.aws.s3, lake, 'lake/', dir);
    const rows = await duck(
      `SELECT _sequence_number AS s, count(*)::INT AS n FROM read_parquet('${dir}/**/*.parquet') GROUP BY 1`,
    );
    const written = new Map(rows.map((r) => [r.s as string, r.n as number]));
    const table: string[] = [];
    let validSpans = 0;
    let rejected = 0;
    let floodRoutes = 0;
    manifest.forEach((f, i) => {
      const seq = sequences[i]!;
      const reasons = letters.get(seq) ?? [];
      assert.equal(written.get(seq) ?? 0, f.spans, `${f.file} (${f.what}): span events written`);
      assert.equal(reasons.length, f.dlqReasons.length, `${f.file}: dead letters ${JSON.stringify(reasons)}`);
      f.dlqReasons.forEach((want, k) => {
        assert.match(reasons[k]!, new RegExp(want), f.file);
      });
      validSpans += f.spans;
      rejected += f.dlqReasons.length;
      floodRoutes += f.uniqueRoutes ?? 0;
      table.push(`${f.dlqReasons.length ? 'DLQ ' : 'ok  '} ${f.what}: ${reasons.join('; ').slice(0, 100)}`);
    });
    process.stdout.write(`${table.join('\n')}\n`);
    // Every rejection counted; all but the unparseable end time (malformed) as implausible times.
    assert.equal(sample('ksw_spans_rejected_total'), rejected);
    assert.equal(sample('ksw_spans_rejected_total', 'reason="implausible_time"'), rejected - 1);
    // Series: one for the plausible spans (no route, or "/ok"), then flood routes until the cap.
    const series = sample('ksw_red_series');
    const overflow = sample('ksw_red_overflow_spans_total');
    const requestSeries = exposition
      .split('\n')
      .filter((l) => l.startsWith('ksw_red_requests_total{')).length;
    const plausibleNonFlood = validSpans - floodRoutes;
    process.stdout.write(
      `RED: ${validSpans} spans, ${floodRoutes} unique routes; ${series} series (cap ${maxSeries}), ` +
        `${overflow} spans in the overflow series, ${requestSeries} ksw_red_requests_total series exported; ` +
        `test-process heap growth ${heapGrowthMiB.toFixed(0)} MiB\n`,
    );
    assert.equal(
      series,
      maxSeries + 1,
      'the cap holds the series count (maxSeries, plus the overflow series)',
    );
    assert.ok(requestSeries <= maxSeries + 1, `exported series bounded: ${requestSeries}`);
    assert.ok(exposition.includes('otel_metric_overflow="true"'), 'the overflow series is exported');
    // The non-flood spans use 2 series (flat span: route ""; OTLP: "/ok"); the flood fills the rest.
    assert.equal(
      overflow,
      floodRoutes - (maxSeries - 2),
      'every flood span past the cap counted as overflow',
    );
    assert.equal(
      sample('ksw_red_requests_total'),
      validSpans,
      `every plausible span counted once (${plausibleNonFlood} + flood)`,
    );
  });
});
