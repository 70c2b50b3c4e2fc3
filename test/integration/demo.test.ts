import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, it } from 'vitest';
import { demoCommand, verifyParquet } from '../../src/cli/demo.js';
import { duck } from '../helpers/parquet.js';

function filesUnder(dir: string, suffix: string): string[] {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile() && e.name.endsWith(suffix))
    .map((e) => path.join(e.parentPath, e.name));
}

describe('ksw demo', () => {
  let root: string;
  let dir: string;
  let code: number;

  beforeAll(async () => {
    root = mkdtempSync(path.join(tmpdir(), 'ksw-demo-'));
    dir = path.join(root, 'demo');
    code = await demoCommand(['--records', '2000', '--shards', '4', '--dir', dir]);
  });
  afterAll(() => {
    rmSync(root, { recursive: true, force: true });
  });

  it('exits 0 after verifying its own output', () => {
    assert.equal(code, 0);
  });

  it('leaves Parquet files that DuckDB reads with exactly the produced records', async () => {
    const files = filesUnder(path.join(dir, 'parquet'), '.parquet');
    assert.ok(files.length >= 4, `${files.length} Parquet files; one per shard at least`);
    // Our own read of the files, not the demo's word for it.
    const [row] = await duck(`SELECT count(*) AS c, count(DISTINCT (_shard_id, _sequence_number)) AS d,
        count(DISTINCT _shard_id) AS shards, min(startTimeUnixNano) AS lo, typeof(min(startTimeUnixNano)) AS t
      FROM read_parquet('${dir}/parquet/**/*.parquet')`);
    assert.equal(row!.c, 2000n);
    assert.equal(row!.d, 2000n);
    assert.equal(row!.shards, 4n);
    assert.equal(row!.t, 'BIGINT');
    assert.ok((row!.lo as bigint) > BigInt(Number.MAX_SAFE_INTEGER));
  });

  it('leaves the 3 malformed records in the DLQ directory', () => {
    const lines = filesUnder(path.join(dir, 'dlq'), '.jsonl').flatMap((f) =>
      readFileSync(f, 'utf8').split('\n').filter(Boolean),
    );
    assert.equal(lines.length, 3);
    for (const line of lines) assert.equal(JSON.parse(line).component, 'decode');
  });

  it('writes a worker.yaml that validates', async () => {
    const { loadConfig } = await import('../../src/config/load.js');
    const config = loadConfig(path.join(dir, 'worker.yaml'));
    assert.equal(config.app.workerId, 'demo-worker');
    assert.equal(config.consumers[0]!.stream, 'demo-spans');
  });

  it('its verification catches an int64 that is off by one nanosecond', async () => {
    const csv = readFileSync(path.join(dir, 'produced.csv'), 'utf8').split('\n');
    const [spanId, start, ...rest] = csv[1]!.split(',');
    const tampered = (BigInt(start!) + 1n).toString();
    // Both values are the same double: a check going through JS numbers would pass this.
    assert.equal(Number(tampered), Number(start));
    csv[1] = [spanId, tampered, ...rest].join(',');
    const file = path.join(root, 'tampered.csv');
    writeFileSync(file, csv.join('\n'));
    const { checks } = await verifyParquet(`${dir}/parquet/**/*.parquet`, file, 2000);
    const exact = checks.find((c) => c.name.startsWith('int64'))!;
    assert.equal(exact.ok, false);
    assert.match(exact.detail, / 1 produced spans without an exact/);
    const untouched = await verifyParquet(
      `${dir}/parquet/**/*.parquet`,
      path.join(dir, 'produced.csv'),
      2000,
    );
    assert.ok(untouched.checks.every((c) => c.ok));
    // And a count mismatch is caught too.
    const fewer = await verifyParquet(`${dir}/parquet/**/*.parquet`, path.join(dir, 'produced.csv'), 2001);
    assert.equal(fewer.checks[0]!.ok, false);
  });
});

describe('ksw demo arguments', () => {
  it('rejects bad options with exit code 2', async () => {
    assert.equal(await demoCommand(['--records', 'many']), 2);
    assert.equal(await demoCommand(['--shards', '0']), 2);
    // parse errors are thrown as UsageError; the dispatcher prints them in one line and exits 2
    await assert.rejects(
      demoCommand(['--bogus']),
      /^UsageError: demo: unknown option --bogus; see ksw demo --help$/,
    );
  });

  it('refuses to wipe a non-empty directory it did not create', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'ksw-demo-foreign-'));
    try {
      mkdirSync(path.join(dir, 'precious'));
      writeFileSync(path.join(dir, 'precious', 'thesis.tex'), 'do not delete');
      assert.equal(await demoCommand(['--records', '1', '--dir', dir]), 2);
      assert.equal(readFileSync(path.join(dir, 'precious', 'thesis.tex'), 'utf8'), 'do not delete');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
