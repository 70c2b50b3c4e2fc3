/**
 * The Parquet sink: converting events to rows, partitioning, rolling files, the memory cap, and the lease
 * tenure lifecycle. The parts it wires live beside it: open-files.ts (the open files), committer.ts
 * (encode, manifest, upload, ack), replay.ts (replay detection at a tenure's start), service.ts (S3),
 * object-keys.ts, manifest.ts, metrics.ts, partition-registrations.ts.
 *
 * Each (tenure, partition, shard) has its own open file (a buffer of converted rows); events of a partition
 * that cannot be opened (too many open partitions) go to the shard's quarantine file instead. A file is
 * rolled when it reaches its row or byte limit, when it gets too old, when the sink's memory cap needs
 * room (the largest open file first), or on flush. A rolled file is encoded, its manifest written, the data
 * object uploaded, and only then are its events acked.
 *
 * Object keys come from the positions of the file's first and last event, so a replay after a crash that
 * rolls at the same events overwrites instead of duplicating. On `openShard` the sink reads the manifests of
 * files committed after the checkpoint and acks their events without writing them again, so that every
 * record ends up in exactly one object even when the new run cuts files elsewhere (see manifest.ts).
 *
 * Files, replay state and uploads belong to the lease tenure of their events: a file holds events of one
 * tenure, and when the tenure ends (`closeShard`) its open files are dropped and its uploads aborted, so a
 * file of an ended tenure never lands beside the files of the tenure that reads the shard next.
 */

import { GlueClient } from '@aws-sdk/client-glue';
import type { Logger } from 'pino';
import { settlesWithin } from '../../core/backoff.js';
import type { ComponentContext, ShardRef, Sink, Tenure } from '../../core/component.js';
import type { PipelineEvent, RecordOrigin } from '../../core/records.js';
import { tenureKey, withTenure } from '../../core/tenure.js';
import type { ShardPosition } from '../../core/watermark.js';
import { RowBuilder, type TableColumn, tableColumnOf } from './columns.js';
import type { UploadedFile } from './committer.js';
import { FileCommitter } from './committer.js';
import {
  type ParquetSinkConfig,
  QUARANTINE_PARTITION_COLUMN,
  type RollLimits,
  rollLimitsOf,
} from './config.js';
import { ParquetEncoder } from './encoder.js';
import { TableCommitter } from './iceberg/committer.js';
import { icebergSchemaOf, type PartitionSpec, partitionSpecOf, transformValue } from './iceberg/schema.js';
import { GlueIcebergCatalog, type IcebergCatalog, IcebergTable } from './iceberg/table.js';
import { compareEventPosition, ReplayIndex } from './manifest.js';
import { type ParquetSinkMetrics, parquetSinkMetrics } from './metrics.js';
import { continuesRecord, type FileBuffer, OpenFiles } from './open-files.js';
import { lazyGlueRegistrar, PartitionRegistrations } from './partition-registrations.js';
import { Partitioner, parseTemplate } from './partitioning.js';
import type { PartitionRegistrar } from './registration.js';
import { readReplayIndex } from './replay.js';
import { DEFAULT_EVENT_TIME, resolveSchema } from './schemas.js';
import { type BackoffOptions, ParquetUploadService } from './service.js';

export { comparePosition, formatPosition, objectKey, parseObjectName } from './object-keys.js';
export { estimateRowBytes } from './open-files.js';

type RollReason = 'rows' | 'bytes' | 'age' | 'memory' | 'flush' | 'replay';

interface ShardState {
  replay: ReplayIndex;
  readonly tenure: Tenure;
}

export interface ParquetSinkOptions {
  /** Retry backoff for encode/upload/list failures (tests shorten it). */
  readonly backoff?: BackoffOptions;
  /** Replaces the registrar built from `registration` (tests). */
  readonly registrar?: PartitionRegistrar;
  /** Replaces the Iceberg catalog built from `iceberg.catalog` (tests). */
  readonly catalog?: IcebergCatalog;
}

export class S3ParquetSink implements Sink {
  private readonly logger: Logger;
  private readonly metrics: ParquetSinkMetrics;
  private readonly labels: { sink: string };
  private readonly rowBuilder: RowBuilder;
  private readonly columns: readonly TableColumn[];
  private readonly partitioner: Partitioner | undefined;
  private readonly encoder: ParquetEncoder;
  private readonly service: ParquetUploadService;
  private readonly registrations: PartitionRegistrations;
  private readonly committer: FileCommitter;
  private readonly manifestPrefix: string;
  private readonly abort = new AbortController();
  private readonly files: OpenFiles;
  private readonly shardStates = new Map<string, ShardState>();
  private readonly inflight = new Set<Promise<void>>();
  /** Commits in flight per tenure: flushShard and closeShard wait for the tenure's own. */
  private readonly inflightByTenure = new Map<Tenure, Set<Promise<void>>>();
  private capacityWaiters: Array<() => void> = [];
  private pendingFiles = 0;
  /** Bytes of rows in rolled files not yet handed to DuckDB. */
  private pendingBytes = 0;
  private lastShardState: { stream: string; shardId: string; tenure: Tenure; state: ShardState } | undefined;
  private closed = false;
  private closing: Promise<void> | undefined;
  private readonly component: string;
  /** Iceberg mode: the table, its committer, and the partition spec of the files. */
  private readonly iceberg:
    | { table: IcebergTable; committer: TableCommitter; spec: PartitionSpec; glue: GlueClient }
    | undefined;
  /** Rolled files whose upload is done and whose table commit is pending (no longer `pendingFiles`). */
  private readonly handedOff = new WeakSet<object>();
  /** Roll limits of a partition's files (`roll` with its `roll.partitions` override). */
  private readonly rollLimits: (partition: string | null) => RollLimits;

  constructor(
    readonly name: string,
    private readonly config: ParquetSinkConfig,
    private readonly ctx: ComponentContext,
    options: ParquetSinkOptions = {},
  ) {
    this.component = `sink:${name}`;
    this.logger = ctx.logger.child({ component: this.component });
    this.labels = { sink: name };
    this.metrics = parquetSinkMetrics(ctx);
    this.metrics.bufferedBytes.set(this.labels, 0);
    this.metrics.openPartitions.set(this.labels, 0);
    this.metrics.openFiles.set(this.labels, 0);
    for (const c of [
      this.metrics.uploadErrors,
      this.metrics.quarantined,
      this.metrics.deadLetters,
      this.metrics.registrationErrors,
    ])
      c.inc(this.labels, 0);
    const schema = resolveSchema(config);
    this.rowBuilder = new RowBuilder(schema.columns, schema.recordColumn, schema.recordContent);
    this.columns = this.rowBuilder.columns;
    if (config.partitioning) {
      const time = config.partitioning.time;
      const defaults = DEFAULT_EVENT_TIME[config.schema];
      const source = time.source ?? (defaults ? 'event' : 'arrival');
      this.partitioner = new Partitioner({
        config: config.partitioning,
        eventTime:
          source === 'event'
            ? {
                field: time.field ?? defaults!.field,
                unit: time.unit ?? (time.field ? 'ms' : defaults!.unit),
              }
            : undefined,
      });
    }
    this.rollLimits = rollLimitsOf(config.roll);
    this.files = new OpenFiles(
      (files, partitions) => {
        this.metrics.openPartitions.set(this.labels, partitions);
        this.metrics.openFiles.set(this.labels, files);
      },
      (buffer) => {
        const timer = setTimeout(
          () => this.roll(buffer, 'age'),
          this.rollLimits(buffer.partition).maxFileAgeMs,
        );
        timer.unref();
        return timer;
      },
    );
    this.manifestPrefix = config.manifestPrefix ?? `${config.prefix}_ksw/manifests/`;
    this.encoder = new ParquetEncoder({ compression: config.compression, rowGroupRows: config.rowGroupRows });
    this.service = new ParquetUploadService({
      s3: ctx.aws.s3,
      bucket: config.bucket,
      logger: this.logger,
      signal: this.abort.signal,
      uploadSeconds: this.metrics.uploadSeconds,
      uploadErrors: this.metrics.uploadErrors,
      labels: this.labels,
      backoff: options.backoff,
      multipart: {
        thresholdBytes: config.upload.multipartThresholdBytes,
        partSizeBytes: config.upload.partSizeBytes,
      },
    });
    this.registrations = new PartitionRegistrations(
      options.registrar ??
        (config.registration
          ? lazyGlueRegistrar(config.registration, ctx.aws.s3, `s3://${config.bucket}/${config.prefix}`)
          : undefined),
      this.metrics,
      this.labels,
      this.logger,
    );
    this.iceberg = config.iceberg ? this.openTable(config, ctx, options) : undefined;
    this.committer = new FileCommitter({
      config,
      service: this.service,
      encoder: this.encoder,
      registrations: this.registrations,
      metrics: this.metrics,
      labels: this.labels,
      logger: this.logger,
      signal: this.abort.signal,
      columns: this.columns,
      quarantineColumns: [
        ...this.columns,
        tableColumnOf({ name: QUARANTINE_PARTITION_COLUMN, type: 'string' }),
      ],
      manifestPrefix: this.manifestPrefix,
      ...(options.backoff ? { backoff: options.backoff } : {}),
      ...(this.iceberg ? { handOff: (file: UploadedFile) => this.toTable(file) } : {}),
    });
  }

  private openTable(config: ParquetSinkConfig, ctx: ComponentContext, options: ParquetSinkOptions) {
    const iceberg = config.iceberg!;
    const schema = icebergSchemaOf(this.columns);
    let spec: PartitionSpec;
    try {
      const time = config.partitioning?.time;
      const defaults = DEFAULT_EVENT_TIME[config.schema];
      const source = time?.source ?? (defaults ? 'event' : 'arrival');
      spec = partitionSpecOf(
        config.partitioning ? parseTemplate(config.partitioning.template) : undefined,
        source === 'event' ? { source, field: time?.field ?? defaults!.field } : { source },
        schema,
        this.columns,
      );
    } catch (err) {
      throw new Error(`sinks.${this.name}.partitioning (iceberg): ${(err as Error).message}`);
    }
    const s3 = ctx.aws.s3;
    const glue = new GlueClient({
      region: s3.config.region,
      credentials: s3.config.credentials,
      ...(iceberg.catalog.endpoint ? { endpoint: iceberg.catalog.endpoint } : {}),
    });
    const location = `s3://${config.bucket}/${config.prefix.replace(/\/$/, '')}`.replace(/\/$/, '');
    const table = new IcebergTable({
      s3,
      location,
      catalog:
        options.catalog ??
        new GlueIcebergCatalog(
          glue,
          iceberg.catalog.database,
          iceberg.catalog.table,
          location,
          iceberg.catalog.catalogId,
        ),
      schema,
      spec,
    });
    const committer = new TableCommitter({
      table,
      commitIntervalMs: iceberg.commitIntervalMs,
      maxFilesPerCommit: iceberg.maxFilesPerCommit,
      logger: this.logger,
      signal: this.abort.signal,
      ...(options.backoff ? { backoff: options.backoff } : {}),
      onError: () => this.metrics.icebergCommitErrors.inc(this.labels),
      onCommit: (c) => {
        this.metrics.icebergCommits.inc(this.labels);
        this.metrics.icebergCommitSeconds.observe(this.labels, c.seconds);
        this.metrics.icebergCommittedFiles.inc(this.labels, c.files);
        this.metrics.icebergConflicts.inc(this.labels, c.conflicts);
      },
      onWaiting: (n) => this.metrics.icebergWaitingFiles.set(this.labels, n),
    });
    return { table, committer, spec, glue };
  }

  /** Iceberg mode: an uploaded file waits for the next table commit; its events are acked after it. */
  private toTable(file: UploadedFile): Promise<void> | undefined {
    const iceberg = this.iceberg!;
    // Quarantine files have an extra column and no partition: they stay outside the table.
    if (file.quarantine) return undefined;
    this.handedOff.add(file.source);
    this.pendingFiles -= 1;
    this.wakeCapacityWaiters();
    const hive = new Map<string, string>();
    for (const segment of (file.partition ?? '').split('/')) {
      const eq = segment.indexOf('=');
      if (eq > 0) hive.set(segment.slice(0, eq), segment.slice(eq + 1));
    }
    const micros = BigInt(Math.trunc(file.minTimeMs)) * 1000n;
    const partition = iceberg.spec.fields.map((f) => {
      if (f.transform !== 'identity') return transformValue(f.transform, micros);
      const raw = hive.get(f.name);
      return raw === undefined || raw === '__HIVE_DEFAULT_PARTITION__' ? null : decodeURIComponent(raw);
    });
    return iceberg.committer.add(
      {
        path: `s3://${this.config.bucket}/${file.key}`,
        name: file.key,
        shard: `${file.stream}/${file.shardId}`,
        sizeBytes: file.bytes,
        records: file.rows,
        partition,
      },
      file.tenure,
      file.acks,
    );
  }

  /**
   * A tenure starts: the manifests of files that end after the checkpoint are read; the events of those
   * whose data object was committed are acked without writing when they are replayed. A fresh replay state
   * per tenure: what an earlier tenure of the shard skipped is no guide now.
   */
  async openShard(tenure: Tenure, checkpoint: ShardPosition | undefined): Promise<void> {
    const state: ShardState = { replay: new ReplayIndex(), tenure };
    const key = tenureKey(tenure, tenure);
    this.shardStates.set(key, state);
    // Iceberg mode: a file is committed when the table holds it, not when its object exists.
    let inTable: Set<string> | undefined;
    if (this.iceberg) {
      inTable = await this.iceberg.table.committedFiles(`${tenure.stream}/${tenure.shardId}`);
    }
    const replay = await readReplayIndex(tenure, checkpoint, {
      ...(inTable ? { inTable } : {}),
      service: this.service,
      manifestPrefix: this.manifestPrefix,
      scope: { signal: withTenure(this.abort.signal, tenure), proceed: () => tenure.active },
      metrics: this.metrics,
      labels: this.labels,
      logger: this.logger,
    });
    if (replay && this.shardStates.get(key) === state) state.replay = replay;
  }

  async write(events: PipelineEvent[]): Promise<void> {
    if (this.closed) throw new Error(`sink ${this.name} is closed`);
    await this.waitForCapacity();
    try {
      await this.writeEvents(events);
    } finally {
      // Once per batch rather than per row: prom-client hashes the labels on every set.
      this.metrics.bufferedBytes.set(this.labels, this.files.bytes + this.pendingBytes);
    }
  }

  private async writeEvents(events: PipelineEvent[]): Promise<void> {
    const partitioning = this.config.partitioning;
    for (const event of events) {
      const tenure = event.ack.tenure;
      // The tenure ended (its shard is read again by the next one): nothing of it is written any more.
      if (!tenure.active) continue;
      // Converted first even when replayed: an event that failed conversion in the previous run is not in
      // that run's files, and dead-lettering it again is the only way to be sure its letter exists.
      const built = this.rowBuilder.build(event);
      if (!built.ok) {
        this.deadLetter(event, built.reason);
        continue;
      }
      let partition: string | null = null;
      let time: number;
      if (this.partitioner) {
        const result = this.partitioner.partitionOf(event);
        if (!result.ok) {
          this.deadLetter(event, result.reason);
          continue;
        }
        partition = result.path;
        time = result.timeMs;
      } else {
        time = event.origin.arrivalTime.getTime();
      }
      const { origin } = event;
      const derived = event.derived === true;
      if (
        !derived &&
        this.shardState(origin, tenure).replay.take(
          origin.sequenceNumber,
          origin.subSequenceNumber,
          event.index,
        )
      ) {
        // Roll the partition's open file so the new run cuts files where the previous run did.
        const natural = this.files.natural(origin, tenure, partition);
        if (natural && natural.rows.length > 0) {
          this.roll(natural, 'replay');
          await this.waitForCapacity();
        }
        this.metrics.replaySkipped.inc(this.labels);
        event.ack.done();
        continue;
      }
      let quarantine = false;
      if (partition !== null && !this.files.hasPartition(partition)) {
        if (this.files.partitionCount >= partitioning!.maxOpenPartitions) quarantine = true;
      }
      const row = built.row;
      if (quarantine) {
        row.partition = partition as string;
        this.metrics.quarantined.inc(this.labels);
      }
      let buffer = this.files.get(origin, tenure, derived, quarantine ? null : partition, quarantine);
      // Size limits are checked between records: the events of one record stay in one file.
      const { maxFileRows, maxFileBytes } = this.rollLimits(buffer.partition);
      if (
        (buffer.rows.length >= maxFileRows || buffer.bytes >= maxFileBytes) &&
        !continuesRecord(buffer, origin)
      ) {
        this.roll(buffer, buffer.rows.length >= maxFileRows ? 'rows' : 'bytes');
        await this.waitForCapacity();
        // The partition may have been closed meanwhile (and others opened): decide again.
        if (!quarantine && partition !== null && !this.files.hasPartition(partition)) {
          if (this.files.partitionCount >= partitioning!.maxOpenPartitions) {
            row.partition = partition;
            quarantine = true;
            this.metrics.quarantined.inc(this.labels);
          }
        }
        buffer = this.files.get(origin, tenure, derived, quarantine ? null : partition, quarantine);
      }
      // The tenure may have ended while this write waited for capacity.
      if (!tenure.active) continue;
      this.files.append(buffer, event, row, time);
      if (this.files.bytes > this.config.memory.maxBufferedBytes * 0.75) {
        this.relieveMemory();
        await this.waitForCapacity();
      }
    }
  }

  async flush(): Promise<void> {
    this.iceberg?.committer.hurry(1);
    try {
      for (const buffer of this.files.all()) this.roll(buffer, 'flush');
      await Promise.all([...this.inflight]);
    } finally {
      this.iceberg?.committer.hurry(-1);
    }
  }

  /** Rolls and uploads the tenure's open files now (graceful end of its lease). */
  async flushShard(tenure: Tenure): Promise<void> {
    this.iceberg?.committer.hurry(1);
    try {
      for (const buffer of this.files.ofTenure(tenure)) this.roll(buffer, 'flush');
      await Promise.all([...(this.inflightByTenure.get(tenure) ?? [])]);
    } finally {
      this.iceberg?.committer.hurry(-1);
    }
  }

  /**
   * The tenure ended: its open files are dropped unwritten (their events stay unacked; the next tenure
   * reads them again), its uploads are aborted, and its replay state is forgotten. Resolves once none of
   * its commits can send anything any more.
   */
  async closeShard(tenure: Tenure): Promise<void> {
    for (const buffer of this.files.ofTenure(tenure)) this.files.discard(buffer);
    this.iceberg?.committer.closeShard(tenure);
    this.metrics.bufferedBytes.set(this.labels, this.files.bytes + this.pendingBytes);
    for (const [id, state] of [...this.shardStates]) if (state.tenure === tenure) this.shardStates.delete(id);
    if (this.lastShardState?.tenure === tenure) this.lastShardState = undefined;
    await Promise.allSettled([...(this.inflightByTenure.get(tenure) ?? [])]);
    this.wakeCapacityWaiters();
  }

  close(): Promise<void> {
    this.closing ??= this.closeNow();
    return this.closing;
  }

  private async closeNow(): Promise<void> {
    this.closed = true;
    const drained = (async () => {
      // Writers that were waiting for capacity may still append after the first flush.
      do await this.flush();
      while (this.files.size > 0 || this.inflight.size > 0);
    })();
    if (!(await settlesWithin(drained, this.config.closeTimeoutMs))) {
      this.logger.warn(
        { pendingFiles: this.pendingFiles, closeTimeoutMs: this.config.closeTimeoutMs },
        'close: giving up on uploads still failing; their events stay unacked and will be read again',
      );
    }
    this.abort.abort();
    this.wakeCapacityWaiters();
    await drained.catch(() => undefined);
    this.files.clearTimers();
    await this.encoder.close();
    this.registrations.close();
    this.iceberg?.committer.close();
    this.iceberg?.glue.destroy();
    await this.committer.close();
  }

  private shardState(ref: ShardRef | RecordOrigin, tenure: Tenure): ShardState {
    // Events come in runs from one shard: skip building the key for each.
    const last = this.lastShardState;
    if (
      last !== undefined &&
      last.tenure === tenure &&
      last.stream === ref.stream &&
      last.shardId === ref.shardId
    )
      return last.state;
    const id = tenureKey(ref, tenure);
    let state = this.shardStates.get(id);
    if (!state) {
      state = { replay: new ReplayIndex(), tenure };
      this.shardStates.set(id, state);
    }
    this.lastShardState = { stream: ref.stream, shardId: ref.shardId, tenure, state };
    return state;
  }

  private deadLetter(event: PipelineEvent, reason: string): void {
    this.metrics.deadLetters.inc(this.labels);
    this.ctx.dlq.put(
      { origin: event.origin, index: event.index, data: event.raw, reason, component: this.component },
      event.ack,
    );
  }

  /** Rolls the largest open files until they hold at most 60% of the cap (hysteresis: few scans). */
  private relieveMemory(): void {
    const target = this.config.memory.maxBufferedBytes * 0.6;
    for (const buffer of this.files.largestFirst()) {
      if (this.files.bytes <= target) break;
      this.roll(buffer, 'memory');
    }
  }

  private roll(buffer: FileBuffer, reason: RollReason): void {
    if (!buffer.tenure.writable) {
      this.files.discard(buffer);
      return;
    }
    const file = this.files.take(buffer);
    if (!file) return;
    this.metrics.rolls.inc({ ...this.labels, reason });
    this.pendingBytes += file.bytes;
    this.pendingFiles += 1;
    let mine = this.inflightByTenure.get(buffer.tenure);
    if (!mine) {
      mine = new Set();
      this.inflightByTenure.set(buffer.tenure, mine);
    }
    const tenureCommits = mine;
    const released = () => {
      this.pendingBytes -= file.bytes;
      this.metrics.bufferedBytes.set(this.labels, this.files.bytes + this.pendingBytes);
      this.wakeCapacityWaiters();
    };
    const committed = this.committer
      .commit(file, released)
      .catch((err: unknown) => {
        // Not expected (every step retries or reports); the events stay unacked and are read again.
        this.logger.error(
          { error: (err as Error)?.message, stream: buffer.stream, shardId: buffer.shardId },
          'commit failed',
        );
      })
      .finally(() => {
        if (!this.handedOff.has(file)) this.pendingFiles -= 1;
        this.inflight.delete(committed);
        tenureCommits.delete(committed);
        if (tenureCommits.size === 0) this.inflightByTenure.delete(buffer.tenure);
        this.wakeCapacityWaiters();
      });
    this.inflight.add(committed);
    tenureCommits.add(committed);
  }

  private async waitForCapacity(): Promise<void> {
    const pendingCap = this.config.memory.maxBufferedBytes / 4;
    while (
      (this.pendingFiles > 2 * this.config.uploadConcurrency || this.pendingBytes > pendingCap) &&
      !this.abort.signal.aborted
    ) {
      await new Promise<void>((resolve) => this.capacityWaiters.push(resolve));
    }
    // Closed while waiting: the rest of the batch stays unacked (read again after restart) rather than
    // being buffered in a sink that will never upload it.
    if (this.abort.signal.aborted) throw new Error(`sink ${this.name} was closed during write`);
  }

  private wakeCapacityWaiters(): void {
    const waiters = this.capacityWaiters;
    this.capacityWaiters = [];
    for (const wake of waiters) wake();
  }
}

export { compareEventPosition };
