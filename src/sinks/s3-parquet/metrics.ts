/** The Parquet sink's metrics (one place for their names and help). */
import type { ComponentContext } from '../../core/component.js';
import { counter, gauge, histogram } from '../../metrics/registry.js';

export function parquetSinkMetrics(ctx: Pick<ComponentContext, 'metrics'>) {
  const labelNames = ['sink'] as const;
  return {
    files: counter(ctx.metrics, {
      name: 'ksw_parquet_files_total',
      help: 'Parquet files uploaded.',
      labelNames,
    }),
    rows: counter(ctx.metrics, {
      name: 'ksw_parquet_rows_total',
      help: 'Rows in uploaded Parquet files.',
      labelNames,
    }),
    fileBytes: histogram(ctx.metrics, {
      name: 'ksw_parquet_file_bytes',
      help: 'Size of uploaded Parquet files in bytes.',
      labelNames,
      buckets: [16, 64, 256, 1024, 4096, 16_384, 65_536, 262_144, 1_048_576].map((k) => k * 1024),
    }),
    fileRows: histogram(ctx.metrics, {
      name: 'ksw_parquet_file_rows',
      help: 'Rows per uploaded Parquet file.',
      labelNames,
      buckets: [10, 100, 1000, 10_000, 100_000, 1_000_000, 10_000_000],
    }),
    rolls: counter(ctx.metrics, {
      name: 'ksw_parquet_rolls_total',
      help: 'Files closed, by reason: rows, bytes, age, memory (the memory cap rolled the largest file), flush, replay.',
      labelNames: ['sink', 'reason'] as const,
    }),
    bufferedBytes: gauge(ctx.metrics, {
      name: 'ksw_parquet_buffered_bytes',
      help: 'Bytes of rows held in memory: open files plus files rolled but not yet encoded.',
      labelNames,
    }),
    openPartitions: gauge(ctx.metrics, {
      name: 'ksw_parquet_open_partitions',
      help: 'Partitions with an open file (the cap is partitioning.maxOpenPartitions).',
      labelNames,
    }),
    openFiles: gauge(ctx.metrics, {
      name: 'ksw_parquet_open_files',
      help: 'Open files: one per (partition, shard) with buffered rows, plus quarantine files.',
      labelNames,
    }),
    quarantined: counter(ctx.metrics, {
      name: 'ksw_parquet_quarantined_events_total',
      help: 'Events written to the quarantine prefix because their partition could not be opened (open partition cap).',
      labelNames,
    }),
    uploadSeconds: histogram(ctx.metrics, {
      name: 'ksw_parquet_upload_seconds',
      help: 'Duration of successful Parquet uploads.',
      labelNames,
      buckets: [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120],
    }),
    uploadErrors: counter(ctx.metrics, {
      name: 'ksw_parquet_upload_errors_total',
      help: 'Failed attempts to encode, upload, write or read manifests, or list (each transient one is retried).',
      labelNames,
    }),
    permanentErrors: counter(ctx.metrics, {
      name: 'ksw_parquet_permanent_errors_total',
      help: 'S3 errors that retrying cannot cure (AccessDenied, NoSuchBucket, a disabled KMS key...), by error name: the file is not written and its shard is released (ksw_shard_failures_total{stage="sink"}), to be read again once the cause is fixed.',
      labelNames: ['sink', 'error'] as const,
    }),
    manifestsUnreadable: counter(ctx.metrics, {
      name: 'ksw_parquet_manifests_unreadable_total',
      help: 'Manifests found on replay that could not be read as ours (not JSON, another version, bad positions); their events are written again',
      labelNames,
    }),
    replaySkipped: counter(ctx.metrics, {
      name: 'ksw_parquet_replay_skipped_events_total',
      help: 'Replayed events acked without writing because a file committed by a previous run already holds them.',
      labelNames,
    }),
    deadLetters: counter(ctx.metrics, {
      name: 'ksw_parquet_dead_letters_total',
      help: 'Events sent to the dead-letter queue because a value did not fit its column type or had no partition time.',
      labelNames,
    }),
    registrations: counter(ctx.metrics, {
      name: 'ksw_parquet_partition_registrations_total',
      help: 'Partitions registered in the catalog (registration hook).',
      labelNames,
    }),
    icebergCommits: counter(ctx.metrics, {
      name: 'ksw_parquet_iceberg_commits_total',
      help: 'Iceberg table commits (snapshots) made by this sink.',
      labelNames,
    }),
    icebergCommitSeconds: histogram(ctx.metrics, {
      name: 'ksw_parquet_iceberg_commit_seconds',
      help: 'Duration of successful Iceberg commits (manifests, metadata, catalog swap; retries included).',
      labelNames,
      buckets: [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
    }),
    icebergCommittedFiles: counter(ctx.metrics, {
      name: 'ksw_parquet_iceberg_committed_files_total',
      help: 'Data files added to the Iceberg table.',
      labelNames,
    }),
    icebergConflicts: counter(ctx.metrics, {
      name: 'ksw_parquet_iceberg_commit_conflicts_total',
      help: 'Iceberg commits lost to another writer (the catalog pointer moved) and done again on top of it.',
      labelNames,
    }),
    icebergCommitErrors: counter(ctx.metrics, {
      name: 'ksw_parquet_iceberg_commit_errors_total',
      help: 'Failed Iceberg commit attempts (retried with backoff; the files stay unacked meanwhile).',
      labelNames,
    }),
    icebergWaitingFiles: gauge(ctx.metrics, {
      name: 'ksw_parquet_iceberg_waiting_files',
      help: 'Uploaded data files waiting for the next Iceberg commit (their events are not acked yet).',
      labelNames,
    }),
    registrationErrors: counter(ctx.metrics, {
      name: 'ksw_parquet_partition_registration_errors_total',
      help: "Failed partition registrations (retried with the partition's next file).",
      labelNames,
    }),
  };
}

export type ParquetSinkMetrics = ReturnType<typeof parquetSinkMetrics>;
