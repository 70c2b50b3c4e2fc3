/**
 * Appends data files to an Iceberg v2 table: one manifest for the new files, a manifest list carrying the
 * parent's manifests plus the new one, a new metadata.json, then the catalog pointer is swapped (optimistic
 * concurrency: a conflict reloads the table and commits again). A file the table already holds (named in a
 * snapshot's `ksw.files` for its shard) is left out, so committing the same files twice adds them once.
 *
 * The catalog is behind `IcebergCatalog`; `GlueIcebergCatalog` keeps the pointer in the Glue Data Catalog
 * as Iceberg's own GlueCatalog does (`table_type=ICEBERG`, `metadata_location`, `previous_metadata_location`,
 * UpdateTable with the table's VersionId).
 */
import { randomUUID } from 'node:crypto';
import {
  CreateTableCommand,
  EntityNotFoundException,
  GetTableCommand,
  type GlueClient,
  UpdateTableCommand,
} from '@aws-sdk/client-glue';
import { GetObjectCommand, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import {
  type DataFileEntry,
  decodeContainer,
  encodeManifest,
  encodeManifestList,
  type ManifestFileEntry,
} from './avro.js';
import {
  committedFilesOf,
  currentSnapshot,
  newSnapshotId,
  newTableMetadata,
  type TableMetadata,
  withAppend,
} from './metadata.js';
import type { IcebergSchema, PartitionSpec } from './schema.js';

/** Where the table's metadata.json is, and the catalog's version of that pointer. */
export interface CatalogPointer {
  readonly metadataLocation: string;
  readonly version: string | undefined;
}

export interface IcebergCatalog {
  /** The current pointer, or undefined when the table does not exist yet. */
  load(): Promise<CatalogPointer | undefined>;
  /** Creates the table at this metadata; false when it exists already (someone else created it). */
  create(metadataLocation: string): Promise<boolean>;
  /** Moves the pointer from `expected` to `next`; false when it moved meanwhile (a conflict). */
  swap(expected: CatalogPointer, next: string): Promise<boolean>;
}

export class GlueIcebergCatalog implements IcebergCatalog {
  constructor(
    private readonly glue: GlueClient,
    private readonly database: string,
    private readonly table: string,
    private readonly location: string,
    private readonly catalogId?: string,
  ) {}

  async load(): Promise<CatalogPointer | undefined> {
    try {
      const out = await this.glue.send(
        new GetTableCommand({ DatabaseName: this.database, Name: this.table, CatalogId: this.catalogId }),
      );
      const location = out.Table?.Parameters?.metadata_location;
      if (!location)
        throw new Error(
          `Glue table ${this.database}.${this.table} is not an Iceberg table (no metadata_location)`,
        );
      return { metadataLocation: location, version: out.Table?.VersionId };
    } catch (err) {
      if (err instanceof EntityNotFoundException) return undefined;
      throw err;
    }
  }

  async create(metadataLocation: string): Promise<boolean> {
    try {
      await this.glue.send(
        new CreateTableCommand({
          DatabaseName: this.database,
          CatalogId: this.catalogId,
          TableInput: this.input(metadataLocation, undefined),
        }),
      );
      return true;
    } catch (err) {
      if ((err as { name?: string }).name === 'AlreadyExistsException') return false;
      throw err;
    }
  }

  async swap(expected: CatalogPointer, next: string): Promise<boolean> {
    const now = await this.load();
    if (!now || now.metadataLocation !== expected.metadataLocation) return false;
    try {
      await this.glue.send(
        new UpdateTableCommand({
          DatabaseName: this.database,
          CatalogId: this.catalogId,
          ...(now.version ? { VersionId: now.version } : {}),
          TableInput: this.input(next, expected.metadataLocation),
        }),
      );
    } catch (err) {
      if ((err as { name?: string }).name === 'ConcurrentModificationException') return false;
      throw err;
    }
    return true;
  }

  private input(metadataLocation: string, previous: string | undefined) {
    return {
      Name: this.table,
      TableType: 'EXTERNAL_TABLE',
      StorageDescriptor: { Location: this.location },
      Parameters: {
        table_type: 'ICEBERG',
        metadata_location: metadataLocation,
        ...(previous ? { previous_metadata_location: previous } : {}),
      },
    };
  }
}

/** A data file to commit, with the shard it belongs to (for `ksw.files`) and its name there. */
export interface CommitFile extends DataFileEntry {
  /** `<stream>/<shardId>`. */
  readonly shard: string;
  /** The file's name in `ksw.files` (its key's last segment). */
  readonly name: string;
}

export interface CommitResult {
  readonly snapshotId: number | undefined;
  readonly added: number;
  readonly skipped: number;
  /** Commits lost to another writer and done again. */
  readonly conflicts: number;
  readonly metadataLocation: string | undefined;
}

export interface IcebergTableOptions {
  readonly s3: S3Client;
  /** s3://bucket/prefix (no trailing slash): data and metadata/ live under it. */
  readonly location: string;
  readonly catalog: IcebergCatalog;
  readonly schema: IcebergSchema;
  readonly spec: PartitionSpec;
  readonly now?: () => number;
  readonly maxConflicts?: number;
}

export class IcebergTable {
  private readonly bucket: string;
  private readonly keyPrefix: string;

  constructor(private readonly opts: IcebergTableOptions) {
    const m = /^s3:\/\/([^/]+)\/?(.*)$/.exec(opts.location);
    if (!m) throw new Error(`table location ${opts.location} is not s3://bucket/prefix`);
    this.bucket = m[1]!;
    this.keyPrefix = m[2]!.replace(/\/$/, '');
  }

  /** The current metadata, or undefined when the table does not exist yet. */
  async metadata(): Promise<{ pointer: CatalogPointer; meta: TableMetadata } | undefined> {
    const pointer = await this.opts.catalog.load();
    if (!pointer) return undefined;
    return { pointer, meta: JSON.parse(await this.read(pointer.metadataLocation)) as TableMetadata };
  }

  /** Names of the files of a shard (`<stream>/<shardId>`) the table holds, per the snapshots' summaries. */
  async committedFiles(shard: string): Promise<Set<string>> {
    const current = await this.metadata();
    return current ? committedFilesOf(current.meta, shard) : new Set();
  }

  async commit(files: readonly CommitFile[]): Promise<CommitResult> {
    const now = this.opts.now ?? Date.now;
    let conflicts = 0;
    for (;;) {
      const current = await this.metadata();
      const base =
        current?.meta ??
        newTableMetadata({
          location: this.opts.location,
          schema: this.opts.schema,
          spec: this.opts.spec,
          nowMs: now(),
        });
      const seen = new Map<string, Set<string>>();
      const fresh = files.filter((f) => {
        let names = seen.get(f.shard);
        if (!names) {
          names = committedFilesOf(base, f.shard);
          seen.set(f.shard, names);
        }
        if (names.has(f.name)) return false;
        names.add(f.name);
        return true;
      });
      if (fresh.length === 0) {
        return {
          snapshotId: undefined,
          added: 0,
          skipped: files.length,
          conflicts,
          metadataLocation: current?.pointer.metadataLocation,
        };
      }
      const snapshotId = newSnapshotId();
      const sequence = base['last-sequence-number'] + 1;
      const manifestBytes = await encodeManifest({
        schema: this.opts.schema,
        spec: this.opts.spec,
        snapshotId,
        files: fresh,
      });
      const manifestPath = await this.write(`metadata/${randomUUID()}-m0.avro`, manifestBytes);
      const parent = currentSnapshot(base);
      const carried = parent ? await this.manifestsOf(parent['manifest-list']) : [];
      const added: ManifestFileEntry = {
        path: manifestPath,
        lengthBytes: manifestBytes.byteLength,
        specId: this.opts.spec['spec-id'],
        sequenceNumber: sequence,
        minSequenceNumber: sequence,
        addedSnapshotId: snapshotId,
        addedFiles: fresh.length,
        existingFiles: 0,
        addedRows: fresh.reduce((n, f) => n + f.records, 0),
        existingRows: 0,
      };
      const listBytes = await encodeManifestList({
        snapshotId,
        parentSnapshotId: parent?.['snapshot-id'],
        sequenceNumber: sequence,
        manifests: [added, ...carried],
      });
      const listPath = await this.write(`metadata/snap-${snapshotId}-1-${randomUUID()}.avro`, listBytes);
      const filesByShard: Record<string, string[]> = {};
      for (const f of fresh) {
        filesByShard[f.shard] ??= [];
        filesByShard[f.shard]!.push(f.name);
      }
      const next = withAppend(
        base,
        {
          snapshotId,
          manifestList: listPath,
          nowMs: now(),
          addedFiles: fresh.length,
          addedRecords: added.addedRows,
          addedBytes: fresh.reduce((n, f) => n + f.sizeBytes, 0),
          filesByShard,
        },
        current?.pointer.metadataLocation,
      );
      const version = String(sequence).padStart(5, '0');
      const metadataLocation = await this.write(
        `metadata/${version}-${randomUUID()}.metadata.json`,
        JSON.stringify(next),
      );
      const swapped = current
        ? await this.opts.catalog.swap(current.pointer, metadataLocation)
        : await this.opts.catalog.create(metadataLocation);
      if (swapped) {
        return {
          snapshotId,
          added: fresh.length,
          skipped: files.length - fresh.length,
          conflicts,
          metadataLocation,
        };
      }
      conflicts += 1;
      if (conflicts > (this.opts.maxConflicts ?? 20)) {
        throw new Error(
          `Iceberg commit lost ${conflicts} times in a row to other writers; giving up for now`,
        );
      }
    }
  }

  private async manifestsOf(listPath: string): Promise<ManifestFileEntry[]> {
    const { records } = await decodeContainer(await this.readBytes(listPath));
    return records.map((r) => ({
      path: r.manifest_path as string,
      lengthBytes: r.manifest_length as number,
      specId: r.partition_spec_id as number,
      sequenceNumber: r.sequence_number as number,
      minSequenceNumber: r.min_sequence_number as number,
      addedSnapshotId: r.added_snapshot_id as number,
      addedFiles: r.added_files_count as number,
      existingFiles: r.existing_files_count as number,
      addedRows: r.added_rows_count as number,
      existingRows: r.existing_rows_count as number,
    }));
  }

  private keyOf(location: string): string {
    const prefix = `s3://${this.bucket}/`;
    if (!location.startsWith(prefix))
      throw new Error(`${location} is outside the table's bucket ${this.bucket}`);
    return location.slice(prefix.length);
  }

  private async write(relative: string, body: string | Uint8Array): Promise<string> {
    const key = this.keyPrefix ? `${this.keyPrefix}/${relative}` : relative;
    await this.opts.s3.send(new PutObjectCommand({ Bucket: this.bucket, Key: key, Body: body }));
    return `s3://${this.bucket}/${key}`;
  }

  private async readBytes(location: string): Promise<Buffer> {
    const out = await this.opts.s3.send(
      new GetObjectCommand({ Bucket: this.bucket, Key: this.keyOf(location) }),
    );
    return Buffer.from(await out.Body!.transformToByteArray());
  }

  private async read(location: string): Promise<string> {
    return (await this.readBytes(location)).toString('utf8');
  }
}
