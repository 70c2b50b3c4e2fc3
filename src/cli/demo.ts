/**
 * `ksw demo`: the whole pipeline on embedded emulators, no Docker. Starts Kinesis, S3 and DynamoDB
 * emulators on 127.0.0.1, produces synthetic spans (traceId as partition key) plus a few malformed
 * records, runs the worker, shows progress, then verifies the Parquet output with DuckDB and prints a summary.
 */
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { CreateStreamCommand, DescribeStreamSummaryCommand } from '@aws-sdk/client-kinesis';
import {
  CreateBucketCommand,
  GetObjectCommand,
  ListObjectsV2Command,
  type S3Client,
} from '@aws-sdk/client-s3';
import { DuckDBInstance } from '@duckdb/node-api';
import pino from 'pino';
import type { Registry } from 'prom-client';
import { stringify } from 'yaml';
import { validateConfig } from '../config/load.js';
import { awsConfigSchema, createAwsClients } from '../core/aws.js';
import { startLocalStack } from '../local/emulators.js';
import { KinesisProducer } from '../producer/kinesis-producer.js';
import { generateSpans } from '../producer/synthetic-spans.js';
import { Worker } from '../runtime/worker.js';

const STREAM = 'demo-spans';
const BUCKET = 'demo-lake';
const MALFORMED = ['{"traceId": "cut off', 'not json at all', '[1, 2, 3]'];

async function metricSum(
  registry: Registry,
  name: string,
  filter?: (labels: Record<string, unknown>) => boolean,
) {
  const metric = await registry.getSingleMetric(name)?.get();
  return (metric?.values ?? [])
    .filter((v) => !filter || filter(v.labels))
    .reduce((sum, v) => sum + v.value, 0);
}

async function metricMax(registry: Registry, name: string) {
  const metric = await registry.getSingleMetric(name)?.get();
  return Math.max(0, ...(metric?.values ?? []).map((v) => v.value));
}

async function downloadPrefix(s3: S3Client, prefix: string, dir: string): Promise<number> {
  let token: string | undefined;
  let count = 0;
  do {
    const out = await s3.send(
      new ListObjectsV2Command({ Bucket: BUCKET, Prefix: prefix, ContinuationToken: token }),
    );
    for (const o of out.Contents ?? []) {
      const body = await s3.send(new GetObjectCommand({ Bucket: BUCKET, Key: o.Key! }));
      const file = path.join(dir, o.Key!);
      mkdirSync(path.dirname(file), { recursive: true });
      writeFileSync(file, await body.Body!.transformToByteArray());
      count += 1;
    }
    token = out.IsTruncated ? out.NextContinuationToken : undefined;
  } while (token);
  return count;
}

export async function demoCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      records: { type: 'string', default: '20000' },
      shards: { type: 'string', default: '4' },
      dir: { type: 'string', default: '.local/demo' },
    },
  });
  const total = Number(values.records);
  const shards = Number(values.shards);
  if (!Number.isInteger(total) || total < 1 || !Number.isInteger(shards) || shards < 1 || shards > 100) {
    process.stderr.write('demo: --records must be a positive integer and --shards between 1 and 100\n');
    return 2;
  }
  const dir = path.resolve(values.dir);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  const out = (line: string) => process.stdout.write(`${line}\n`);
  const started = Date.now();

  out(`starting emulators (kinesalite, s3rver, dynalite) on 127.0.0.1, data in ${dir}`);
  const stack = await startLocalStack({ dataDir: path.join(dir, 'emulators') });
  const aws = createAwsClients(awsConfigSchema.parse(stack.awsConfig));
  let worker: Worker | undefined;
  let interrupted = false;
  const onSigint = () => {
    interrupted = true;
  };
  process.once('SIGINT', onSigint);
  try {
    await aws.s3.send(new CreateBucketCommand({ Bucket: BUCKET }));
    await aws.kinesis.send(new CreateStreamCommand({ StreamName: STREAM, ShardCount: shards }));
    for (let i = 0; i < 200; i++) {
      const d = await aws.kinesis.send(new DescribeStreamSummaryCommand({ StreamName: STREAM }));
      if (d.StreamDescriptionSummary?.StreamStatus === 'ACTIVE') break;
      await new Promise((r) => setTimeout(r, 50));
    }

    const config = validateConfig({
      app: { name: 'demo', workerId: 'demo-worker' },
      aws: stack.awsConfig,
      consumers: [{ type: 'polling', stream: STREAM, startPosition: 'TRIM_HORIZON', idleIntervalMs: 250 }],
      checkpoints: { table: 'demo-leases', intervalMs: 2_000 },
      sinks: {
        lake: {
          type: 's3_parquet',
          bucket: BUCKET,
          prefix: 'spans/',
          compression: 'zstd',
          roll: { maxFileAgeMs: 5_000 },
          columns: [
            { name: 'traceId', type: 'string' },
            { name: 'spanId', type: 'string' },
            { name: 'name', type: 'string' },
            { name: 'serviceName', type: 'string' },
            { name: 'startTimeUnixNano', type: 'int64' },
            { name: 'endTimeUnixNano', type: 'int64' },
            { name: 'durationNano', type: 'int64' },
            { name: 'startTime', type: 'timestamp_us', path: 'startTimeUnixNano', timeUnit: 'ns' },
            { name: 'statusCode', type: 'int32', path: 'status.code' },
          ],
        },
      },
      dlq: { type: 's3', bucket: BUCKET, prefix: 'dlq/' },
      server: { port: 0 },
    });
    writeFileSync(path.join(dir, 'worker.yaml'), stringify(config));
    worker = await Worker.start(config, { logger: pino({ level: 'warn' }) });
    out(
      `worker started; metrics on http://127.0.0.1:${worker.address.port}/metrics; config in ${path.join(dir, 'worker.yaml')}`,
    );

    // Produce in the background while the worker reads.
    const producer = new KinesisProducer(aws.kinesis, STREAM);
    const produced: Array<{ spanId: string; startTimeUnixNano: string }> = [];
    const producing = (async () => {
      const batch: Array<{ partitionKey: string; data: Uint8Array }> = [];
      for (const span of generateSpans(total)) {
        produced.push({ spanId: span.spanId, startTimeUnixNano: span.startTimeUnixNano });
        batch.push({ partitionKey: span.traceId, data: Buffer.from(JSON.stringify(span)) });
        if (batch.length === 2_000) await producer.put(batch.splice(0));
        if (interrupted) return;
      }
      batch.push(...MALFORMED.map((m, i) => ({ partitionKey: `malformed-${i}`, data: Buffer.from(m) })));
      await producer.put(batch);
    })();

    const expected = total + MALFORMED.length;
    const deadline = Date.now() + 60_000 + total * 5;
    let rows = 0;
    let dead = 0;
    let fetched = 0;
    let producingDone = false;
    void producing.finally(() => {
      producingDone = true;
    });
    while (!interrupted) {
      await new Promise((r) => setTimeout(r, 1_000));
      rows = await metricSum(worker.metrics, 'ksw_parquet_rows_total');
      dead = await metricSum(worker.metrics, 'ksw_dlq_records_total');
      fetched = await metricSum(worker.metrics, 'ksw_kinesis_records_fetched_total');
      const files = await metricSum(worker.metrics, 'ksw_parquet_files_total');
      const lag = await metricMax(worker.metrics, 'ksw_kinesis_millis_behind_latest');
      out(
        `  produced ${producingDone ? expected : produced.length}  fetched ${fetched}  rows written ${rows}  files ${files}  dlq ${dead}  max lag ${lag} ms`,
      );
      if (producingDone && rows + dead >= expected) break;
      if (Date.now() > deadline)
        throw new Error(`demo timed out: ${rows + dead} of ${expected} records written`);
    }
    await producing;
    if (interrupted) {
      out('interrupted: stopping');
      return 130;
    }
    const lagAtEnd = await metricMax(worker.metrics, 'ksw_kinesis_millis_behind_latest');
    const files = await metricSum(worker.metrics, 'ksw_parquet_files_total');
    await worker.stop();
    worker = undefined;
    const elapsed = (Date.now() - started) / 1000;

    const parquetDir = path.join(dir, 'parquet');
    const downloaded = await downloadPrefix(aws.s3, 'spans/', parquetDir);
    await downloadPrefix(aws.s3, 'dlq/', path.join(dir, 'dlq-objects'));

    // Independent check: DuckDB reads the files; counts and exact int64 values against what was produced.
    const producedFile = path.join(dir, 'produced.csv');
    writeFileSync(
      producedFile,
      `spanId,startTimeUnixNano\n${produced.map((p) => `${p.spanId},${p.startTimeUnixNano}`).join('\n')}\n`,
    );
    const instance = await DuckDBInstance.create(':memory:');
    const conn = await instance.connect();
    const glob = `${parquetDir}/spans/**/*.parquet`;
    const check = (
      await conn.runAndReadAll(`
      WITH files AS (SELECT * FROM read_parquet('${glob}')),
           produced AS (SELECT spanId, startTimeUnixNano::BIGINT AS t FROM read_csv('${producedFile}', columns = {'spanId': 'VARCHAR', 'startTimeUnixNano': 'VARCHAR'}, header = true))
      SELECT (SELECT count(*) FROM files) AS rows,
             (SELECT count(DISTINCT (_shard_id, _sequence_number)) FROM files) AS distinct_records,
             (SELECT count(*) FROM produced p JOIN files f ON f.spanId = p.spanId AND f.startTimeUnixNano = p.t) AS exact_matches`)
    ).getRowObjects()[0] as { rows: bigint; distinct_records: bigint; exact_matches: bigint };
    conn.closeSync();
    instance.closeSync();

    const ok =
      Number(check.rows) === total &&
      Number(check.distinct_records) === total &&
      Number(check.exact_matches) === total &&
      dead === MALFORMED.length;
    out('');
    out('summary');
    out(`  records produced      ${expected} (${total} spans + ${MALFORMED.length} malformed)`);
    out(`  records fetched       ${fetched}`);
    out(`  rows in Parquet       ${check.rows} (distinct records ${check.distinct_records})`);
    out(`  exact int64 matches   ${check.exact_matches} of ${total}`);
    out(`  Parquet files         ${downloaded} (worker counted ${files})`);
    out(`  DLQ letters           ${dead} (expected ${MALFORMED.length}) -> ${path.join(dir, 'dlq-objects')}`);
    out(`  lag at end            ${lagAtEnd} ms behind latest`);
    out(
      `  elapsed               ${elapsed.toFixed(1)} s (${Math.round(expected / elapsed)} records/s end to end, including the 5 s file roll)`,
    );
    out(`  Parquet files are in  ${parquetDir}/spans/`);
    out(
      `  look at them:         duckdb -c "SELECT serviceName, count(*) FROM read_parquet('${glob}') GROUP BY 1"`,
    );
    out(
      ok
        ? 'demo OK: every produced record is in Parquet exactly once, int64 values exact'
        : 'demo FAILED verification',
    );
    return ok ? 0 : 1;
  } finally {
    process.removeListener('SIGINT', onSigint);
    if (worker) await worker.stop().catch(() => undefined);
    aws.destroy();
    await stack.stop();
  }
}
