/**
 * Iceberg v2 table metadata (the `metadata.json` a catalog points at): a new table from the sink's schema
 * and spec, and an append snapshot on top of the current metadata. Pure functions; the catalog module
 * stores the result and swaps the pointer.
 *
 * Each snapshot's summary carries, beside Iceberg's counters, `ksw.files`: the data files the commit added,
 * by shard (`<stream>/<shardId>` -> the file names), so a worker that opens a shard after a crash tells the
 * files already in the table from those that never got there.
 */
import { randomUUID } from 'node:crypto';
import type { IcebergSchema, PartitionSpec } from './schema.js';
import { lastColumnId, nameMappingOf } from './schema.js';

export interface Snapshot {
  readonly 'snapshot-id': number;
  readonly 'parent-snapshot-id'?: number;
  readonly 'sequence-number': number;
  readonly 'timestamp-ms': number;
  readonly 'manifest-list': string;
  readonly summary: Record<string, string>;
  readonly 'schema-id': number;
}

export interface TableMetadata {
  readonly 'format-version': 2;
  readonly 'table-uuid': string;
  readonly location: string;
  readonly 'last-sequence-number': number;
  readonly 'last-updated-ms': number;
  readonly 'last-column-id': number;
  readonly 'current-schema-id': number;
  readonly schemas: readonly IcebergSchema[];
  readonly 'default-spec-id': number;
  readonly 'partition-specs': readonly PartitionSpec[];
  readonly 'last-partition-id': number;
  readonly 'default-sort-order-id': 0;
  readonly 'sort-orders': readonly [{ 'order-id': 0; fields: [] }];
  readonly properties: Record<string, string>;
  readonly 'current-snapshot-id': number;
  readonly snapshots: readonly Snapshot[];
  readonly 'snapshot-log': readonly { 'snapshot-id': number; 'timestamp-ms': number }[];
  readonly 'metadata-log': readonly { 'metadata-file': string; 'timestamp-ms': number }[];
  readonly refs: Record<string, { 'snapshot-id': number; type: 'branch' }>;
}

/** The summary property listing a commit's files per shard. */
export const FILES_PROPERTY = 'ksw.files';

export function newTableMetadata(opts: {
  location: string;
  schema: IcebergSchema;
  spec: PartitionSpec;
  nowMs: number;
  properties?: Record<string, string>;
}): TableMetadata {
  return {
    'format-version': 2,
    'table-uuid': randomUUID(),
    location: opts.location,
    'last-sequence-number': 0,
    'last-updated-ms': opts.nowMs,
    'last-column-id': lastColumnId(opts.schema),
    'current-schema-id': opts.schema['schema-id'],
    schemas: [opts.schema],
    'default-spec-id': opts.spec['spec-id'],
    'partition-specs': [opts.spec],
    'last-partition-id': Math.max(999, ...opts.spec.fields.map((f) => f['field-id'])),
    'default-sort-order-id': 0,
    'sort-orders': [{ 'order-id': 0, fields: [] }],
    properties: {
      'write.format.default': 'parquet',
      // The sink's Parquet files carry no field ids: readers resolve columns by these names.
      'schema.name-mapping.default': JSON.stringify(nameMappingOf(opts.schema)),
      ...opts.properties,
    },
    'current-snapshot-id': -1,
    snapshots: [],
    'snapshot-log': [],
    'metadata-log': [],
    refs: {},
  };
}

export function currentSnapshot(meta: TableMetadata): Snapshot | undefined {
  return meta.snapshots.find((s) => s['snapshot-id'] === meta['current-snapshot-id']);
}

/** A new snapshot id: positive and below 2^53 (Avro longs are JS numbers in avsc). */
export function newSnapshotId(): number {
  const bytes = new Uint32Array(2);
  globalThis.crypto.getRandomValues(bytes);
  return (bytes[0]! & 0x1fffff) * 2 ** 32 + bytes[1]! + 1;
}

/** The metadata after appending a snapshot (its manifest list written already). */
export function withAppend(
  meta: TableMetadata,
  snapshot: {
    snapshotId: number;
    manifestList: string;
    nowMs: number;
    addedFiles: number;
    addedRecords: number;
    addedBytes: number;
    filesByShard: Record<string, readonly string[]>;
  },
  previousMetadataFile: string | undefined,
): TableMetadata {
  const parent = currentSnapshot(meta);
  const sequence = meta['last-sequence-number'] + 1;
  const totals = (key: string, added: number) => String(Number(parent?.summary[key] ?? 0) + added);
  const entry: Snapshot = {
    'snapshot-id': snapshot.snapshotId,
    ...(parent ? { 'parent-snapshot-id': parent['snapshot-id'] } : {}),
    'sequence-number': sequence,
    'timestamp-ms': snapshot.nowMs,
    'manifest-list': snapshot.manifestList,
    'schema-id': meta['current-schema-id'],
    summary: {
      operation: 'append',
      'added-data-files': String(snapshot.addedFiles),
      'added-records': String(snapshot.addedRecords),
      'added-files-size': String(snapshot.addedBytes),
      'total-data-files': totals('total-data-files', snapshot.addedFiles),
      'total-records': totals('total-records', snapshot.addedRecords),
      'total-files-size': totals('total-files-size', snapshot.addedBytes),
      'total-delete-files': '0',
      'total-position-deletes': '0',
      'total-equality-deletes': '0',
      [FILES_PROPERTY]: JSON.stringify(snapshot.filesByShard),
    },
  };
  return {
    ...meta,
    'last-sequence-number': sequence,
    'last-updated-ms': snapshot.nowMs,
    'current-snapshot-id': snapshot.snapshotId,
    snapshots: [...meta.snapshots, entry],
    'snapshot-log': [
      ...meta['snapshot-log'],
      { 'snapshot-id': snapshot.snapshotId, 'timestamp-ms': snapshot.nowMs },
    ],
    'metadata-log': previousMetadataFile
      ? [
          ...meta['metadata-log'],
          { 'metadata-file': previousMetadataFile, 'timestamp-ms': meta['last-updated-ms'] },
        ]
      : meta['metadata-log'],
    refs: { ...meta.refs, main: { 'snapshot-id': snapshot.snapshotId, type: 'branch' } },
  };
}

/** Every file name the snapshots still in the metadata committed for a shard (`<stream>/<shardId>`). */
export function committedFilesOf(meta: TableMetadata, shard: string): Set<string> {
  const out = new Set<string>();
  for (const snapshot of meta.snapshots) {
    const raw = snapshot.summary[FILES_PROPERTY];
    if (!raw) continue;
    const files = (JSON.parse(raw) as Record<string, string[]>)[shard];
    for (const f of files ?? []) out.add(f);
  }
  return out;
}
