/**
 * End to end against the emulators: Kinesis (4 shards) -> worker -> Parquet on S3 + DLQ, checkpoints in
 * DynamoDB. Includes the crash test: SIGKILL mid-run, restart, and the final object set must hold every
 * record exactly once.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { closeSync, mkdirSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { CreateBucketCommand, GetObjectCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, it } from 'vitest';
import { stringify } from 'yaml';
import { validateConfig } from '../../src/config/load.js';
import { LeaseTable } from '../../src/consumers/lease-table.js';
import { Worker } from '../../src/runtime/worker.js';
import { download, duck, listKeys } from '../helpers/parquet.js';
import {
  createStream,
  putRecords,
  silentLogger,
  startTestStack,
  type TestStack,
  waitFor,
} from '../helpers/stack.js';

const ROOT = path.resolve(import.meta.dirname, '../..');
const CLI = path.join(ROOT, 'src/cli/main.ts');

function span(i: number) {
  return {
    traceId: `trace-${Math.floor(i / 4)}`,
    spanId: `span-${i}`,
    // Beyond 2^53: exactness is checked on read-back.
    startTimeUnixNano: (1_700_000_000_000_000_000n + BigInt(i) * 1_000_003n).toString(),
    n: i,
  };
}

function workerConfig(
  t: TestStack,
  stream: string,
  bucket: string,
  table: string,
  extra: Record<string, unknown> = {},
) {
  return {
    app: { name: 'e2e', workerId: `w-${stream}` },
    aws: t.stack.awsConfig,
    consumers: [{ type: 'polling', stream, idleIntervalMs: 100, busyIntervalMs: 0 }],
    checkpoints: { table, intervalMs: 300, shardSyncIntervalMs: 1_000 },
    sinks: {
      lake: {
        type: 's3_parquet',
        bucket,
        prefix: 'lake/',
        roll: { maxFileRows: 150, maxFileAgeMs: 700 },
        columns: [
          { name: 'spanId', type: 'string' },
          { name: 'startTimeUnixNano', type: 'int64' },
          { name: 'n', type: 'int64' },
        ],
      },
    },
    dlq: { type: 's3', bucket, prefix: 'dlq/', maxBatchAgeMs: 200 },
    server: { port: 0 },
    shutdown: { deadlineMs: 15_000 },
    ...extra,
  };
}

async function metricValue(worker: Worker, name: string): Promise<number> {
  const metric = await worker.metrics.getSingleMetric(name)?.get();
  return (metric?.values ?? []).reduce((sum, v) => sum + v.value, 0);
}

/** Files uploaded before the first worker is killed (override to move the kill point when hunting races). */
const KILL_AFTER_FILES = Number(process.env.KSW_TEST_KILL_AFTER_FILES ?? 3);

function logTail(file: string, bytes = 6_000): string {
  try {
    const text = readFileSync(file, 'utf8');
    return text.slice(-bytes);
  } catch {
    return '(no log)';
  }
}

describe('worker end to end', () => {
  let t: TestStack;
  // Worker processes started by a test; killed in afterAll() so a failed assertion never leaves one running
  // (a live child keeps the test file's process, and so the whole run, from ending).
  const children: ChildProcess[] = [];

  beforeAll(async () => {
    t = await startTestStack();
  });
  afterAll(async () => {
    for (const child of children)
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await t.stop();
  });

  it('writes every record to Parquet, malformed ones to the DLQ, and checkpoints each shard', async () => {
    const stream = 'e2e-basic';
    const bucket = 'e2e-basic-bucket';
    await t.aws.s3.send(new CreateBucketCommand({ Bucket: bucket }));
    await createStream(t.aws.kinesis, stream, 4);
    const good = Array.from({ length: 400 }, (_, i) => span(i));
    const put = await putRecords(t.aws.kinesis, stream, [
      ...good.map((s) => ({ partitionKey: s.traceId, data: JSON.stringify(s) })),
      { partitionKey: 'bad-1', data: '{"truncated": ' },
      { partitionKey: 'bad-2', data: Buffer.from([0xc3, 0x28]) },
      { partitionKey: 'bad-3', data: '[1,2,3]' },
    ]);
    const config = validateConfig(workerConfig(t, stream, bucket, 'e2e-basic-leases'));
    const worker = await Worker.start(config, { logger: silentLogger });
    try {
      await waitFor(
        async () =>
          (await metricValue(worker, 'ksw_parquet_rows_total')) >= 400 &&
          (await metricValue(worker, 'ksw_dlq_records_total')) >= 3,
        30_000,
        'rows and dead letters',
      );
      const res = await fetch(`http://127.0.0.1:${worker.address.port}/readyz`);
      assert.equal(res.status, 200);
      const metrics = await (await fetch(`http://127.0.0.1:${worker.address.port}/metrics`)).text();
      assert.match(metrics, /ksw_kinesis_millis_behind_latest\{/);
    } finally {
      const { drained } = await worker.stop();
      assert.ok(drained, 'graceful stop drains everything');
    }
    const dir = path.join(t.dir, 'basic');
    await download(t.aws.s3, bucket, 'lake/', dir);
    const rows = await duck(
      `SELECT count(*) AS c, count(DISTINCT (_shard_id, _sequence_number)) AS d, sum(n) AS s FROM read_parquet('${dir}/lake/**/*.parquet')`,
    );
    assert.equal(rows[0]!.c, 400n);
    assert.equal(rows[0]!.d, 400n);
    assert.equal(rows[0]!.s, BigInt((399 * 400) / 2));
    const exact = await duck(
      `SELECT spanId, startTimeUnixNano::VARCHAR AS t FROM read_parquet('${dir}/lake/**/*.parquet') WHERE spanId = 'span-399'`,
    );
    assert.equal(exact[0]!.t, good[399]!.startTimeUnixNano, 'int64 survives exactly');

    const dlqKeys = await listKeys(t.aws.s3, bucket, 'dlq/');
    const lines: Array<{ reason: string; sequenceNumber: string; data: string }> = [];
    for (const key of dlqKeys) {
      const body = await (
        await t.aws.s3.send(new GetObjectCommand({ Bucket: bucket, Key: key }))
      ).Body!.transformToString();
      for (const line of body.split('\n').filter(Boolean)) lines.push(JSON.parse(line));
    }
    assert.equal(lines.length, 3);
    assert.deepEqual(
      lines.map((l) => Buffer.from(l.data, 'base64').toString('latin1')).sort(),
      ['{"truncated": ', Buffer.from([0xc3, 0x28]).toString('latin1'), '[1,2,3]'].sort(),
    );
    assert.ok(lines.every((l) => l.reason.length > 0));

    // Checkpoints: each shard's lease holds the last sequence number put to it.
    const lastPerShard = new Map<string, string>();
    for (const p of put) lastPerShard.set(p.shardId, p.sequenceNumber);
    const leases = await new LeaseTable(t.aws.dynamodb, 'e2e-basic-leases').list();
    for (const [shard, seq] of lastPerShard) {
      const lease = leases.find((l) => l.leaseKey === shard);
      assert.equal(lease?.checkpoint, seq, `checkpoint of ${shard}`);
      assert.equal(lease?.leaseOwner, undefined, 'released at shutdown');
    }
  });

  it('survives SIGKILL mid-run: after a restart every record is in the final object set exactly once', async () => {
    const stream = 'e2e-crash';
    const bucket = 'e2e-crash-bucket';
    await t.aws.s3.send(new CreateBucketCommand({ Bucket: bucket }));
    await createStream(t.aws.kinesis, stream, 4);
    const total = 4_000;
    const records = Array.from({ length: total }, (_, i) => span(i));
    const put = await putRecords(
      t.aws.kinesis,
      stream,
      records.slice(0, 2_000).map((s) => ({ partitionKey: s.traceId, data: JSON.stringify(s) })),
    );
    const cfgFile = path.join(t.dir, 'crash.yaml');
    // Small batches so the kill lands between uploads and checkpoints.
    const cfg = workerConfig(t, stream, bucket, 'e2e-crash-leases', {});
    (cfg.consumers[0] as Record<string, unknown>).maxRecordsPerCall = 100;
    (cfg as Record<string, unknown>).log = { level: 'debug' };
    writeFileSync(cfgFile, stringify(cfg));
    mkdirSync(path.join(t.dir, 'logs'), { recursive: true });

    const startWorker = (name: string): ChildProcess => {
      const log = openSync(path.join(t.dir, 'logs', `${name}.log`), 'w');
      const child = spawn(process.execPath, ['--import', 'tsx', CLI, 'run', '-c', cfgFile], {
        cwd: ROOT,
        stdio: ['ignore', log, log],
      });
      closeSync(log); // the child has its own copy
      children.push(child);
      return child;
    };

    const first = startWorker('first');
    // Kill once some files are uploaded but the run is far from done.
    await waitFor(
      async () => (await parquetKeys(t, bucket)).length >= KILL_AFTER_FILES,
      30_000,
      'first uploads',
    );
    first.kill('SIGKILL');
    await new Promise((r) => first.once('exit', r));
    const beforeRestart = (await parquetKeys(t, bucket)).length;

    put.push(
      ...(await putRecords(
        t.aws.kinesis,
        stream,
        records.slice(2_000).map((s) => ({ partitionKey: s.traceId, data: JSON.stringify(s) })),
      )),
    );
    const second = startWorker('second');
    const dir = path.join(t.dir, 'crash');
    let rows = 0;
    try {
      await waitFor(
        async () => {
          rows = await countRows(t, bucket, dir);
          return rows >= total;
        },
        60_000,
        'all records written after restart',
      );
    } catch (err) {
      // The worker logs and the lease table say where it stopped; print them so a CI failure can be read.
      const leases = await new LeaseTable(t.aws.dynamodb, 'e2e-crash-leases').list();
      console.error(`rows found: ${rows} of ${total}; leases: ${JSON.stringify(leases)}`);
      for (const name of ['first', 'second'])
        console.error(
          `--- ${name} worker log (tail) ---\n${logTail(path.join(t.dir, 'logs', `${name}.log`))}`,
        );
      throw err;
    }
    const started = Date.now();
    second.kill('SIGTERM');
    const code = await new Promise<number | null>((r) => second.once('exit', (c) => r(c)));
    assert.equal(code, 0, `graceful exit code (log: ${logTail(path.join(t.dir, 'logs', 'second.log'))})`);
    assert.ok(Date.now() - started < 15_000, 'exits within the shutdown deadline');

    const files = await download(t.aws.s3, bucket, 'lake/', dir);
    assert.ok(files.filter((f) => f.endsWith('.parquet')).length > beforeRestart);
    const stats = await duck(
      `SELECT count(*) AS c, count(DISTINCT (_shard_id, _sequence_number)) AS d FROM read_parquet('${dir}/lake/**/*.parquet')`,
    );
    assert.equal(stats[0]!.d, BigInt(total), 'nothing missing');
    assert.equal(stats[0]!.c, BigInt(total), 'no record twice in the final object set');
    const got = await duck(
      `SELECT _shard_id AS s, _sequence_number AS q FROM read_parquet('${dir}/lake/**/*.parquet')`,
    );
    const have = new Set(got.map((r) => `${r.s}/${r.q}`));
    for (const p of put)
      assert.ok(have.has(`${p.shardId}/${p.sequenceNumber}`), `missing ${p.shardId}/${p.sequenceNumber}`);
  });

  it('CLI: a bad config fails at start-up naming the field and the fix', () => {
    const file = path.join(t.dir, 'bad.yaml');
    writeFileSync(
      file,
      stringify({
        consumers: [{ type: 'polling', stream: 's', startPosition: 'EARLIEST' }],
        sinks: { lake: { type: 's3_parquet' } },
        dlq: { type: 's3', bucket: 'b-b-b' },
      }),
    );
    for (const command of ['validate', 'run']) {
      const out = spawnSync(process.execPath, ['--import', 'tsx', CLI, command, '-c', file], {
        cwd: ROOT,
        encoding: 'utf8',
      });
      assert.equal(out.status, 1, command);
      assert.match(
        out.stderr,
        /consumers\[0\]\.startPosition: .*allowed values: "TRIM_HORIZON", "LATEST", "AT_TIMESTAMP"/,
      );
      assert.match(out.stderr, /sinks\.lake\.bucket: required field is missing/);
    }
    const good = path.join(t.dir, 'good.yaml');
    writeFileSync(good, stringify(workerConfig(t, 's', 'b-b-b', 'tbl')));
    const ok = spawnSync(process.execPath, ['--import', 'tsx', CLI, 'validate', '-c', good], {
      cwd: ROOT,
      encoding: 'utf8',
    });
    assert.equal(ok.status, 0, ok.stderr);
    assert.match(ok.stdout, /OK/);
  });
});

/** Data objects only: each file's manifest (under lake/_ksw/) is written before it. */
async function parquetKeys(t: TestStack, bucket: string): Promise<string[]> {
  return (await listKeys(t.aws.s3, bucket, 'lake/')).filter((k) => k.endsWith('.parquet'));
}

async function countRows(t: TestStack, bucket: string, dir: string): Promise<number> {
  const scratch = `${dir}-probe-${Date.now()}`;
  const files = await download(t.aws.s3, bucket, 'lake/', scratch);
  // The sink's manifests live under the same prefix (lake/_ksw/) and come before their data objects.
  if (!files.some((f) => f.endsWith('.parquet'))) return 0;
  const rows = await duck(
    `SELECT count(DISTINCT (_shard_id, _sequence_number)) AS d FROM read_parquet('${scratch}/lake/**/*.parquet')`,
  );
  return Number(rows[0]!.d);
}
