/**
 * 1,000 partition values under a 64 MiB memory cap: the sink runs in a child process whose RSS is sampled
 * from outside (/proc) while it writes; afterwards every event is in exactly one file of its partition,
 * no file exceeds the row limit, and the memory cap (not only the row limit) cut files.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { GetObjectCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, test } from 'vitest';
import type { AwsClients } from '../../src/core/aws.js';
import { decodePositions } from '../../src/sinks/s3-parquet/manifest.js';
import { duck, listKeys } from '../helpers/parquet.js';
import { startS3Only } from '../helpers/stack.js';

const BUCKET = 'memory-lake';
const MiB = 1024 * 1024;
const EVENTS = 80_000;
const PARTITIONS = 1_000;
const CAP = 64 * MiB;
const MAX_FILE_ROWS = 25;
const CHILD = path.resolve(import.meta.dirname, '../helpers/parquet-memory-child.ts');

function rssOf(pid: number): number | undefined {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const kb = /VmRSS:\s+(\d+) kB/.exec(status)?.[1];
    return kb ? Number(kb) * 1024 : undefined;
  } catch {
    return undefined;
  }
}

describe('Parquet sink memory cap', () => {
  let aws: AwsClients;
  let dir: string;
  let s3: Awaited<ReturnType<typeof startS3Only>>;

  beforeAll(async () => {
    s3 = await startS3Only([BUCKET]);
    aws = s3.aws;
    dir = s3.dir;
  });
  afterAll(async () => {
    await s3.stop();
  });

  test(`${PARTITIONS} partition values under a ${CAP / MiB} MiB cap: RSS bounded, nothing lost, rotation rules respected`, async () => {
    const endpoint = await aws.s3.config.endpoint!();
    const child = spawn(
      process.execPath,
      [
        // A heap the size a container running this sink would give it: 80k buffered rows (~2.2 KB each in
        // memory, ~180 MB) do not fit, so a cap that does not hold ends in a heap out-of-memory crash.
        '--max-old-space-size=160',
        '--import',
        'tsx',
        CHILD,
        JSON.stringify({
          endpoint: `${endpoint.protocol}//${endpoint.hostname}:${endpoint.port}`,
          bucket: BUCKET,
          prefix: 'mem/',
          tmpDir: path.join(dir, 'tmp'),
          events: EVENTS,
          partitions: PARTITIONS,
          maxBufferedBytes: CAP,
          maxFileRows: MAX_FILE_ROWS,
        }),
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (d) => {
      stdout += d;
    });
    child.stderr!.on('data', (d) => {
      stderr += d;
    });
    let baseline = 0;
    let peak = 0;
    const sampler = setInterval(() => {
      const rss = rssOf(child.pid!);
      if (rss === undefined) return;
      if (baseline === 0 && stdout.includes('"ready"')) baseline = rss;
      peak = Math.max(peak, rss);
    }, 50);
    const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
    clearInterval(sampler);
    assert.equal(code, 0, `child failed: ${stderr.slice(-3000)}`);
    const summary = JSON.parse(stdout.trim().split('\n').at(-1)!) as {
      acked: number;
      deadLetters: number;
      files: number;
      rows: number;
      rolls: Record<string, number>;
    };
    process.stdout.write(
      `# RSS baseline ${(baseline / MiB).toFixed(0)} MiB, peak ${(peak / MiB).toFixed(0)} MiB; ${summary.files} files; rolls ${JSON.stringify(summary.rolls)}\n`,
    );
    assert.equal(summary.acked, EVENTS, 'every event acked');
    assert.equal(summary.deadLetters, 0);
    assert.equal(summary.rows, EVENTS);
    assert.ok((summary.rolls.memory ?? 0) > 0, 'the memory cap rolled the largest files');
    assert.ok((summary.rolls.rows ?? 0) > 0, 'the row limit rolled files too');
    assert.ok(baseline > 0, 'baseline sampled');
    assert.ok(
      peak - baseline < 3 * CAP,
      `RSS grew by ${((peak - baseline) / MiB).toFixed(0)} MiB (cap ${CAP / MiB} MiB)`,
    );

    // Every event in exactly one file, in the partition of its value, and no file over the row limit:
    // checked on the manifests (rows, partition, exact positions) and on the Parquet files' own row counts.
    const keys = await listKeys(aws.s3, BUCKET, 'mem/');
    const dataKeys = keys.filter((k) => k.endsWith('.parquet'));
    const manifestKeys = keys.filter((k) => k.startsWith('mem/_ksw/manifests/'));
    assert.equal(dataKeys.length, summary.files);
    assert.equal(manifestKeys.length, summary.files);
    const manifests: Array<{ dataKey: string; rows: number; partition: string; positions: string }> = [];
    for (let i = 0; i < manifestKeys.length; i += 64) {
      manifests.push(
        ...(await Promise.all(
          manifestKeys
            .slice(i, i + 64)
            .map(async (key) =>
              JSON.parse(
                await (
                  await aws.s3.send(new GetObjectCommand({ Bucket: BUCKET, Key: key }))
                ).Body!.transformToString(),
              ),
            ),
        )),
      );
    }
    assert.equal(
      manifests.reduce((n, m) => n + m.rows, 0),
      EVENTS,
    );
    assert.ok(manifests.every((m) => m.rows <= MAX_FILE_ROWS && m.rows > 0));
    assert.deepEqual(new Set(manifests.map((m) => m.dataKey)), new Set(dataKeys));
    assert.equal(new Set(manifests.map((m) => m.partition)).size, PARTITIONS);
    // Exactly once: the manifests' exact positions cover every event once.
    const seen = new Uint8Array(EVENTS);
    const base = 49_600_000_000_000_000_000_000_000_000_000_000_000_000_000n;
    for (const m of manifests) {
      decodePositions(m.positions, (sequence, _sub, ranges) => {
        assert.deepEqual(ranges, [[0, 0]]);
        seen[Number(BigInt(sequence) - base)]! += 1;
      });
    }
    assert.ok(
      seen.every((n) => n === 1),
      'every event in exactly one file',
    );
    // A sample of data files read by DuckDB: rows match the manifest and the partition of each row's value.
    const sample = manifests.filter((_, i) => i % 50 === 0);
    for (const m of sample) {
      const file = path.join(dir, 'sample', path.basename(m.dataKey));
      const { mkdirSync, writeFileSync } = await import('node:fs');
      mkdirSync(path.dirname(file), { recursive: true });
      const body = await aws.s3.send(new GetObjectCommand({ Bucket: BUCKET, Key: m.dataKey }));
      writeFileSync(file, await body.Body!.transformToByteArray());
      const [row] = await duck(
        `SELECT count(*)::INT AS c, count(DISTINCT service)::INT AS s, any_value(service) AS svc FROM '${file}'`,
      );
      assert.deepEqual(row, { c: m.rows, s: 1, svc: m.partition.slice('svc='.length) });
    }
  });
});
