/**
 * `ksw demo`: the whole pipeline on embedded emulators, no Docker and no AWS account. Starts Kinesis
 * (kinesalite), S3 (s3rver) and DynamoDB (dynalite) on 127.0.0.1, produces synthetic OTel spans (traceId
 * as partition key) plus a few malformed records, runs the worker in-process with live progress, stops
 * it gracefully, downloads its output and verifies it independently with DuckDB: every valid record
 * exactly once in Parquet with exact int64 values, every malformed one in the DLQ.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { GetObjectCommand, ListObjectsV2Command, type S3Client } from '@aws-sdk/client-s3';
import { DuckDBInstance } from '@duckdb/node-api';
import pino from 'pino';
import type { Registry } from 'prom-client';
import { stringify } from 'yaml';
import { loadConfig, validateConfig } from '../config/load.js';
import { awsConfigSchema, createAwsClients } from '../core/aws.js';
import { sleep } from '../core/backoff.js';
import { type LocalStack, startLocalStack } from '../local/emulators.js';
import { provision } from '../local/provision.js';
import { KinesisProducer } from '../producer/kinesis-producer.js';
import { generateSpans, spanRecord } from '../producer/synthetic-spans.js';
import { Worker } from '../runtime/worker.js';
import { parseCommandArgs } from './args.js';

const USAGE = `usage: ksw demo [--records N] [--shards N] [--dir PATH] [--keep]

  --records N   valid spans to produce (default 20000); 3 malformed records are added
  --shards N    shards of the demo stream (default 4)
  --dir PATH    data directory: emulator data, downloaded Parquet and DLQ files (default .local/demo)
  --keep        keep what is already in --dir (this run writes under a run-id prefix);
                by default the directory is wiped first. Emulators are always stopped at the end.
`;

const STREAM = 'demo-spans';
const BUCKET = 'demo-lake';
const MARKER = '.ksw-demo';
const PRODUCE_CHUNK = 5_000;

/** Records the decoder must dead-letter: cut-off JSON, a JSON array (not an object), bytes that are not UTF-8. */
const MALFORMED: ReadonlyArray<{ what: string; data: Uint8Array }> = [
  { what: 'truncated JSON', data: Buffer.from('{"traceId":"0af7651916cd43dd8448eb211c80319c","spanId":') },
  { what: 'JSON array', data: Buffer.from('[1, 2, 3]') },
  { what: 'invalid UTF-8', data: Uint8Array.from([0x7b, 0x22, 0xff, 0xfe, 0x22, 0x7d]) },
];

interface Produced {
  spanId: string;
  startTimeUnixNano: string;
  endTimeUnixNano: string;
  durationNano: string;
  statusCode: number;
}

async function metricSum(registry: Registry, name: string): Promise<number> {
  const metric = await registry.getSingleMetric(name)?.get();
  return (metric?.values ?? []).reduce((sum, v) => sum + v.value, 0);
}

async function metricMax(registry: Registry, name: string): Promise<number> {
  const metric = await registry.getSingleMetric(name)?.get();
  return Math.max(0, ...(metric?.values ?? []).map((v) => v.value));
}

interface Progress {
  fetched: number;
  rows: number;
  files: number;
  dlq: number;
  lag: number;
  /** Age of the oldest record fetched but not yet durable: the lag kinesalite's MillisBehindLatest (always 0) cannot show. */
  oldestUnackedMs: number;
}

async function readProgress(worker: Worker): Promise<Progress> {
  const metrics = worker.metrics;
  const progress = {
    fetched: await metricSum(metrics, 'ksw_kinesis_records_fetched_total'),
    rows: await metricSum(metrics, 'ksw_parquet_rows_total'),
    files: await metricSum(metrics, 'ksw_parquet_files_total'),
    dlq: await metricSum(metrics, 'ksw_dlq_records_total'),
    lag: await metricMax(metrics, 'ksw_kinesis_millis_behind_latest'),
  };
  // Read after the counters: a file counts its rows just before its records are acked, not after.
  const oldestUnackedMs = Math.max(0, ...worker.status().shards.map((s) => s.oldestUnackedAgeMs));
  return { ...progress, oldestUnackedMs };
}

/** Downloads every object under `prefix` to `dir`, at its key relative to the prefix. */
async function downloadPrefix(s3: S3Client, prefix: string, dir: string): Promise<string[]> {
  const files: string[] = [];
  let token: string | undefined;
  do {
    const page = await s3.send(
      new ListObjectsV2Command({ Bucket: BUCKET, Prefix: prefix, ContinuationToken: token }),
    );
    for (const object of page.Contents ?? []) {
      const key = object.Key!;
      const body = await s3.send(new GetObjectCommand({ Bucket: BUCKET, Key: key }));
      const file = path.join(dir, key.slice(prefix.length));
      mkdirSync(path.dirname(file), { recursive: true });
      writeFileSync(file, await body.Body!.transformToByteArray());
      files.push(file);
    }
    token = page.IsTruncated ? page.NextContinuationToken : undefined;
  } while (token);
  return files;
}

/**
 * Refuses to wipe a directory the demo did not create: `--dir ~` must not delete a home directory.
 * A directory is ours when it is empty, holds the marker file, or has the layout of a demo run from
 * before the marker existed (worker.yaml next to emulators/).
 */
function isDemoDir(dir: string): boolean {
  if (!existsSync(dir) || readdirSync(dir).length === 0 || existsSync(path.join(dir, MARKER))) return true;
  return existsSync(path.join(dir, 'worker.yaml')) && existsSync(path.join(dir, 'emulators', 's3'));
}

function prepareDir(dir: string, keep: boolean): void {
  if (!isDemoDir(dir)) {
    throw new Error(
      `${dir} is not empty and was not created by ksw demo; choose another --dir or empty it yourself`,
    );
  }
  if (!keep) rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  writeFileSync(path.join(dir, MARKER), 'created by `ksw demo`; wiped by the next run unless --keep\n');
}

const sqlString = (s: string) => `'${s.replaceAll("'", "''")}'`;
const fmt = (n: number | bigint) => Number(n).toLocaleString('en-US');

export interface Check {
  readonly name: string;
  readonly ok: boolean;
  readonly detail: string;
}

/** The independent check: DuckDB reads the downloaded files and compares them with what was produced. */
export async function verifyParquet(
  parquetGlob: string,
  producedCsv: string,
  expectedRows: number,
): Promise<{ checks: Check[]; rows: number }> {
  const instance = await DuckDBInstance.create(':memory:');
  const conn = await instance.connect();
  try {
    const one = async (sql: string) => (await conn.runAndReadAll(sql)).getRowObjects()[0]!;
    await conn.run(`CREATE VIEW lake AS SELECT * FROM read_parquet(${sqlString(parquetGlob)})`);
    // The produced values stay decimal strings end to end: DuckDB parses them as BIGINT itself, and
    // the comparison is also made on the BIGINT's text, so no JS number ever touches them.
    await conn.run(
      `CREATE TABLE produced AS SELECT * FROM read_csv(${sqlString(producedCsv)}, header = true, columns = {
        'spanId': 'VARCHAR', 'startTimeUnixNano': 'VARCHAR', 'endTimeUnixNano': 'VARCHAR',
        'durationNano': 'VARCHAR', 'statusCode': 'INTEGER'})`,
    );
    const counts = await one(`SELECT count(*) AS total_rows,
        count(DISTINCT (_shard_id, _sequence_number)) AS distinct_records,
        count(DISTINCT spanId) AS distinct_spans,
        any_value(typeof(startTimeUnixNano)) AS start_type,
        (SELECT count(*) FROM produced) AS produced FROM lake`);
    const exact = await one(`SELECT count(*) AS missing FROM produced p WHERE NOT EXISTS (
        SELECT 1 FROM lake f WHERE f.spanId = p.spanId
          AND CAST(f.startTimeUnixNano AS VARCHAR) = p.startTimeUnixNano
          AND f.startTimeUnixNano = CAST(p.startTimeUnixNano AS BIGINT)
          AND CAST(f.endTimeUnixNano AS VARCHAR) = p.endTimeUnixNano
          AND CAST(f.durationNano AS VARCHAR) = p.durationNano
          AND f.statusCode = p.statusCode)`);
    const derived = await one(`SELECT
        count(*) FILTER (WHERE epoch_us(startTime) <> startTimeUnixNano // 1000 OR startTime IS NULL) AS bad_timestamp,
        count(*) FILTER (WHERE json_extract_string(_record, '$.startTimeUnixNano') <> CAST(startTimeUnixNano AS VARCHAR)) AS bad_record_json,
        count(*) FILTER (WHERE _stream <> ${sqlString(STREAM)} OR _partition_key <> traceId) AS bad_origin
      FROM lake`);
    const n = (v: unknown) => Number(v as bigint);
    const rows = n(counts.total_rows);
    const checks: Check[] = [
      {
        name: 'rows in Parquet = valid records produced',
        ok: rows === expectedRows,
        detail: `${fmt(rows)} of ${fmt(expectedRows)}`,
      },
      {
        name: 'each record exactly once (distinct _shard_id, _sequence_number)',
        ok: n(counts.distinct_records) === expectedRows && n(counts.distinct_spans) === expectedRows,
        detail: `${fmt(n(counts.distinct_records))} distinct records, ${fmt(n(counts.distinct_spans))} distinct spanIds`,
      },
      {
        name: 'int64 columns are BIGINT with exact values',
        ok: counts.start_type === 'BIGINT' && n(exact.missing) === 0,
        detail: `type ${String(counts.start_type)}; ${fmt(n(exact.missing))} produced spans without an exact (spanId, start, end, duration, status) match`,
      },
      {
        name: 'startTime (timestamp_us) = startTimeUnixNano / 1000',
        ok: n(derived.bad_timestamp) === 0,
        detail: `${fmt(n(derived.bad_timestamp))} rows differ`,
      },
      {
        name: '_record JSON keeps the int64 string, metadata matches',
        ok: n(derived.bad_record_json) === 0 && n(derived.bad_origin) === 0,
        detail: `${fmt(n(derived.bad_record_json))} bad _record, ${fmt(n(derived.bad_origin))} bad _stream/_partition_key`,
      },
    ];
    return { checks, rows };
  } finally {
    conn.closeSync();
    instance.closeSync();
  }
}

/** Reads the downloaded DLQ objects (JSON lines, data in base64) and matches them with the malformed records. */
function verifyDlq(files: string[]): { check: Check; letters: number } {
  const letters = files.flatMap((file) =>
    readFileSync(file, 'utf8')
      .split('\n')
      .filter((line) => line.trim() !== '')
      .map((line) => JSON.parse(line) as { data: string; reason: string; partitionKey: string }),
  );
  const stored = new Set(letters.map((l) => l.data));
  const missing = MALFORMED.filter((m) => !stored.has(Buffer.from(m.data).toString('base64')));
  return {
    letters: letters.length,
    check: {
      name: 'every malformed record is in the DLQ with its original bytes',
      ok: letters.length === MALFORMED.length && missing.length === 0,
      detail: `${letters.length} letters of ${MALFORMED.length}${missing.length ? `; missing: ${missing.map((m) => m.what).join(', ')}` : ''}`,
    },
  };
}

export async function demoCommand(args: string[]): Promise<number> {
  const parsed = parseCommandArgs('demo', USAGE, args, {
    records: { type: 'string', default: '20000' },
    shards: { type: 'string', default: '4' },
    dir: { type: 'string', default: '.local/demo' },
    keep: { type: 'boolean', default: false },
  });
  if (!parsed) return 0;
  const { values } = parsed;
  const total = Number(values.records);
  const shards = Number(values.shards);
  if (!Number.isInteger(total) || total < 1 || !Number.isInteger(shards) || shards < 1 || shards > 100) {
    process.stderr.write(
      'demo: --records must be a positive integer and --shards an integer from 1 to 100\n',
    );
    return 2;
  }

  const out = (line = '') => process.stdout.write(`${line}\n`);
  const dir = path.resolve(values.dir);
  try {
    prepareDir(dir, values.keep);
  } catch (err) {
    process.stderr.write(`demo: ${(err as Error).message}\n`);
    return 2;
  }
  // With --keep, earlier runs' objects stay in the bucket: this run writes and verifies under its own id.
  const runId = values.keep ? `run-${new Date().toISOString().replace(/[:.]/g, '-')}` : '';
  const lakePrefix = values.keep ? `spans/${runId}/` : 'spans/';
  const dlqPrefix = values.keep ? `dlq/${runId}/` : 'dlq/';
  const parquetDir = path.join(dir, 'parquet', runId);
  const dlqDir = path.join(dir, 'dlq', runId);
  const expected = total + MALFORMED.length;

  // Ctrl-C: stop producing and waiting, then stop the worker and the emulators in `finally`.
  // A second Ctrl-C exits at once (the emulator module kills its children on exit).
  const interrupt = new AbortController();
  const onSignal = (signal: NodeJS.Signals) => {
    if (interrupt.signal.aborted) {
      process.stderr.write(`${signal} again: exiting now\n`);
      process.exit(130);
    }
    process.stderr.write(`\n${signal}: stopping the worker and the emulators (again to force)\n`);
    interrupt.abort();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  const started = Date.now();
  let stack: LocalStack | undefined;
  let worker: Worker | undefined;
  let aws: ReturnType<typeof createAwsClients> | undefined;
  try {
    out(`starting kinesalite, dynalite and s3rver on 127.0.0.1 (data and logs in ${dir}/emulators)`);
    stack = await startLocalStack({ dataDir: path.join(dir, 'emulators') });
    aws = createAwsClients(awsConfigSchema.parse(stack.awsConfig));
    // The same stack and provisioning as `ksw local up`, stopped at the end of the run.
    await provision(
      aws,
      { streams: [{ name: STREAM, shards }], buckets: [BUCKET], tables: [] },
      interrupt.signal,
    );
    if (interrupt.signal.aborted) return 130;

    const raw = {
      app: { name: 'ksw-demo', workerId: 'demo-worker' },
      aws: stack.awsConfig,
      consumers: [{ type: 'polling', stream: STREAM, startPosition: 'TRIM_HORIZON', idleIntervalMs: 250 }],
      checkpoints: { table: 'demo-leases', intervalMs: 2_000 },
      sinks: {
        lake: {
          type: 's3_parquet',
          bucket: BUCKET,
          prefix: lakePrefix,
          compression: 'zstd',
          roll: { maxFileBytes: 64 * 1024 * 1024, maxFileRows: 1_000_000, maxFileAgeMs: 5_000 },
          // Below shutdown.deadlineMs, so a sink that cannot upload gives up before the worker is done stopping.
          closeTimeoutMs: 5_000,
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
      dlq: { type: 's3', bucket: BUCKET, prefix: dlqPrefix, closeTimeoutMs: 5_000 },
      server: { port: 0 },
      log: { level: 'warn' },
      // Ctrl-C should not leave the user waiting half a minute.
      shutdown: { deadlineMs: 10_000 },
    };
    validateConfig(raw, 'demo config');
    const configFile = path.join(dir, 'worker.yaml');
    writeFileSync(
      configFile,
      `# Written by \`ksw demo\`. The endpoints are this run's emulators, which stop when the demo ends.\n${stringify(raw)}`,
    );
    // Start from the file just written, so the file shown to the user is known to load.
    const config = loadConfig(configFile);
    // Warnings go to stderr so they do not interleave with the progress lines on stdout.
    const logger = pino({ name: 'ksw-demo', level: 'warn' }, pino.destination({ fd: 2, sync: true }));
    worker = await Worker.start(config, { logger, workerId: 'demo-worker' });
    out(`worker started: config ${configFile}, metrics http://127.0.0.1:${worker.address.port}/metrics`);
    out(
      `producing ${fmt(total)} spans + ${MALFORMED.length} malformed records to ${STREAM} (${shards} shards)`,
    );

    const producer = new KinesisProducer(aws.kinesis, STREAM, { concurrency: Math.min(8, shards * 2) });
    const produced: Produced[] = [];
    let putCount = 0;
    const produceStarted = Date.now();
    const producing = (async () => {
      let chunk: Array<{ partitionKey: string; data: Uint8Array }> = [];
      const flush = async () => {
        await producer.put(chunk, { signal: interrupt.signal });
        putCount += chunk.length;
        chunk = [];
      };
      let i = 0;
      for (const span of generateSpans(total, { seed: 42 })) {
        produced.push({
          spanId: span.spanId,
          startTimeUnixNano: span.startTimeUnixNano,
          endTimeUnixNano: span.endTimeUnixNano,
          durationNano: span.durationNano,
          statusCode: span.status.code,
        });
        chunk.push(spanRecord(span));
        // The malformed records go in the middle of the stream, among valid ones, as they would in life.
        if (++i === Math.ceil(total / 2)) {
          chunk.push(...MALFORMED.map((m, j) => ({ partitionKey: `malformed-${j}`, data: m.data })));
        }
        if (chunk.length >= PRODUCE_CHUNK) await flush();
      }
      if (chunk.length > 0) await flush();
    })();
    let producingError: unknown;
    let producingDone = false;
    producing.then(
      () => {
        producingDone = true;
      },
      (err: unknown) => {
        producingError = err;
      },
    );

    // Roll age (5 s) and checkpoint interval set a floor; beyond it the pipeline runs at thousands of records/s.
    const deadline = Date.now() + 60_000 + total * 5;
    let progress = await readProgress(worker);
    let pipelineMs = 0;
    while (!interrupt.signal.aborted) {
      await sleep(1_000, interrupt.signal);
      if (interrupt.signal.aborted) break;
      if (producingError !== undefined) throw producingError;
      progress = await readProgress(worker);
      out(
        `  produced ${fmt(putCount).padStart(7)}  fetched ${fmt(progress.fetched).padStart(7)}  rows written ${fmt(progress.rows).padStart(7)}  files ${String(progress.files).padStart(3)}  DLQ ${progress.dlq}  max lag ${fmt(progress.lag)} ms  oldest unacked ${fmt(progress.oldestUnackedMs)} ms`,
      );
      if (producingDone && progress.rows + progress.dlq >= expected) {
        pipelineMs = Date.now() - produceStarted;
        break;
      }
      if (Date.now() > deadline) {
        out(`timed out: ${fmt(progress.rows + progress.dlq)} of ${fmt(expected)} records written`);
        break;
      }
    }
    if (interrupt.signal.aborted) {
      await producing.catch(() => undefined);
      return 130;
    }
    // Let the acks of the last file land before reading the lag the pipeline ends with.
    await sleep(100);
    const lagAtEnd = await readProgress(worker);

    const stopped = await worker.stop();
    worker = undefined;
    out(`worker stopped (${stopped.drained ? 'drained' : 'NOT drained'}); downloading its output`);

    const parquetFiles = (await downloadPrefix(aws.s3, lakePrefix, parquetDir)).filter((f) =>
      f.endsWith('.parquet'),
    );
    const dlqFiles = await downloadPrefix(aws.s3, dlqPrefix, dlqDir);
    const producedCsv = path.join(dir, runId, 'produced.csv');
    mkdirSync(path.dirname(producedCsv), { recursive: true });
    writeFileSync(
      producedCsv,
      `spanId,startTimeUnixNano,endTimeUnixNano,durationNano,statusCode\n${produced
        .map(
          (p) => `${p.spanId},${p.startTimeUnixNano},${p.endTimeUnixNano},${p.durationNano},${p.statusCode}`,
        )
        .join('\n')}\n`,
    );
    const glob = path.join(parquetDir, '**', '*.parquet');
    const checks: Check[] = [];
    let rows = 0;
    if (parquetFiles.length === 0) {
      checks.push({
        name: 'Parquet files written',
        ok: false,
        detail: `none under s3://${BUCKET}/${lakePrefix}`,
      });
    } else {
      const parquet = await verifyParquet(glob, producedCsv, total);
      checks.push(...parquet.checks);
      rows = parquet.rows;
    }
    const dlq = verifyDlq(dlqFiles);
    checks.push(dlq.check);
    checks.push({
      name: 'worker stopped gracefully with everything acked',
      ok: stopped.drained,
      detail: stopped.drained ? 'drained' : 'shutdown deadline reached first',
    });

    const elapsed = (Date.now() - started) / 1000;
    const ok = checks.every((c) => c.ok);
    out();
    out('verification (DuckDB over the downloaded files)');
    for (const c of checks) out(`  ${c.ok ? 'ok  ' : 'FAIL'} ${c.name}: ${c.detail}`);
    out();
    out('summary');
    const table: Array<[string, string]> = [
      ['records in', `${fmt(expected)} (${fmt(total)} spans + ${MALFORMED.length} malformed)`],
      ['rows written', `${fmt(rows)} (DuckDB count; worker counted ${fmt(progress.rows)})`],
      ['files', `${parquetFiles.length} Parquet (zstd) in ${parquetDir}`],
      ['DLQ letters', `${dlq.letters} in ${dlqFiles.length} objects in ${dlqDir}`],
      [
        'lag at end',
        `${fmt(lagAtEnd.lag)} ms MillisBehindLatest (kinesalite reports 0 for open shards), oldest unacked ${fmt(lagAtEnd.oldestUnackedMs)} ms`,
      ],
      ['elapsed', `${elapsed.toFixed(1)} s total, ${(pipelineMs / 1000).toFixed(1)} s produce-to-written`],
      [
        'records/s',
        pipelineMs > 0
          ? `${fmt(Math.round(expected / (pipelineMs / 1000)))} end to end (includes the 5 s file roll age)`
          : 'n/a',
      ],
    ];
    for (const [k, v] of table) out(`  ${k.padEnd(14)} ${v}`);
    out();
    out('look at the files with DuckDB:');
    out(
      `  duckdb -c "SELECT serviceName, count(*) AS spans, max(durationNano) AS max_ns FROM read_parquet('${glob}') GROUP BY 1 ORDER BY 2 DESC"`,
    );
    out(ok ? 'demo OK' : 'demo FAILED: see the failed checks above');
    return ok ? 0 : 1;
  } catch (err) {
    if (interrupt.signal.aborted) return 130;
    throw err;
  } finally {
    process.removeListener('SIGINT', onSignal);
    process.removeListener('SIGTERM', onSignal);
    if (worker) {
      const stopped = await worker.stop().catch((err: Error) => ({ drained: false, error: err.message }));
      out(
        `worker stopped (${stopped.drained ? 'drained' : 'not drained: unacked records would be read again on restart'})`,
      );
    }
    aws?.destroy();
    if (stack) {
      await stack.stop();
      out('emulators stopped');
    }
  }
}
