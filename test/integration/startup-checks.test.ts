/**
 * Start-up and readiness as an orchestrator sees them:
 *  - a permanent AWS error at start-up (a misspelled bucket or stream, AccessDenied) fails the start at once
 *    naming the config field and the resource, instead of being retried for ever;
 *  - /readyz answers 503 (with the reason) while the shard sync fails (Kinesis unreachable), 200 again once
 *    it succeeds;
 *  - a stop requested while start-up hangs (the lease table does not answer) ends the start within the
 *    shutdown deadline.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { CreateBucketCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, it } from 'vitest';
import { stringify } from 'yaml';
import { validateConfig } from '../../src/config/load.js';
import { StartAbortedError, Worker } from '../../src/runtime/worker.js';
import { amzTarget, awsJsonError, FaultProxy, s3XmlError } from '../helpers/fault-proxy.js';
import { createStream, silentLogger, startTestStack, type TestStack, waitFor } from '../helpers/stack.js';

const BUCKET = 'startup-checks-lake';
const ROOT = path.resolve(import.meta.dirname, '../..');
const CLI = path.join(ROOT, 'src/cli/main.ts');

describe('start-up checks and readiness', () => {
  let t: TestStack;
  let kinesis: FaultProxy;
  let s3: FaultProxy;
  let dynamodb: FaultProxy;

  beforeAll(async () => {
    t = await startTestStack();
    const e = t.stack.awsConfig.endpoints;
    [kinesis, s3, dynamodb] = await Promise.all([
      FaultProxy.start(e.kinesis),
      FaultProxy.start(e.s3),
      FaultProxy.start(e.dynamodb),
    ]);
    await t.aws.s3.send(new CreateBucketCommand({ Bucket: BUCKET }));
    await createStream(t.aws.kinesis, 'startup-checks', 1);
  });
  afterAll(async () => {
    await Promise.all([kinesis?.stop(), s3?.stop(), dynamodb?.stop()]);
    await t?.stop();
  });

  function config(over: { stream?: string; bucket?: string; table: string; deadlineMs?: number }) {
    return validateConfig(rawConfig(over));
  }

  function rawConfig(over: { stream?: string; bucket?: string; table: string; deadlineMs?: number }) {
    return {
      app: { name: 'startup-checks', workerId: `sc-${over.table}` },
      aws: {
        ...t.stack.awsConfig,
        endpoints: { kinesis: kinesis.endpoint, s3: s3.endpoint, dynamodb: dynamodb.endpoint },
      },
      consumers: [{ type: 'polling', stream: over.stream ?? 'startup-checks', idleIntervalMs: 100 }],
      checkpoints: { table: over.table, intervalMs: 300, shardSyncIntervalMs: 500 },
      sinks: {
        lake: {
          type: 's3_parquet',
          bucket: over.bucket ?? BUCKET,
          prefix: 'lake/',
          columns: [{ name: 'i', type: 'int64' }],
        },
      },
      dlq: { type: 's3', bucket: BUCKET, prefix: 'dlq/' },
      server: { port: 0 },
      shutdown: { deadlineMs: over.deadlineMs ?? 5_000 },
    };
  }

  /** Worker.start's rejection within `ms`, or a failure saying it did not come. */
  async function startFails(cfg: ReturnType<typeof config>, ms: number): Promise<Error> {
    const started = Date.now();
    const outcome = await Promise.race([
      Worker.start(cfg, { logger: silentLogger }).then(
        async (w) => {
          await w.stop();
          return new Error('started');
        },
        (err: Error) => err,
      ),
      new Promise<undefined>((r) => setTimeout(() => r(undefined), ms)),
    ]);
    assert.ok(outcome, `start neither failed nor finished within ${ms} ms`);
    assert.notEqual(outcome.message, 'started', 'the worker started despite the error');
    assert.ok(Date.now() - started < ms);
    return outcome;
  }

  it('a misspelled bucket fails the start at once, naming the field, the bucket and the fix', async () => {
    const err = await startFails(config({ bucket: 'startup-checks-lakee', table: 'sc-bucket' }), 10_000);
    assert.match(
      err.message,
      /sinks\.lake\.bucket: S3 bucket startup-checks-lakee does not exist \(NoSuchBucket\)/,
    );
  });

  it('a missing stream fails the start naming it', async () => {
    const err = await startFails(config({ stream: 'startup-checks-nope', table: 'sc-stream' }), 10_000);
    assert.match(err.message, /consumers\[0\]\.stream: Kinesis stream startup-checks-nope does not exist/);
  });

  it('AccessDenied on a bucket fails the start, naming the permissions to grant', async () => {
    s3.setRules([
      {
        name: 'denied',
        rate: 1,
        matches: (req) => req.method === 'HEAD',
        fault: s3XmlError('AccessDenied', 'Access Denied', 403),
      },
    ]);
    try {
      const err = await startFails(config({ table: 'sc-denied' }), 10_000);
      assert.match(err.message, /sinks\.lake\.bucket: S3 bucket startup-checks-lake access denied/);
      assert.match(err.message, /s3:ListBucket/);
    } finally {
      s3.setRules([]);
    }
  });

  it('/readyz is 503 while the shard sync fails and 200 once it succeeds', async () => {
    const worker = await Worker.start(config({ table: 'sc-ready' }), { logger: silentLogger });
    const readyz = async () => {
      const res = await fetch(`http://127.0.0.1:${worker.address.port}/readyz`);
      return { status: res.status, body: await res.text() };
    };
    try {
      assert.equal((await readyz()).status, 200);
      kinesis.setRules([
        {
          name: 'kinesis down',
          rate: 1,
          matches: amzTarget('ListShards'),
          fault: awsJsonError('InternalFailure', 'Internal service failure', 500),
        },
      ]);
      await waitFor(async () => (await readyz()).status === 503, 20_000, '/readyz 503');
      assert.match((await readyz()).body, /not ready: the last shard sync failed/);
      const gauge = await worker.metrics.getSingleMetric('ksw_worker_ready')!.get();
      assert.equal(gauge.values[0]?.value, 0);
      kinesis.setRules([]);
      await waitFor(async () => (await readyz()).status === 200, 20_000, '/readyz 200 again');
    } finally {
      kinesis.setRules([]);
      await worker.stop();
    }
  });

  it('a stop requested while start-up hangs ends the start within the shutdown deadline', async () => {
    // The lease table answers nothing for a minute: start-up waits in DescribeTable.
    dynamodb.setRules([
      {
        name: 'frozen',
        rate: 1,
        // Only this test's table: a worker of an earlier test may still be calling.
        matches: (req) => amzTarget('DescribeTable')(req) && req.body.toString().includes('sc-signal'),
        fault: { kind: 'delay', ms: 60_000 },
      },
    ]);
    try {
      const stop = new AbortController();
      const starting = Worker.start(config({ table: 'sc-signal', deadlineMs: 3_000 }), {
        logger: silentLogger,
        signal: stop.signal,
      });
      await waitFor(() => (dynamodb.injected.get('frozen') ?? 0) > 0, 10_000, 'start-up waiting on DynamoDB');
      const asked = Date.now();
      stop.abort();
      const outcome = await Promise.race([
        starting.then(
          async (w) => {
            await w.stop();
            return 'started';
          },
          (err: Error) => err,
        ),
        new Promise<string>((r) => setTimeout(() => r('still starting'), 8_000)),
      ]);
      assert.ok(outcome instanceof StartAbortedError, `start-up did not stop: ${String(outcome)}`);
      assert.ok(Date.now() - asked <= 3_000 + 1_000, `stopped after ${Date.now() - asked} ms`);
    } finally {
      dynamodb.setRules([]);
    }
  });

  it('ksw run: SIGTERM while start-up hangs is logged and the process exits 0 within the deadline', async () => {
    dynamodb.setRules([
      {
        name: 'frozen-cli',
        rate: 1,
        matches: (req) => amzTarget('DescribeTable')(req) && req.body.toString().includes('sc-cli'),
        fault: { kind: 'delay', ms: 60_000 },
      },
    ]);
    const cfgFile = path.join(t.dir, 'startup-signal.yaml');
    writeFileSync(cfgFile, stringify(rawConfig({ table: 'sc-cli', deadlineMs: 3_000 })));
    const logFile = path.join(t.dir, 'startup-signal.log');
    let out = '';
    const child = spawn(process.execPath, ['--import', 'tsx', CLI, 'run', '-c', cfgFile], {
      cwd: ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    child.stdout.on('data', (d) => (out += String(d)));
    child.stderr.on('data', (d) => (out += String(d)));
    const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
    try {
      await waitFor(
        () => (dynamodb.injected.get('frozen-cli') ?? 0) > 0,
        20_000,
        'the CLI waiting on DynamoDB',
      );
      const asked = Date.now();
      child.kill('SIGTERM');
      const code = await Promise.race([
        exited,
        new Promise<string>((r) => setTimeout(() => r('running'), 8_000)),
      ]);
      writeFileSync(logFile, out);
      assert.equal(code, 0, `exit ${code} after SIGTERM during start-up; log in ${logFile}`);
      assert.ok(Date.now() - asked <= 3_000 + 2_000);
      assert.match(out, /signal received/);
      assert.match(out, /stop requested during start-up/);
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
      dynamodb.setRules([]);
    }
  });
});
