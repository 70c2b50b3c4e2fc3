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
 * Results: a table on stdout and bench/results/parquet-<timestamp>.json. `--spans N` (default 200000),
 * `--rounds N` (default 3, best round reported).
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import type { S3Client } from '@aws-sdk/client-s3';
import pino from 'pino';
import { Ack } from '../src/core/ack.js';
import type { AwsClients } from '../src/core/aws.js';
import type { DeadLetterQueue } from '../src/core/component.js';
import type { PipelineEvent } from '../src/core/records.js';
import { createRegistry } from '../src/metrics/registry.js';
import { generateSpans, spanRecord } from '../src/producer/synthetic-spans.js';
import { parquetSinkConfigSchema } from '../src/sinks/s3-parquet/config.js';
import { S3ParquetSink } from '../src/sinks/s3-parquet/index.js';

const ROOT = path.resolve(import.meta.dirname, '..');
const RESULTS = path.join(ROOT, 'bench/results');
const { values } = parseArgs({
  options: { spans: { type: 'string', default: '200000' }, rounds: { type: 'string', default: '3' } },
  allowPositionals: false,
  strict: false,
});
const SPANS = Number(values.spans);
const ROUNDS = Number(values.rounds);

/** Consumes bodies, answers listings empty: the bench measures the sink, not S3. */
class NullS3 {
  objects = 0;
  send = (async (command: { constructor: { name: string }; input: { Body?: unknown } }) => {
    if (command.constructor.name === 'ListObjectsV2Command') return { Contents: [], IsTruncated: false };
    const body = command.input.Body;
    if (body && typeof (body as AsyncIterable<Uint8Array>)[Symbol.asyncIterator] === 'function') {
      for await (const _chunk of body as AsyncIterable<Uint8Array>);
    }
    this.objects += 1;
    return { ETag: '"x"', UploadId: 'u' };
  }) as unknown as S3Client['send'];
}

class CountingDeadLetters implements DeadLetterQueue {
  letters = 0;
  put(_letter: unknown, ack: { done(): void }): void {
    this.letters += 1;
    ack.done();
  }
  async flush(): Promise<void> {}
  async close(): Promise<void> {}
}

const FLAT_COLUMNS = [
  { name: 'traceId', type: 'string' },
  { name: 'spanId', type: 'string' },
  { name: 'parentSpanId', type: 'string' },
  { name: 'name', type: 'string' },
  { name: 'serviceName', type: 'string' },
  { name: 'startTimeUnixNano', type: 'int64' },
  { name: 'endTimeUnixNano', type: 'int64' },
  { name: 'durationNano', type: 'int64' },
  { name: 'startTime', type: 'timestamp_us', path: 'startTimeUnixNano', timeUnit: 'ns' },
];

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

function seconds(started: bigint): number {
  return Number(process.hrtime.bigint() - started) / 1e9;
}

async function main(): Promise<void> {
  const raw = [...generateSpans(SPANS, { seed: 7 })].map(spanRecord);
  const bytes = raw.reduce((n, r) => n + r.data.byteLength, 0);
  const utf8 = new TextDecoder();
  const best = new Map<string, number>();
  const record = (figure: string, s: number) => best.set(figure, Math.min(best.get(figure) ?? Infinity, s));
  const base = 49_600_000_000_000_000_000_000_000_000_000_000_000_000_000n;
  let objects = 0;

  for (let round = 0; round < ROUNDS; round++) {
    let started = process.hrtime.bigint();
    const parsed = raw.map((r) => JSON.parse(utf8.decode(r.data)) as Record<string, unknown>);
    record('json_parse_floor', seconds(started));

    for (const { figure, config } of CASES) {
      let acked = 0;
      const events: PipelineEvent[] = parsed.map((value, i) => ({
        origin: {
          stream: 'bench',
          shardId: 'shardId-000000000000',
          sequenceNumber: (base + BigInt(i)).toString(),
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
      await sink.openShard({ stream: 'bench', shardId: 'shardId-000000000000' }, undefined);
      started = process.hrtime.bigint();
      for (let i = 0; i < events.length; i += 500) await sink.write(events.slice(i, i + 500));
      await sink.flush();
      record(figure, seconds(started));
      if (acked !== SPANS) throw new Error(`${figure}: ${acked} of ${SPANS} acked`);
      objects = Math.max(objects, s3.objects);
      await sink.close();
    }
  }

  const floor = SPANS / best.get('json_parse_floor')!;
  const rows = [...best].map(([figure, s]) => ({
    figure,
    rowsPerSecond: SPANS / s,
    ratioToFloor: SPANS / s / floor,
  }));
  const machine = { cpus: os.cpus().length, model: os.cpus()[0]?.model, node: process.version };
  process.stdout.write(
    `\nParquet sink: ${SPANS.toLocaleString('en-US')} spans, ${(bytes / SPANS).toFixed(0)} bytes each on average, best of ${ROUNDS} rounds; ${machine.model} (${machine.cpus} cores visible), node ${machine.node}\n\n`,
  );
  process.stdout.write(`${'figure'.padEnd(44)}${'rows/s'.padStart(12)}${'ratio to floor'.padStart(16)}\n`);
  for (const r of rows) {
    process.stdout.write(
      `${r.figure.padEnd(44)}${Math.round(r.rowsPerSecond).toLocaleString('en-US').padStart(12)}${r.ratioToFloor.toFixed(2).padStart(16)}\n`,
    );
  }
  process.stdout.write(`\nobjects per run (data + manifests): up to ${objects}\n`);
  mkdirSync(RESULTS, { recursive: true });
  const file = path.join(RESULTS, `parquet-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  writeFileSync(
    file,
    `${JSON.stringify({ spans: SPANS, bytesPerSpan: bytes / SPANS, rounds: ROUNDS, machine, rows }, null, 2)}\n`,
  );
  process.stdout.write(`results: ${path.relative(ROOT, file)}\n`);
}

await main();
