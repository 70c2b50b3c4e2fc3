/**
 * ParquetSink against s3rver: objects are read back with two independent readers (DuckDB and hyparquet)
 * and compared value by value with what was written.
 */
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { GetObjectCommand, HeadObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { DuckDBInstance } from '@duckdb/node-api';
import { asyncBufferFromFile, parquetReadObjects } from 'hyparquet';
import { compressors } from 'hyparquet-compressors';
import { parse as parseJson } from 'lossless-json';
import pino from 'pino';
import type { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, test } from 'vitest';
import { Ack } from '../../src/core/ack.js';
import type { AwsClients } from '../../src/core/aws.js';
import type { ComponentContext } from '../../src/core/component.js';
import type { PipelineEvent } from '../../src/core/records.js';
import { detachedTenure } from '../../src/core/tenure.js';
import { createRegistry } from '../../src/metrics/registry.js';
import { parquetSinkConfigSchema } from '../../src/sinks/s3-parquet/config.js';
import { parquetSinkDefinition, S3ParquetSink } from '../../src/sinks/s3-parquet/index.js';
import { MemoryDeadLetterQueue } from '../helpers/fakes.js';
import { startS3Only } from '../helpers/stack.js';

const BUCKET = 'lake-bucket';
const STREAM = 'spans';
const SHARD_A = 'shardId-000000000000';
const SHARD_B = 'shardId-000000000001';
const FAST_BACKOFF = { baseMs: 5, maxMs: 50 };

/** A 56-digit Kinesis-like sequence number, so lexical and numeric order agree as in a real shard. */
function seq(n: number): string {
  return `4959${String(n).padStart(52, '0')}`;
}

function makeEvent(
  shardId: string,
  sequence: number,
  value: Record<string, unknown>,
  opts: { sub?: number; index?: number; arrival?: number } = {},
): PipelineEvent {
  return {
    origin: {
      stream: STREAM,
      shardId,
      sequenceNumber: seq(sequence),
      subSequenceNumber: opts.sub ?? 0,
      partitionKey: `pk-${sequence}`,
      arrivalTime: new Date(opts.arrival ?? 1_700_000_000_000 + sequence),
    },
    index: opts.index ?? 0,
    value,
    raw: Buffer.from(JSON.stringify(value, (_k, v) => (typeof v === 'bigint' ? v.toString() : v))),
    ack: new Ack(() => {}),
  };
}

async function waitUntil(cond: () => boolean, what: string, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function metricSum(registry: Registry, name: string): Promise<number> {
  const metric = await registry.getSingleMetric(name)?.get();
  return (metric?.values ?? [])
    .filter((v) => !('metricName' in v) || v.metricName === name)
    .reduce((sum, v) => sum + v.value, 0);
}

/** Keys under `prefix`: data objects only, or (manifests: true) the manifests under `<prefix>_ksw/`. */
async function listAll(s3: S3Client, prefix: string, manifests = false): Promise<string[]> {
  const { ListObjectsV2Command } = await import('@aws-sdk/client-s3');
  const out = await s3.send(new ListObjectsV2Command({ Bucket: BUCKET, Prefix: prefix }));
  return (out.Contents ?? [])
    .map((o) => o.Key!)
    .filter((k) => k.startsWith(`${prefix}_ksw/`) === manifests)
    .sort();
}

async function readJson(s3: S3Client, key: string): Promise<Record<string, unknown>> {
  const out = await s3.send(new GetObjectCommand({ Bucket: BUCKET, Key: key }));
  return JSON.parse(await out.Body!.transformToString());
}

async function downloadTo(s3: S3Client, key: string, dir: string): Promise<string> {
  const out = await s3.send(new GetObjectCommand({ Bucket: BUCKET, Key: key }));
  const file = path.join(dir, key);
  mkdirSync(path.dirname(file), { recursive: true });
  writeFileSync(file, await out.Body!.transformToByteArray());
  return file;
}

async function query(sql: string): Promise<Record<string, unknown>[]> {
  const instance = await DuckDBInstance.create(':memory:');
  const conn = await instance.connect();
  try {
    return (await conn.runAndReadAll(sql)).getRowObjectsJS() as Record<string, unknown>[];
  } finally {
    conn.closeSync();
    instance.closeSync();
  }
}

describe('S3 Parquet sink (s3rver)', () => {
  let dir: string;
  let aws: AwsClients;
  let s3: Awaited<ReturnType<typeof startS3Only>>;

  beforeAll(async () => {
    s3 = await startS3Only([BUCKET]);
    aws = s3.aws;
    dir = s3.dir;
  });
  afterAll(async () => {
    await s3.stop();
  });

  function context(): { ctx: ComponentContext; dlq: MemoryDeadLetterQueue; registry: Registry } {
    const dlq = new MemoryDeadLetterQueue();
    const registry = createRegistry(false);
    return { ctx: { logger: pino({ level: 'silent' }), metrics: registry, aws, dlq }, dlq, registry };
  }

  /** Downloads the objects and counts rows per sequence number (ordered), to check each record is there once. */
  async function rowsPerSequence(keys: string[], into: string): Promise<Record<string, unknown>[]> {
    const files = await Promise.all(keys.map((k) => downloadTo(aws.s3, k, path.join(dir, into))));
    return query(
      `SELECT _sequence_number AS s, count(*) AS c FROM read_parquet([${files.map((f) => `'${f}'`).join(', ')}])
       GROUP BY ALL ORDER BY s`,
    );
  }

  function sink(name: string, config: Record<string, unknown>, ctx: ComponentContext) {
    const parsed = parquetSinkConfigSchema.parse({
      type: 's3_parquet',
      bucket: BUCKET,
      tmpDir: path.join(dir, 'tmp'),
      ...config,
    });
    return new S3ParquetSink(name, parsed, ctx, { backoff: FAST_BACKOFF });
  }

  test('writes two shards; DuckDB and hyparquet read back every value exactly', async () => {
    const { ctx, dlq, registry } = context();
    const lake = sink(
      'lake',
      {
        prefix: 'typed/',
        columns: [
          { name: 'big', type: 'int64' },
          { name: 'small', type: 'int32' },
          { name: 'name', type: 'string', path: 'resource.name' },
          { name: 'ratio', type: 'double' },
          { name: 'ok', type: 'boolean' },
          { name: 'start', type: 'timestamp_us', path: 'startTimeUnixNano', timeUnit: 'ns' },
          { name: 'seen', type: 'timestamp_ms' },
          { name: 'attrs', type: 'json' },
        ],
      },
      ctx,
    );
    const inputs: Array<{
      shard: string;
      sequence: number;
      sub?: number;
      index?: number;
      value: Record<string, unknown>;
    }> = [
      {
        shard: SHARD_A,
        sequence: 10,
        value: {
          big: '-9223372036854775808',
          small: -2147483648,
          resource: { name: 'ünïcødé 日本 🚀' },
          ratio: 0.1,
          ok: true,
          startTimeUnixNano: '1700000000123456789',
          seen: '2023-11-14T22:13:20.123Z',
          attrs: { k: 'v', n: 9223372036854775807n, list: [1, null] },
        },
      },
      {
        shard: SHARD_A,
        sequence: 11,
        value: {
          big: 9223372036854775807n,
          small: '2147483647',
          ratio: -1e300,
          ok: 'false',
          seen: 1700000001000,
        },
      },
      // Two KPL sub-records of one aggregated record.
      { shard: SHARD_A, sequence: 12, sub: 1, value: { big: 42, resource: { name: null } } },
      { shard: SHARD_A, sequence: 12, sub: 2, value: { big: '0', attrs: 'plain' } },
      // Goes to the DLQ; the rest of the batch continues.
      { shard: SHARD_A, sequence: 13, value: { big: 'abc' } },
      {
        shard: SHARD_B,
        sequence: 20,
        index: 0,
        value: { big: '1700000000123456789', resource: { name: 'b0' } },
      },
      { shard: SHARD_B, sequence: 20, index: 1, value: { big: '-1', resource: { name: 'b1' } } },
      { shard: SHARD_B, sequence: 21, value: { big: 2 ** 53 } }, // already imprecise: DLQ
    ];
    const events = inputs.map((i) => makeEvent(i.shard, i.sequence, i.value, { sub: i.sub, index: i.index }));
    await lake.write(events);

    const deadIndexes = [4, 7];
    assert.deepEqual(
      dlq.letters.map((l) => l.reason),
      [
        'column big: expected int64, got "abc"',
        `column big: expected int64, got ${2 ** 53} (beyond 2^53 a JS number has already lost precision; send it as a string)`,
      ],
    );
    assert.equal(dlq.letters[0]!.component, 'sink:lake');
    assert.deepEqual(dlq.letters[0]!.data, events[4]!.raw);
    assert.equal(await metricSum(registry, 'ksw_parquet_dead_letters_total'), 2);
    const written = events.filter((_, i) => !deadIndexes.includes(i));
    assert.ok(
      written.every((e) => !e.ack.completed),
      'nothing is acked before the upload',
    );
    assert.ok(await metricSum(registry, 'ksw_parquet_buffered_bytes'), 'buffered bytes are reported');

    await lake.flush();
    assert.ok(
      written.every((e) => e.ack.completed),
      'everything is acked after flush',
    );
    assert.equal(await metricSum(registry, 'ksw_parquet_files_total'), 2);
    assert.equal(await metricSum(registry, 'ksw_parquet_rows_total'), 6);
    assert.equal(await metricSum(registry, 'ksw_parquet_buffered_bytes'), 0);
    await lake.close();

    const keys = await listAll(aws.s3, 'typed/');
    assert.deepEqual(keys, [
      `typed/${STREAM}_${SHARD_A}_${seq(10)}_${seq(12)}.2.parquet`,
      `typed/${STREAM}_${SHARD_B}_${seq(20)}_${seq(20)}-1.parquet`,
    ]);
    const head = await aws.s3.send(new HeadObjectCommand({ Bucket: BUCKET, Key: keys[0] }));
    const { 'ksw-file-id': fileId, ...metadata } = head.Metadata ?? {};
    assert.deepEqual(metadata, {
      rows: '4',
      stream: STREAM,
      shard: SHARD_A,
      'first-position': seq(10),
      'last-position': `${seq(12)}.2`,
      // Without partitioning the event time is the arrival time.
      'min-event-time': new Date(1_700_000_000_010).toISOString(),
      'max-event-time': new Date(1_700_000_000_012).toISOString(),
      'min-arrival-time': new Date(1_700_000_000_010).toISOString(),
      'max-arrival-time': new Date(1_700_000_000_012).toISOString(),
    });
    // One manifest per file, written before it, naming it and every event position it holds.
    const manifestKeys = await listAll(aws.s3, 'typed/', true);
    assert.equal(manifestKeys.length, 2);
    const manifest = await readJson(aws.s3, manifestKeys[0]!);
    assert.deepEqual(manifest, {
      version: 1,
      fileId,
      bucket: BUCKET,
      dataKey: keys[0],
      stream: STREAM,
      shardId: SHARD_A,
      partition: null,
      quarantine: false,
      partitions: [],
      rows: 4,
      firstPosition: seq(10),
      lastPosition: `${seq(12)}.2`,
      minEventTime: new Date(1_700_000_000_010).toISOString(),
      maxEventTime: new Date(1_700_000_000_012).toISOString(),
      // 10, 11 (delta 1), 12.1 and 12.2 (delta 1, sub 1 and 2); index 0 everywhere.
      positions: `${seq(10)};1;1.1;0.2`,
    });
    assert.equal((await readJson(aws.s3, manifestKeys[1]!)).positions, `${seq(20)}:0-1`);

    const files = await Promise.all(keys.map((k) => downloadTo(aws.s3, k, path.join(dir, 'dl-typed'))));
    const fileList = files.map((f) => `'${f}'`).join(', ');

    // What each row must hold, computed from the inputs, not from the sink.
    const expected = inputs
      .map((input, i) => ({ input, event: events[i]! }))
      .filter((_, i) => !deadIndexes.includes(i))
      .map(({ input, event }) => {
        const v = input.value as Record<string, unknown>;
        return {
          _stream: STREAM,
          _shard_id: input.shard,
          _sequence_number: seq(input.sequence),
          _sub_sequence_number: BigInt(input.sub ?? 0),
          _event_index: input.index ?? 0,
          _partition_key: `pk-${input.sequence}`,
          _arrival_ms: BigInt(event.origin.arrivalTime.getTime()),
          big: v.big === undefined ? null : BigInt(v.big as string | number | bigint),
          small: v.small === undefined ? null : Number(v.small),
          name: (v.resource as { name?: string } | undefined)?.name ?? null,
          ratio: (v.ratio as number | undefined) ?? null,
          ok: v.ok === undefined ? null : v.ok === true || v.ok === 'true',
          start_us: v.startTimeUnixNano ? BigInt(v.startTimeUnixNano as string) / 1000n : null,
          seen_ms:
            v.seen === undefined
              ? null
              : BigInt(typeof v.seen === 'number' ? v.seen : Date.parse(v.seen as string)),
          attrs: v.attrs === undefined ? null : v.attrs,
        };
      });

    const duckRows = await query(
      `SELECT _stream, _shard_id, _sequence_number, _sub_sequence_number, _event_index, _partition_key,
              epoch_ms(_arrival_time) AS _arrival_ms, big, small, name, ratio, ok,
              epoch_us(start) AS start_us, epoch_ms(seen) AS seen_ms, attrs, _record
       FROM read_parquet([${fileList}]) ORDER BY _shard_id, _sequence_number, _sub_sequence_number, _event_index`,
    );
    assert.equal(duckRows.length, expected.length);
    duckRows.forEach((row, i) => {
      const { attrs, ...rest } = expected[i]!;
      const { attrs: gotAttrs, _record, ...got } = row;
      assert.deepEqual(got, rest, `row ${i}`);
      // The json column and _record are JSON text; big integers keep all their digits.
      const reparse = (text: unknown) =>
        text === null ? null : parseJson(text as string, undefined, bigIntegers);
      assert.deepEqual(reparse(gotAttrs), attrs === null ? null : normalise(attrs), `attrs of row ${i}`);
      assert.deepEqual(
        reparse(_record),
        normalise(inputs.filter((_, j) => !deadIndexes.includes(j))[i]!.value),
      );
    });

    // hyparquet, an independent reader (zstd through hyparquet-compressors).
    const hyRows: Record<string, unknown>[] = [];
    for (const file of files) {
      hyRows.push(...(await parquetReadObjects({ file: await asyncBufferFromFile(file), compressors })));
    }
    assert.equal(hyRows.length, expected.length);
    hyRows.forEach((row, i) => {
      const want = expected[i]!;
      assert.equal(row._stream, want._stream);
      assert.equal(row._shard_id, want._shard_id);
      assert.equal(row._sequence_number, want._sequence_number);
      assert.equal(row._sub_sequence_number, want._sub_sequence_number);
      assert.equal(row._event_index, want._event_index);
      assert.equal(row._partition_key, want._partition_key);
      assert.equal((row._arrival_time as Date).getTime(), Number(want._arrival_ms));
      assert.equal(row.big, want.big);
      assert.equal(row.small, want.small);
      assert.equal(row.name, want.name);
      assert.equal(row.ratio, want.ratio);
      assert.equal(row.ok, want.ok);
      // hyparquet gives timestamps as Dates (ms); the exact micros were checked through DuckDB.
      assert.equal(
        row.start === null ? null : (row.start as Date).getTime(),
        want.start_us === null ? null : Number(want.start_us / 1000n),
      );
      assert.equal(
        row.seen === null ? null : (row.seen as Date).getTime(),
        want.seen_ms === null ? null : Number(want.seen_ms),
      );
      assert.equal(typeof row.attrs === 'string' || row.attrs === null, true);
    });

    // Codec and statistics, as an engine planning a query sees them.
    const meta = await query(
      `SELECT path_in_schema, compression, stats_min_value, stats_max_value FROM parquet_metadata('${files[0]}')`,
    );
    assert.ok(meta.every((m) => m.compression === 'ZSTD'));
    const bigStats = meta.find((m) => m.path_in_schema === 'big')!;
    assert.equal(bigStats.stats_min_value, '-9223372036854775808');
    assert.equal(bigStats.stats_max_value, '9223372036854775807');
    const nameStats = meta.find((m) => m.path_in_schema === 'name')!;
    assert.equal(nameStats.stats_min_value, 'ünïcødé 日本 🚀');
    const exact = await query(
      `SELECT count(*) AS c FROM read_parquet('${files[1]}') WHERE big = 1700000000123456789`,
    );
    assert.equal(exact[0]!.c, 1n, 'filtering on an exact int64 finds the row');
  });

  test('rolls by rows without splitting a record across files', async () => {
    const { ctx } = context();
    const lake = sink('rows', { prefix: 'rolled/', compression: 'snappy', roll: { maxFileRows: 3 } }, ctx);
    const events = [
      makeEvent(SHARD_A, 101, { n: 0 }),
      makeEvent(SHARD_A, 102, { n: 1 }, { index: 0 }),
      makeEvent(SHARD_A, 102, { n: 2 }, { index: 1 }),
      makeEvent(SHARD_A, 102, { n: 3 }, { index: 2 }), // 4th row, same record: stays in the first file
      makeEvent(SHARD_A, 103, { n: 4 }),
      makeEvent(SHARD_A, 104, { n: 5 }),
      makeEvent(SHARD_A, 105, { n: 6 }),
      makeEvent(SHARD_A, 106, { n: 7 }),
    ];
    await lake.write(events);
    // The first two files rolled on their own (no flush): their events are acked once uploaded.
    await waitUntil(() => events.slice(0, 7).every((e) => e.ack.completed), 'the rolled files to be acked');
    assert.equal(events[7]!.ack.completed, false, 'the open file is not acked');
    await lake.close();
    assert.ok(events[7]!.ack.completed);
    const keys = await listAll(aws.s3, 'rolled/');
    const prefix = `rolled/${STREAM}_${SHARD_A}_`;
    assert.deepEqual(keys, [
      `${prefix}${seq(101)}_${seq(102)}-2.parquet`,
      `${prefix}${seq(103)}_${seq(105)}.parquet`,
      `${prefix}${seq(106)}_${seq(106)}.parquet`,
    ]);
    const files = await Promise.all(keys.map((k) => downloadTo(aws.s3, k, path.join(dir, 'dl-rolled'))));
    const counts = await Promise.all(
      files.map(
        async (f) =>
          (await query(`SELECT list(_record ORDER BY _sequence_number, _event_index) AS r FROM '${f}'`))[0]!
            .r,
      ),
    );
    assert.deepEqual(counts, [
      ['{"n":0}', '{"n":1}', '{"n":2}', '{"n":3}'],
      ['{"n":4}', '{"n":5}', '{"n":6}'],
      ['{"n":7}'],
    ]);
    const codec = await query(`SELECT DISTINCT compression FROM parquet_metadata('${files[0]}')`);
    assert.deepEqual(codec, [{ compression: 'SNAPPY' }]);
  });

  test('rolls by age', async () => {
    const { ctx } = context();
    const lake = sink('aged', { prefix: 'aged/', roll: { maxFileAgeMs: 100 } }, ctx);
    const event = makeEvent(SHARD_B, 1, { a: 1 });
    await lake.write([event]);
    await waitUntil(() => event.ack.completed, 'the age roll');
    assert.deepEqual(await listAll(aws.s3, 'aged/'), [
      `aged/${STREAM}_${SHARD_B}_${seq(1)}_${seq(1)}.parquet`,
    ]);
    await lake.close();
  });

  test('replay: events of objects committed after the checkpoint are acked without rewriting', async () => {
    const shard = detachedTenure({ stream: STREAM, shardId: SHARD_A });
    const prefix = `replay/${STREAM}_${SHARD_A}_`;
    // First run: 201..209 in files of 3; "crash" with the checkpoint still at 203.
    {
      const { ctx } = context();
      const first = sink('replay', { prefix: 'replay/', roll: { maxFileRows: 3 } }, ctx);
      await first.openShard(shard, undefined);
      await first.write(Array.from({ length: 9 }, (_, i) => makeEvent(SHARD_A, 201 + i, { n: 201 + i })));
      await first.close();
    }
    const firstRun = await listAll(aws.s3, 'replay/');
    assert.deepEqual(firstRun, [
      `${prefix}${seq(201)}_${seq(203)}.parquet`,
      `${prefix}${seq(204)}_${seq(206)}.parquet`,
      `${prefix}${seq(207)}_${seq(209)}.parquet`,
    ]);

    // Second run rolls differently (4 rows) and resumes after 203.
    const { ctx, registry } = context();
    const puts: string[] = [];
    aws.s3.middlewareStack.add(
      (next, context) => async (args) => {
        if (context.commandName === 'PutObjectCommand') puts.push((args.input as { Key: string }).Key);
        return next(args);
      },
      { step: 'initialize', name: 'countReplayPuts' },
    );
    try {
      const second = sink('replay', { prefix: 'replay/', roll: { maxFileRows: 4 } }, ctx);
      await second.openShard(shard, { sequenceNumber: seq(203), subSequenceNumber: 0 });
      const events = Array.from({ length: 9 }, (_, i) => makeEvent(SHARD_A, 204 + i, { n: 204 + i }));
      await second.write(events);
      assert.ok(
        events.slice(0, 6).every((e) => e.ack.completed),
        'events already in committed objects are acked at once',
      );
      assert.ok(
        events.slice(6).every((e) => !e.ack.completed),
        'new events wait for their upload',
      );
      await second.close();
      assert.ok(events.every((e) => e.ack.completed));
      assert.equal(await metricSum(registry, 'ksw_parquet_replay_skipped_events_total'), 6);
      assert.deepEqual(
        puts.filter((k) => k.endsWith('.parquet')),
        [`${prefix}${seq(210)}_${seq(212)}.parquet`],
        'only the new range was written',
      );
      assert.equal(puts.length, 2, 'the new file and its manifest');
    } finally {
      aws.s3.middlewareStack.remove('countReplayPuts');
    }
    const keys = await listAll(aws.s3, 'replay/');
    assert.equal(keys.length, 4);
    assert.deepEqual(
      await rowsPerSequence(keys, 'dl-replay'),
      Array.from({ length: 12 }, (_, i) => ({ s: seq(201 + i), c: 1n })),
      'every record exactly once',
    );
  });

  test('replay: a damaged or foreign manifest does not block the shard; its events are written again', async () => {
    const shard = detachedTenure({ stream: STREAM, shardId: SHARD_A });
    {
      const { ctx } = context();
      const first = sink('damaged', { prefix: 'damaged/', roll: { maxFileRows: 3 } }, ctx);
      await first.openShard(shard, undefined);
      await first.write(Array.from({ length: 6 }, (_, i) => makeEvent(SHARD_A, 401 + i, { n: 401 + i })));
      await first.close();
    }
    const manifests = await listAll(aws.s3, 'damaged/', true);
    assert.equal(manifests.length, 2);
    // The first file's manifest cut in half (what a non-atomic store leaves after a crash mid-upload), the
    // second's listing positions that do not parse, and an object of another version beside them.
    const { PutObjectCommand } = await import('@aws-sdk/client-s3');
    const text = JSON.stringify(await readJson(aws.s3, manifests[0]!));
    await aws.s3.send(
      new PutObjectCommand({ Bucket: BUCKET, Key: manifests[0]!, Body: text.slice(0, text.length / 2) }),
    );
    const second = await readJson(aws.s3, manifests[1]!);
    await aws.s3.send(
      new PutObjectCommand({
        Bucket: BUCKET,
        Key: manifests[1]!,
        Body: JSON.stringify({ ...second, positions: `${second.positions};x` }),
      }),
    );
    await aws.s3.send(
      new PutObjectCommand({
        Bucket: BUCKET,
        Key: manifests[1]!.replace(/\.json$/, '-other.json'),
        Body: JSON.stringify({ version: 2 }),
      }),
    );

    const logs: Array<Record<string, unknown>> = [];
    const { ctx: base, registry } = context();
    const ctx = {
      ...base,
      logger: pino({ level: 'warn' }, { write: (l: string) => logs.push(JSON.parse(l)) }),
    };
    const again = sink('damaged', { prefix: 'damaged/', roll: { maxFileRows: 3 } }, ctx);
    await again.openShard(shard, undefined); // before the fix: SyntaxError, and the shard never opened
    const events = Array.from({ length: 6 }, (_, i) => makeEvent(SHARD_A, 401 + i, { n: 401 + i }));
    await again.write(events);
    assert.ok(
      events.every((e) => !e.ack.completed),
      'nothing is skipped on the word of a manifest that cannot be read',
    );
    await again.close();
    assert.ok(events.every((e) => e.ack.completed));
    assert.equal(await metricSum(registry, 'ksw_parquet_manifests_unreadable_total'), 3);
    assert.equal(await metricSum(registry, 'ksw_parquet_replay_skipped_events_total'), 0);
    const warned = logs.filter(
      (l) => l.msg === 'unreadable manifest ignored; the events it lists are written again on replay',
    );
    assert.equal(warned.length, 3);
    assert.ok(warned.some((l) => /^not JSON/.test(String(l.problem))));
    assert.ok(warned.some((l) => /^unknown version 2/.test(String(l.problem))));
    assert.ok(warned.some((l) => /^positions: malformed position entry "x"/.test(String(l.problem))));
    // Same rows, same cuts: the rewrite lands on the same keys, so every record is still there once.
    const keys = await listAll(aws.s3, 'damaged/');
    assert.equal(keys.length, 2);
    assert.deepEqual(
      await rowsPerSequence(keys, 'dl-damaged'),
      Array.from({ length: 6 }, (_, i) => ({ s: seq(401 + i), c: 1n })),
    );
    // The rewrite also replaced the damaged manifests with good ones.
    for (const key of manifests) assert.equal((await readJson(aws.s3, key)).version, 1);
  });

  test('an S3 failure is retried and acks come only after success', async () => {
    const logs: Array<Record<string, unknown>> = [];
    const { ctx: base, registry } = context();
    const logger = pino({ level: 'warn' }, { write: (line: string) => logs.push(JSON.parse(line)) });
    const ctx = { ...base, logger };
    const events = [makeEvent(SHARD_A, 301, { a: 1 }), makeEvent(SHARD_A, 302, { a: 2 })];
    let failures = 2;
    const ackedWhenFailing: boolean[] = [];
    aws.s3.middlewareStack.add(
      (next, context) => async (args) => {
        if (context.commandName === 'PutObjectCommand' && failures-- > 0) {
          ackedWhenFailing.push(events.some((e) => e.ack.completed));
          throw Object.assign(new Error('injected 503'), {
            name: 'ServiceUnavailable',
            $metadata: { httpStatusCode: 503 },
          });
        }
        return next(args);
      },
      { step: 'initialize', name: 'inject503' },
    );
    try {
      const lake = sink('flaky', { prefix: 'flaky/' }, ctx);
      await lake.write(events);
      await lake.flush();
      assert.deepEqual(ackedWhenFailing, [false, false], 'two failed attempts, nothing acked during them');
      assert.ok(events.every((e) => e.ack.completed));
      assert.equal(await metricSum(registry, 'ksw_parquet_upload_errors_total'), 2);
      assert.equal(await metricSum(registry, 'ksw_parquet_files_total'), 1);
      await lake.close();
    } finally {
      aws.s3.middlewareStack.remove('inject503');
    }
    const warnings = logs.filter((l) => l.level === 40);
    assert.equal(warnings.length, 2);
    assert.deepEqual(warnings[0]!.error, {
      name: 'ServiceUnavailable',
      message: 'injected 503',
      statusCode: 503,
    });
    assert.ok(!JSON.stringify(logs).includes('"a":1'), 'no payload in logs');
    const keys = await listAll(aws.s3, 'flaky/');
    assert.deepEqual(keys, [`flaky/${STREAM}_${SHARD_A}_${seq(301)}_${seq(302)}.parquet`]);
    const file = await downloadTo(aws.s3, keys[0]!, path.join(dir, 'dl-flaky'));
    assert.deepEqual(await query(`SELECT list(_record) AS r FROM '${file}'`), [
      { r: ['{"a":1}', '{"a":2}'] },
    ]);
  });

  test('write() waits while too many files are waiting for upload (backpressure)', async () => {
    const { ctx } = context();
    let release!: () => void;
    const gate = new Promise<void>((resolve) => {
      release = resolve;
    });
    aws.s3.middlewareStack.add(
      (next, context) => async (args) => {
        if (context.commandName === 'PutObjectCommand') await gate;
        return next(args);
      },
      { step: 'initialize', name: 'gatePuts' },
    );
    try {
      const lake = sink(
        'pressure',
        { prefix: 'pressure/', uploadConcurrency: 1, roll: { maxFileRows: 1 } },
        ctx,
      );
      const events = Array.from({ length: 6 }, (_, i) => makeEvent(SHARD_B, 401 + i, { i }));
      let settled = false;
      const writing = lake.write(events).then(() => {
        settled = true;
      });
      // Give the sink ample opportunity to (wrongly) finish the write while the uploads are blocked.
      await new Promise((r) => setTimeout(r, 300));
      assert.equal(settled, false, 'write is held back while 3 files wait for one upload slot');
      assert.ok(events.every((e) => !e.ack.completed));
      release();
      await writing;
      await lake.close();
      assert.ok(events.every((e) => e.ack.completed));
    } finally {
      aws.s3.middlewareStack.remove('gatePuts');
    }
    assert.equal((await listAll(aws.s3, 'pressure/')).length, 6);
  });

  test('the definition parses config and creates a working sink', async () => {
    const { ctx } = context();
    const config = parquetSinkDefinition.schema.parse({ type: 's3_parquet', bucket: BUCKET, prefix: 'def/' });
    const lake = parquetSinkDefinition.create('def', config, ctx);
    const event = makeEvent(SHARD_A, 7, { x: 'y' });
    await lake.write([event]);
    await lake.close();
    assert.ok(event.ack.completed);
    assert.equal((await listAll(aws.s3, 'def/')).length, 1);
  });
});

/** Numbers of JSON text: integers beyond 2^53 as bigint (exact), others as number. */
function bigIntegers(text: string): number | bigint {
  return /^-?\d+$/.test(text) && !Number.isSafeInteger(Number(text)) ? BigInt(text) : Number(text);
}

/** The value as it should read back from JSON text: undefined dropped, bigints kept. */
function normalise(value: unknown): unknown {
  if (Array.isArray(value)) return value.map((v) => (v === undefined ? null : normalise(v)));
  if (value && typeof value === 'object') {
    return Object.fromEntries(
      Object.entries(value)
        .filter(([, v]) => v !== undefined)
        .map(([k, v]) => [k, normalise(v)]),
    );
  }
  return value;
}
