/**
 * `npm run bench` (first part): one-core throughput of the processor chain on synthetic ~1 KB spans, as
 * ratios to a floor measured in the same run on the same records (bare `JSON.parse` of every record),
 * because these machines are noisy and absolute figures drift between runs.
 *
 * Figures (spans/s, and ratio to the JSON.parse floor):
 *   json_parse_floor   TextDecoder + JSON.parse of each record
 *   decode             our RecordDecoder alone (UTF-8 check, exact int64, gzip/chunk/pointer detection)
 *   chain              decode -> otel_spans -> red_metrics (window documents to a second Parquet sink) ->
 *                      tail_sampling (100 % errors, 80 % >= 1 s, 20 % of the rest) -> routing -> Parquet ZSTD
 *                      encode (the S3 client is a null one: objects are encoded, then consumed by it instead
 *                      of uploaded), until every ack completed; spans/s counts every span that entered.
 *                      Two lake layouts: `flat` (9 typed columns) and the built-in `spans` schema (nested
 *                      maps and structs).
 *   breakdown          the same chain with each stage's calls timed (us per entering span): decode, each
 *                      processor, routing, the sinks' `write` (row building), and the end (tail sampling's
 *                      last decisions, Parquet encoding and the null upload, acks). GC pauses are charged
 *                      to the stage that triggered them, as they would be in production.
 * CPU is reported twice: the process's (all threads, DuckDB's included) and the main thread's (the event
 * loop: everything but DuckDB's parsing and encoding of the staged rows and the fs writes). Pinned to one
 * core (scripts/bench.sh), the wall-clock rate is the one-core figure; 1 / main-thread CPU per span is the rate
 * the event loop could sustain with DuckDB on another core.
 *
 * Data sets (`--data flat|otlp`, default flat):
 *   flat   one flat span JSON per record (~900 B), 5 spans per trace (generateSpans).
 *   otlp   OTLP/JSON as the Collector's Kinesis exporter writes it: one ResourceSpans per record, 1-12 spans
 *          per trace over several services, `--error-rate` of spans with status ERROR (default 0.03), 5 % slow
 *          traces, ~580 B per span (generateOtlpRecords). `otel_spans` reads it with `input: otlp`.
 * `--keep R` sets the tail sampler's `rest` probability so that a fraction R of all spans is expected to be
 * kept (error traces 100 %, slow 80 %, the rest p: p = (R*N - errors - 0.8*slow) / rest, clamped to 0..1);
 * default: the article's 20 % for flat, 0.6 for otlp (the issue's data set kept 60 %). The kept fraction
 * measured is printed.
 *
 * Results: a table on stdout and bench/results/chain-<data>-<timestamp>.json. `--spans N` (default 200000),
 * `--rounds N` (default 3; best and median round reported), `--only flat|spans`, `--cpu-prof` (a V8
 * profile of the last chain round in
 * bench/results; summarise with bench/profile-summary.ts).
 */

import { writeFileSync } from 'node:fs';
import { Session } from 'node:inspector/promises';
import path from 'node:path';
import { PerformanceObserver } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import type { S3Client } from '@aws-sdk/client-s3';
import pino from 'pino';
import { validateConfig } from '../src/config/load.js';
import type { AwsClients } from '../src/core/aws.js';
import type { ComponentContext, Processor, Sink } from '../src/core/component.js';
import type { PipelineEvent } from '../src/core/records.js';
import { detachedTenure } from '../src/core/tenure.js';
import { ShardWatermark } from '../src/core/watermark.js';
import { createRegistry } from '../src/metrics/registry.js';
import { RecordDecoder } from '../src/processors/decode.js';
import { createProcessor, processorNames } from '../src/processors/registry.js';
import { PartitionKeyRouter } from '../src/processors/router.js';
import { generateOtlpRecords, generateSpans, spanRecord } from '../src/producer/synthetic-spans.js';
import { Pipeline } from '../src/runtime/pipeline.js';
import { createSink } from '../src/sinks/registry.js';
import {
  ARTICLE_TAIL_POLICIES,
  CountingDeadLetters,
  cpuSeconds,
  FLAT_COLUMNS,
  fmt,
  machine,
  mainThreadCpuSeconds,
  makeRecords,
  median,
  NullS3,
  printTable,
  RESULTS,
  type TableRow,
  writeResults,
} from './lib.js';

const { values } = parseArgs({
  options: {
    spans: { type: 'string', default: '200000' },
    rounds: { type: 'string', default: '3' },
    only: { type: 'string' },
    'cpu-prof': { type: 'boolean', default: false },
    data: { type: 'string', default: 'flat' },
    keep: { type: 'string' },
    'error-rate': { type: 'string', default: '0.03' },
  },
  allowPositionals: false,
  // scripts/bench.sh passes the same arguments to every bench: options of the others are ignored here.
  strict: false,
});

/** A numeric option, checked: strict: false lets `--spans` without a value through as `true`. */
function numberOption(name: string, min: number, max: number): number | undefined {
  const v = values[name];
  if (v === undefined) return undefined;
  const n = typeof v === 'string' ? Number(v) : Number.NaN;
  if (!Number.isFinite(n) || n < min || n > max) {
    throw new Error(`--${name} must be a number in ${min}..${max}, got ${JSON.stringify(v)}`);
  }
  return n;
}
function enumOption<T extends string>(name: string, allowed: readonly T[]): T | undefined {
  const v = values[name];
  if (v === undefined) return undefined;
  if (typeof v !== 'string' || !allowed.includes(v as T)) {
    throw new Error(`--${name} must be one of ${allowed.join(', ')}, got ${JSON.stringify(v)}`);
  }
  return v as T;
}
const SPANS = Math.floor(numberOption('spans', 1, 1e8)!);
const ROUNDS = Math.floor(numberOption('rounds', 1, 1000)!);
const BATCH = 500;
type Layout = 'flat' | 'spans';
type DataSet = 'flat' | 'otlp';
const only = enumOption<Layout>('only', ['flat', 'spans']);
const LAYOUTS: Layout[] = only ? [only] : ['flat', 'spans'];
const DATA: DataSet = enumOption<DataSet>('data', ['flat', 'otlp'])!;
const ERROR_RATE = numberOption('error-rate', 0, 1)!;
const KEEP = numberOption('keep', 0, 1) ?? (DATA === 'otlp' ? 0.6 : undefined);
/** The tail sampler's `rest` probability (set in main from --keep and the data set). */
let restProbability = 0.2;

/** The chain under test, as a worker config: what a user would run. */
function benchConfig(layout: Layout) {
  const policies = ARTICLE_TAIL_POLICIES.map((p) =>
    p.type === 'probabilistic' ? { ...p, probability: restProbability } : p,
  );
  const lake =
    layout === 'flat'
      ? { columns: FLAT_COLUMNS, recordColumn: false }
      : { schema: 'spans' as const, recordColumn: false };
  return validateConfig({
    consumers: [{ type: 'polling', stream: 'bench' }],
    processors: [
      { type: 'otel_spans', input: DATA },
      { type: 'red_metrics', sinks: ['red'], dimensions: ['http.route'] },
      {
        type: 'tail_sampling',
        decisionWaitMs: 5_000,
        quietPeriodMs: 1_000,
        policies,
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
        ...lake,
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

const END = 'end: last decisions, Parquet encode, null upload, acks';

/** Wall time spent inside each stage's calls, in ns. */
class StageClock {
  readonly ns = new Map<string, number>();
  ending = false;
  nestedInEnd = 0;
  add(stage: string, startedNs: bigint): void {
    const ns = Number(process.hrtime.bigint() - startedNs);
    this.ns.set(stage, (this.ns.get(stage) ?? 0) + ns);
    if (this.ending && stage !== END) this.nestedInEnd += ns;
  }
  wrapProcessor(p: Processor): Processor {
    const timed = Object.create(p) as Processor;
    timed.process = (events) => {
      const t = process.hrtime.bigint();
      const out = p.process(events);
      if (out instanceof Promise) return out.finally(() => this.add(p.name, t));
      this.add(p.name, t);
      return out;
    };
    // Decisions released at the end (tail sampling's flush) belong to the processor too.
    if (p.flush) {
      timed.flush = async () => {
        const t = process.hrtime.bigint();
        try {
          return await p.flush!();
        } finally {
          this.add(p.name, t);
        }
      };
    }
    // start() passes `downstream` to the original object, whose timers call it.
    timed.start = p.start?.bind(p);
    return timed;
  }
  wrapSink(s: Sink): Sink {
    const timed = Object.create(s) as Sink;
    timed.write = async (events) => {
      const t = process.hrtime.bigint();
      try {
        return await s.write(events);
      } finally {
        this.add('sinks: write (row building)', t);
      }
    };
    return timed;
  }
}

interface ChainRun {
  seconds: number;
  cpuSeconds: number;
  mainCpuSeconds: number | undefined;
  stages: Map<string, number>;
  keptSpans: number;
  objects: number;
  deadLetters: number;
}

async function runChain(
  raw: ReadonlyArray<{ partitionKey: string; data: Uint8Array }>,
  layout: Layout,
  profile: Session | undefined,
): Promise<ChainRun> {
  const config = benchConfig(layout);
  const metrics = createRegistry(false);
  const dlq = new CountingDeadLetters();
  const s3 = new NullS3();
  const ctx: ComponentContext = {
    logger: pino({ level: 'silent' }),
    metrics,
    dlq,
    aws: { s3: s3 as unknown as S3Client } as unknown as AwsClients,
  };
  const clock = new StageClock();
  const decoder = new RecordDecoder(config.decode, dlq, metrics);
  const timedDecoder = {
    decode: (records: Parameters<RecordDecoder['decode']>[0]) => {
      const t = process.hrtime.bigint();
      return decoder.decode(records).finally(() => clock.add('decode', t));
    },
  };
  const sinks = Object.entries(config.sinks).map(([name, c]) => createSink(name, c, ctx));
  const names = processorNames(config.processors as Array<{ type: string; name?: string }>);
  const processors = config.processors.map((c, i) => clock.wrapProcessor(createProcessor(names[i]!, c, ctx)));
  const router = new PartitionKeyRouter(config.routing!, metrics);
  let kept = 0;
  const timedRouter = {
    route(events: PipelineEvent[]) {
      const t = process.hrtime.bigint();
      router.route(events);
      clock.add('routing', t);
      for (const e of events) if (!e.derived) kept += 1;
    },
  };
  const pipeline = new Pipeline(
    timedDecoder,
    processors,
    sinks.map((s) => clock.wrapSink(s)),
    timedRouter,
  );
  const watermark = new ShardWatermark(Number.MAX_SAFE_INTEGER);
  const records = makeRecords(raw, watermark);
  for (const s of sinks)
    await s.openShard?.(detachedTenure({ stream: 'bench', shardId: 'shardId-000000000000' }), undefined);
  // Start from a clean heap, as every round does.
  globalThis.gc?.();
  if (profile) await profile.post('Profiler.start');
  let gcMs = 0;
  const gc = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) gcMs += e.duration;
  });
  gc.observe({ entryTypes: ['gc'] });
  const cpu0 = cpuSeconds();
  const main0 = mainThreadCpuSeconds();
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < records.length; i += BATCH) await pipeline.push(records.slice(i, i + BATCH));
  const tEnd = process.hrtime.bigint();
  clock.ending = true;
  await pipeline.flush();
  await watermark.drained();
  clock.ending = false;
  // The stages timed inside the end (processor flushes, sink writes of the last decisions) count once.
  clock.add(END, tEnd);
  clock.ns.set(END, clock.ns.get(END)! - clock.nestedInEnd);
  const wall = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpu = cpuSeconds() - cpu0;
  const mainEnd = mainThreadCpuSeconds();
  const mainCpu = main0 === undefined || mainEnd === undefined ? undefined : mainEnd - main0;
  await new Promise((r) => setImmediate(r));
  gc.disconnect();
  clock.ns.set('(of which GC pauses, all stages)', gcMs * 1e6);
  if (profile) {
    const { profile: p } = await profile.post('Profiler.stop');
    const file = path.join(RESULTS, `chain-${layout}-${Date.now()}.cpuprofile`);
    writeFileSync(file, JSON.stringify(p));
    process.stdout.write(`cpu profile: ${path.relative(process.cwd(), file)}\n`);
  }
  if (watermark.inFlightBytes !== 0) throw new Error('chain bench left records unacked');
  await pipeline.close();
  for (const s of sinks) await s.close();
  return {
    seconds: wall,
    cpuSeconds: cpu,
    mainCpuSeconds: mainCpu,
    stages: clock.ns,
    keptSpans: kept,
    objects: s3.objects,
    deadLetters: dlq.letters,
  };
}

/** Wall and process CPU seconds of one measured run. */
interface Timing {
  wall: number;
  cpu: number;
}

async function measure(fn: () => unknown): Promise<Timing> {
  globalThis.gc?.();
  const cpu0 = cpuSeconds();
  const t0 = process.hrtime.bigint();
  await fn();
  return { wall: Number(process.hrtime.bigint() - t0) / 1e9, cpu: cpuSeconds() - cpu0 };
}

/** Fresh decoded events of the data set, in batches, and the watermark that checks they all get acked. */
async function decodedBatches(raw: ReadonlyArray<{ partitionKey: string; data: Uint8Array }>) {
  const config = benchConfig('flat');
  const dlq = new CountingDeadLetters();
  const decoder = new RecordDecoder(config.decode, dlq, createRegistry(false));
  const watermark = new ShardWatermark(Number.MAX_SAFE_INTEGER);
  const records = makeRecords(raw, watermark);
  const batches: PipelineEvent[][] = [];
  for (let i = 0; i < records.length; i += BATCH)
    batches.push(await decoder.decode(records.slice(i, i + BATCH)));
  return { batches, watermark, config };
}

/** A processor of the bench config, alone, with a context whose DLQ counts. */
function processorAlone(type: string, config: ReturnType<typeof benchConfig>): Processor {
  const i = config.processors.findIndex((p) => p.type === type);
  const names = processorNames(config.processors as Array<{ type: string; name?: string }>);
  const ctx: ComponentContext = {
    logger: pino({ level: 'silent' }),
    metrics: createRegistry(false),
    dlq: new CountingDeadLetters(),
    aws: {} as AwsClients,
  };
  return createProcessor(names[i]!, config.processors[i]!, ctx);
}

/**
 * Each processor and the router alone, on the output of the stages before it (prepared untimed): spans/s
 * of the stage by itself. Tail sampling includes its final decisions (flush) and the acks of dropped spans.
 */
async function isolatedStages(raw: ReadonlyArray<{ partitionKey: string; data: Uint8Array }>) {
  const out: Record<string, Timing> = {};
  // otel_spans
  {
    const { batches, config } = await decodedBatches(raw);
    const otel = processorAlone('otel_spans', config);
    const spans: PipelineEvent[][] = [];
    out.otel_spans = await measure(() => {
      for (const b of batches) spans.push(otel.process(b) as PipelineEvent[]);
    });
    // red_metrics on those spans (no downstream: window documents are not emitted in this run)
    const red = processorAlone('red_metrics', config);
    const afterRed: PipelineEvent[][] = [];
    out.red_metrics = await measure(() => {
      for (const b of spans) afterRed.push(red.process(b) as PipelineEvent[]);
    });
    await red.close?.();
    // tail_sampling
    const tail = processorAlone('tail_sampling', config);
    const kept: PipelineEvent[][] = [];
    out.tail_sampling = await measure(async () => {
      for (const b of afterRed) kept.push(tail.process(b) as PipelineEvent[]);
      kept.push(await tail.flush!());
    });
    await tail.close?.();
    // routing, on every span (as if nothing were sampled out)
    const router = new PartitionKeyRouter(config.routing!, createRegistry(false));
    out.routing = await measure(() => {
      for (const b of spans) router.route(b);
    });
  }
  return out;
}

/** The records of the data set, and the `rest` probability that keeps about KEEP of the spans. */
function dataSet(): { raw: Array<{ partitionKey: string; data: Uint8Array }>; rest: number } {
  if (DATA === 'flat') {
    const spans = [...generateSpans(SPANS, { seed: 7 })];
    const raw = spans.map(spanRecord);
    if (KEEP === undefined) return { raw, rest: 0.2 };
    // Flat traces: 5 spans, the root's status and duration say it all.
    let errors = 0;
    let slow = 0;
    let traceError = false;
    let traceSlow = false;
    for (const s of spans) {
      // Root first: its status and duration are the trace's.
      if (s.parentSpanId === '') {
        traceError = s.status.code === 2;
        traceSlow = BigInt(s.durationNano) >= 1_000_000_000n;
      }
      if (traceError) errors += 1;
      else if (traceSlow) slow += 1;
    }
    return { raw, rest: restFor(errors, slow, spans.length) };
  }
  const records = [...generateOtlpRecords(SPANS, { seed: 7, errorRate: ERROR_RATE })];
  let errors = 0;
  let slow = 0;
  for (const r of records) {
    if (r.traceHasError) errors += r.spans;
    else if (r.traceIsSlow) slow += r.spans;
  }
  return {
    raw: records.map((r) => ({ partitionKey: r.partitionKey, data: r.data })),
    rest: KEEP === undefined ? 0.2 : restFor(errors, slow, SPANS),
  };
}

function restFor(errors: number, slow: number, total: number): number {
  const rest = total - errors - slow;
  if (rest <= 0) return 0;
  return Math.min(1, Math.max(0, (KEEP! * total - errors - 0.8 * slow) / rest));
}

async function main(): Promise<void> {
  const set = dataSet();
  const raw = set.raw;
  restProbability = set.rest;
  const bytes = raw.reduce((n, r) => n + r.data.byteLength, 0);
  const utf8 = new TextDecoder();
  const timings = new Map<string, Timing[]>();
  const note = (figure: string, t: Timing) => timings.set(figure, [...(timings.get(figure) ?? []), t]);
  const chainRuns = new Map<string, ChainRun[]>();
  const session = values['cpu-prof'] ? new Session() : undefined;
  session?.connect();
  if (session) await session.post('Profiler.enable');

  for (let round = 0; round < ROUNDS; round++) {
    // Floor: the least any JSON pipeline must do.
    let sink = 0;
    note(
      'json_parse_floor',
      await measure(() => {
        for (const r of raw) sink += Object.keys(JSON.parse(utf8.decode(r.data))).length;
      }),
    );
    if (sink === 0) throw new Error('floor measured nothing');

    {
      const dlq = new CountingDeadLetters();
      const decoder = new RecordDecoder(benchConfig('flat').decode, dlq, createRegistry(false));
      const watermark = new ShardWatermark(Number.MAX_SAFE_INTEGER);
      const records = makeRecords(raw, watermark);
      note(
        'decode',
        await measure(async () => {
          for (let i = 0; i < records.length; i += BATCH) {
            for (const e of await decoder.decode(records.slice(i, i + BATCH))) e.ack.done();
          }
        }),
      );
      if (watermark.inFlightBytes !== 0) throw new Error('decode bench left records unacked');
    }

    for (const [stage, t] of Object.entries(await isolatedStages(raw))) note(`${stage} alone`, t);

    for (const layout of LAYOUTS) {
      const last = round === ROUNDS - 1;
      const run = await runChain(raw, layout, last ? session : undefined);
      if (run.deadLetters > 0) throw new Error(`${layout}: ${run.deadLetters} dead letters`);
      chainRuns.set(layout, [...(chainRuns.get(layout) ?? []), run]);
    }
  }

  // Rates from process CPU time: what one core does when nothing else runs on it (the machines are shared,
  // so wall time also counts other users' processes); the wall-clock rate is in the note.
  const rate = (seconds: number) => SPANS / seconds;
  const bestOf = (ts: Timing[]) => ts.reduce((a, b) => (b.cpu < a.cpu ? b : a));
  const floorBest = bestOf(timings.get('json_parse_floor')!);
  const floor = rate(floorBest.cpu);
  const rows: TableRow[] = [];
  for (const [figure, ts] of timings) {
    const best = bestOf(ts);
    rows.push({
      figure,
      value: `${fmt(rate(best.cpu))} spans/s`,
      ratio: rate(best.cpu) / floor,
      note: `${fmt((best.cpu / SPANS) * 1e6, 2)} us/span; wall ${fmt(rate(best.wall))}/s; CPU median ${fmt(rate(median(ts.map((t) => t.cpu))))}/s over ${ts.length} rounds`,
    });
  }
  const breakdowns: Record<string, Record<string, number>> = {};
  for (const [key, runs] of chainRuns) {
    const best = runs.reduce((a, b) => (b.cpuSeconds < a.cpuSeconds ? b : a));
    const label = key === 'flat' ? 'flat 9 columns' : 'spans schema';
    const perSpan = (x: number) => fmt((x / SPANS) * 1e6, 2);
    rows.push({
      figure: `chain, one core (${label})`,
      value: `${fmt(rate(best.cpuSeconds))} spans/s`,
      ratio: rate(best.cpuSeconds) / floor,
      note: `${perSpan(best.cpuSeconds)} us/span (all threads); wall ${fmt(rate(best.seconds))}/s (${fmt(best.cpuSeconds / best.seconds, 2)} of the core was ours); CPU median ${fmt(rate(median(runs.map((r) => r.cpuSeconds))))}/s over ${runs.length} rounds; ${fmt(best.keptSpans)} spans kept (${((100 * best.keptSpans) / SPANS).toFixed(0)} %)`,
    });
    if (best.mainCpuSeconds !== undefined) {
      rows.push({
        figure: `  its main thread alone (${label})`,
        value: `${fmt(SPANS / best.mainCpuSeconds)} spans/s`,
        ratio: SPANS / best.mainCpuSeconds / floor,
        note: `${perSpan(best.mainCpuSeconds)} us/span of event-loop CPU; the rest: DuckDB and V8's GC helper threads`,
      });
    }
    const us: Record<string, number> = {};
    for (const [stage, ns] of best.stages) us[stage] = ns / 1e3 / SPANS;
    us['total (wall)'] = (best.seconds * 1e6) / SPANS;
    us['total CPU, all threads'] = (best.cpuSeconds * 1e6) / SPANS;
    if (best.mainCpuSeconds !== undefined) us['total CPU, main thread'] = (best.mainCpuSeconds * 1e6) / SPANS;
    breakdowns[key] = us;
  }
  const m = machine();
  printTable(
    `${DATA} data: ${fmt(SPANS)} spans in ${fmt(raw.length)} records, ${(bytes / SPANS).toFixed(0)} bytes per span on average, ` +
      `tail sampling rest probability ${restProbability.toFixed(3)}, best of ${ROUNDS} rounds by CPU time; ` +
      `${m.model} (${m.cpus} cores visible), node ${m.node}, load average ${m.loadAverage}`,
    rows,
  );
  const stages = [...new Set(Object.values(breakdowns).flatMap((b) => Object.keys(b)))];
  const keys = Object.keys(breakdowns);
  process.stdout.write(
    `\nchain breakdown (best round): wall us per entering span, each stage's calls timed in the chain (floor: ${fmt(1e6 / floor, 2)} us/span)\n\n`,
  );
  process.stdout.write(`${'stage'.padEnd(58)}${keys.map((k) => k.padStart(16)).join('')}\n`);
  for (const stage of stages) {
    process.stdout.write(
      `${stage.padEnd(58)}${keys.map((k) => fmt(breakdowns[k]![stage] ?? 0, 2).padStart(16)).join('')}\n`,
    );
  }
  const file = writeResults(`chain-${DATA}`, {
    data: DATA,
    records: raw.length,
    keepTarget: KEEP ?? null,
    errorRate: DATA === 'otlp' ? ERROR_RATE : null,
    restProbability,
    spans: SPANS,
    bytesPerSpan: bytes / SPANS,
    rounds: ROUNDS,
    machine: m,
    rows,
    breakdownMicrosPerSpan: breakdowns,
    timings: Object.fromEntries(timings),
    chain: Object.fromEntries(
      [...chainRuns].map(([k, r]) => [
        k,
        r.map((x) => ({ wall: x.seconds, cpu: x.cpuSeconds, mainThreadCpu: x.mainCpuSeconds ?? null })),
      ]),
    ),
  });
  process.stdout.write(`\nresults: ${file}\n`);
  session?.disconnect();
}

await main();
