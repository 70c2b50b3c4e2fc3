import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'vitest';
import { stringify } from 'yaml';
import { parquetSinkConfigSchema } from '../../src/sinks/s3-parquet/config.js';
import { createTableDdl } from '../../src/sinks/s3-parquet/ddl.js';

const ROOT = path.resolve(import.meta.dirname, '../..');

test('DDL: columns with Athena types, partitions with projection, location template', () => {
  const config = parquetSinkConfigSchema.parse({
    type: 's3_parquet',
    bucket: 'my-lake',
    prefix: 'red/',
    schema: 'red_metrics',
    compression: 'snappy',
    partitioning: {
      template: 'year={yyyy}/month={MM}/day={dd}/ts={yyyy}{MM}{dd}T{HH}/env={field:dimensions.env}',
    },
    columns: [{ name: 'extra', type: 'map', values: { type: 'list', items: 'int32' } }],
  });
  const ddl = createTableDdl(config, { table: 'red', database: 'obs', projectionStart: '2025-03-04' });
  assert.match(ddl, /^CREATE EXTERNAL TABLE IF NOT EXISTS `obs`\.`red` \(\n {2}`_stream` string,\n/);
  for (const line of [
    '  `windowstart` timestamp,',
    '  `dimensions` map<string,string>,',
    '  `requestcount` bigint,',
    '  `durationbucketboundsms` array<double>,',
    '  `durationbucketcounts` array<bigint>,',
    '  `extra` map<string,array<int>>',
    'PARTITIONED BY (`year` string, `month` string, `day` string, `ts` string, `env` string)',
    'STORED AS PARQUET',
    "LOCATION 's3://my-lake/red/'",
    "  'parquet.compression' = 'SNAPPY',",
    "  'projection.year.type' = 'date',",
    "  'projection.year.format' = 'yyyy',",
    "  'projection.year.range' = '2025,NOW',",
    "  'projection.year.interval.unit' = 'YEARS',",
    "  'projection.month.type' = 'integer',",
    "  'projection.month.range' = '1,12',",
    "  'projection.month.digits' = '2',",
    "  'projection.ts.format' = 'yyyyMMdd''T''HH',",
    "  'projection.ts.range' = '20250304T00,NOW',",
    "  'projection.ts.interval.unit' = 'HOURS',",
    "  'projection.env.type' = 'injected',",
    "  'storage.location.template' = 's3://my-lake/red/year=${year}/month=${month}/day=${day}/ts=${ts}/env=${env}/'",
  ]) {
    assert.ok(ddl.split('\n').includes(line), `missing line: ${line}\n${ddl}`);
  }
  assert.ok(ddl.trimEnd().endsWith(');'));
  // Unpartitioned: no PARTITIONED BY, no projection.
  const flat = createTableDdl(parquetSinkConfigSchema.parse({ type: 's3_parquet', bucket: 'b-b-b' }), {
    table: 't',
  });
  assert.doesNotMatch(flat, /PARTITIONED BY|projection/);
  assert.match(flat, /`_record` string\n\)/);
});

test('ksw ddl prints the table of the named sink; an unknown sink is a usage error', () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'ksw-ddl-'));
  try {
    const file = path.join(dir, 'c.yaml');
    writeFileSync(
      file,
      stringify({
        consumers: [{ type: 'polling', stream: 's' }],
        sinks: {
          lake: {
            type: 's3_parquet',
            bucket: 'lake-b',
            schema: 'spans',
            partitioning: { template: 'dt={yyyy}-{MM}-{dd}' },
          },
          red: { type: 's3_parquet', bucket: 'lake-b', prefix: 'red/', schema: 'red_metrics' },
        },
        dlq: { type: 's3', bucket: 'lake-b' },
      }),
    );
    const run = (...args: string[]) =>
      spawnSync(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', 'ddl', '-c', file, ...args], {
        cwd: ROOT,
        encoding: 'utf8',
      });
    const ok = run('--sink', 'lake', '--table', 'spans');
    assert.equal(ok.status, 0, ok.stderr);
    assert.match(ok.stdout, /CREATE EXTERNAL TABLE IF NOT EXISTS `spans`/);
    assert.match(ok.stdout, /'projection.dt.format' = 'yyyy-MM-dd'/);
    const missing = run();
    assert.equal(missing.status, 2);
    assert.match(missing.stderr, /name an s3_parquet sink with --sink \(lake, red\)/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
