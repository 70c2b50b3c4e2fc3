/**
 * `npm run bench:file-sizes`: the size distribution of the span files the shipped pipelines write under a
 * steady load, with the `lake` sink config of deploy/compose/worker.yaml (30 s roll) and of
 * k8s/base/worker.yaml (300 s roll, 128 MiB), against s3rver (the embedded stack's S3).
 *
 * Time is scaled: the roll age is divided by `--scale` and the span rate multiplied by it, so each
 * (partition, shard) file gets the rows it would get in real time, and the span times advance `--scale`
 * times faster than the wall clock (hour partitions change as they would). Spans come from the synthetic
 * generator (7 services, 5 spans per trace), spread over `--shards` shards by the Kinesis hash of the trace
 * id (the producer's partition key). The compose pipeline tail-samples before the lake (errors, 80 % of slow
 * traces, 20 % of the rest): the same policies are applied per trace here; the k8s pipeline writes every span.
 *
 * Results: a table on stdout (objects, median/p10/p90/max size, objects per simulated hour) and
 * bench/results/file-sizes-<timestamp>.json. `--rate` spans/s (default 300), `--minutes` simulated (18),
 * `--scale` (20), `--shards` (4), `--pipelines compose,k8s`.
 */
import { mkdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { ListObjectsV2Command, type S3Client } from '@aws-sdk/client-s3';
import pino from 'pino';
import { parse as parseYaml } from 'yaml';
import { Ack } from '../src/core/ack.js';
import { detachedTenure } from '../src/core/tenure.js';
import { createRegistry } from '../src/metrics/registry.js';
import { kinesisHashKey } from '../src/processors/router.js';
import { generateSpans, type SyntheticSpan, seededRandom } from '../src/producer/synthetic-spans.js';
import { parquetSinkConfigSchema } from '../src/sinks/s3-parquet/config.js';
import { S3ParquetSink } from '../src/sinks/s3-parquet/index.js';
import { startS3Only } from '../test/helpers/stack.js';
import {
  CountingDeadLetters,
  fmt,
  machine,
  printTable,
  ROOT,
  SEQUENCE_BASE,
  type TableRow,
  writeResults,
} from './lib.js';

const { values } = parseArgs({
  options: {
    rate: { type: 'string', default: '300' },
    minutes: { type: 'string', default: '18' },
    scale: { type: 'string', default: '20' },
    shards: { type: 'string', default: '4' },
    pipelines: { type: 'string', default: 'compose,k8s' },
  },
  allowPositionals: false,
  strict: false,
});
const RATE = Number(values.rate);
const MINUTES = Number(values.minutes);
const SCALE = Number(values.scale);
const SHARDS = Number(values.shards);
const PIPELINES: Record<string, { file: string; sampled: boolean }> = {
  compose: { file: 'deploy/compose/worker.yaml', sampled: true },
  k8s: { file: 'k8s/base/worker.yaml', sampled: false },
};

const KB = 1024;

function quantile(sorted: readonly number[], q: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}

/** The compose pipeline's tail-sampling policies, decided per trace: errors, 80 % of slow (>= 1 s), 20 %. */
function keepTrace(spans: readonly SyntheticSpan[], random: () => number): boolean {
  if (spans.some((s) => s.status.code === 2)) return true;
  const slow = spans.some((s) => BigInt(s.durationNano) >= 1_000_000_000n);
  return random() < (slow ? 0.8 : 0.2);
}

function* traces(): Generator<SyntheticSpan[]> {
  let trace: SyntheticSpan[] = [];
  for (const span of generateSpans(Number.MAX_SAFE_INTEGER, { seed: 11 })) {
    if (trace.length > 0 && span.traceId !== trace[0]!.traceId) {
      yield trace;
      trace = [];
    }
    trace.push(span);
  }
}

interface Outcome {
  pipeline: string;
  rollAgeMs: number;
  spansGenerated: number;
  spansWritten: number;
  sizes: number[];
  wallSeconds: number;
}

async function run(pipeline: string): Promise<Outcome> {
  const { file, sampled } = PIPELINES[pipeline]!;
  const worker = parseYaml(readFileSync(path.join(ROOT, file), 'utf8')) as {
    sinks: Record<string, Record<string, unknown>>;
  };
  const lake = worker.sinks.lake!;
  const stack = await startS3Only(['bench-lake']);
  const tmpDir = path.join(stack.dir, 'tmp');
  mkdirSync(tmpDir, { recursive: true });
  const config = parquetSinkConfigSchema.parse({ ...lake, bucket: 'bench-lake', tmpDir });
  const rollAgeMs = config.roll.maxFileAgeMs;
  const scaled = parquetSinkConfigSchema.parse({
    ...lake,
    bucket: 'bench-lake',
    tmpDir,
    roll: { ...config.roll, maxFileAgeMs: Math.max(1, Math.round(rollAgeMs / SCALE)) },
  });
  const sink = new S3ParquetSink('lake', scaled, {
    logger: pino({ level: 'silent' }),
    metrics: createRegistry(false),
    dlq: new CountingDeadLetters(),
    aws: stack.aws,
  });
  const shardIds = Array.from({ length: SHARDS }, (_, i) => `shardId-${String(i).padStart(12, '0')}`);
  for (const shardId of shardIds)
    await sink.openShard(detachedTenure({ stream: 'spans', shardId }), undefined);
  const sequences = shardIds.map(() => 0n);
  const random = seededRandom(5);
  const source = traces();
  const simStartMs = Date.UTC(2026, 0, 5, 9, 50, 0);
  const simTotalMs = MINUTES * 60_000;
  const wallTotalMs = simTotalMs / SCALE;
  const started = Date.now();
  let generated = 0;
  let written = 0;
  for (;;) {
    const wallElapsed = Math.min(Date.now() - started, wallTotalMs);
    const due = Math.floor((wallElapsed / 1000) * RATE * SCALE);
    const perShard: Parameters<S3ParquetSink['write']>[0][] = shardIds.map(() => []);
    const simNowNs = BigInt(simStartMs + Math.round(wallElapsed * SCALE)) * 1_000_000n;
    while (generated < due) {
      const trace = source.next().value as SyntheticSpan[];
      generated += trace.length;
      if (sampled && !keepTrace(trace, random)) continue;
      const rootStart = BigInt(trace[0]!.startTimeUnixNano);
      const shard = Number((kinesisHashKey(trace[0]!.traceId) * BigInt(SHARDS)) >> 128n);
      for (const span of trace) {
        const start = simNowNs + (BigInt(span.startTimeUnixNano) - rootStart);
        const value = {
          ...span,
          startTimeUnixNano: start.toString(),
          endTimeUnixNano: (start + BigInt(span.durationNano)).toString(),
        };
        sequences[shard]! += 1n;
        perShard[shard]!.push({
          origin: {
            stream: 'spans',
            shardId: shardIds[shard]!,
            sequenceNumber: (SEQUENCE_BASE + sequences[shard]!).toString(),
            subSequenceNumber: 0,
            partitionKey: span.traceId,
            arrivalTime: new Date(Number(start / 1_000_000n)),
          },
          index: 0,
          value,
          raw: Buffer.from(JSON.stringify(value)),
          ack: new Ack(() => undefined),
        });
        written += 1;
      }
    }
    await Promise.all(perShard.map((events) => (events.length > 0 ? sink.write(events) : undefined)));
    if (wallElapsed >= wallTotalMs) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  // The files still open at the end are cut short by the end of the run, not by the roll: left out.
  const list = async (): Promise<Map<string, number>> => {
    const out = new Map<string, number>();
    let token: string | undefined;
    do {
      const page = await (stack.aws.s3 as S3Client).send(
        new ListObjectsV2Command({ Bucket: 'bench-lake', Prefix: config.prefix, ContinuationToken: token }),
      );
      for (const o of page.Contents ?? []) if (o.Key!.endsWith('.parquet')) out.set(o.Key!, o.Size ?? 0);
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
    return out;
  };
  await new Promise((r) => setTimeout(r, 1_000));
  const rolled = await list();
  await sink.close();
  await stack.stop();
  return {
    pipeline,
    rollAgeMs,
    spansGenerated: generated,
    spansWritten: written,
    sizes: [...rolled.values()].sort((a, b) => a - b),
    wallSeconds: (Date.now() - started) / 1000,
  };
}

async function main(): Promise<void> {
  const outcomes: Outcome[] = [];
  for (const pipeline of String(values.pipelines).split(',')) outcomes.push(await run(pipeline));
  const rows: TableRow[] = [];
  for (const o of outcomes) {
    const total = o.sizes.reduce((n, s) => n + s, 0);
    rows.push({
      figure: `${o.pipeline}: span objects (roll ${o.rollAgeMs / 1000} s)`,
      value: String(o.sizes.length),
      note:
        `median ${fmt(quantile(o.sizes, 0.5) / KB, 1)} KB, p10 ${fmt(quantile(o.sizes, 0.1) / KB, 1)} KB, ` +
        `p90 ${fmt(quantile(o.sizes, 0.9) / KB, 1)} KB, max ${fmt((o.sizes.at(-1) ?? 0) / KB, 1)} KB, ` +
        `total ${fmt(total / KB / KB, 2)} MiB, ${fmt(o.sizes.length / (MINUTES / 60))} objects per hour; ` +
        `${fmt(o.spansWritten)} of ${fmt(o.spansGenerated)} spans to the lake; wall ${fmt(o.wallSeconds, 1)} s`,
    });
  }
  const m = machine();
  printTable(
    `Lake file sizes: ${RATE} spans/s for ${MINUTES} simulated minutes (time x${SCALE}), ${SHARDS} shards, ` +
      `s3rver; ${m.model} (${m.cpus} cores visible), node ${m.node}, load average ${m.loadAverage}`,
    rows,
  );
  const file = writeResults('file-sizes', {
    rate: RATE,
    minutes: MINUTES,
    scale: SCALE,
    shards: SHARDS,
    machine: m,
    rows,
    outcomes,
  });
  process.stdout.write(`results: ${file}\n`);
}

await main();
