/**
 * Crash test: 3 worker processes share an 8-shard stream while records with known ids are produced;
 * a random worker is SIGKILLed at a random moment and restarted, CHAOS_ROUNDS times (CI: 4). After
 * quiescence every shard's checkpoint is at its last record, and the final Parquet object set holds
 * every produced id exactly once (deterministic keys + replay detection at lease take). Prints a summary.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { CreateBucketCommand } from '@aws-sdk/client-s3';
import { stringify } from 'yaml';
import { LeaseTable } from '../../src/consumers/lease-table.js';
import { seededRandom } from '../../src/producer/synthetic-spans.js';
import { download, duck } from '../helpers/parquet.js';
import { createStream, putRecords, startTestStack, type TestStack, waitFor } from '../helpers/stack.js';

const ROOT = path.resolve(import.meta.dirname, '../..');
const CLI = path.join(ROOT, 'src/cli/main.ts');
const ROUNDS = Number(process.env.CHAOS_ROUNDS ?? 4);
const WORKERS = 3;
const SHARDS = 8;
const BATCH = 250;

describe('crash test: random SIGKILLs of 3 workers', () => {
  let t: TestStack;
  const children = new Map<number, ChildProcess>();
  before(async () => {
    t = await startTestStack();
  });
  after(async () => {
    for (const c of children.values()) c.kill('SIGKILL');
    await t.stop();
  });

  it(`loses nothing and duplicates nothing over ${ROUNDS} kills`, async () => {
    const stream = 'chaos-crash';
    const bucket = 'chaos-crash-lake';
    const table = 'chaos-crash-leases';
    await t.aws.s3.send(new CreateBucketCommand({ Bucket: bucket }));
    await createStream(t.aws.kinesis, stream, SHARDS);
    const dir = path.join(t.dir, 'crash');
    mkdirSync(dir, { recursive: true });
    const configFile = (n: number) => {
      const file = path.join(dir, `worker-${n}.yaml`);
      writeFileSync(
        file,
        stringify({
          app: { name: 'chaos-crash', workerId: `crash-worker-${n}` },
          aws: t.stack.awsConfig,
          consumers: [{ type: 'polling', stream, idleIntervalMs: 100, busyIntervalMs: 0 }],
          checkpoints: { table, intervalMs: 300, shardSyncIntervalMs: 1_000, failoverMs: 3_000 },
          sinks: {
            lake: {
              type: 's3_parquet',
              bucket,
              prefix: 'lake/',
              roll: { maxFileRows: 200, maxFileAgeMs: 700 },
              columns: [{ name: 'id', type: 'int64' }],
            },
          },
          dlq: { type: 's3', bucket, prefix: 'dlq/', maxBatchAgeMs: 200 },
          server: { port: 0 },
          log: { level: 'warn' },
          shutdown: { deadlineMs: 10_000 },
        }),
      );
      return file;
    };
    let stderr = '';
    const start = (n: number) => {
      const child = spawn(process.execPath, ['--import', 'tsx', CLI, 'run', '-c', configFile(n)], {
        cwd: ROOT,
        stdio: ['ignore', 'ignore', 'pipe'],
      });
      child.stderr!.on('data', (d) => {
        stderr = (stderr + String(d)).slice(-8000);
      });
      children.set(n, child);
    };
    for (let n = 0; n < WORKERS; n++) start(n);

    const random = seededRandom(Number(process.env.CHAOS_SEED ?? 1234));
    let produced = 0;
    const lastPerShard = new Map<string, string>();
    const produce = async () => {
      const out = await putRecords(
        t.aws.kinesis,
        stream,
        Array.from({ length: BATCH }, (_, i) => ({
          partitionKey: `k-${(produced + i) % 211}`,
          data: JSON.stringify({ id: produced + i }),
        })),
      );
      for (const p of out) lastPerShard.set(p.shardId, p.sequenceNumber);
      produced += BATCH;
    };
    const kills: string[] = [];
    for (let round = 0; round < ROUNDS; round++) {
      // Produce while the fleet runs, kill a random worker at a random moment, restart it a little later.
      const wait = 500 + Math.floor(random() * 2_500);
      await produce();
      await new Promise((r) => setTimeout(r, wait));
      const victim = Math.floor(random() * WORKERS);
      const child = children.get(victim)!;
      child.kill('SIGKILL');
      await new Promise((r) => child.once('exit', r));
      kills.push(`round ${round + 1}: SIGKILL worker ${victim} after ${wait} ms`);
      await produce();
      await new Promise((r) => setTimeout(r, Math.floor(random() * 1_500)));
      start(victim);
    }
    await produce();

    const leases = new LeaseTable(t.aws.dynamodb, table);
    await waitFor(
      async () => {
        for (const [shard, last] of lastPerShard)
          if ((await leases.get(shard))?.checkpoint !== last) return false;
        return true;
      },
      180_000,
      `every shard checkpointed at its last record (stderr: ${stderr.slice(-2000)})`,
    );
    const owners = new Set((await leases.list()).map((l) => l.leaseOwner));
    for (const c of children.values()) c.kill('SIGTERM');
    const exits = await Promise.all(
      [...children.values()].map((c) => new Promise<number | null>((r) => c.once('exit', r))),
    );
    children.clear();

    const out = path.join(t.dir, 'crash-parquet');
    await download(t.aws.s3, bucket, 'lake/', out);
    const [stats] = await duck(
      `SELECT count(*)::INT AS total, count(DISTINCT id)::INT AS ids, min(id)::INT AS lo, max(id)::INT AS hi FROM read_parquet('${out}/**/*.parquet')`,
    );
    process.stdout.write(
      `${kills.join('\n')}\nproduced ${produced}, distinct ids in Parquet ${stats!.ids}, rows ${stats!.total}, ` +
        `lost ${produced - (stats!.ids as number)}, duplicate rows ${(stats!.total as number) - (stats!.ids as number)}, ` +
        `lease owners at the end ${[...owners].join(', ')}, exit codes after SIGTERM ${exits.join(', ')}\n`,
    );
    assert.equal(stats!.ids, produced, 'records lost');
    assert.equal(stats!.lo, 0);
    assert.equal(stats!.hi, produced - 1);
    assert.equal(stats!.total, produced, 'duplicate rows in the final object set');
    assert.deepEqual(exits, [0, 0, 0], 'graceful exit on SIGTERM');
  });
});
