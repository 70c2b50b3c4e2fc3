/**
 * `ksw inspect`: the lease table with owner, checkpoint and lag per shard, as JSON and as a table.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, it } from 'vitest';
import { stringify } from 'yaml';
import type { LeaseReport } from '../../src/cli/inspect.js';
import { LeaseTable, SHARD_END } from '../../src/consumers/lease-table.js';
import { createStream, putRecords, startTestStack, type TestStack } from '../helpers/stack.js';

const ROOT = path.resolve(import.meta.dirname, '../..');
const CLI = path.join(ROOT, 'src/cli/main.ts');

describe('ksw inspect', () => {
  let t: TestStack;
  beforeAll(async () => {
    t = await startTestStack();
  });
  afterAll(async () => {
    await t.stop();
  });

  it('prints owner, checkpoint and lag per shard, and leases per worker', async () => {
    const stream = 'inspect-stream';
    const [s0, s1] = (await createStream(t.aws.kinesis, stream, 2)) as [string, string];
    const put = await putRecords(
      t.aws.kinesis,
      stream,
      Array.from({ length: 40 }, (_, i) => ({
        partitionKey: `k${i}`,
        explicitHashKey: i % 2 === 0 ? '0' : '340282366920938463463374607431768211455',
        data: JSON.stringify({ i }),
      })),
    );
    const of = (shard: string) => put.filter((p) => p.shardId === shard);
    const table = new LeaseTable(t.aws.dynamodb, 'inspect-leases');
    await table.ensureTable(true);
    const behind = await table.take(
      await table.createIfMissing(s0, 'TRIM_HORIZON', []),
      'worker-a',
      'test.1',
    );
    await table.checkpoint(behind, { sequenceNumber: of(s0)[4]!.sequenceNumber, subSequenceNumber: 2 });
    const caughtUp = await table.take(
      await table.createIfMissing(s1, 'TRIM_HORIZON', []),
      'worker-b',
      'test.2',
    );
    await table.checkpoint(caughtUp, { sequenceNumber: of(s1).at(-1)!.sequenceNumber, subSequenceNumber: 0 });
    const ended = await table.take(
      await table.createIfMissing('shardId-000000000009', 'TRIM_HORIZON', []),
      'worker-a',
      'test.3',
    );
    await table.release(await table.checkpoint(ended, SHARD_END, { childShardIds: [s0, s1] }));

    const file = path.join(t.dir, 'inspect.yaml');
    writeFileSync(
      file,
      stringify({
        aws: t.stack.awsConfig,
        consumers: [{ type: 'polling', stream }],
        checkpoints: { table: 'inspect-leases' },
        sinks: { lake: { type: 's3_parquet', bucket: 'b-b-b' } },
        dlq: { type: 's3', bucket: 'b-b-b' },
      }),
    );
    const json = spawnSync(process.execPath, ['--import', 'tsx', CLI, 'inspect', '-c', file, '--json'], {
      cwd: ROOT,
      encoding: 'utf8',
    });
    assert.equal(json.status, 0, json.stderr);
    const report = JSON.parse(json.stdout) as {
      leases: LeaseReport[];
      workers: Record<string, number>;
      fairShare: number;
    };
    const byShard = new Map(report.leases.map((l) => [l.shardId, l]));
    const a = byShard.get(s0)!;
    assert.equal(a.owner, 'worker-a');
    assert.equal(a.checkpoint, of(s0)[4]!.sequenceNumber);
    assert.equal(a.checkpointSubSequenceNumber, 2);
    assert.equal(typeof a.lagMs, 'number');
    assert.ok(a.oldestUncheckpointedAgeMs! > 0, 'records after the checkpoint: their age is the lag');
    const b = byShard.get(s1)!;
    assert.equal(b.owner, 'worker-b');
    assert.equal(b.lagMs, 0, 'caught up');
    assert.equal(b.oldestUncheckpointedAgeMs, 0);
    const end = byShard.get('shardId-000000000009')!;
    assert.equal(end.checkpoint, SHARD_END);
    assert.equal(end.lagMs, null);
    assert.deepEqual([...end.children].sort(), [s0, s1].sort());
    assert.deepEqual(report.workers, { 'worker-a': 1, 'worker-b': 1 });
    assert.equal(report.fairShare, 1);

    const text = spawnSync(process.execPath, ['--import', 'tsx', CLI, 'inspect', '-c', file, '--no-lag'], {
      cwd: ROOT,
      encoding: 'utf8',
    });
    assert.equal(text.status, 0, text.stderr);
    assert.match(text.stdout, /^LEASE\s+OWNER\s+COUNTER\s+CHECKPOINT/);
    assert.match(text.stdout, new RegExp(`${s0}\\s+worker-a\\s+\\d+\\s+${of(s0)[4]!.sequenceNumber}\\s+2`));
    assert.match(
      text.stdout,
      /workers owning leases: 2 \(worker-a: 1, worker-b: 1\); fair share 1; 1 finished/,
    );
  });
});
