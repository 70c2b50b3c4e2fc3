/**
 * Iceberg v2 manifest files and manifest lists as Avro object-container files, written with avsc. The Avro
 * schemas carry Iceberg's field ids (`field-id`, `element-id`) and the header carries the metadata readers
 * look for (table schema, partition spec, format version, content). Only appends are written: every entry
 * is ADDED with its sequence number inherited from the manifest list (Iceberg spec, "Sequence Number
 * Inheritance").
 */
import avro from 'avsc';
import type { IcebergSchema, PartitionSpec } from './schema.js';

/** A data file added by a commit. */
export interface DataFileEntry {
  /** Full location, e.g. s3://bucket/prefix/dt=.../x.parquet. */
  readonly path: string;
  readonly sizeBytes: number;
  readonly records: number;
  /** Partition values in spec order (hour/day/... as int, identity as string; null for a missing value). */
  readonly partition: readonly (number | string | null)[];
}

/** One manifest as the manifest list describes it. */
export interface ManifestFileEntry {
  readonly path: string;
  readonly lengthBytes: number;
  readonly specId: number;
  readonly sequenceNumber: number;
  readonly minSequenceNumber: number;
  readonly addedSnapshotId: number;
  readonly addedFiles: number;
  readonly existingFiles: number;
  readonly addedRows: number;
  readonly existingRows: number;
}

const optional = (type: unknown) => ['null', type];

function partitionAvroType(spec: PartitionSpec, schema: IcebergSchema) {
  return {
    type: 'record',
    name: 'r102',
    fields: spec.fields.map((f) => {
      let type: unknown;
      if (f.transform === 'identity') {
        const source = schema.fields.find((s) => s.id === f['source-id'])!;
        type = source.type === 'long' ? 'long' : source.type === 'int' ? 'int' : 'string';
      } else if (f.transform === 'day') {
        type = { type: 'int', logicalType: 'date' };
      } else {
        type = 'int';
      }
      return { name: f.name, type: optional(type), default: null, 'field-id': f['field-id'] };
    }),
  };
}

/** The Avro schema of manifest entries for a partition spec (Iceberg spec, "Manifests", v2). */
export function manifestEntrySchema(spec: PartitionSpec, schema: IcebergSchema) {
  return {
    type: 'record',
    name: 'manifest_entry',
    fields: [
      { name: 'status', type: 'int', 'field-id': 0 },
      { name: 'snapshot_id', type: optional('long'), default: null, 'field-id': 1 },
      { name: 'sequence_number', type: optional('long'), default: null, 'field-id': 3 },
      { name: 'file_sequence_number', type: optional('long'), default: null, 'field-id': 4 },
      {
        name: 'data_file',
        'field-id': 2,
        type: {
          type: 'record',
          name: 'r2',
          fields: [
            { name: 'content', type: 'int', 'field-id': 134 },
            { name: 'file_path', type: 'string', 'field-id': 100 },
            { name: 'file_format', type: 'string', 'field-id': 101 },
            { name: 'partition', type: partitionAvroType(spec, schema), 'field-id': 102 },
            { name: 'record_count', type: 'long', 'field-id': 103 },
            { name: 'file_size_in_bytes', type: 'long', 'field-id': 104 },
            { name: 'sort_order_id', type: optional('int'), default: null, 'field-id': 140 },
          ],
        },
      },
    ],
  };
}

/** The Avro schema of a v2 manifest list. */
export const MANIFEST_LIST_SCHEMA = {
  type: 'record',
  name: 'manifest_file',
  fields: [
    { name: 'manifest_path', type: 'string', 'field-id': 500 },
    { name: 'manifest_length', type: 'long', 'field-id': 501 },
    { name: 'partition_spec_id', type: 'int', 'field-id': 502 },
    { name: 'content', type: 'int', 'field-id': 517 },
    { name: 'sequence_number', type: 'long', 'field-id': 515 },
    { name: 'min_sequence_number', type: 'long', 'field-id': 516 },
    { name: 'added_snapshot_id', type: 'long', 'field-id': 503 },
    { name: 'added_files_count', type: 'int', 'field-id': 504 },
    { name: 'existing_files_count', type: 'int', 'field-id': 505 },
    { name: 'deleted_files_count', type: 'int', 'field-id': 506 },
    { name: 'added_rows_count', type: 'long', 'field-id': 512 },
    { name: 'existing_rows_count', type: 'long', 'field-id': 513 },
    { name: 'deleted_rows_count', type: 'long', 'field-id': 514 },
  ],
};

async function containerFile(
  schema: object,
  records: readonly object[],
  metadata: Record<string, string>,
): Promise<Buffer> {
  const meta: Record<string, Buffer> = {};
  for (const [k, v] of Object.entries(metadata)) meta[k] = Buffer.from(v);
  // `metadata` is a BlockEncoder option avsc's typings leave out (lib/containers.js reads opts.metadata).
  const options = { codec: 'deflate', metadata: meta };
  const encoder = new avro.streams.BlockEncoder(
    schema as avro.Schema,
    options as ConstructorParameters<typeof avro.streams.BlockEncoder>[1],
  );
  const chunks: Buffer[] = [];
  const done = new Promise<Buffer>((resolve, reject) => {
    encoder.on('data', (chunk: Buffer) => chunks.push(chunk));
    encoder.on('end', () => resolve(Buffer.concat(chunks)));
    encoder.on('error', reject);
  });
  for (const record of records) encoder.write(record);
  encoder.end();
  return done;
}

/** A manifest listing the added data files of one snapshot. */
export function encodeManifest(opts: {
  schema: IcebergSchema;
  spec: PartitionSpec;
  snapshotId: number;
  files: readonly DataFileEntry[];
}): Promise<Buffer> {
  const schema = manifestEntrySchema(opts.spec, opts.schema);
  const records = opts.files.map((f) => ({
    status: 1,
    snapshot_id: opts.snapshotId,
    sequence_number: null,
    file_sequence_number: null,
    data_file: {
      content: 0,
      file_path: f.path,
      file_format: 'PARQUET',
      partition: Object.fromEntries(opts.spec.fields.map((p, i) => [p.name, f.partition[i] ?? null])),
      record_count: f.records,
      file_size_in_bytes: f.sizeBytes,
      sort_order_id: null,
    },
  }));
  return containerFile(schema, records, {
    schema: JSON.stringify(opts.schema),
    'schema-id': String(opts.schema['schema-id']),
    'partition-spec': JSON.stringify(opts.spec.fields),
    'partition-spec-id': String(opts.spec['spec-id']),
    'format-version': '2',
    content: 'data',
  });
}

/** The manifest list of a snapshot: the manifests of its parent plus the new one. */
export function encodeManifestList(opts: {
  snapshotId: number;
  parentSnapshotId: number | undefined;
  sequenceNumber: number;
  manifests: readonly ManifestFileEntry[];
}): Promise<Buffer> {
  const records = opts.manifests.map((m) => ({
    manifest_path: m.path,
    manifest_length: m.lengthBytes,
    partition_spec_id: m.specId,
    content: 0,
    sequence_number: m.sequenceNumber,
    min_sequence_number: m.minSequenceNumber,
    added_snapshot_id: m.addedSnapshotId,
    added_files_count: m.addedFiles,
    existing_files_count: m.existingFiles,
    deleted_files_count: 0,
    added_rows_count: m.addedRows,
    existing_rows_count: m.existingRows,
    deleted_rows_count: 0,
  }));
  return containerFile(MANIFEST_LIST_SCHEMA, records, {
    'snapshot-id': String(opts.snapshotId),
    'parent-snapshot-id': opts.parentSnapshotId === undefined ? 'null' : String(opts.parentSnapshotId),
    'sequence-number': String(opts.sequenceNumber),
    'format-version': '2',
  });
}

/** Reads the records of a manifest or manifest list back (tests, and the commit's carry-over of manifests). */
export function decodeContainer(
  bytes: Buffer,
): Promise<{ records: Record<string, unknown>[]; meta: Record<string, string> }> {
  return new Promise((resolve, reject) => {
    const records: Record<string, unknown>[] = [];
    let meta: Record<string, string> = {};
    const decoder = new avro.streams.BlockDecoder();
    decoder.on('metadata', (_type: unknown, _codec: unknown, header: { meta: Record<string, Buffer> }) => {
      meta = Object.fromEntries(Object.entries(header.meta).map(([k, v]) => [k, v.toString()]));
    });
    decoder.on('data', (r: Record<string, unknown>) => records.push(r));
    decoder.on('end', () => resolve({ records, meta }));
    decoder.on('error', reject);
    decoder.end(bytes);
  });
}
