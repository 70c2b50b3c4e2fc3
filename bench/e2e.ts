/**
 * `npm run bench:e2e`: the whole worker against the local emulators (kinesalite, dynalite, s3rver), with the
 * emulator's own ceiling measured next to it so it is clear which one is the bottleneck.
 *
 *   1. write ceiling: KinesisProducer puts the data set as fast as kinesalite takes it;
 *   2. read ceiling: bare GetRecords loops on every shard, no processing, until every record is read;
 *   3. worker drain: the worker reads the same records from TRIM_HORIZON into Parquet on s3rver, until
 *      every shard's checkpoint is at its last record;
 *   4. steady run (`--seconds`, default 300): a producer keeps putting while the worker consumes; lag is
 *      sampled every second as the worker's oldest-unacked age and as produced-minus-checkpointed records.
 * `--shards` (default 8), `--records` (default 100000). Results: a table and bench/results/e2e-<time>.json.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { GetRecordsCommand, GetShardIteratorCommand } from '@aws-sdk/client-kinesis';
import { CreateBucketCommand } from '@aws-sdk/client-s3';
import pino from 'pino';
import { validateConfig } from '../src/config/load.js';
import { LeaseTable } from '../src/consumers/lease-table.js';
import { awsConfigSchema, createAwsClients } from '../src/core/aws.js';
import { startLocalStack } from '../src/local/emulators.js';
import { KinesisProducer } from '../src/producer/kinesis-producer.js';
import { generateSpans, spanRecord } from '../src/producer/synthetic-spans.js';
import { Worker } from '../src/runtime/worker.js';
import { createStream } from '../test/helpers/stack.js';

const { values } = parseArgs({
  options: {
    shards: { type: 'string', default: '8' },
    records: { type: 'string', default: '100000' },
    seconds: { type: 'string', default: '300' },
  },
  allowPositionals: false,
});
const SHARDS = Number(values.shards);
const RECORDS = Number(values.records);
const SECONDS = Number(values.seconds);
const ROOT = path.resolve(import.meta.dirname, '..');

const seconds = (startNs: bigint) => Number(process.hrtime.bigint() - startNs) / 1e9;
const percentile = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? 0 : s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
};

async function main(): Promise<void> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'ksw-bench-e2e-'));
  const stack = await startLocalStack({ dataDir: dir });
  const aws = createAwsClients(awsConfigSchema.parse(stack.awsConfig));
  const out: Record<string, number> = {};
  try {
    const stream = 'bench-e2e';
    const bucket = 'bench-e2e-lake';
    await aws.s3.send(new CreateBucketCommand({ Bucket: bucket }));
    const shards = await createStream(aws.kinesis, stream, SHARDS);
    const data = [...generateSpans(RECORDS, { seed: 11 })].map(spanRecord);

    // 1. write ceiling
    const producer = new KinesisProducer(aws.kinesis, stream, { concurrency: 8 });
    let t0 = process.hrtime.bigint();
    const put = await producer.put(data);
    out.writeCeiling = RECORDS / seconds(t0);
    const last = new Map<string, string>();
    for (const p of put) last.set(p.shardId, p.sequenceNumber);

    // 2. read ceiling: GetRecords as fast as the emulator answers, nothing else
    t0 = process.hrtime.bigint();
    let read = 0;
    await Promise.all(
      shards.map(async (shardId) => {
        let iterator = (
          await aws.kinesis.send(
            new GetShardIteratorCommand({
              StreamName: stream,
              ShardId: shardId,
              ShardIteratorType: 'TRIM_HORIZON',
            }),
          )
        ).ShardIterator;
        const end = last.get(shardId);
        for (;;) {
          const r = await aws.kinesis.send(new GetRecordsCommand({ ShardIterator: iterator, Limit: 10_000 }));
          read += r.Records?.length ?? 0;
          iterator = r.NextShardIterator;
          const lastSeq = r.Records?.at(-1)?.SequenceNumber;
          if (!end || lastSeq === end || !iterator) break;
        }
      }),
    );
    out.readCeiling = read / seconds(t0);

    // 3. worker drain of the same records
    const config = validateConfig({
      app: { name: 'bench-e2e', workerId: 'bench-1' },
      aws: stack.awsConfig,
      consumers: [{ type: 'polling', stream, idleIntervalMs: 50, busyIntervalMs: 0 }],
      checkpoints: { table: 'bench-e2e-leases', intervalMs: 500, shardSyncIntervalMs: 2_000 },
      sinks: {
        lake: {
          type: 's3_parquet',
          bucket,
          prefix: 'spans/',
          roll: { maxFileAgeMs: 5_000 },
          columns: [
            { name: 'traceId', type: 'string' },
            { name: 'spanId', type: 'string' },
            { name: 'serviceName', type: 'string' },
            { name: 'startTimeUnixNano', type: 'int64' },
          ],
        },
      },
      dlq: { type: 's3', bucket, prefix: 'dlq/' },
      server: { port: 0 },
      log: { level: 'warn' },
    });
    const leases = new LeaseTable(aws.dynamodb, 'bench-e2e-leases');
    const caughtUp = async () => {
      for (const [shard, seq] of last) if ((await leases.get(shard))?.checkpoint !== seq) return false;
      return true;
    };
    t0 = process.hrtime.bigint();
    const worker = await Worker.start(config, { logger: pino({ level: 'warn' }) });
    while (!(await caughtUp())) await new Promise((r) => setTimeout(r, 100));
    out.workerDrain = RECORDS / seconds(t0);

    // 4. steady run: produce continuously, sample lag
    const ages: number[] = [];
    const backlog: number[] = [];
    let produced = 0;
    let stop = false;
    const steady = new KinesisProducer(aws.kinesis, stream, { concurrency: 4 });
    const producing = (async () => {
      let round = 0;
      while (!stop) {
        const batch = [...generateSpans(5_000, { seed: 100 + round++ })].map(spanRecord);
        for (const p of await steady.put(batch)) last.set(p.shardId, p.sequenceNumber);
        produced += batch.length;
      }
    })();
    const fetched0 = await total(worker, 'ksw_kinesis_records_fetched_total');
    t0 = process.hrtime.bigint();
    while (seconds(t0) < SECONDS) {
      await new Promise((r) => setTimeout(r, 1_000));
      ages.push(await max(worker, 'ksw_shard_oldest_unacked_age_seconds'));
      backlog.push(produced - ((await total(worker, 'ksw_kinesis_records_fetched_total')) - fetched0));
    }
    const steadySeconds = seconds(t0);
    stop = true;
    await producing;
    out.steadyProduced = produced / steadySeconds;
    out.steadyConsumed =
      ((await total(worker, 'ksw_kinesis_records_fetched_total')) - fetched0) / steadySeconds;
    out.oldestUnackedP50 = percentile(ages, 50);
    out.oldestUnackedP99 = percentile(ages, 99);
    out.backlogP99 = percentile(backlog, 99);
    out.backlogEnd = backlog.at(-1) ?? 0;
    t0 = process.hrtime.bigint();
    while (!(await caughtUp())) await new Promise((r) => setTimeout(r, 100));
    out.catchUpSeconds = seconds(t0);
    await worker.stop();
  } finally {
    aws.destroy();
    await stack.stop();
    rmSync(dir, { recursive: true, force: true });
  }

  const rows: Array<[string, string]> = [
    ['kinesalite write ceiling (PutRecords, 8 in flight)', `${fmt(out.writeCeiling!)} records/s`],
    ['kinesalite read ceiling (bare GetRecords, all shards)', `${fmt(out.readCeiling!)} records/s`],
    [
      'worker drain from TRIM_HORIZON into Parquet on s3rver',
      `${fmt(out.workerDrain!)} records/s (${(out.workerDrain! / out.readCeiling!).toFixed(2)} of the read ceiling)`,
    ],
    [`steady run, ${SECONDS} s: produced`, `${fmt(out.steadyProduced!)} records/s`],
    [`steady run, ${SECONDS} s: consumed`, `${fmt(out.steadyConsumed!)} records/s`],
    [
      'oldest unacked record age p50 / p99',
      `${out.oldestUnackedP50!.toFixed(1)} s / ${out.oldestUnackedP99!.toFixed(1)} s`,
    ],
    [
      'backlog (produced - fetched) p99 / at the end',
      `${fmt(out.backlogP99!)} / ${fmt(out.backlogEnd!)} records`,
    ],
    ['catch-up after the producer stopped', `${out.catchUpSeconds!.toFixed(1)} s`],
  ];
  process.stdout.write(
    `\n${SHARDS} shards, ${fmt(RECORDS)} spans, ${os.cpus()[0]?.model} (${os.cpus().length} cores), node ${process.version}\n\n`,
  );
  for (const [k, v] of rows) process.stdout.write(`${k.padEnd(58)}${v}\n`);
  const results = path.join(ROOT, 'bench/results');
  mkdirSync(results, { recursive: true });
  const file = path.join(results, `e2e-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  writeFileSync(
    file,
    `${JSON.stringify({ shards: SHARDS, records: RECORDS, seconds: SECONDS, ...out }, null, 2)}\n`,
  );
  process.stdout.write(`results: ${path.relative(ROOT, file)}\n`);
}

function fmt(n: number): string {
  return Math.round(n).toLocaleString('en-US');
}

async function total(worker: Worker, name: string): Promise<number> {
  const m = await worker.metrics.getSingleMetric(name)?.get();
  return (m?.values ?? []).reduce((s, v) => s + v.value, 0);
}

async function max(worker: Worker, name: string): Promise<number> {
  const m = await worker.metrics.getSingleMetric(name)?.get();
  return (m?.values ?? []).reduce((s, v) => Math.max(s, v.value), 0);
}

await main();
