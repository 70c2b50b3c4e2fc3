/**
 * The Parquet sink's Iceberg mode against s3rver with a catalog in memory (the Glue catalog and an
 * independent reader, pyiceberg, are in test/services/iceberg-pyiceberg.test.ts): when files are committed
 * (interval, size, flush), that events are acked only after the commit, that an ended tenure's waiting
 * files are dropped unacked, that a replay skips the files the table holds and rewrites the others, that
 * quarantine files stay outside the table, and that config Iceberg cannot express fails at start-up.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, test } from 'vitest';
import { Ack } from '../../src/core/ack.js';
import type { AwsClients } from '../../src/core/aws.js';
import type { ComponentContext } from '../../src/core/component.js';
import type { PipelineEvent } from '../../src/core/records.js';
import { detachedTenure, ShardTenure } from '../../src/core/tenure.js';
import { createRegistry } from '../../src/metrics/registry.js';
import { parquetSinkConfigSchema } from '../../src/sinks/s3-parquet/config.js';
import { decodeContainer } from '../../src/sinks/s3-parquet/iceberg/avro.js';
import type { TableMetadata } from '../../src/sinks/s3-parquet/iceberg/metadata.js';
import { S3ParquetSink } from '../../src/sinks/s3-parquet/index.js';
import { MemoryDeadLetterQueue } from '../helpers/fakes.js';
import { memoryCatalog } from '../helpers/iceberg.js';
import { ManualClock } from '../helpers/manual-clock.js';
import { startS3Only } from '../helpers/stack.js';

const BUCKET = 'iceberg-lake';
const STREAM = 'events';
const SHARD = 'shardId-000000000000';

function seq(n: number): string {
  return `4959${String(n).padStart(52, '0')}`;
}

function event(n: number, svc: string, shardId = SHARD, ack = new Ack(() => {})): PipelineEvent {
  const value = { svc, n };
  return {
    origin: {
      stream: STREAM,
      shardId,
      sequenceNumber: seq(n),
      subSequenceNumber: 0,
      partitionKey: `pk-${n}`,
      arrivalTime: new Date(Date.UTC(2026, 0, 2, 3, 4, 5) + n),
    },
    index: 0,
    value,
    raw: Buffer.from(JSON.stringify(value)),
    ack,
  };
}

async function until(cond: () => boolean | Promise<boolean>, what: string): Promise<void> {
  const deadline = Date.now() + 15_000;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('Parquet sink, iceberg mode (s3rver, catalog in memory)', () => {
  let aws: AwsClients;
  let stop: () => Promise<void>;
  let dir: string;

  beforeAll(async () => {
    const stack = await startS3Only([BUCKET]);
    aws = stack.aws;
    dir = stack.dir;
    stop = stack.stop;
  });
  afterAll(async () => {
    await stop?.();
  });

  function make(
    name: string,
    catalog: ReturnType<typeof memoryCatalog>['catalog'],
    config: Record<string, unknown> = {},
  ) {
    const registry = createRegistry(false);
    const ctx: ComponentContext = {
      logger: pino({ level: 'silent' }),
      metrics: registry,
      aws,
      dlq: new MemoryDeadLetterQueue(),
    };
    const parsed = parquetSinkConfigSchema.parse({
      type: 's3_parquet',
      bucket: BUCKET,
      prefix: `${name}/`,
      tmpDir: path.join(dir, 'tmp'),
      partitioning: { template: 'dt={yyyy}-{MM}-{dd}/svc={field:svc}' },
      columns: [
        { name: 'service', type: 'string', path: 'svc' },
        { name: 'n', type: 'int64' },
      ],
      roll: { maxFileRows: 2 },
      iceberg: { catalog: { type: 'glue', database: 'lake', table: name }, commitIntervalMs: 600_000 },
      ...config,
    });
    return {
      sink: new S3ParquetSink(name, parsed, ctx, { backoff: { baseMs: 5, maxMs: 20 }, catalog }),
      registry,
    };
  }

  async function tableOf(state: ReturnType<typeof memoryCatalog>['state']) {
    const key = state.pointer!.metadataLocation.slice(`s3://${BUCKET}/`.length);
    const { GetObjectCommand } = await import('@aws-sdk/client-s3');
    const read = async (k: string) =>
      Buffer.from(
        await (
          await aws.s3.send(new GetObjectCommand({ Bucket: BUCKET, Key: k }))
        ).Body!.transformToByteArray(),
      );
    const meta = JSON.parse((await read(key)).toString()) as TableMetadata;
    const files: Array<{ path: string; records: number; partition: Record<string, unknown> }> = [];
    const current = meta.snapshots.find((s) => s['snapshot-id'] === meta['current-snapshot-id'])!;
    const list = await decodeContainer(await read(current['manifest-list'].slice(`s3://${BUCKET}/`.length)));
    for (const m of list.records) {
      const manifest = await decodeContainer(
        await read((m.manifest_path as string).slice(`s3://${BUCKET}/`.length)),
      );
      for (const entry of manifest.records) {
        const d = entry.data_file as Record<string, unknown>;
        files.push({
          path: d.file_path as string,
          records: d.record_count as number,
          partition: { ...(d.partition as object) },
        });
      }
    }
    return { meta, files: files.sort((a, b) => a.path.localeCompare(b.path)) };
  }

  test('size trigger and flush commit; acks follow the commit; partition values and counts in the manifests', async () => {
    const { catalog, state } = memoryCatalog();
    const { sink, registry } = make('sized', catalog, {
      iceberg: {
        catalog: { type: 'glue', database: 'lake', table: 'sized' },
        commitIntervalMs: 600_000,
        maxFilesPerCommit: 2,
      },
    });
    await sink.openShard(detachedTenure({ stream: STREAM, shardId: SHARD }), undefined);
    // a: 2 rows -> rolls at the third a; b: 2 rows -> rolls at the third b. Two files: one commit at once.
    const events = ['a', 'b', 'a', 'b', 'a', 'b', 'c'].map((svc, i) => event(10 + i, svc));
    await sink.write(events);
    await until(() => state.swaps + (state.pointer ? 1 : 0) >= 1, 'the size-triggered commit');
    await until(() => events.filter((e) => e.ack.completed).length === 4, 'acks of the committed files');
    assert.deepEqual(
      events.map((e) => e.ack.completed),
      [true, true, true, true, false, false, false],
      'events of files not committed yet stay unacked',
    );
    await sink.flush();
    assert.ok(events.every((e) => e.ack.completed));
    const { meta, files } = await tableOf(state);
    assert.equal(
      meta.snapshots[0]!.summary['added-data-files'],
      '2',
      'the size-triggered commit took both files',
    );
    // The flush commits the rest as their uploads finish (files that finish in the same turn share a snapshot).
    assert.ok(meta.snapshots.length >= 2 && meta.snapshots.length <= 4);
    assert.deepEqual(
      files.map((f) => [path.basename(path.dirname(f.path)), f.records, f.partition]),
      [
        ['svc=a', 2, { _arrival_time_day: 20455, svc: 'a' }],
        ['svc=a', 1, { _arrival_time_day: 20455, svc: 'a' }],
        ['svc=b', 2, { _arrival_time_day: 20455, svc: 'b' }],
        ['svc=b', 1, { _arrival_time_day: 20455, svc: 'b' }],
        ['svc=c', 1, { _arrival_time_day: 20455, svc: 'c' }],
      ],
    );
    assert.equal(meta.snapshots.at(-1)!.summary['total-records'], '7');
    const metric = async (name: string) =>
      (await registry.getSingleMetric(name)?.get())?.values
        .filter((v) => !('metricName' in v) || v.metricName === undefined || v.metricName === name)
        .reduce((n, v) => n + v.value, 0);
    assert.equal(await metric('ksw_parquet_iceberg_committed_files_total'), 5);
    assert.equal(await metric('ksw_parquet_iceberg_commits_total'), meta.snapshots.length);
    assert.equal(await metric('ksw_parquet_iceberg_waiting_files'), 0);
    assert.equal(await metric('ksw_parquet_iceberg_commit_conflicts_total'), 0);
    await sink.close();
  });

  test("an ended tenure's waiting files are dropped unacked; the replay skips what the table holds and rewrites the rest", async () => {
    const { catalog, state } = memoryCatalog();
    const first = make('replayed', catalog).sink;
    const tenure = new ShardTenure(STREAM, SHARD, 'p1', new ManualClock());
    await first.openShard(tenure, undefined);
    const committed = ['a', 'a', 'a'].map((svc, i) => event(100 + i, svc, SHARD, new Ack(() => {}, tenure)));
    await first.write(committed);
    await first.flushShard(tenure);
    assert.deepEqual(
      committed.map((e) => e.ack.completed),
      [true, true, true],
    );
    const waiting = ['b', 'b', 'b'].map((svc, i) => event(200 + i, svc, SHARD, new Ack(() => {}, tenure)));
    await first.write(waiting);
    // b's first file (2 rows) is uploaded and waits for the 10-minute commit; the lease is lost.
    const { ListObjectsV2Command } = await import('@aws-sdk/client-s3');
    await until(async () => {
      const out = await aws.s3.send(
        new ListObjectsV2Command({ Bucket: BUCKET, Prefix: 'replayed/dt=2026-01-02/svc=b/' }),
      );
      return (out.Contents ?? []).length > 0;
    }, "b's first upload");
    tenure.end('lost');
    await first.closeShard(tenure);
    assert.ok(
      waiting.every((e) => !e.ack.completed),
      'nothing of the lost tenure acked',
    );
    await first.close();

    const second = make('replayed', catalog, {
      iceberg: { catalog: { type: 'glue', database: 'lake', table: 'replayed' }, commitIntervalMs: 50 },
    });
    await second.sink.openShard(detachedTenure({ stream: STREAM, shardId: SHARD }), undefined);
    const replay = [
      ...['a', 'a', 'a'].map((svc, i) => event(100 + i, svc)),
      ...['b', 'b', 'b'].map((svc, i) => event(200 + i, svc)),
    ];
    await second.sink.write(replay);
    await second.sink.flush();
    assert.ok(replay.every((e) => e.ack.completed));
    const { files } = await tableOf(state);
    assert.equal(
      files.reduce((n, f) => n + f.records, 0),
      6,
      'every event once in the table',
    );
    assert.equal(new Set(files.map((f) => f.path)).size, files.length);
    const skipped = await (
      await second.registry.getSingleMetric('ksw_parquet_replay_skipped_events_total')?.get()
    )?.values.reduce((n, v) => n + v.value, 0);
    assert.equal(skipped, 3, 'the a files were in the table: their events acked without rewriting');
    await second.sink.close();
  });

  test('quarantine files are acked at upload and stay outside the table', async () => {
    const { catalog, state } = memoryCatalog();
    const { sink } = make('quarantined', catalog, {
      partitioning: { template: 'dt={yyyy}-{MM}-{dd}/svc={field:svc}', maxOpenPartitions: 1 },
    });
    await sink.openShard(detachedTenure({ stream: STREAM, shardId: SHARD }), undefined);
    const events = [event(1, 'a'), event(2, 'b')];
    await sink.write(events);
    await sink.flush();
    assert.ok(events.every((e) => e.ack.completed));
    const { files } = await tableOf(state);
    assert.deepEqual(
      files.map((f) => f.partition.svc),
      ['a'],
    );
    await sink.close();
  });

  test('config Iceberg cannot express fails at start-up, naming the field', () => {
    const { catalog } = memoryCatalog();
    assert.throws(
      () => make('bad', catalog, { partitioning: { template: 'm={HH}{mm}' } }),
      /sinks\.bad\.partitioning \(iceberg\): .*no minute transform/,
    );
    assert.throws(
      () =>
        make('bad2', catalog, {
          registration: { type: 'glue', database: 'd', table: 't' },
        }),
      /not with iceberg/,
    );
  });
});
