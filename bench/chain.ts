/**
 * `npm run bench`: one-core throughput of the processor chain on synthetic ~1 KB spans, reported as
 * ratios to a floor measured in the same run on the same records (bare `JSON.parse` of every record),
 * because these machines are noisy and absolute figures drift between runs.
 *
 * Figures (spans/s, and ratio to the JSON.parse floor):
 *   json_parse_floor   TextDecoder + JSON.parse of each record
 *   decode             our RecordDecoder (UTF-8 check, exact int64, gzip/chunk/pointer detection)
 *   chain              decode -> otel_spans -> red_metrics (window documents to a second Parquet sink) ->
 *                      tail_sampling (100 % errors, 80 % >= 1 s, 20 % of the rest) -> routing -> Parquet ZSTD
 *                      encode (the S3 client is a null one: objects are encoded and handed to it, not
 *                      uploaded), until every ack completed; spans/s counts every span that entered
 * Results: a table on stdout and bench/results/chain-<timestamp>.json. `--spans N` (default 200000),
 * `--rounds N` (default 3, best round reported), `--cpu-prof` to write a V8 profile to bench/results.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import type { S3Client } from '@aws-sdk/client-s3';
import pino from 'pino';
import { validateConfig } from '../src/config/load.js';
import type { AwsClients } from '../src/core/aws.js';
import type { ComponentContext, DeadLetterQueue } from '../src/core/component.js';
import type { SourceRecord } from '../src/core/records.js';
import { ShardWatermark } from '../src/core/watermark.js';
import { createRegistry } from '../src/metrics/registry.js';
import { RecordDecoder } from '../src/processors/decode.js';
import { createProcessor, processorNames } from '../src/processors/registry.js';
import { PartitionKeyRouter } from '../src/processors/router.js';
import { generateSpans, spanRecord } from '../src/producer/synthetic-spans.js';
import { Pipeline } from '../src/runtime/pipeline.js';
import { createSink } from '../src/sinks/registry.js';

const ROOT = path.resolve(import.meta.dirname, '..');
const RESULTS = path.join(ROOT, 'bench/results');

const { values } = parseArgs({
  options: {
    spans: { type: 'string', default: '200000' },
    rounds: { type: 'string', default: '3' },
  },
  allowPositionals: false,
  strict: false,
});
const SPANS = Number(values.spans);
const ROUNDS = Number(values.rounds);

/** The chain under test, as a worker config: what a user would run. */
function benchConfig() {
  return validateConfig({
    consumers: [{ type: 'polling', stream: 'bench' }],
    processors: [
      { type: 'otel_spans', input: 'flat' },
      { type: 'red_metrics', sinks: ['red'], dimensions: ['http.route'] },
      {
        type: 'tail_sampling',
        decisionWaitMs: 5_000,
        quietPeriodMs: 1_000,
        policies: [
          { name: 'errors', type: 'status_code' },
          { name: 'slow', type: 'latency', thresholdMs: 1000, probability: 0.8 },
          { name: 'rest', type: 'probabilistic', probability: 0.2 },
        ],
      },
    ],
    routing: {
      routes: [{ name: 'errors', where: ['status.code == 2'], sinks: ['lake'] }],
      default: { sinks: ['lake'] },
    },
    sinks: {
      lake: {
        type: 's3_parquet',
        bucket: 'bench-lake',
        compression: 'zstd',
        roll: { maxFileRows: 1_000_000, maxFileBytes: 1024 * 1024 * 1024, maxFileAgeMs: 3_600_000 },
        columns: [
          { name: 'traceId', type: 'string' },
          { name: 'spanId', type: 'string' },
          { name: 'parentSpanId', type: 'string' },
          { name: 'name', type: 'string' },
          { name: 'serviceName', type: 'string' },
          { name: 'startTimeUnixNano', type: 'int64' },
          { name: 'endTimeUnixNano', type: 'int64' },
          { name: 'durationNano', type: 'int64' },
          { name: 'startTime', type: 'timestamp_us', path: 'startTimeUnixNano', timeUnit: 'ns' },
        ],
        recordColumn: false,
      },
      red: {
        type: 's3_parquet',
        bucket: 'bench-lake',
        prefix: 'red/',
        compression: 'zstd',
        columns: [
          { name: 'windowStart', type: 'timestamp_ms' },
          { name: 'service', type: 'string' },
          { name: 'operation', type: 'string' },
          { name: 'statusCode', type: 'string' },
          { name: 'requestCount', type: 'int64' },
          { name: 'errorCount', type: 'int64' },
          { name: 'durationSumMs', type: 'double' },
          { name: 'durationBucketCounts', type: 'json' },
        ],
        recordColumn: false,
      },
    },
    dlq: { type: 's3', bucket: 'bench-lake' },
  });
}

/** Takes objects and listings without a network: the bench measures the worker, not S3. */
class NullS3 {
  objects = 0;
  bytes = 0;
  send = (async (command: { constructor: { name: string }; input: { Body?: unknown } }) => {
    if (command.constructor.name === 'ListObjectsV2Command') return { Contents: [], IsTruncated: false };
    const body = command.input.Body;
    if (body && typeof (body as AsyncIterable<Uint8Array>)[Symbol.asyncIterator] === 'function') {
      for await (const chunk of body as AsyncIterable<Uint8Array>) this.bytes += chunk.byteLength;
    } else if (body instanceof Uint8Array) {
      this.bytes += body.byteLength;
    }
    this.objects += 1;
    return {};
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

function makeRecords(
  data: Array<{ partitionKey: string; data: Uint8Array }>,
  watermark: ShardWatermark,
): SourceRecord[] {
  const base = 49_600_000_000_000_000_000_000_000_000_000_000_000_000_000n;
  return data.map((d, i) => {
    const sequenceNumber = (base + BigInt(i)).toString();
    return {
      origin: {
        stream: 'bench',
        shardId: 'shardId-000000000000',
        sequenceNumber,
        subSequenceNumber: 0,
        partitionKey: d.partitionKey,
        arrivalTime: new Date(),
      },
      data: d.data,
      ack: watermark.register({ sequenceNumber, subSequenceNumber: 0 }, d.data.byteLength),
    };
  });
}

function time(fn: () => void): number {
  const started = process.hrtime.bigint();
  fn();
  return Number(process.hrtime.bigint() - started) / 1e9;
}

async function timeAsync(fn: () => Promise<void>): Promise<number> {
  const started = process.hrtime.bigint();
  await fn();
  return Number(process.hrtime.bigint() - started) / 1e9;
}

async function main(): Promise<void> {
  const raw = [...generateSpans(SPANS, { seed: 7 })].map(spanRecord);
  const bytes = raw.reduce((n, r) => n + r.data.byteLength, 0);
  const utf8 = new TextDecoder();
  const logger = pino({ level: 'silent' });
  const best = { floor: Infinity, decode: Infinity, chain: Infinity };
  let rss = 0;
  let objects = 0;

  for (let round = 0; round < ROUNDS; round++) {
    // Floor: the least any JSON pipeline must do.
    let sink = 0;
    best.floor = Math.min(
      best.floor,
      time(() => {
        for (const r of raw) sink += Object.keys(JSON.parse(utf8.decode(r.data))).length;
      }),
    );
    if (sink === 0) throw new Error('floor measured nothing');

    const config = benchConfig();
    const metrics = createRegistry(false);
    const dlq = new CountingDeadLetters();
    const decoder = new RecordDecoder(config.decode, dlq, metrics);
    {
      const watermark = new ShardWatermark(Number.MAX_SAFE_INTEGER);
      const records = makeRecords(raw, watermark);
      best.decode = Math.min(
        best.decode,
        await timeAsync(async () => {
          for (let i = 0; i < records.length; i += 500) {
            for (const e of await decoder.decode(records.slice(i, i + 500))) e.ack.done();
          }
        }),
      );
      if (watermark.inFlightBytes !== 0) throw new Error('decode bench left records unacked');
    }

    const s3 = new NullS3();
    const ctx: ComponentContext = {
      logger,
      metrics,
      dlq,
      aws: { s3: s3 as unknown as S3Client } as unknown as AwsClients,
    };
    const sinks = Object.entries(config.sinks).map(([name, c]) => createSink(name, c, ctx));
    const names = processorNames(config.processors as Array<{ type: string; name?: string }>);
    const processors = config.processors.map((c, i) => createProcessor(names[i]!, c, ctx));
    const router = config.routing ? new PartitionKeyRouter(config.routing, metrics) : undefined;
    const pipeline = new Pipeline(decoder, processors, sinks, router);
    const watermark = new ShardWatermark(Number.MAX_SAFE_INTEGER);
    const records = makeRecords(raw, watermark);
    for (const s of sinks)
      await s.openShard?.({ stream: 'bench', shardId: 'shardId-000000000000' }, undefined);
    best.chain = Math.min(
      best.chain,
      await timeAsync(async () => {
        for (let i = 0; i < records.length; i += 500) await pipeline.push(records.slice(i, i + 500));
        await pipeline.flush();
        await watermark.drained();
      }),
    );
    if (watermark.inFlightBytes !== 0) throw new Error('chain bench left records unacked');
    objects = s3.objects;
    rss = Math.max(rss, process.memoryUsage().rss);
    await pipeline.close();
    for (const s of sinks) await s.close();
  }

  const rate = (seconds: number) => SPANS / seconds;
  const floor = rate(best.floor);
  const rows = [
    { figure: 'json_parse_floor', spansPerSecond: floor, ratioToFloor: 1 },
    { figure: 'decode', spansPerSecond: rate(best.decode), ratioToFloor: rate(best.decode) / floor },
    {
      figure: 'chain (decode -> RED -> tail -> Parquet)',
      spansPerSecond: rate(best.chain),
      ratioToFloor: rate(best.chain) / floor,
    },
  ];
  const machine = {
    cpus: os.cpus().length,
    model: os.cpus()[0]?.model,
    node: process.version,
    platform: `${os.platform()} ${os.arch()}`,
  };
  process.stdout.write(
    `\n${SPANS.toLocaleString('en-US')} spans, ${(bytes / SPANS).toFixed(0)} bytes each on average, best of ${ROUNDS} rounds; ${machine.model} (${machine.cpus} cores visible), node ${machine.node}\n\n`,
  );
  process.stdout.write(`${'figure'.padEnd(44)}${'spans/s'.padStart(12)}${'ratio to floor'.padStart(16)}\n`);
  for (const r of rows) {
    process.stdout.write(
      `${r.figure.padEnd(44)}${Math.round(r.spansPerSecond).toLocaleString('en-US').padStart(12)}${r.ratioToFloor.toFixed(2).padStart(16)}\n`,
    );
  }
  process.stdout.write(`\nParquet objects encoded: ${objects}; peak RSS ${(rss / 1048576).toFixed(0)} MiB\n`);
  mkdirSync(RESULTS, { recursive: true });
  const file = path.join(RESULTS, `chain-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  writeFileSync(
    file,
    `${JSON.stringify({ spans: SPANS, bytesPerSpan: bytes / SPANS, rounds: ROUNDS, machine, rows, peakRssBytes: rss }, null, 2)}\n`,
  );
  process.stdout.write(`results: ${path.relative(ROOT, file)}\n`);
}

await main();
