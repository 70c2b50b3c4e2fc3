/**
 * The Parquet sink as a data lake writer, against s3rver: built-in span and RED schemas and declared nested
 * columns read back by DuckDB value by value, Hive partitions (escaping, hive_partitioning read-back), the
 * open-partition cap with quarantine, multipart upload, derived events, and crash-replay: the final object set
 * equals a clean run's (same keys, same rows), and stays exactly-once when delivery is out of order.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { GetObjectCommand, HeadObjectCommand, ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import { DuckDBInstance } from '@duckdb/node-api';
import pino from 'pino';
import type { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, test } from 'vitest';
import { Ack } from '../../src/core/ack.js';
import type { AwsClients } from '../../src/core/aws.js';
import type { ComponentContext } from '../../src/core/component.js';
import type { RedWindowDocument, SpanDocument } from '../../src/core/documents.js';
import type { PipelineEvent } from '../../src/core/records.js';
import { detachedTenure } from '../../src/core/tenure.js';
import { type ShardPosition, ShardWatermark } from '../../src/core/watermark.js';
import { createRegistry } from '../../src/metrics/registry.js';
import { parquetSinkConfigSchema } from '../../src/sinks/s3-parquet/config.js';
import { S3ParquetSink } from '../../src/sinks/s3-parquet/index.js';
import {
  compareEventPosition,
  type EventPosition,
  parseEventPosition,
} from '../../src/sinks/s3-parquet/manifest.js';
import type { PartitionRegistrar } from '../../src/sinks/s3-parquet/registration.js';
import { MemoryDeadLetterQueue } from '../helpers/fakes.js';
import { startS3Only } from '../helpers/stack.js';

const BUCKET = 'lake';
const STREAM = 'spans';
const SHARD = 'shardId-000000000000';
const FAST_BACKOFF = { baseMs: 5, maxMs: 50 };

/** Runs a query in a fresh DuckDB; rows as JS values (BIGINT as bigint, MAP as [{key, value}], TIMESTAMP as Date). */
async function duck(sql: string): Promise<Record<string, unknown>[]> {
  const instance = await DuckDBInstance.create(':memory:');
  const conn = await instance.connect();
  try {
    return (await conn.runAndReadAll(sql)).getRowObjectsJS() as Record<string, unknown>[];
  } finally {
    conn.closeSync();
    instance.closeSync();
  }
}

function seq(n: number): string {
  return `4959${String(n).padStart(52, '0')}`;
}

interface EventInput {
  sequence: number;
  value: Record<string, unknown>;
  index?: number;
  derived?: boolean;
  shardId?: string;
}

function makeEvent(input: EventInput, ack = new Ack(() => {})): PipelineEvent {
  return {
    origin: {
      stream: STREAM,
      shardId: input.shardId ?? SHARD,
      sequenceNumber: seq(input.sequence),
      subSequenceNumber: 0,
      partitionKey: `pk-${input.sequence}`,
      arrivalTime: new Date(1_700_000_000_000 + input.sequence * 1000),
    },
    index: input.index ?? 0,
    value: input.value,
    raw: Buffer.from(JSON.stringify(input.value, (_k, v) => (typeof v === 'bigint' ? v.toString() : v))),
    ack,
    ...(input.derived ? { derived: true } : {}),
  };
}

async function metricSum(
  registry: Registry,
  name: string,
  labels: Record<string, string> = {},
): Promise<number> {
  const metric = await registry.getSingleMetric(name)?.get();
  return (metric?.values ?? [])
    .filter((v) => !('metricName' in v) || v.metricName === name || v.metricName === undefined)
    .filter((v) => Object.entries(labels).every(([k, want]) => v.labels[k] === want))
    .reduce((sum, v) => sum + v.value, 0);
}

describe('S3 Parquet data lake (s3rver)', () => {
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

  /** A client of its own (for middleware that must not affect the other tests). */
  async function freshClient(): Promise<S3Client> {
    const endpoint = await aws.s3.config.endpoint!();
    return new S3Client({
      region: 'us-east-1',
      endpoint: `${endpoint.protocol}//${endpoint.hostname}:${endpoint.port}`,
      forcePathStyle: true,
      credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' },
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
    });
  }

  function context(s3Client?: S3Client) {
    const dlq = new MemoryDeadLetterQueue();
    const registry = createRegistry(false);
    const ctx: ComponentContext = {
      logger: pino({ level: 'silent' }),
      metrics: registry,
      aws: s3Client ? { ...aws, s3: s3Client } : aws,
      dlq,
    };
    return { ctx, dlq, registry };
  }

  function sink(
    name: string,
    config: Record<string, unknown>,
    ctx: ComponentContext,
    registrar?: PartitionRegistrar,
  ) {
    const parsed = parquetSinkConfigSchema.parse({
      type: 's3_parquet',
      bucket: BUCKET,
      tmpDir: path.join(dir, 'tmp'),
      ...config,
    });
    return new S3ParquetSink(name, parsed, ctx, { backoff: FAST_BACKOFF, registrar });
  }

  async function list(prefix: string): Promise<string[]> {
    const keys: string[] = [];
    let token: string | undefined;
    do {
      const out = await aws.s3.send(
        new ListObjectsV2Command({ Bucket: BUCKET, Prefix: prefix, ContinuationToken: token }),
      );
      for (const o of out.Contents ?? []) keys.push(o.Key!);
      token = out.IsTruncated ? out.NextContinuationToken : undefined;
    } while (token);
    return keys.sort();
  }

  /** Downloads the data objects under `prefix` (not manifests) into a fresh folder; returns it. */
  async function download(prefix: string): Promise<{ root: string; keys: string[] }> {
    const root = path.join(dir, 'dl', `${prefix.replace(/\W/g, '_')}${Date.now()}`);
    const keys = (await list(prefix)).filter((k) => k.endsWith('.parquet'));
    for (const key of keys) {
      const out = await aws.s3.send(new GetObjectCommand({ Bucket: BUCKET, Key: key }));
      const file = path.join(root, key);
      mkdirSync(path.dirname(file), { recursive: true });
      writeFileSync(file, await out.Body!.transformToByteArray());
    }
    return { root, keys };
  }

  test('spans schema: partitions by event time and service; every value, nested ones included, reads back exactly', async () => {
    const { ctx, dlq } = context();
    const lake = sink(
      'spans',
      {
        prefix: 'spans/',
        schema: 'spans',
        partitioning: { template: 'dt={yyyy}-{MM}-{dd}/hour={HH}/service={field:serviceName}' },
      },
      ctx,
    );
    const base: SpanDocument = {
      traceId: '0af7651916cd43dd8448eb211c80319c',
      spanId: 'b7ad6b7169203331',
      parentSpanId: '',
      name: 'GET /api/cart',
      kind: 'SPAN_KIND_SERVER',
      serviceName: 'cart',
      startTimeUnixNano: '1700000000123456789',
      endTimeUnixNano: '1700000000223456789',
      durationNano: '100000000',
      status: { code: 0, message: '' },
      attributes: {},
      resource: { 'service.name': 'cart' },
    };
    const spans: SpanDocument[] = [
      {
        ...base,
        traceState: 'k=v',
        name: 'ünïcødé 日本 🚀',
        status: { code: 2, message: 'boom — ошибка' },
        attributes: {
          'http.status_code': 503,
          'http.route': '/api/cart',
          ok: false,
          tags: ['a', 'b'],
          big: 9223372036854775807n,
        },
        resource: { 'service.name': 'cart', 'host.name': 'ip-10-0-0-1' },
        scope: { name: 'io.opentelemetry', version: '1.2.3' },
        events: [
          {
            timeUnixNano: '1700000000123456999',
            name: 'exception',
            attributes: { 'exception.type': 'Timeout' },
          },
          { timeUnixNano: 1700000000223456789n, name: 'retry', attributes: {} },
        ],
        links: [
          { traceId: 'ffffffffffffffffffffffffffffffff', spanId: '0000000000000001', attributes: { n: 1 } },
        ],
        sampling: { policy: 'errors', probability: 1 },
      },
      {
        ...base,
        spanId: 'extremes',
        serviceName: 'a/b=c% ü',
        // int64 extremes: the timestamps land in 1677 and 2262, inside years 0001..9999.
        startTimeUnixNano: '-9223372036854775808',
        endTimeUnixNano: '9223372036854775807',
        durationNano: '9223372036854775807',
        events: [],
        links: [],
      },
      { ...base, spanId: 'empty-service', serviceName: '' },
    ];
    const events = spans.map((value, i) =>
      makeEvent({ sequence: 10 + i, value: value as unknown as Record<string, unknown> }),
    );
    // A span whose start time is not a time: dead-lettered with the reason, the batch goes on.
    const bad = makeEvent({
      sequence: 20,
      value: { ...base, startTimeUnixNano: 'soon' } as unknown as Record<string, unknown>,
    });
    await lake.write([...events, bad]);
    await lake.close();
    assert.deepEqual(
      dlq.letters.map((l) => l.reason),
      ['column startTimeUnixNano: expected int64, got "soon"'],
    );
    assert.ok(events.every((e) => e.ack.completed));

    const { root, keys } = await download('spans/');
    assert.deepEqual(keys, [
      `spans/dt=1677-09-21/hour=00/service=a%2Fb%3Dc%25 ü/${STREAM}_${SHARD}_${seq(11)}_${seq(11)}.parquet`,
      `spans/dt=2023-11-14/hour=22/service=__HIVE_DEFAULT_PARTITION__/${STREAM}_${SHARD}_${seq(12)}_${seq(12)}.parquet`,
      `spans/dt=2023-11-14/hour=22/service=cart/${STREAM}_${SHARD}_${seq(10)}_${seq(10)}.parquet`,
    ]);
    const rows = await duck(
      `SELECT * EXCLUDE (_arrival_time, _stream, _shard_id, _partition_key, _sub_sequence_number, _event_index, startTime, endTime),
              epoch_us(startTime) AS start_us, epoch_us(endTime) AS end_us,
              [epoch_us(e.time) FOR e IN events] AS event_us
       FROM read_parquet('${root}/**/*.parquet', hive_partitioning = true, hive_types_autocast = false)
       ORDER BY _sequence_number`,
    );
    const text = (v: unknown) =>
      typeof v === 'string'
        ? v
        : JSON.stringify(v, (_k, x) => (typeof x === 'bigint' ? Number.NaN : x)).replace(
            'null',
            '9223372036854775807',
          );
    const expectMap = (attrs: Record<string, unknown> | undefined) =>
      attrs === undefined ? null : Object.entries(attrs).map(([key, value]) => ({ key, value: text(value) }));
    const expected = spans.map((s, i) => ({
      _sequence_number: seq(10 + i),
      traceId: s.traceId,
      spanId: s.spanId,
      parentSpanId: s.parentSpanId,
      traceState: s.traceState ?? null,
      name: s.name,
      kind: s.kind,
      serviceName: s.serviceName,
      startTimeUnixNano: BigInt(s.startTimeUnixNano),
      endTimeUnixNano: BigInt(s.endTimeUnixNano),
      durationNano: BigInt(s.durationNano),
      status: s.status,
      attributes: expectMap(s.attributes),
      resource: expectMap(s.resource),
      scope: s.scope ?? null,
      events:
        s.events?.map((e) => ({
          timeUnixNano: BigInt(e.timeUnixNano),
          name: e.name,
          attributes: expectMap(e.attributes),
        })) ?? null,
      links: s.links?.map((l) => ({ ...l, attributes: expectMap(l.attributes) })) ?? null,
      sampling: s.sampling ?? null,
      dt: i === 1 ? '1677-09-21' : '2023-11-14',
      hour: i === 1 ? '00' : '22',
      // hive_partitioning unescapes; the empty value is Hive's default partition, which engines read as NULL.
      service: i === 2 ? null : s.serviceName,
      start_us: floorDiv(BigInt(s.startTimeUnixNano), 1000n),
      end_us: floorDiv(BigInt(s.endTimeUnixNano), 1000n),
      event_us: s.events?.map((e) => floorDiv(BigInt(e.timeUnixNano), 1000n)) ?? null,
    }));
    // events[].time is compared exactly through event_us.
    const withoutTime = rows.map((r) => ({
      ...r,
      events: (r.events as Array<Record<string, unknown>> | null)?.map(({ time: _t, ...e }) => e) ?? null,
    }));
    assert.deepEqual(withoutTime, expected);
    // The big attribute keeps every digit (a bigint in the event, text in the map).
    assert.equal(
      (rows[0]!.attributes as Array<{ key: string; value: string }>).find((a) => a.key === 'big')!.value,
      '9223372036854775807',
    );

    // Types as engines see them: int64 nanoseconds beside TIMESTAMP(MICROS); nested groups for the rest.
    const file = path.join(root, keys[2]!);
    const schema = await duck(
      `SELECT name, type, converted_type, logical_type FROM parquet_schema('${file}')
       WHERE name IN ('startTimeUnixNano', 'startTime', 'attributes', 'status', 'events', 'time')`,
    );
    const byName = Object.fromEntries(schema.map((r) => [r.name, r]));
    assert.equal(byName.startTimeUnixNano!.type, 'INT64');
    assert.equal(byName.startTime!.converted_type, 'TIMESTAMP_MICROS');
    assert.equal(byName.attributes!.converted_type, 'MAP');
    assert.equal(byName.events!.converted_type, 'LIST');
    assert.equal(byName.time!.converted_type, 'TIMESTAMP_MICROS', 'timestamps inside structs too');
    // Full min/max statistics and the configured codec on every column chunk.
    const meta = await duck(
      `SELECT path_in_schema, compression, stats_min_value, stats_max_value FROM parquet_metadata('${path.join(root, keys[0]!)}')`,
    );
    assert.ok(meta.every((m) => m.compression === 'ZSTD'));
    const durations = meta.find((m) => m.path_in_schema === 'durationNano')!;
    assert.equal(durations.stats_max_value, '9223372036854775807');
    const starts = meta.find((m) => m.path_in_schema === 'startTimeUnixNano')!;
    assert.equal(starts.stats_min_value, '-9223372036854775808');
  });

  test('red_metrics schema stores the RED window document; generic schema with declared nested columns and the rest as JSON', async () => {
    const { ctx, dlq } = context();
    const red = sink(
      'red',
      {
        prefix: 'red/',
        schema: 'red_metrics',
        compression: 'snappy',
        partitioning: { template: 'dt={yyyy}-{MM}-{dd}' },
      },
      ctx,
    );
    const window: RedWindowDocument = {
      windowStart: '2025-11-22T10:00:00.000Z',
      windowEnd: '2025-11-22T10:00:20.000Z',
      service: 'checkout',
      operation: 'POST /api/checkout',
      spanKind: 'SPAN_KIND_SERVER',
      statusCode: 'ERROR',
      dimensions: { 'http.route': '/api/checkout', region: 'eu-west-1' },
      overflow: false,
      requestCount: 1234,
      errorCount: 5,
      durationSumMs: 4567.25,
      durationMinMs: 0.5,
      durationMaxMs: 2500,
      durationBucketBoundsMs: [5, 10, 50, 1000],
      durationBucketCounts: [1000, 200, 30, 3, 1],
      sourceStream: STREAM,
      sourceShardId: SHARD,
    };
    const windowEvent = makeEvent({
      sequence: 30,
      value: window as unknown as Record<string, unknown>,
      derived: true,
    });
    await red.write([windowEvent]);
    await red.close();
    assert.ok(windowEvent.ack.completed);
    const redOut = await download('red/');
    assert.equal(redOut.keys.length, 1);
    assert.match(
      redOut.keys[0]!,
      new RegExp(`^red/dt=2025-11-22/${STREAM}_${SHARD}_${seq(30)}_${seq(30)}_d[0-9a-f]{16}\\.parquet$`),
    );
    assert.deepEqual(await list('red/_ksw/'), [], 'derived events are never replay-skipped: no manifest');
    const [redRow] = await duck(
      `SELECT * EXCLUDE (_arrival_time, _stream, _shard_id, _partition_key, _sequence_number, _sub_sequence_number, _event_index),
              strftime(windowStart, '%Y-%m-%dT%H:%M:%S.%g') AS ws, strftime(windowEnd, '%Y-%m-%dT%H:%M:%S.%g') AS we
       FROM read_parquet('${redOut.root}/**/*.parquet', hive_partitioning = false)`,
    );
    const { windowStart: _s, windowEnd: _e, ws, we, dimensions, ...rest } = redRow!;
    assert.equal(`${ws}Z`, window.windowStart);
    assert.equal(`${we}Z`, window.windowEnd);
    assert.deepEqual(
      dimensions,
      Object.entries(window.dimensions).map(([key, value]) => ({ key, value })),
    );
    const { windowStart: _ws, windowEnd: _we, dimensions: _d, ...plain } = window;
    assert.deepEqual(rest, {
      ...plain,
      requestCount: 1234n,
      errorCount: 5n,
      durationBucketCounts: window.durationBucketCounts.map(BigInt),
    });
    const codec = await duck(
      `SELECT DISTINCT compression FROM parquet_metadata('${path.join(redOut.root, redOut.keys[0]!)}')`,
    );
    assert.deepEqual(codec, [{ compression: 'SNAPPY' }]);

    const generic = sink(
      'generic',
      {
        prefix: 'generic/',
        recordContent: 'rest',
        columns: [
          { name: 'id', type: 'int64' },
          { name: 'ids', type: 'list', items: 'int64' },
          {
            name: 'seen',
            type: 'map',
            values: { type: 'list', items: { type: 'timestamp_ms', timeUnit: 'ns' } },
          },
          {
            name: 'who',
            type: 'struct',
            path: 'user',
            fields: [
              { name: 'name', type: 'string' },
              { name: 'age', type: 'int32' },
              { name: 'tags', type: 'list', items: 'string' },
              {
                name: 'geo',
                type: 'struct',
                fields: [
                  { name: 'lat', type: 'double' },
                  { name: 'lon', type: 'double' },
                ],
              },
            ],
          },
        ],
      },
      ctx,
    );
    const values = [
      {
        id: '-9223372036854775808',
        ids: ['9223372036854775807', -1, null],
        seen: { ünï: ['1700000000123456789', null], empty: [] },
        user: { name: '日本', age: 42, tags: ['x'], geo: { lat: 1.5, lon: -0.25 }, extra: 'kept in _record' },
        other: { deep: [1, 2] },
      },
      { id: 1, user: { name: null } },
      // Bad nested values are dead-lettered, naming where they are.
      { id: 2, ids: ['x'] },
      { id: 3, user: { geo: { lat: 'NaN' } } },
    ];
    const genericEvents = values.map((value, i) => makeEvent({ sequence: 40 + i, value }));
    await generic.write(genericEvents);
    await generic.close();
    assert.deepEqual(
      dlq.letters.map((l) => l.reason),
      [
        'column ids: at []: expected int64, got "x"',
        'column who: at .geo.lat: NaN cannot be stored inside a nested column',
      ],
    );
    const genericOut = await download('generic/');
    const genericRows = await duck(
      `SELECT id, ids, seen, who, _record FROM read_parquet('${genericOut.root}/**/*.parquet') ORDER BY _sequence_number`,
    );
    const ms = (ns: string) => new Date(Number(BigInt(ns) / 1_000_000n));
    assert.deepEqual(genericRows, [
      {
        id: -9223372036854775808n,
        ids: [9223372036854775807n, -1n, null],
        seen: [
          { key: 'ünï', value: [ms('1700000000123456789'), null] },
          { key: 'empty', value: [] },
        ],
        who: { name: '日本', age: 42, tags: ['x'], geo: { lat: 1.5, lon: -0.25 } },
        // rest: what no column took (user.extra stays, user.* taken by `who` is gone).
        _record: '{"user":{"extra":"kept in _record"},"other":{"deep":[1,2]}}',
      },
      { id: 1n, ids: null, seen: null, who: { name: null, age: null, tags: null, geo: null }, _record: '{}' },
    ]);
    const types = await duck(
      `DESCRIBE SELECT ids, seen, who FROM read_parquet('${genericOut.root}/**/*.parquet')`,
    );
    assert.deepEqual(
      types.map((t) => t.column_type),
      [
        'BIGINT[]',
        'MAP(VARCHAR, TIMESTAMP[])',
        'STRUCT("name" VARCHAR, age INTEGER, tags VARCHAR[], geo STRUCT(lat DOUBLE, lon DOUBLE))',
      ],
    );
    // The map's list elements are TIMESTAMP(MILLIS) in the file, as declared.
    const leaf = await duck(
      `SELECT converted_type FROM parquet_schema('${path.join(genericOut.root, genericOut.keys[0]!)}') WHERE name = 'element' AND type = 'INT64' AND converted_type LIKE 'TIMESTAMP%'`,
    );
    assert.deepEqual(leaf, [{ converted_type: 'TIMESTAMP_MILLIS' }]);
  });

  test('roll.partitions: a matching partition rolls on its own limits (rows and age), the others on the defaults', async () => {
    const { ctx } = context();
    const lake = sink(
      'per-partition',
      {
        prefix: 'perpart/',
        partitioning: { template: 'svc={field:svc}' },
        columns: [{ name: 'n', type: 'int64' }],
        roll: {
          maxFileRows: 100,
          maxFileAgeMs: 600_000,
          partitions: [
            { match: '^svc=busy$', maxFileRows: 2 },
            { match: '^svc=quick', maxFileAgeMs: 50 },
          ],
        },
      },
      ctx,
    );
    await lake.openShard(detachedTenure({ stream: STREAM, shardId: SHARD }), undefined);
    const svcs = ['busy', 'calm', 'busy', 'calm', 'busy', 'quick', 'busy', 'busy'];
    const events = svcs.map((svc, i) => makeEvent({ sequence: 300 + i, value: { svc, n: i } }));
    await lake.write(events);
    const ackedOf = (svc: string) => events.filter((e, i) => svcs[i] === svc && e.ack.completed).length;
    const deadline = Date.now() + 10_000;
    while (ackedOf('quick') < 1 || ackedOf('busy') < 4) {
      if (Date.now() > deadline) throw new Error('per-partition rolls did not happen');
      await new Promise((r) => setTimeout(r, 20));
    }
    assert.equal(ackedOf('calm'), 0, 'the default partition keeps its file open (age 600 s, 100 rows)');
    assert.equal(ackedOf('busy'), 4, 'busy rolled at 2 rows twice; its 5th row is still buffered');
    await lake.close();
    const { keys } = await download('perpart/');
    assert.deepEqual(keys, [
      `perpart/svc=busy/${STREAM}_${SHARD}_${seq(300)}_${seq(302)}.parquet`,
      `perpart/svc=busy/${STREAM}_${SHARD}_${seq(304)}_${seq(306)}.parquet`,
      `perpart/svc=busy/${STREAM}_${SHARD}_${seq(307)}_${seq(307)}.parquet`,
      `perpart/svc=calm/${STREAM}_${SHARD}_${seq(301)}_${seq(303)}.parquet`,
      `perpart/svc=quick/${STREAM}_${SHARD}_${seq(305)}_${seq(305)}.parquet`,
    ]);
  });

  test('roll.partitions needs partitioning, and a bad pattern fails at start-up naming the field', () => {
    assert.throws(
      () =>
        parquetSinkConfigSchema.parse({
          type: 's3_parquet',
          bucket: BUCKET,
          roll: { partitions: [{ match: 'a' }] },
        }),
      /needs `partitioning`/,
    );
    assert.throws(
      () =>
        parquetSinkConfigSchema.parse({
          type: 's3_parquet',
          bucket: BUCKET,
          partitioning: { template: 'svc={field:svc}' },
          roll: { partitions: [{ match: '(' }] },
        }),
      /not a valid regular expression/,
    );
  });

  test('open-partition cap: a new partition past the cap goes to the quarantine prefix with its partition; nothing lost', async () => {
    const { ctx, registry } = context();
    const registered: string[] = [];
    const registrar: PartitionRegistrar = {
      register: async (partitions) => {
        registered.push(...partitions);
      },
      close: () => undefined,
    };
    const lake = sink(
      'capped',
      {
        prefix: 'capped/',
        partitioning: { template: 'svc={field:svc}', maxOpenPartitions: 2 },
        columns: [{ name: 'n', type: 'int64' }],
      },
      ctx,
      registrar,
    );
    await lake.openShard(detachedTenure({ stream: STREAM, shardId: SHARD }), undefined);
    const inputs = ['a', 'b', 'c', 'a', 'd', 'c', 'b'].map((svc, i) => ({
      sequence: 100 + i,
      value: { svc, n: i },
    }));
    const events = inputs.map((i) => makeEvent(i));
    await lake.write(events);
    assert.equal(await metricSum(registry, 'ksw_parquet_open_partitions'), 2);
    assert.equal(await metricSum(registry, 'ksw_parquet_quarantined_events_total'), 3);
    await lake.close();
    assert.ok(events.every((e) => e.ack.completed));
    const { root, keys } = await download('capped/');
    assert.deepEqual(keys, [
      `capped/_quarantine/${STREAM}_${SHARD}_${seq(102)}_${seq(105)}.parquet`,
      `capped/svc=a/${STREAM}_${SHARD}_${seq(100)}_${seq(103)}.parquet`,
      `capped/svc=b/${STREAM}_${SHARD}_${seq(101)}_${seq(106)}.parquet`,
    ]);
    const quarantined = await duck(
      `SELECT n, _partition FROM read_parquet('${path.join(root, keys[0]!)}') ORDER BY n`,
    );
    assert.deepEqual(quarantined, [
      { n: 2n, _partition: 'svc=c' },
      { n: 4n, _partition: 'svc=d' },
      { n: 5n, _partition: 'svc=c' },
    ]);
    const manifests = await Promise.all(
      (await list('capped/_ksw/manifests/')).map(async (key) =>
        JSON.parse(
          await (
            await aws.s3.send(new GetObjectCommand({ Bucket: BUCKET, Key: key }))
          ).Body!.transformToString(),
        ),
      ),
    );
    assert.deepEqual(
      manifests.map((m) => [m.dataKey, m.quarantine, m.partitions, m.rows]),
      [
        [keys[1], false, ['svc=a'], 2],
        [keys[0], true, ['svc=c', 'svc=d'], 3],
        [keys[2], false, ['svc=b'], 2],
      ],
      'manifests in last-position order',
    );
    // Registration hook: each natural partition once, quarantine never.
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(registered.sort(), ['svc=a', 'svc=b']);
    const all = await duck(
      `SELECT count(*) AS c, sum(n) AS s FROM read_parquet('${root}/**/*.parquet', union_by_name = true)`,
    );
    assert.deepEqual(all, [{ c: 7n, s: 21n }]);
  });

  test('a file over the multipart threshold is uploaded in parts; the bytes and metadata round-trip', async () => {
    const { ctx } = context();
    const parts: number[] = [];
    const client = await freshClient();
    client.middlewareStack.add(
      (next, context) => async (args) => {
        if (context.commandName === 'UploadPartCommand')
          parts.push((args.input as { PartNumber: number }).PartNumber);
        return next(args);
      },
      { step: 'initialize', name: 'countParts' },
    );
    const lake = sink(
      'multipart',
      {
        prefix: 'multipart/',
        compression: 'snappy',
        upload: { multipartThresholdBytes: 5 * 1024 * 1024, partSizeBytes: 5 * 1024 * 1024 },
        columns: [{ name: 'blob', type: 'string' }],
        recordColumn: false,
      },
      { ...ctx, aws: { ...aws, s3: client } },
    );
    // Incompressible text: ~12 MiB of Parquet.
    const blobs = Array.from({ length: 48 }, () => randomBytes(192 * 1024).toString('base64'));
    const events = blobs.map((blob, i) => makeEvent({ sequence: 500 + i, value: { blob } }));
    await lake.write(events);
    await lake.close();
    client.destroy();
    assert.ok(events.every((e) => e.ack.completed));
    const { root, keys } = await download('multipart/');
    const size = (await aws.s3.send(new HeadObjectCommand({ Bucket: BUCKET, Key: keys[0]! }))).ContentLength!;
    assert.ok(size > 10 * 1024 * 1024, `${size} bytes`);
    assert.equal(parts.length, Math.ceil(size / (5 * 1024 * 1024)), 'uploaded in 5 MiB parts');
    assert.equal(keys.length, 1);
    const head = await aws.s3.send(new HeadObjectCommand({ Bucket: BUCKET, Key: keys[0]! }));
    assert.equal(head.Metadata?.rows, '48');
    const back = await duck(
      `SELECT blob FROM read_parquet('${path.join(root, keys[0]!)}') ORDER BY _sequence_number`,
    );
    assert.deepEqual(
      back.map((r) => r.blob),
      blobs,
    );
  });

  /**
   * Runs events through a sink that "crashes" after `commitsBeforeCrash` data uploads (later data uploads hang
   * forever; manifests are still written, so some manifests have no data object), then replays from the
   * checkpoint the watermark reached with a fresh sink, as a restarted worker would. With `committed`, exactly
   * the data objects whose key file name it accepts get through (there must be `commitsBeforeCrash` of them),
   * whatever order concurrent uploads start in; otherwise the first `commitsBeforeCrash` to start do.
   */
  async function crashAndReplay(
    prefix: string,
    config: Record<string, unknown>,
    inputs: EventInput[],
    deliveryOrder: (batch: EventInput[]) => EventInput[],
    commitsBeforeCrash: number,
    committed?: (fileName: string) => boolean,
  ): Promise<{ replaySkipped: number; checkpoint: ShardPosition | undefined }> {
    const crashing = await freshClient();
    let dataPuts = 0;
    let dataCommitted = 0;
    crashing.middlewareStack.add(
      (next, context) => async (args) => {
        const key = (args.input as { Key?: string }).Key ?? '';
        if (context.commandName === 'PutObjectCommand' && key.endsWith('.parquet')) {
          dataPuts += 1;
          const through = committed ? committed(path.basename(key)) : dataPuts <= commitsBeforeCrash;
          if (!through) await new Promise(() => {}); // the process is gone
          const out = await next(args);
          dataCommitted += 1;
          return out;
        }
        return next(args);
      },
      { step: 'initialize', name: 'crashAfter' },
    );
    const watermark = new ShardWatermark(Number.MAX_SAFE_INTEGER);
    const records = new Map<number, Ack[]>();
    for (const input of inputs) {
      if (!records.has(input.sequence)) records.set(input.sequence, []);
    }
    // One root ack per record, split over its events (as decode does).
    const acks = new Map<string, Ack>();
    for (const [sequence] of records) {
      const root = watermark.register({ sequenceNumber: seq(sequence), subSequenceNumber: 0 }, 1);
      const parts = root.split(inputs.filter((i) => i.sequence === sequence).length);
      inputs
        .filter((i) => i.sequence === sequence)
        .forEach((i, k) => {
          acks.set(`${i.sequence}/${i.index ?? 0}`, parts[k]!);
        });
    }
    const first = sink('crashing', { ...config, prefix, uploadConcurrency: 64 }, context(crashing).ctx);
    await first.openShard(detachedTenure({ stream: STREAM, shardId: SHARD }), undefined);
    const cut = Math.floor(inputs.length * 0.7);
    for (let i = 0; i < cut; i += 10) {
      const batch = deliveryOrder(inputs.slice(i, Math.min(cut, i + 10)));
      await first.write(
        batch.map((input) => makeEvent(input, acks.get(`${input.sequence}/${input.index ?? 0}`)!)),
      );
    }
    // Let the uploads that can finish finish (on a loaded machine that takes a while: wait for them, not
    // for a fixed time), and their acks reach the watermark; then the process dies.
    const deadline = Date.now() + 30_000;
    while (
      ((!committed && dataPuts <= commitsBeforeCrash) || dataCommitted < commitsBeforeCrash) &&
      Date.now() < deadline
    )
      await new Promise((r) => setTimeout(r, 20));
    assert.equal(dataCommitted, commitsBeforeCrash, 'the uploads before the crash completed');
    let settled = watermark.watermark;
    for (let quiet = 0; quiet < 10 && Date.now() < deadline; ) {
      await new Promise((r) => setTimeout(r, 20));
      const now = watermark.watermark;
      quiet = now?.sequenceNumber === settled?.sequenceNumber ? quiet + 1 : 0;
      settled = now;
    }
    const checkpoint = watermark.watermark;

    const { ctx, registry } = context();
    const second = sink('replaying', { ...config, prefix }, ctx);
    await second.openShard(detachedTenure({ stream: STREAM, shardId: SHARD }), checkpoint);
    const replay = inputs.filter(
      (i) => !checkpoint || BigInt(seq(i.sequence)) > BigInt(checkpoint.sequenceNumber),
    );
    for (let i = 0; i < replay.length; i += 10) {
      await second.write(deliveryOrder(replay.slice(i, i + 10)).map((input) => makeEvent(input)));
    }
    await second.close();
    return {
      replaySkipped: await metricSum(registry, 'ksw_parquet_replay_skipped_events_total'),
      checkpoint,
    };
  }

  async function cleanRun(
    prefix: string,
    config: Record<string, unknown>,
    inputs: EventInput[],
    order: (b: EventInput[]) => EventInput[],
  ) {
    const lake = sink('clean', { ...config, prefix }, context().ctx);
    await lake.openShard(detachedTenure({ stream: STREAM, shardId: SHARD }), undefined);
    for (let i = 0; i < inputs.length; i += 10) {
      await lake.write(order(inputs.slice(i, i + 10)).map((input) => makeEvent(input)));
    }
    await lake.close();
  }

  /** Spans of 4 services over 3 hours; every 5th record holds two events (NDJSON) of different services. */
  function lakeInputs(count: number): EventInput[] {
    const out: EventInput[] = [];
    for (let i = 0; i < count; i++) {
      const svc = ['cart', 'checkout', 'pay', 'ship'][i % 4]!;
      const hour = Math.floor((i / count) * 3);
      const at = `2025-11-22T${String(10 + hour).padStart(2, '0')}:00:${String(i % 60).padStart(2, '0')}Z`;
      out.push({ sequence: 1000 + i, value: { svc, at, n: i, nano: `${1763805600000000000n + BigInt(i)}` } });
      if (i % 5 === 0)
        out.push({ sequence: 1000 + i, index: 1, value: { svc: 'batch', at, n: -i, nano: '-1' } });
    }
    return out;
  }

  const LAKE_CONFIG = {
    partitioning: {
      template: 'dt={yyyy}-{MM}-{dd}/hour={HH}/svc={field:svc}',
      time: { source: 'event', field: 'at' },
    },
    roll: { maxFileRows: 7, maxFileAgeMs: 3_600_000 },
    columns: [
      { name: 'n', type: 'int64' },
      { name: 'nano', type: 'int64' },
    ],
  };

  async function objectSet(prefix: string) {
    const { root, keys } = await download(prefix);
    const rows = await duck(
      `SELECT regexp_replace(filename, '^.*/${prefix.replace(/\//g, '')}/', '') AS file, * EXCLUDE (filename)
       FROM read_parquet('${root}/**/*.parquet', filename = true, union_by_name = true, hive_partitioning = false) ORDER BY ALL`,
    );
    return { keys: keys.map((k) => k.slice(prefix.length)), rows };
  }

  test("crash-replay: the final object set equals a clean run's (same keys, same rows), with partitions and rows rolls", async () => {
    const inputs = lakeInputs(300);
    const inOrder = (batch: EventInput[]) => batch;
    await cleanRun('clean/', LAKE_CONFIG, inputs, inOrder);
    // The crash comes after the first 12 files in roll order (the clean run has the same files: in-order
    // delivery rolls them at the same events). Which uploads start first is up to timing, so pick by name.
    const byRoll = (await list('clean/'))
      .filter((k) => k.endsWith('.parquet'))
      .map((k) => path.basename(k))
      .sort((a, b) => compareEventPosition(lastPosition(a), lastPosition(b)));
    const first12 = new Set(byRoll.slice(0, 12));
    const { replaySkipped, checkpoint } = await crashAndReplay(
      'crashed/',
      LAKE_CONFIG,
      inputs,
      inOrder,
      12,
      (name) => first12.has(name),
    );
    assert.ok(checkpoint, 'some records were checkpointed before the crash');
    assert.ok(replaySkipped > 0, 'files committed after the checkpoint were recognised');
    const clean = await objectSet('clean/');
    const crashed = await objectSet('crashed/');
    assert.ok(clean.keys.length > 40);
    assert.deepEqual(crashed.keys, clean.keys, 'same keys');
    assert.equal(crashed.rows.length, inputs.length);
    assert.deepEqual(crashed.rows, clean.rows, 'same rows in the same files');
  });

  test("crash-replay with out-of-order delivery (a tail sampler's decision wait) and quarantine: every event exactly once", async () => {
    const inputs = lakeInputs(300);
    // Each batch reversed: what a processor that holds events back and releases them later does to positions.
    const reversed = (batch: EventInput[]) => [...batch].reverse();
    const config = { ...LAKE_CONFIG, partitioning: { ...LAKE_CONFIG.partitioning, maxOpenPartitions: 5 } };
    await crashAndReplay('reordered/', config, inputs, reversed, 15);
    const { rows } = await objectSet('reordered/');
    const seen = new Map<string, number>();
    for (const row of rows) {
      const id = `${row._sequence_number}/${row._event_index}`;
      seen.set(id, (seen.get(id) ?? 0) + 1);
    }
    const missing = inputs.filter((i) => !seen.has(`${seq(i.sequence)}/${i.index ?? 0}`));
    const twice = [...seen].filter(([, n]) => n > 1);
    assert.deepEqual(missing, [], 'nothing lost');
    assert.deepEqual(twice, [], 'nothing twice');
    assert.equal(rows.length, inputs.length);
    assert.ok(
      rows.some((r) => typeof r._partition === 'string'),
      'the cap sent some events to quarantine',
    );
  });
});

/** The last event's position in a data object's file name `<stream>_<shard>_<first>_<last>.parquet`. */
function lastPosition(fileName: string): EventPosition {
  const position = parseEventPosition(
    fileName
      .replace(/\.parquet$/, '')
      .split('_')
      .at(-1)!,
  );
  assert.ok(position, `a data object name: ${fileName}`);
  return position;
}

function floorDiv(a: bigint, b: bigint): bigint {
  const q = a / b;
  return a % b !== 0n && a < 0n !== b < 0n ? q - 1n : q;
}
