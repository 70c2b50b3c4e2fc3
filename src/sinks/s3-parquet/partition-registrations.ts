/**
 * Partition registration as the sink uses it: fire and forget once a partition's first file is durable
 * (and acked), remembered so each partition is registered once per process; the Glue client is loaded
 * with the first registration rather than at worker start.
 */
import type { S3Client } from '@aws-sdk/client-s3';
import type { Logger } from 'pino';
import type { RegistrationConfig } from './config.js';
import type { ParquetSinkMetrics } from './metrics.js';
import type { PartitionRegistrar } from './registration.js';

/** Remembered registered partitions at most; past it the set starts over (a re-registration is harmless). */
const MAX_REMEMBERED_PARTITIONS = 100_000;

export class PartitionRegistrations {
  private readonly registered = new Set<string>();

  constructor(
    private readonly registrar: PartitionRegistrar | undefined,
    private readonly metrics: ParquetSinkMetrics,
    private readonly labels: { sink: string },
    private readonly logger: Logger,
  ) {}

  /** Fire and forget: the data is durable and acked already; a failure is retried with the next file. */
  register(partition: string): void {
    if (!this.registrar || this.registered.has(partition)) return;
    if (this.registered.size >= MAX_REMEMBERED_PARTITIONS) this.registered.clear();
    this.registered.add(partition);
    this.registrar.register([partition]).then(
      () => this.metrics.registrations.inc(this.labels),
      (err: unknown) => {
        this.registered.delete(partition);
        this.metrics.registrationErrors.inc(this.labels);
        this.logger.warn({ partition, error: (err as Error)?.message }, 'partition registration failed');
      },
    );
  }

  close(): void {
    this.registrar?.close();
  }
}

/** Loads the Glue client (~0.2 s of module loading) with the first registration, not at worker start. */
export function lazyGlueRegistrar(
  config: RegistrationConfig,
  s3: S3Client,
  location: string,
): PartitionRegistrar {
  let loaded: Promise<PartitionRegistrar> | undefined;
  return {
    async register(partitions) {
      loaded ??= import('./registration.js').then((m) => new m.GluePartitionRegistrar(config, s3, location));
      return (await loaded).register(partitions);
    },
    close() {
      void loaded?.then((registrar) => registrar.close());
    },
  };
}
