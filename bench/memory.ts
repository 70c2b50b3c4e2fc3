/**
 * `npm run bench` (memory part): peak RSS of the worker's chain holding 1,000 open Parquet partitions and
 * 100,000 pending traces in tail sampling at once, against a 512 MiB budget. A benchmark figure, not a
 * test: it runs in a child process (so RSS is the chain's own) and reports the child's peak RSS (VmHWM).
 *
 * The budget is split across the two caps that bound memory, plus what the runtime needs by itself:
 *   tail_sampling.maxBufferedBytes   ESTIMATED bytes of buffered spans (4 x raw + 300 per span, + 300 per trace)
 *   Parquet memory.maxBufferedBytes  ESTIMATED bytes of staged rows of open (and rolled, unencoded) files
 *   the rest                         Node, DuckDB, the AWS SDK, the records in flight (no cap of its own)
 * 100,000 one-span traces of ~0.9 KB need 420 MB of tail-sampling estimate, so the tail cap here is 448 MiB
 * (the default 256 MiB decides the oldest traces once it holds ~64,000 of them) and the Parquet cap 64 MiB;
 * what the figure shows is how far below the caps' sum the real RSS stays.
 *
 * Phases, through decode -> otel_spans -> red_metrics -> tail_sampling -> routing -> Parquet (spans schema,
 * partitioned by service, 1,000 services, null S3 client, real DuckDB encoding of rolled files):
 *   1. error spans of 1,000 services: tail sampling keeps them at once (status_code policy first), so each
 *      service gets an open Parquet file (roll on age after an hour: they stay open);
 *   2. 100,000 root spans of traces whose children never come (decision wait and quiet period of an hour):
 *      every one is a pending trace.
 * `--traces N` (default 100000), `--partitions N` (default 1000). Results: a table and
 * bench/results/memory-<timestamp>.json.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import type { S3Client } from '@aws-sdk/client-s3';
import pino from 'pino';
import { validateConfig } from '../src/config/load.js';
import type { AwsClients } from '../src/core/aws.js';
import type { ComponentContext } from '../src/core/component.js';
import { detachedTenure } from '../src/core/tenure.js';
import { ShardWatermark } from '../src/core/watermark.js';
import { createRegistry } from '../src/metrics/registry.js';
import { RecordDecoder } from '../src/processors/decode.js';
import { createProcessor, processorNames } from '../src/processors/registry.js';
import { PartitionKeyRouter } from '../src/processors/router.js';
import { generateSpans, type SyntheticSpan } from '../src/producer/synthetic-spans.js';
import { Pipeline } from '../src/runtime/pipeline.js';
import { createSink } from '../src/sinks/registry.js';
import {
  ARTICLE_TAIL_POLICIES,
  CountingDeadLetters,
  fmt,
  machine,
  makeRecords,
  NullS3,
  printTable,
  type TableRow,
  writeResults,
} from './lib.js';

const MiB = 1024 * 1024;
const { values } = parseArgs({
  options: {
    child: { type: 'string' },
    traces: { type: 'string', default: '100000' },
    partitions: { type: 'string', default: '1000' },
  },
  allowPositionals: false,
  strict: false,
});
const TRACES = Number(values.traces);
const PARTITIONS = Number(values.partitions);
const BUDGET = 512 * MiB;
const TAIL_CAP = 448 * MiB;
const PARQUET_CAP = 64 * MiB;

interface ChildReport {
  baselineRssBytes: number;
  afterPartitionsRssBytes: number;
  afterPartitionsHeapBytes: number;
  peakRssBytes: number;
  rssBytes: number;
  heapUsedBytes: number;
  externalBytes: number;
  arrayBufferBytes: number;
  openPartitions: number;
  openFiles: number;
  pendingTraces: number;
  pendingSpans: number;
  tailEstimateBytes: number;
  parquetEstimateBytes: number;
  parquetFilesEncoded: number;
  memoryRolls: number;
  deadLetters: number;
}

function statusBytes(field: 'VmHWM' | 'VmRSS'): number {
  const status = readFileSync('/proc/self/status', 'utf8');
  const kb = new RegExp(`${field}:\\s+(\\d+) kB`).exec(status)?.[1];
  return kb ? Number(kb) * 1024 : Number.NaN;
}

async function metricValue(registry: ReturnType<typeof createRegistry>, name: string, label?: string) {
  const m = await registry.getSingleMetric(name)?.get();
  return (m?.values ?? [])
    .filter((v) => label === undefined || Object.values(v.labels).includes(label))
    .reduce((s, v) => s + v.value, 0);
}

async function child(tmpDir: string): Promise<void> {
  const config = validateConfig({
    consumers: [{ type: 'polling', stream: 'bench' }],
    processors: [
      { type: 'otel_spans', input: 'flat' },
      { type: 'red_metrics', dimensions: ['http.route'] },
      {
        type: 'tail_sampling',
        decisionWaitMs: 3_600_000,
        quietPeriodMs: 3_600_000,
        maxBufferedBytes: TAIL_CAP,
        policies: ARTICLE_TAIL_POLICIES,
      },
    ],
    routing: { routes: [], default: { sinks: ['lake'] } },
    sinks: {
      lake: {
        type: 's3_parquet',
        bucket: 'bench-lake',
        schema: 'spans',
        tmpDir,
        partitioning: { template: 'service={field:serviceName}', maxOpenPartitions: PARTITIONS * 2 },
        roll: { maxFileAgeMs: 3_600_000 },
        memory: { maxBufferedBytes: PARQUET_CAP },
      },
    },
    dlq: { type: 's3', bucket: 'bench-lake' },
  });
  const metrics = createRegistry(false);
  const dlq = new CountingDeadLetters();
  const ctx: ComponentContext = {
    logger: pino({ level: 'silent' }),
    metrics,
    dlq,
    aws: { s3: new NullS3() as unknown as S3Client } as unknown as AwsClients,
  };
  const decoder = new RecordDecoder(config.decode, dlq, metrics);
  const sinks = Object.entries(config.sinks).map(([name, c]) => createSink(name, c, ctx));
  const names = processorNames(config.processors as Array<{ type: string; name?: string }>);
  const processors = config.processors.map((c, i) => createProcessor(names[i]!, c, ctx));
  const pipeline = new Pipeline(decoder, processors, sinks, new PartitionKeyRouter(config.routing!, metrics));
  const watermark = new ShardWatermark(Number.MAX_SAFE_INTEGER);
  for (const s of sinks)
    await s.openShard?.(detachedTenure({ stream: 'bench', shardId: 'shardId-000000000000' }), undefined);

  globalThis.gc?.();
  const baselineRssBytes = statusBytes('VmRSS');
  let sequence = 0;
  // Records are made batch by batch, as a consumer would fetch them: none is kept by the bench itself.
  // The record bytes as the AWS SDK hands them over: decoded one after another from the base64 of the
  // GetRecords response, which packs small records tightly into Node's buffer pool. (Buffer.from of a
  // UTF-8 string reserves 4 bytes per character in the pool, and temporary pooled buffers interleaved with
  // kept ones keep whole pool slabs alive: both would charge the chain for the bench's own allocations.)
  const push = async (spans: SyntheticSpan[]) => {
    const base64 = spans.map((s) => Buffer.from(JSON.stringify(s), 'utf8').toString('base64'));
    const fetched = spans.map((s, i) => ({
      partitionKey: s.traceId,
      data: Buffer.from(base64[i]!, 'base64'),
    }));
    const records = makeRecords(fetched, watermark).map((r, i) => {
      const sequenceNumber = (49_600_000_000_000_000_000_000_000_000n + BigInt(sequence + i)).toString();
      return { ...r, origin: { ...r.origin, sequenceNumber } };
    });
    sequence += spans.length;
    await pipeline.push(records);
  };
  const service = (n: number) => `svc-${String(n % PARTITIONS).padStart(4, '0')}`;
  const restyle = (span: SyntheticSpan, n: number): SyntheticSpan => ({
    ...span,
    serviceName: service(n),
    resource: { ...span.resource, 'service.name': service(n) },
  });

  // 1. error spans, 20 per service: kept at once, buffered in one open file per service.
  let batch: SyntheticSpan[] = [];
  let n = 0;
  for (const span of generateSpans(PARTITIONS * 20, { seed: 21, spansPerTrace: 1 })) {
    batch.push(restyle({ ...span, status: { code: 2, message: 'failed' } }, n++));
    if (batch.length === 500) {
      await push(batch);
      batch = [];
    }
  }
  if (batch.length > 0) await push(batch);
  globalThis.gc?.();
  const afterPartitionsRssBytes = statusBytes('VmRSS');
  const afterPartitionsHeapBytes = process.memoryUsage().heapUsed;

  // 2. root spans of traces whose other spans never arrive: pending until the (hour-long) waits.
  batch = [];
  n = 0;
  for (const span of generateSpans(TRACES, { seed: 22, spansPerTrace: 1, errorRate: 0, slowRate: 0 })) {
    batch.push(restyle({ ...span, status: { code: 0, message: '' } }, n++));
    if (batch.length === 500) {
      await push(batch);
      batch = [];
    }
  }
  if (batch.length > 0) await push(batch);

  globalThis.gc?.();
  const mem = process.memoryUsage();
  const report: ChildReport = {
    baselineRssBytes,
    afterPartitionsRssBytes,
    afterPartitionsHeapBytes,
    peakRssBytes: statusBytes('VmHWM'),
    rssBytes: statusBytes('VmRSS'),
    heapUsedBytes: mem.heapUsed,
    externalBytes: mem.external,
    arrayBufferBytes: mem.arrayBuffers,
    openPartitions: await metricValue(metrics, 'ksw_parquet_open_partitions'),
    openFiles: await metricValue(metrics, 'ksw_parquet_open_files'),
    pendingTraces: await metricValue(metrics, 'ksw_tail_sampling_pending_traces'),
    pendingSpans: await metricValue(metrics, 'ksw_tail_sampling_pending_spans'),
    tailEstimateBytes: await metricValue(metrics, 'ksw_tail_sampling_buffered_bytes'),
    parquetEstimateBytes: await metricValue(metrics, 'ksw_parquet_buffered_bytes'),
    parquetFilesEncoded: await metricValue(metrics, 'ksw_parquet_files_total'),
    memoryRolls: await metricValue(metrics, 'ksw_parquet_rolls_total', 'memory'),
    deadLetters: dlq.letters,
  };
  process.stdout.write(`${JSON.stringify(report)}\n`);
  // Exit without flushing: the point was the state while holding all of it.
  process.exit(0);
}

async function parent(): Promise<void> {
  const tmpDir = mkdtempSync(path.join(os.tmpdir(), 'ksw-bench-memory-'));
  try {
    const out = await new Promise<string>((resolve, reject) => {
      const proc = spawn(
        process.execPath,
        [
          '--expose-gc',
          '--import',
          'tsx',
          import.meta.filename,
          '--child',
          tmpDir,
          '--traces',
          String(TRACES),
          '--partitions',
          String(PARTITIONS),
        ],
        { stdio: ['ignore', 'pipe', 'inherit'] },
      );
      let text = '';
      proc.stdout.on('data', (d: Buffer) => {
        text += d.toString();
      });
      proc.on('error', reject);
      proc.on('exit', (code) =>
        code === 0 ? resolve(text) : reject(new Error(`child exited with ${code}`)),
      );
    });
    const r = JSON.parse(out.trim().split('\n').at(-1)!) as ChildReport;
    const mib = (b: number) => `${fmt(b / MiB)} MiB`;
    const rows: TableRow[] = [
      {
        figure: 'peak RSS (VmHWM), whole process',
        value: mib(r.peakRssBytes),
        note: `${((100 * r.peakRssBytes) / BUDGET).toFixed(0)} % of the ${mib(BUDGET)} budget; RSS at the end ${mib(r.rssBytes)}`,
      },
      {
        figure: '  RSS of the runtime alone (before any record)',
        value: mib(r.baselineRssBytes),
        note: 'node, the tsx loader, DuckDB, the AWS SDK, prom-client',
      },
      {
        figure: '  RSS after the partitions were opened',
        value: mib(r.afterPartitionsRssBytes),
        note: `V8 heap ${mib(r.afterPartitionsHeapBytes)}`,
      },
      {
        figure: '  V8 heap used at the end / external memory',
        value: mib(r.heapUsedBytes),
        note: `external ${mib(r.externalBytes)}, of which array buffers ${mib(r.arrayBufferBytes)} (mostly the record bytes pending spans keep for the DLQ); ${fmt((r.heapUsedBytes - r.afterPartitionsHeapBytes) / Math.max(1, r.pendingTraces))} heap bytes per pending trace`,
      },
      {
        figure: '  open Parquet partitions / files',
        value: fmt(r.openPartitions),
        note: `${fmt(r.openFiles)} open files; rows estimated at ${mib(r.parquetEstimateBytes)} of a ${mib(PARQUET_CAP)} cap; ${fmt(r.memoryRolls)} memory rolls, ${fmt(r.parquetFilesEncoded)} files encoded`,
      },
      {
        figure: '  pending traces / spans in tail sampling',
        value: fmt(r.pendingTraces),
        note: `${fmt(r.pendingSpans)} spans; estimated at ${mib(r.tailEstimateBytes)} of a ${mib(TAIL_CAP)} cap`,
      },
    ];
    const m = machine();
    printTable(
      `memory: ${fmt(PARTITIONS)} open partitions + ${fmt(TRACES)} pending traces, budget ${mib(BUDGET)}; node ${m.node}, load average ${m.loadAverage}`,
      rows,
    );
    if (r.deadLetters > 0) process.stdout.write(`(${r.deadLetters} dead letters: unexpected)\n`);
    const file = writeResults('memory', {
      traces: TRACES,
      partitions: PARTITIONS,
      budgetBytes: BUDGET,
      tailCapBytes: TAIL_CAP,
      parquetCapBytes: PARQUET_CAP,
      machine: m,
      ...r,
    });
    process.stdout.write(`results: ${file}\n`);
  } finally {
    rmSync(tmpDir, { recursive: true, force: true });
  }
}

if (typeof values.child === 'string') await child(values.child);
else await parent();
