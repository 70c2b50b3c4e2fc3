/**
 * `npm run bench:e2e`: the whole worker against the local emulators (kinesalite, dynalite, s3rver), with the
 * emulator's own ceiling measured next to it, and the CPU of every process during the steady run, so it is
 * clear which one is the bottleneck.
 *
 *   1. write ceiling: KinesisProducer puts the data set as fast as kinesalite takes it;
 *   2. read ceiling: bare GetRecords loops on every shard, no processing, until every record is read;
 *   3. worker drain: the worker reads the same records from TRIM_HORIZON (chain: decode -> Parquet on
 *      s3rver), timed until every record went through the chain, and until every shard's checkpoint is at
 *      its last record (that also waits for files to roll on age, `roll.maxFileAgeMs` 2 s, and the 500 ms
 *      checkpoint interval);
 *   4. steady run (`--seconds`, default 300): a producer in a child process keeps putting as fast as
 *      kinesalite takes records while the worker consumes; every second the bench samples the backlog
 *      (produced - fetched), the worker's oldest-unacked age, and the CPU of the worker (this process), the
 *      producer, kinesalite, dynalite and s3rver, plus the worker's event-loop utilization.
 * kinesalite is one Node.js process: when it uses a whole core while the worker's event loop is not busy,
 * the emulator is the bottleneck. `--shards` (default 8), `--records` (default 100000).
 * Results: a table and bench/results/e2e-<time>.json.
 */
import { type ChildProcess, fork } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
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
import { fmt, machine, printTable, type TableRow, writeResults } from './lib.js';

const { values } = parseArgs({
  options: {
    shards: { type: 'string', default: '8' },
    records: { type: 'string', default: '100000' },
    seconds: { type: 'string', default: '300' },
    producer: { type: 'string' },
  },
  allowPositionals: false,
  strict: false,
});
const SHARDS = Number(values.shards);
const RECORDS = Number(values.records);
const SECONDS = Number(values.seconds);

const seconds = (startNs: bigint) => Number(process.hrtime.bigint() - startNs) / 1e9;
const percentile = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? 0 : s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
};

/** CPU seconds (user + system) of a process, from /proc (clock ticks of 1/100 s). */
function cpuOf(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / 100;
  } catch {
    return Number.NaN;
  }
}

/** The steady-run producer, in its own process so it does not share the worker's event loop. */
async function producerChild(options: { awsConfig: unknown; stream: string }): Promise<void> {
  const aws = createAwsClients(awsConfigSchema.parse(options.awsConfig));
  const producer = new KinesisProducer(aws.kinesis, options.stream, { concurrency: 4 });
  let produced = 0;
  let stop = false;
  process.on('message', (m) => {
    if (m === 'stop') stop = true;
  });
  const report = setInterval(() => process.send?.({ produced }), 250);
  for (let round = 0; !stop; round++) {
    const batch = [...generateSpans(2_000, { seed: 100 + round })].map(spanRecord);
    await producer.put(batch);
    produced += batch.length;
  }
  clearInterval(report);
  process.send?.({ produced, done: true });
  aws.destroy();
}

async function main(): Promise<void> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'ksw-bench-e2e-'));
  const stack = await startLocalStack({ dataDir: dir });
  const aws = createAwsClients(awsConfigSchema.parse(stack.awsConfig));
  const out: Record<string, number> = {};
  const cpuShares: Record<string, number> = {};
  let producer: ChildProcess | undefined;
  try {
    const stream = 'bench-e2e';
    const bucket = 'bench-e2e-lake';
    await aws.s3.send(new CreateBucketCommand({ Bucket: bucket }));
    const shards = await createStream(aws.kinesis, stream, SHARDS);
    const data = [...generateSpans(RECORDS, { seed: 11 })].map(spanRecord);

    // 1. write ceiling
    const writer = new KinesisProducer(aws.kinesis, stream, { concurrency: 8 });
    let t0 = process.hrtime.bigint();
    const put = await writer.put(data);
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
          roll: { maxFileAgeMs: 2_000 },
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
    const drainCpu0 = { worker: cpuOf(process.pid), kinesalite: cpuOf(stack.kinesis.pid) };
    const drainElu0 = performance.eventLoopUtilization();
    const worker = await Worker.start(config, { logger: pino({ level: 'warn' }) });
    out.workerStartSeconds = seconds(t0);
    while ((await total(worker, 'ksw_decode_events_total')) < RECORDS) {
      await new Promise((r) => setTimeout(r, 20));
    }
    const drainSeconds = seconds(t0);
    out.workerDrainThroughChain = RECORDS / drainSeconds;
    out.drainWorkerCpu = (cpuOf(process.pid) - drainCpu0.worker) / drainSeconds;
    out.drainKinesaliteCpu = (cpuOf(stack.kinesis.pid) - drainCpu0.kinesalite) / drainSeconds;
    out.drainEventLoopUtilization = performance.eventLoopUtilization(drainElu0).utilization;
    while (!(await caughtUp())) await new Promise((r) => setTimeout(r, 100));
    out.workerDrainCheckpointed = RECORDS / seconds(t0);

    // 4. steady run: a producer process puts continuously; sample lag and CPU every second
    let produced = 0;
    let producerDone: () => void = () => undefined;
    const producerFinished = new Promise<void>((resolve) => {
      producerDone = resolve;
    });
    producer = fork(
      import.meta.filename,
      ['--producer', JSON.stringify({ awsConfig: stack.awsConfig, stream })],
      {
        execArgv: ['--import', 'tsx'],
        stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
      },
    );
    producer.on('message', (m: { produced: number; done?: boolean }) => {
      produced = m.produced;
      if (m.done) producerDone();
    });
    const pids: Record<string, number> = {
      worker: process.pid,
      producer: producer.pid!,
      kinesalite: stack.kinesis.pid,
      dynalite: stack.dynamodb.pid,
      s3rver: stack.s3.pid,
    };
    const ages: number[] = [];
    const backlog: number[] = [];
    const fetched0 = await total(worker, 'ksw_kinesis_records_fetched_total');
    // Let the producer reach speed before sampling.
    await new Promise((r) => setTimeout(r, 2_000));
    const produced0 = produced;
    const fetchedStart = await total(worker, 'ksw_kinesis_records_fetched_total');
    const cpu0 = Object.fromEntries(Object.entries(pids).map(([k, pid]) => [k, cpuOf(pid)]));
    const elu0 = performance.eventLoopUtilization();
    t0 = process.hrtime.bigint();
    while (seconds(t0) < SECONDS) {
      await new Promise((r) => setTimeout(r, 1_000));
      ages.push(await max(worker, 'ksw_shard_oldest_unacked_age_seconds'));
      backlog.push(produced - ((await total(worker, 'ksw_kinesis_records_fetched_total')) - fetched0));
    }
    const steadySeconds = seconds(t0);
    for (const [k, pid] of Object.entries(pids)) cpuShares[k] = (cpuOf(pid) - cpu0[k]!) / steadySeconds;
    out.workerEventLoopUtilization = performance.eventLoopUtilization(elu0).utilization;
    out.steadyProduced = (produced - produced0) / steadySeconds;
    out.steadyConsumed =
      ((await total(worker, 'ksw_kinesis_records_fetched_total')) - fetchedStart) / steadySeconds;
    producer.send('stop');
    await producerFinished;
    out.oldestUnackedP50 = percentile(ages, 50);
    out.oldestUnackedP99 = percentile(ages, 99);
    out.backlogP50 = percentile(backlog, 50);
    out.backlogP99 = percentile(backlog, 99);
    out.backlogEnd = backlog.at(-1) ?? 0;
    t0 = process.hrtime.bigint();
    // Caught up: everything produced was fetched, and every shard's checkpoint stopped moving at its end.
    while ((await total(worker, 'ksw_kinesis_records_fetched_total')) - fetched0 < produced) {
      await new Promise((r) => setTimeout(r, 100));
    }
    out.catchUpSeconds = seconds(t0);
    await worker.stop();
  } finally {
    producer?.kill('SIGKILL');
    aws.destroy();
    await stack.stop();
    rmSync(dir, { recursive: true, force: true });
  }

  const pct = (x: number) => `${(100 * x).toFixed(0)} %`;
  const bottleneck =
    cpuShares.kinesalite! > 0.85 && out.workerEventLoopUtilization! < 0.85
      ? 'kinesalite (a whole core) while the worker has room: the emulator is the bottleneck'
      : out.workerEventLoopUtilization! >= 0.85
        ? 'the worker (its event loop is saturated)'
        : 'neither saturated: the two cores are shared by all processes';
  const rows: TableRow[] = [
    {
      figure: 'kinesalite write ceiling (PutRecords, 8 in flight)',
      value: `${fmt(out.writeCeiling!)} rec/s`,
    },
    {
      figure: 'kinesalite read ceiling (bare GetRecords, all shards)',
      value: `${fmt(out.readCeiling!)} rec/s`,
    },
    {
      figure: 'worker drain from TRIM_HORIZON, through the chain',
      value: `${fmt(out.workerDrainThroughChain!)} rec/s`,
      note: `${(out.workerDrainThroughChain! / out.readCeiling!).toFixed(2)} of the read ceiling (start-up ${out.workerStartSeconds!.toFixed(1)} s included); CPU: worker ${pct(out.drainWorkerCpu!)} (event loop ${pct(out.drainEventLoopUtilization!)} busy), kinesalite ${pct(out.drainKinesaliteCpu!)}`,
    },
    {
      figure: '  ... until every checkpoint is at the end',
      value: `${fmt(out.workerDrainCheckpointed!)} rec/s`,
      note: 'includes the 2 s file age roll, upload and the 500 ms checkpoint interval',
    },
    { figure: `steady run, ${SECONDS} s: produced`, value: `${fmt(out.steadyProduced!)} rec/s` },
    {
      figure: `steady run, ${SECONDS} s: consumed`,
      value: `${fmt(out.steadyConsumed!)} rec/s`,
      note: `${(out.steadyConsumed! / out.steadyProduced!).toFixed(2)} of produced`,
    },
    {
      figure: '  oldest unacked record age p50 / p99',
      value: `${out.oldestUnackedP50!.toFixed(1)} / ${out.oldestUnackedP99!.toFixed(1)} s`,
    },
    {
      figure: '  backlog (produced - fetched) p50 / p99 / end',
      value: `${fmt(out.backlogP50!)} / ${fmt(out.backlogP99!)} / ${fmt(out.backlogEnd!)}`,
      note: `records; caught up ${out.catchUpSeconds!.toFixed(1)} s after the producer stopped`,
    },
    {
      figure: '  CPU (share of one core) during the steady run',
      value: `worker ${pct(cpuShares.worker!)}`,
      note: `event loop ${pct(out.workerEventLoopUtilization!)} busy; kinesalite ${pct(cpuShares.kinesalite!)}, producer ${pct(cpuShares.producer!)}, dynalite ${pct(cpuShares.dynalite!)}, s3rver ${pct(cpuShares.s3rver!)}`,
    },
    { figure: '  bottleneck', value: '', note: bottleneck },
  ];
  const m = machine();
  printTable(
    `end to end: ${SHARDS} shards, ${fmt(RECORDS)} spans for the ceilings; ${m.model} (${m.cpus} cores), node ${m.node}, load average ${m.loadAverage}`,
    rows,
  );
  const file = writeResults('e2e', {
    shards: SHARDS,
    records: RECORDS,
    seconds: SECONDS,
    machine: m,
    cpuShares,
    ...out,
  });
  process.stdout.write(`results: ${file}\n`);
}

async function total(worker: Worker, name: string): Promise<number> {
  const m = await worker.metrics.getSingleMetric(name)?.get();
  return (m?.values ?? []).reduce((s, v) => s + v.value, 0);
}

async function max(worker: Worker, name: string): Promise<number> {
  const m = await worker.metrics.getSingleMetric(name)?.get();
  return (m?.values ?? []).reduce((s, v) => Math.max(s, v.value), 0);
}

if (typeof values.producer === 'string') await producerChild(JSON.parse(values.producer));
else await main();
