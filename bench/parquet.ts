/**
 * `npm run bench` (second part): rows/s of the S3 Parquet sink alone on the synthetic span data set, next to
 * JSON.parse of the same records measured in the same run (the floor any JSON pipeline pays).
 *
 * Figures (rows/s, and ratio to the JSON.parse floor), each from events to every ack completed (encode,
 * manifest and "upload" to a null S3 client that consumes the bytes):
 *   json_parse_floor             TextDecoder + JSON.parse of each record
 *   sink generic (9 columns)     the flat columns of bench/chain.ts, ZSTD, no record column
 *   sink spans schema, ZSTD      the built-in spans schema (nested maps and structs), unpartitioned
 *   sink spans schema, SNAPPY
 *   sink spans, partitioned      dt/hour/service partitions (7 services), ZSTD
 * Rates come from process CPU time (all threads), so DuckDB's share is counted; wall time is in the note.
 * Results: a table on stdout and bench/results/parquet-<timestamp>.json. `--spans N` (default 200000),
 * `--rounds N` (default 3, best round reported).
 */
import { parseArgs } from 'node:util';
import type { S3Client } from '@aws-sdk/client-s3';
import pino from 'pino';
import { Ack } from '../src/core/ack.js';
import type { AwsClients } from '../src/core/aws.js';
import type { PipelineEvent } from '../src/core/records.js';
import { detachedTenure } from '../src/core/tenure.js';
import { createRegistry } from '../src/metrics/registry.js';
import { generateSpans, spanRecord } from '../src/producer/synthetic-spans.js';
import { parquetSinkConfigSchema } from '../src/sinks/s3-parquet/config.js';
import { S3ParquetSink } from '../src/sinks/s3-parquet/index.js';
import {
  CountingDeadLetters,
  cpuSeconds,
  FLAT_COLUMNS,
  fmt,
  machine,
  median,
  NullS3,
  printTable,
  SEQUENCE_BASE,
  type TableRow,
  writeResults,
} from './lib.js';

const { values } = parseArgs({
  options: { spans: { type: 'string', default: '200000' }, rounds: { type: 'string', default: '3' } },
  allowPositionals: false,
  strict: false,
});
const SPANS = Number(values.spans);
const ROUNDS = Number(values.rounds);

const CASES: Array<{ figure: string; config: Record<string, unknown> }> = [
  { figure: 'sink generic (9 columns), ZSTD', config: { columns: FLAT_COLUMNS, recordColumn: false } },
  { figure: 'sink spans schema, ZSTD', config: { schema: 'spans' } },
  { figure: 'sink spans schema, SNAPPY', config: { schema: 'spans', compression: 'snappy' } },
  {
    figure: 'sink spans, dt/hour/service partitions',
    config: {
      schema: 'spans',
      partitioning: { template: 'dt={yyyy}-{MM}-{dd}/hour={HH}/service={field:serviceName}' },
    },
  },
];

interface Timing {
  wall: number;
  cpu: number;
}

async function main(): Promise<void> {
  const raw = [...generateSpans(SPANS, { seed: 7 })].map(spanRecord);
  const bytes = raw.reduce((n, r) => n + r.data.byteLength, 0);
  const utf8 = new TextDecoder();
  const timings = new Map<string, Timing[]>();
  const record = (figure: string, t: Timing) => timings.set(figure, [...(timings.get(figure) ?? []), t]);
  let objects = 0;

  for (let round = 0; round < ROUNDS; round++) {
    globalThis.gc?.();
    let cpu0 = cpuSeconds();
    let started = process.hrtime.bigint();
    const parsed = raw.map((r) => JSON.parse(utf8.decode(r.data)) as Record<string, unknown>);
    record('json_parse_floor', {
      wall: Number(process.hrtime.bigint() - started) / 1e9,
      cpu: cpuSeconds() - cpu0,
    });

    for (const { figure, config } of CASES) {
      let acked = 0;
      const events: PipelineEvent[] = parsed.map((value, i) => ({
        origin: {
          stream: 'bench',
          shardId: 'shardId-000000000000',
          sequenceNumber: (SEQUENCE_BASE + BigInt(i)).toString(),
          subSequenceNumber: 0,
          partitionKey: raw[i]!.partitionKey,
          arrivalTime: new Date(1_763_769_600_000 + i),
        },
        index: 0,
        value,
        raw: raw[i]!.data,
        ack: new Ack(() => {
          acked += 1;
        }),
      }));
      const s3 = new NullS3();
      const sink = new S3ParquetSink(
        'bench',
        parquetSinkConfigSchema.parse({
          type: 's3_parquet',
          bucket: 'bench-lake',
          roll: { maxFileRows: 1_000_000, maxFileBytes: 1024 * 1024 * 1024, maxFileAgeMs: 3_600_000 },
          memory: { maxBufferedBytes: 2 * 1024 * 1024 * 1024 },
          ...config,
        }),
        {
          logger: pino({ level: 'silent' }),
          metrics: createRegistry(false),
          dlq: new CountingDeadLetters(),
          aws: { s3: s3 as unknown as S3Client } as unknown as AwsClients,
        },
      );
      await sink.openShard(detachedTenure({ stream: 'bench', shardId: 'shardId-000000000000' }), undefined);
      globalThis.gc?.();
      cpu0 = cpuSeconds();
      started = process.hrtime.bigint();
      for (let i = 0; i < events.length; i += 500) await sink.write(events.slice(i, i + 500));
      await sink.flush();
      record(figure, { wall: Number(process.hrtime.bigint() - started) / 1e9, cpu: cpuSeconds() - cpu0 });
      if (acked !== SPANS) throw new Error(`${figure}: ${acked} of ${SPANS} acked`);
      objects = Math.max(objects, s3.objects);
      await sink.close();
    }
  }

  // Rates from process CPU time (all threads: DuckDB's parsing and encoding too), as in bench/chain.ts.
  const bestOf = (ts: Timing[]) => ts.reduce((a, b) => (b.cpu < a.cpu ? b : a));
  const floor = SPANS / bestOf(timings.get('json_parse_floor')!).cpu;
  const rows: TableRow[] = [...timings].map(([figure, ts]) => {
    const best = bestOf(ts);
    return {
      figure,
      value: `${fmt(SPANS / best.cpu)} rows/s`,
      ratio: SPANS / best.cpu / floor,
      note: `${fmt((best.cpu / SPANS) * 1e6, 2)} us/row; wall ${fmt(SPANS / best.wall)}/s; CPU median ${fmt(SPANS / median(ts.map((t) => t.cpu)))}/s over ${ts.length} rounds`,
    };
  });
  const m = machine();
  printTable(
    `Parquet sink alone: ${fmt(SPANS)} spans, ${(bytes / SPANS).toFixed(0)} bytes each on average, best of ${ROUNDS} rounds by CPU time; ` +
      `${m.model} (${m.cpus} cores visible), node ${m.node}, load average ${m.loadAverage}`,
    rows,
  );
  process.stdout.write(`\nobjects per run (data + manifests): up to ${objects}\n`);
  const file = writeResults('parquet', {
    spans: SPANS,
    bytesPerSpan: bytes / SPANS,
    rounds: ROUNDS,
    machine: m,
    rows,
    timings: Object.fromEntries(timings),
  });
  process.stdout.write(`results: ${file}\n`);
}

await main();
