import assert from 'node:assert/strict';
import { EntityNotFoundException, type GlueClient } from '@aws-sdk/client-glue';
import type { S3Client } from '@aws-sdk/client-s3';
import { describe, it } from 'vitest';
import { RowBuilder } from '../../src/sinks/s3-parquet/columns.js';
import { parquetSinkConfigSchema } from '../../src/sinks/s3-parquet/config.js';
import {
  decodeContainer,
  encodeManifest,
  encodeManifestList,
} from '../../src/sinks/s3-parquet/iceberg/avro.js';
import { committedFilesOf, FILES_PROPERTY } from '../../src/sinks/s3-parquet/iceberg/metadata.js';
import {
  type IcebergField,
  type IcebergType,
  icebergSchemaOf,
  lastColumnId,
  type MappedField,
  nameMappingOf,
  partitionSpecOf,
  transformValue,
} from '../../src/sinks/s3-parquet/iceberg/schema.js';
import { GlueIcebergCatalog, IcebergTable } from '../../src/sinks/s3-parquet/iceberg/table.js';
import { parseTemplate } from '../../src/sinks/s3-parquet/partitioning.js';
import { resolveSchema } from '../../src/sinks/s3-parquet/schemas.js';
import { memoryCatalog } from '../helpers/iceberg.js';

function columnsOf(config: Record<string, unknown>) {
  const parsed = parquetSinkConfigSchema.parse({ type: 's3_parquet', bucket: 'lake', ...config });
  const schema = resolveSchema(parsed);
  return new RowBuilder(schema.columns, schema.recordColumn, schema.recordContent).columns;
}

function allIds(type: IcebergType | { type: 'struct'; fields: readonly IcebergField[] }): number[] {
  if (typeof type === 'string') return [];
  if (type.type === 'struct') return type.fields.flatMap((f) => [f.id, ...allIds(f.type)]);
  if (type.type === 'list') return [type['element-id'], ...allIds(type.element)];
  return [type['key-id'], type['value-id'], ...allIds(type.value)];
}

describe('Iceberg schema and partition spec from the sink config', () => {
  it('spans: top-level ids 1..n in column order, nested ids after them, every id once; types mapped', () => {
    const columns = columnsOf({ schema: 'spans' });
    const schema = icebergSchemaOf(columns);
    assert.deepEqual(
      schema.fields.map((f) => f.id),
      columns.map((_, i) => i + 1),
    );
    const ids = allIds(schema);
    assert.equal(new Set(ids).size, ids.length, 'no id twice');
    const nested = ids.filter((id) => !schema.fields.some((f) => f.id === id));
    assert.equal(Math.min(...nested), columns.length + 1);
    assert.equal(lastColumnId(schema), Math.max(...ids));
    const byName = Object.fromEntries(schema.fields.map((f) => [f.name, f.type]));
    assert.equal(byName._sequence_number, 'string');
    assert.equal(byName._sub_sequence_number, 'long');
    assert.equal(byName._event_index, 'int');
    assert.equal(byName._arrival_time, 'timestamp');
    assert.equal(byName.startTimeUnixNano, 'long');
    assert.equal(byName.startTime, 'timestamp');
    const attributes = byName.attributes as Extract<IcebergType, { type: 'map' }>;
    assert.equal(attributes.type, 'map');
    assert.equal(attributes.key, 'string');
    assert.equal(attributes.value, 'string');
    const events = byName.events as Extract<IcebergType, { type: 'list' }>;
    assert.equal(events.type, 'list');
    assert.equal((events.element as { type: string }).type, 'struct');
    assert.ok(schema.fields.every((f) => f.required === false));
  });

  it('the name mapping names every field id of the schema (files carry no Parquet field ids)', () => {
    const schema = icebergSchemaOf(columnsOf({ schema: 'spans' }));
    const mapped: number[] = [];
    const walk = (fields: readonly MappedField[]) => {
      for (const f of fields) {
        mapped.push(f['field-id']);
        if (f.fields) walk(f.fields);
      }
    };
    walk(nameMappingOf(schema));
    assert.deepEqual(
      mapped.sort((a, b) => a - b),
      allIds(schema).sort((a, b) => a - b),
    );
    const attrs = nameMappingOf(schema).find((f) => f.names[0] === 'attributes')!;
    assert.deepEqual(
      attrs.fields!.map((f) => f.names),
      [['key'], ['value']],
    );
  });

  it('dt/hour/service -> hour(startTime), identity(serviceName); dt only -> day; arrival time -> _arrival_time', () => {
    const template = 'dt={yyyy}-{MM}-{dd}/hour={HH}/service={field:serviceName}';
    const columns = columnsOf({ schema: 'spans', partitioning: { template } });
    const schema = icebergSchemaOf(columns);
    const spec = partitionSpecOf(
      parseTemplate(template),
      { source: 'event', field: 'startTimeUnixNano' },
      schema,
      columns,
    );
    const idOf = (name: string) => schema.fields.find((f) => f.name === name)!.id;
    assert.deepEqual(spec, {
      'spec-id': 0,
      fields: [
        { 'source-id': idOf('startTime'), 'field-id': 1000, name: 'startTime_hour', transform: 'hour' },
        { 'source-id': idOf('serviceName'), 'field-id': 1001, name: 'service', transform: 'identity' },
      ],
    });
    const red = columnsOf({ schema: 'red_metrics', partitioning: { template: 'dt={yyyy}-{MM}-{dd}' } });
    const redSchema = icebergSchemaOf(red);
    assert.deepEqual(
      partitionSpecOf(
        parseTemplate('dt={yyyy}-{MM}-{dd}'),
        { source: 'event', field: 'windowStart' },
        redSchema,
        red,
      ).fields,
      [
        {
          'source-id': redSchema.fields.find((f) => f.name === 'windowStart')!.id,
          'field-id': 1000,
          name: 'windowStart_day',
          transform: 'day',
        },
      ],
    );
    const generic = columnsOf({ partitioning: { template: 'month={yyyy}-{MM}' } });
    assert.equal(
      partitionSpecOf(
        parseTemplate('month={yyyy}-{MM}'),
        { source: 'arrival' },
        icebergSchemaOf(generic),
        generic,
      ).fields[0]!.name,
      '_arrival_time_month',
    );
    assert.deepEqual(
      partitionSpecOf(undefined, { source: 'arrival' }, icebergSchemaOf(generic), generic).fields,
      [],
    );
  });

  it('templates Iceberg cannot express fail with the fix', () => {
    const columns = columnsOf({ schema: 'spans' });
    const schema = icebergSchemaOf(columns);
    const spec = (t: string, field = 'startTimeUnixNano') =>
      partitionSpecOf(parseTemplate(t), { source: 'event', field }, schema, columns);
    assert.throws(() => spec('m={HH}{mm}'), /no minute transform/);
    assert.throws(
      () => spec('svc=x-{field:serviceName}'),
      /takes the whole value; write svc=\{field:serviceName\}/,
    );
    assert.throws(() => spec('svc={field:nope}'), /no column holds nope/);
    assert.throws(() => spec('dt={yyyy}', 'nope'), /no timestamp column holds the partition time nope/);
  });

  it("transforms: Iceberg's year/month/day/hour of microseconds, identity as text, null stays null", () => {
    const micros = BigInt(Date.UTC(2026, 1, 3, 5, 6, 7)) * 1000n + 123n;
    assert.equal(transformValue('hour', micros), Math.floor(Date.UTC(2026, 1, 3, 5) / 3_600_000));
    assert.equal(transformValue('day', micros), Math.floor(Date.UTC(2026, 1, 3) / 86_400_000));
    assert.equal(transformValue('month', micros), 56 * 12 + 1);
    assert.equal(transformValue('year', micros), 56);
    assert.equal(transformValue('hour', -1n), -1, 'before the epoch rounds down');
    assert.equal(transformValue('identity', 'checkout'), 'checkout');
    assert.equal(transformValue('identity', null), null);
  });
});

describe('Iceberg manifests (avsc), read back', () => {
  const template = 'dt={yyyy}-{MM}-{dd}/hour={HH}/service={field:serviceName}';
  const columns = columnsOf({ schema: 'spans', partitioning: { template } });
  const schema = icebergSchemaOf(columns);
  const spec = partitionSpecOf(
    parseTemplate(template),
    { source: 'event', field: 'startTimeUnixNano' },
    schema,
    columns,
  );

  it('a manifest holds ADDED entries with partition tuples, and the header the readers look for', async () => {
    const bytes = await encodeManifest({
      schema,
      spec,
      snapshotId: 42,
      files: [
        { path: 's3://b/t/a.parquet', sizeBytes: 1234, records: 10, partition: [493_000, 'checkout'] },
        { path: 's3://b/t/b.parquet', sizeBytes: 99, records: 1, partition: [493_001, null] },
      ],
    });
    assert.equal(bytes.subarray(0, 4).toString('latin1'), 'Obj\x01');
    const { records, meta } = await decodeContainer(bytes);
    assert.equal(meta['format-version'], '2');
    assert.equal(meta.content, 'data');
    assert.equal(meta['partition-spec-id'], '0');
    assert.deepEqual(JSON.parse(meta['partition-spec']!), spec.fields);
    assert.deepEqual(JSON.parse(meta.schema!), schema);
    assert.equal(meta['avro.codec'], 'deflate');
    const header = JSON.parse(meta['avro.schema']!);
    const dataFile = header.fields.find((f: { name: string }) => f.name === 'data_file');
    assert.equal(dataFile['field-id'], 2);
    const partition = dataFile.type.fields.find((f: { name: string }) => f.name === 'partition');
    assert.deepEqual(
      partition.type.fields.map((f: { name: string; 'field-id': number }) => [f.name, f['field-id']]),
      [
        ['startTime_hour', 1000],
        ['service', 1001],
      ],
    );
    assert.deepEqual(
      records.map((r) => {
        const d = r.data_file as Record<string, unknown>;
        return [
          r.status,
          r.snapshot_id,
          r.sequence_number,
          d.file_path,
          d.file_format,
          d.record_count,
          d.file_size_in_bytes,
          { ...(d.partition as object) },
        ];
      }),
      [
        [
          1,
          42,
          null,
          's3://b/t/a.parquet',
          'PARQUET',
          10,
          1234,
          { startTime_hour: 493_000, service: 'checkout' },
        ],
        [1, 42, null, 's3://b/t/b.parquet', 'PARQUET', 1, 99, { startTime_hour: 493_001, service: null }],
      ],
    );
  });

  it('a manifest list round-trips with its snapshot metadata', async () => {
    const bytes = await encodeManifestList({
      snapshotId: 7,
      parentSnapshotId: 6,
      sequenceNumber: 3,
      manifests: [
        {
          path: 's3://b/t/metadata/m.avro',
          lengthBytes: 500,
          specId: 0,
          sequenceNumber: 3,
          minSequenceNumber: 3,
          addedSnapshotId: 7,
          addedFiles: 2,
          existingFiles: 0,
          addedRows: 11,
          existingRows: 0,
        },
      ],
    });
    const { records, meta } = await decodeContainer(bytes);
    assert.equal(meta['snapshot-id'], '7');
    assert.equal(meta['parent-snapshot-id'], '6');
    assert.equal(meta['sequence-number'], '3');
    assert.equal(records.length, 1);
    assert.equal(records[0]!.manifest_path, 's3://b/t/metadata/m.avro');
    assert.equal(records[0]!.added_rows_count, 11);
  });
});

/** S3 in memory: PutObject and GetObject only. */
function memoryS3() {
  const objects = new Map<string, Buffer>();
  const s3 = {
    send: async (command: {
      constructor: { name: string };
      input: { Key: string; Body?: string | Uint8Array };
    }) => {
      const { Key, Body } = command.input;
      if (command.constructor.name === 'PutObjectCommand') {
        objects.set(Key, Buffer.from(Body as Uint8Array));
        return {};
      }
      const body = objects.get(Key);
      if (!body) throw Object.assign(new Error(`no object ${Key}`), { name: 'NoSuchKey' });
      return { Body: { transformToByteArray: async () => new Uint8Array(body) } };
    },
  };
  return { s3: s3 as unknown as S3Client, objects };
}

describe('IcebergTable commits', () => {
  const columns = columnsOf({ schema: 'spans', partitioning: { template: 'service={field:serviceName}' } });
  const schema = icebergSchemaOf(columns);
  const spec = partitionSpecOf(
    parseTemplate('service={field:serviceName}'),
    { source: 'event', field: 'startTimeUnixNano' },
    schema,
    columns,
  );
  const file = (name: string, shard = 's/shardId-000000000000', records = 5) => ({
    path: `s3://lake/spans/${name}`,
    name,
    shard,
    sizeBytes: 100,
    records,
    partition: ['checkout'],
  });

  it('creates the table, appends, carries earlier manifests, and never adds a file twice', async () => {
    const { s3, objects } = memoryS3();
    const { catalog, state } = memoryCatalog();
    const table = new IcebergTable({
      s3,
      location: 's3://lake/spans',
      catalog,
      schema,
      spec,
      now: () => 1_000,
    });
    const first = await table.commit([file('a.parquet'), file('b.parquet', 's/shardId-000000000001', 3)]);
    assert.equal(first.added, 2);
    assert.ok(state.pointer?.metadataLocation.startsWith('s3://lake/spans/metadata/00001-'));
    const again = await table.commit([file('a.parquet'), file('c.parquet')]);
    assert.deepEqual([again.added, again.skipped], [1, 1], 'a.parquet is in the table already');
    const none = await table.commit([file('a.parquet'), file('c.parquet')]);
    assert.deepEqual([none.added, none.snapshotId], [0, undefined]);
    const { meta } = (await table.metadata())!;
    assert.equal(meta.snapshots.length, 2);
    assert.equal(meta['last-sequence-number'], 2);
    assert.equal(meta.snapshots[1]!['parent-snapshot-id'], meta.snapshots[0]!['snapshot-id']);
    assert.equal(meta.snapshots[1]!.summary['total-records'], '13');
    assert.deepEqual(JSON.parse(meta.snapshots[0]!.summary[FILES_PROPERTY]!), {
      's/shardId-000000000000': ['a.parquet'],
      's/shardId-000000000001': ['b.parquet'],
    });
    assert.deepEqual([...committedFilesOf(meta, 's/shardId-000000000000')].sort(), [
      'a.parquet',
      'c.parquet',
    ]);
    assert.deepEqual([...(await table.committedFiles('s/shardId-000000000001'))], ['b.parquet']);
    const listKey = meta.snapshots[1]!['manifest-list'].slice('s3://lake/'.length);
    const { records } = await decodeContainer(objects.get(listKey)!);
    assert.equal(records.length, 2, "the second snapshot lists its own manifest and the first one's");
    assert.deepEqual(
      records.map((r) => r.sequence_number),
      [2, 1],
    );
    assert.equal(meta['metadata-log'].length, 1);
  });

  it('a lost race reloads the table and commits again on top of the winner', async () => {
    const { s3 } = memoryS3();
    const { catalog, state } = memoryCatalog();
    const table = new IcebergTable({ s3, location: 's3://lake/spans', catalog, schema, spec });
    await table.commit([file('a.parquet')]);
    state.loseNext = 2;
    const result = await table.commit([file('b.parquet')]);
    assert.equal(result.conflicts, 2);
    assert.equal(result.added, 1);
    state.loseNext = 100;
    await assert.rejects(
      new IcebergTable({ s3, location: 's3://lake/spans', catalog, schema, spec, maxConflicts: 3 }).commit([
        file('z.parquet'),
      ]),
      /lost 4 times in a row/,
    );
  });
});

describe('GlueIcebergCatalog', () => {
  function glueWith(answers: Array<unknown | Error>) {
    const sent: Array<{ name: string; input: Record<string, unknown> }> = [];
    const glue = {
      send: async (command: { constructor: { name: string }; input: Record<string, unknown> }) => {
        sent.push({ name: command.constructor.name, input: command.input });
        const next = answers.shift();
        if (next instanceof Error) throw next;
        return next;
      },
    } as unknown as GlueClient;
    return { glue, sent };
  }
  const named = (name: string) => Object.assign(new Error(name), { name });

  it('loads the pointer, treats a missing table as none, and refuses a non-Iceberg table', async () => {
    const { glue } = glueWith([
      { Table: { Parameters: { metadata_location: 's3://b/t/m1.json' }, VersionId: '3' } },
      new EntityNotFoundException({ message: 'no', $metadata: {} }),
      { Table: { Parameters: {} } },
    ]);
    const catalog = new GlueIcebergCatalog(glue, 'db', 't', 's3://b/t');
    assert.deepEqual(await catalog.load(), { metadataLocation: 's3://b/t/m1.json', version: '3' });
    assert.equal(await catalog.load(), undefined);
    await assert.rejects(catalog.load(), /not an Iceberg table/);
  });

  it('creates (an existing table is a lost race) and swaps on the VersionId (a moved pointer is a conflict)', async () => {
    const { glue, sent } = glueWith([
      {},
      named('AlreadyExistsException'),
      { Table: { Parameters: { metadata_location: 's3://b/t/m1.json' }, VersionId: '3' } },
      {},
      { Table: { Parameters: { metadata_location: 's3://b/t/m2.json' }, VersionId: '4' } },
      { Table: { Parameters: { metadata_location: 's3://b/t/m1.json' }, VersionId: '4' } },
      named('ConcurrentModificationException'),
      named('AccessDeniedException'),
    ]);
    const catalog = new GlueIcebergCatalog(glue, 'db', 't', 's3://b/t');
    assert.equal(await catalog.create('s3://b/t/m1.json'), true);
    assert.equal(await catalog.create('s3://b/t/m1.json'), false);
    const expected = { metadataLocation: 's3://b/t/m1.json', version: '3' };
    assert.equal(await catalog.swap(expected, 's3://b/t/m2.json'), true);
    const update = sent.find((s) => s.name === 'UpdateTableCommand')!.input as {
      VersionId: string;
      TableInput: { Parameters: Record<string, string> };
    };
    assert.equal(update.VersionId, '3');
    assert.deepEqual(update.TableInput.Parameters, {
      table_type: 'ICEBERG',
      metadata_location: 's3://b/t/m2.json',
      previous_metadata_location: 's3://b/t/m1.json',
    });
    assert.equal(await catalog.swap(expected, 's3://b/t/m3.json'), false, 'the pointer moved');
    assert.equal(await catalog.swap(expected, 's3://b/t/m3.json'), false, 'Glue saw a concurrent update');
    await assert.rejects(
      new GlueIcebergCatalog(glueWith([named('AccessDeniedException')]).glue, 'db', 't', 's3://b/t').create(
        'x',
      ),
      /AccessDenied/,
    );
  });

  it('a table location must be s3://bucket/prefix', () => {
    const { catalog } = memoryCatalog();
    assert.throws(
      () =>
        new IcebergTable({
          s3: memoryS3().s3,
          location: 'file:///x',
          catalog,
          schema: icebergSchemaOf([]),
          spec: { 'spec-id': 0, fields: [] },
        }),
      /is not s3:\/\/bucket\/prefix/,
    );
  });
});
