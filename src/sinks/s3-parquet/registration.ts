/**
 * Partition registration: when a partition gets its first file (in this process), add it to the Glue Data
 * Catalog with BatchCreatePartition. Idempotent: a partition that exists already is a success. Not needed
 * when the table uses partition projection (what `ksw ddl` prints); useful for engines that read the
 * catalog's partition list (Spark on EMR, Redshift Spectrum, older Presto).
 */
import {
  BatchCreatePartitionCommand,
  GetTableCommand,
  GlueClient,
  type StorageDescriptor,
} from '@aws-sdk/client-glue';
import type { S3Client } from '@aws-sdk/client-s3';
import type { RegistrationConfig } from './config.js';
import { partitionValues } from './partitioning.js';

export interface PartitionRegistrar {
  /** Registers the partitions (paths like `dt=2024-01-02/hour=03`); resolves once the catalog has them. */
  register(partitions: readonly string[]): Promise<void>;
  close(): void;
}

export class GluePartitionRegistrar implements PartitionRegistrar {
  private readonly glue: GlueClient;
  private table: Promise<StorageDescriptor> | undefined;

  constructor(
    private readonly config: RegistrationConfig,
    /** Region and credentials are taken from the worker's S3 client (same account and region). */
    s3: S3Client,
    private readonly location: string,
  ) {
    this.glue = new GlueClient({
      region: s3.config.region,
      credentials: s3.config.credentials,
      ...(config.endpoint ? { endpoint: config.endpoint } : {}),
    });
  }

  private storageDescriptor(): Promise<StorageDescriptor> {
    this.table ??= this.glue
      .send(
        new GetTableCommand({
          DatabaseName: this.config.database,
          Name: this.config.table,
          ...(this.config.catalogId ? { CatalogId: this.config.catalogId } : {}),
        }),
      )
      .then((out) => out.Table?.StorageDescriptor ?? {})
      .catch((err: unknown) => {
        this.table = undefined; // try again with the next file
        throw err;
      });
    return this.table;
  }

  async register(partitions: readonly string[]): Promise<void> {
    if (partitions.length === 0) return;
    const table = await this.storageDescriptor();
    const out = await this.glue.send(
      new BatchCreatePartitionCommand({
        DatabaseName: this.config.database,
        TableName: this.config.table,
        ...(this.config.catalogId ? { CatalogId: this.config.catalogId } : {}),
        PartitionInputList: partitions.map((path) => ({
          Values: partitionValues(path).map(([, value]) => value),
          StorageDescriptor: { ...table, Location: `${this.location}${path}/` },
        })),
      }),
    );
    const failed = (out.Errors ?? []).filter((e) => e.ErrorDetail?.ErrorCode !== 'AlreadyExistsException');
    if (failed.length > 0) {
      const first = failed[0]!.ErrorDetail;
      throw new Error(
        `BatchCreatePartition: ${failed.length} failed, e.g. ${first?.ErrorCode}: ${first?.ErrorMessage}`,
      );
    }
  }

  close(): void {
    this.glue.destroy();
  }
}
