/**
 * Batching, partitioning, rolling and acks of the Parquet sink.
 *
 * Each (partition, shard) has its own open file (a buffer of converted rows); events of a partition that
 * cannot be opened (too many open partitions) go to the shard's quarantine file instead. A file is rolled
 * when it reaches its row or byte limit, when it gets too old, when the sink's memory cap needs room (the
 * largest open file first), or on flush. A rolled file is encoded, its manifest written, the data object
 * uploaded, and only then are its events acked.
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
import { createHash, randomUUID } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import type { S3Client } from '@aws-sdk/client-s3';
import pLimit from 'p-limit';
import type { Logger } from 'pino';
import type { Ack } from '../../core/ack.js';
import { settlesWithin } from '../../core/backoff.js';
import type { ComponentContext, ShardRef, Sink, Tenure } from '../../core/component.js';
import { compareSequence, type PipelineEvent, type RecordOrigin } from '../../core/records.js';
import { tenureKey, withTenure } from '../../core/tenure.js';
import type { ShardPosition } from '../../core/watermark.js';
import { counter, gauge, histogram } from '../../metrics/registry.js';
import { RowBuilder, type StagedRow, type TableColumn, tableColumnOf } from './columns.js';
import type { RegistrationConfig } from './config.js';
import { type ParquetSinkConfig, QUARANTINE_PARTITION_COLUMN } from './config.js';
import { ParquetEncoder } from './encoder.js';
import {
  compareEventPosition,
  type EventPosition,
  encodePositions,
  formatEventPosition,
  type Manifest,
  manifestDir,
  manifestKey,
  parseEventPosition,
  parseManifest,
  ReplayIndex,
  startAfterCheckpoint,
} from './manifest.js';
import { Partitioner } from './partitioning.js';
import type { PartitionRegistrar } from './registration.js';
import { DEFAULT_EVENT_TIME, resolveSchema } from './schemas.js';
import { type BackoffOptions, ParquetUploadService, retryUntilAborted } from './service.js';

export function comparePosition(a: ShardPosition, b: ShardPosition): number {
  return compareSequence(a.sequenceNumber, b.sequenceNumber) || a.subSequenceNumber - b.subSequenceNumber;
}

/** `sequence`, or `sequence.sub` for a KPL sub-record. */
export function formatPosition(position: ShardPosition): string {
  return position.subSequenceNumber > 0
    ? `${position.sequenceNumber}.${position.subSequenceNumber}`
    : position.sequenceNumber;
}

const OBJECT_NAME = /^(.+)_(shardId-[^_]+)_([\d.-]+)_([\d.-]+?)(?:_d[0-9a-f]+)?\.parquet$/;

/** Stream, shard and first/last event positions of a data object's file name, or undefined for foreign names. */
export function parseObjectName(
  name: string,
): { stream: string; shardId: string; first: EventPosition; last: EventPosition } | undefined {
  const match = OBJECT_NAME.exec(name);
  if (!match) return undefined;
  const first = parseEventPosition(match[3]!);
  const last = parseEventPosition(match[4]!);
  if (!first || !last) return undefined;
  return { stream: match[1]!, shardId: match[2]!, first, last };
}

/** Data key: `<prefix>[<partition>/ | <quarantine prefix>]<stream>_<shardId>_<first>_<last>[_d<hash>].parquet`. */
export function objectKey(
  dir: string,
  stream: string,
  shardId: string,
  first: EventPosition,
  last: EventPosition,
  contentHash?: string,
): string {
  return `${dir}${stream}_${shardId}_${formatEventPosition(first)}_${formatEventPosition(last)}${contentHash ? `_d${contentHash}` : ''}.parquet`;
}

type RollReason = 'rows' | 'bytes' | 'age' | 'memory' | 'flush' | 'replay';

/** A character V8 cannot store in a one-byte string: the whole string then takes two bytes per character. */
const NON_LATIN1 = /[\u0100-\uffff]/;

/**
 * Heap bytes of a buffered row, estimated from its staged text: the text (one or two bytes per character, as
 * V8 stores it) plus 320 for the row object, its ack, the array slots and allocation slack. Measured against
 * process.memoryUsage() on 50,000 rows of the span data set: exact for the `spans` schema's 1 KB rows
 * (Latin-1), 8 % over for non-Latin-1 text, 19 % over for short 4-column rows.
 */
export function estimateRowBytes(row: StagedRow): number {
  return 320 + (NON_LATIN1.test(row.text) ? 2 : 1) * row.text.length;
}

interface FileBuffer {
  readonly id: string;
  readonly stream: string;
  readonly shardId: string;
  /** The lease tenure of its events. */
  readonly tenure: Tenure;
  /** Partition path, or null when the sink is not partitioned or for a quarantine file. */
  readonly partition: string | null;
  readonly quarantine: boolean;
  /** Holds derived events (made by a processor): content-addressed key, no manifest, never replay-skipped. */
  readonly derived: boolean;
  rows: StagedRow[];
  acks: Ack[];
  bytes: number;
  /** True while positions were appended in increasing order (then no sort is needed at roll). */
  sorted: boolean;
  minTime: number;
  maxTime: number;
  minArrival: number;
  maxArrival: number;
  timer: NodeJS.Timeout | undefined;
}

interface ShardState {
  replay: ReplayIndex;
  readonly tenure: Tenure;
}

/** A counting semaphore for upload slots. */
class Slots {
  private readonly waiters: Array<() => void> = [];
  constructor(private free: number) {}

  async acquire(): Promise<void> {
    if (this.free > 0) {
      this.free -= 1;
      return;
    }
    await new Promise<void>((resolve) => this.waiters.push(resolve));
  }

  release(): void {
    const next = this.waiters.shift();
    if (next) next();
    else this.free += 1;
  }
}

function createMetrics(ctx: ComponentContext) {
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
      help: 'Failed attempts to encode, upload, write or read manifests, or list (each is retried).',
      labelNames,
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
    registrationErrors: counter(ctx.metrics, {
      name: 'ksw_parquet_partition_registration_errors_total',
      help: "Failed partition registrations (retried with the partition's next file).",
      labelNames,
    }),
  };
}

export interface ParquetSinkOptions {
  /** Retry backoff for encode/upload/list failures (tests shorten it). */
  readonly backoff?: BackoffOptions;
  /** Replaces the registrar built from `registration` (tests). */
  readonly registrar?: PartitionRegistrar;
}

/** Remembered registered partitions at most; past it the set starts over (a re-registration is harmless). */
const MAX_REMEMBERED_PARTITIONS = 100_000;

export class S3ParquetSink implements Sink {
  private readonly logger: Logger;
  private readonly metrics: ReturnType<typeof createMetrics>;
  private readonly labels: { sink: string };
  private readonly rowBuilder: RowBuilder;
  private readonly columns: readonly TableColumn[];
  private readonly quarantineColumns: readonly TableColumn[];
  private readonly partitioner: Partitioner | undefined;
  private readonly encoder: ParquetEncoder;
  private readonly service: ParquetUploadService;
  private readonly registrar: PartitionRegistrar | undefined;
  private readonly registered = new Set<string>();
  private readonly manifestPrefix: string;
  private readonly abort = new AbortController();
  private readonly slots: Slots;
  private readonly buffers = new Map<string, FileBuffer>();
  private readonly shardStates = new Map<string, ShardState>();
  /** Open files per partition path (across shards). */
  private readonly openPartitions = new Map<string, number>();
  private readonly inflight = new Set<Promise<void>>();
  /** Commits in flight per tenure: flushShard and closeShard wait for the tenure's own. */
  private readonly inflightByTenure = new Map<Tenure, Set<Promise<void>>>();
  private readonly tmpFiles = new Set<string>();
  private capacityWaiters: Array<() => void> = [];
  private pendingFiles = 0;
  /** Bytes of rows in open files. */
  private openBytes = 0;
  /** Bytes of rows in rolled files not yet handed to DuckDB. */
  private pendingBytes = 0;
  private fileCounter = 0;
  private lastShardState: { stream: string; shardId: string; tenure: Tenure; state: ShardState } | undefined;
  private lastBuffer: FileBuffer | undefined;
  private closed = false;
  private closing: Promise<void> | undefined;
  private readonly component: string;

  constructor(
    readonly name: string,
    private readonly config: ParquetSinkConfig,
    private readonly ctx: ComponentContext,
    private readonly options: ParquetSinkOptions = {},
  ) {
    this.component = `sink:${name}`;
    this.logger = ctx.logger.child({ component: this.component });
    this.labels = { sink: name };
    this.metrics = createMetrics(ctx);
    this.metrics.bufferedBytes.set(this.labels, 0);
    this.metrics.openPartitions.set(this.labels, 0);
    this.metrics.openFiles.set(this.labels, 0);
    const schema = resolveSchema(config);
    this.rowBuilder = new RowBuilder(schema.columns, schema.recordColumn, schema.recordContent);
    this.columns = this.rowBuilder.columns;
    this.quarantineColumns = [
      ...this.columns,
      tableColumnOf({ name: QUARANTINE_PARTITION_COLUMN, type: 'string' }),
    ];
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
    this.manifestPrefix = config.manifestPrefix ?? `${config.prefix}_ksw/manifests/`;
    this.encoder = new ParquetEncoder({ compression: config.compression, rowGroupRows: config.rowGroupRows });
    this.slots = new Slots(config.uploadConcurrency);
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
    this.registrar =
      options.registrar ??
      (config.registration
        ? lazyGlueRegistrar(config.registration, ctx.aws.s3, `s3://${config.bucket}/${config.prefix}`)
        : undefined);
  }

  /**
   * Reads the manifests of files that end after the checkpoint; the events of those whose data object was
   * committed (exists with the manifest's file id) are acked without writing when they are replayed.
   */
  async openShard(shard: Tenure, checkpoint: ShardPosition | undefined): Promise<void> {
    // A fresh replay state per tenure: what an earlier tenure of the shard skipped is no guide now.
    const state: ShardState = { replay: new ReplayIndex(), tenure: shard };
    this.shardStates.set(tenureKey(shard, shard), state);
    const signal = withTenure(this.abort.signal, shard);
    const dir = manifestDir(this.manifestPrefix, shard.stream, shard.shardId);
    // Without a checkpoint the shard starts over, so every file may hold records about to be replayed.
    const keys = await this.service.listKeys(
      dir,
      checkpoint ? startAfterCheckpoint(dir, checkpoint) : undefined,
      signal,
    );
    if (!keys) return; // closed meanwhile: nothing will be written any more
    const limit = pLimit(8);
    let committed = 0;
    let uncommitted = 0;
    let unreadable = 0;
    await Promise.all(
      keys.map((key) =>
        limit(async () => {
          const text = await this.service.getText(key, signal);
          if (text === undefined) return; // closed
          if (text === null) return; // deleted since the listing
          const parsed = parseManifest(text);
          let problem = 'problem' in parsed ? parsed.problem : undefined;
          if (!problem && 'manifest' in parsed) {
            const { manifest } = parsed;
            const metadata = await this.service.headMetadata(manifest.dataKey, signal);
            if (metadata === undefined) return; // closed
            if (metadata?.['ksw-file-id'] !== manifest.fileId) {
              // Written before a crash that came before (or during) the data upload: not committed.
              uncommitted += 1;
              return;
            }
            try {
              state.replay.add(manifest.positions);
              committed += 1;
              return;
            } catch (err) {
              problem = `positions: ${(err as Error).message}`;
            }
          }
          // Not one of ours, or damaged: it cannot block the shard (that would stop it for good), so its
          // file counts as not committed. Its events are written again; if its data object does exist,
          // they are then in two objects, which is the at-least-once side of the trade.
          unreadable += 1;
          this.metrics.manifestsUnreadable.inc(this.labels);
          this.logger.warn(
            { stream: shard.stream, shardId: shard.shardId, key, problem },
            'unreadable manifest ignored; the events it lists are written again on replay',
          );
        }),
      ),
    );
    if (committed + uncommitted + unreadable > 0) {
      this.logger.info(
        {
          stream: shard.stream,
          shardId: shard.shardId,
          committed,
          uncommitted,
          unreadable,
          events: state.replay.size,
        },
        'files committed after the checkpoint found; their events will be acked without rewriting',
      );
    }
  }

  async write(events: PipelineEvent[]): Promise<void> {
    if (this.closed) throw new Error(`sink ${this.name} is closed`);
    await this.waitForCapacity();
    try {
      await this.writeEvents(events);
    } finally {
      // Once per batch rather than per row: prom-client hashes the labels on every set.
      this.metrics.bufferedBytes.set(this.labels, this.openBytes + this.pendingBytes);
    }
  }

  private async writeEvents(events: PipelineEvent[]): Promise<void> {
    const { maxFileRows, maxFileBytes } = this.config.roll;
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
        const natural = this.buffers.get(bufferId(origin, tenure, false, partition, false));
        if (natural && natural.rows.length > 0) {
          this.roll(natural, 'replay');
          await this.waitForCapacity();
        }
        this.metrics.replaySkipped.inc(this.labels);
        event.ack.done();
        continue;
      }
      let quarantine = false;
      if (partition !== null && !this.openPartitions.has(partition)) {
        if (this.openPartitions.size >= partitioning!.maxOpenPartitions) quarantine = true;
      }
      const row = built.row;
      if (quarantine) {
        row.partition = partition as string;
        this.metrics.quarantined.inc(this.labels);
      }
      let buffer = this.buffer(origin, tenure, derived, quarantine ? null : partition, quarantine);
      // Size limits are checked between records: the events of one record stay in one file.
      if (
        (buffer.rows.length >= maxFileRows || buffer.bytes >= maxFileBytes) &&
        !continuesRecord(buffer, origin)
      ) {
        this.roll(buffer, buffer.rows.length >= maxFileRows ? 'rows' : 'bytes');
        await this.waitForCapacity();
        // The partition may have been closed meanwhile (and others opened): decide again.
        if (!quarantine && partition !== null && !this.openPartitions.has(partition)) {
          if (this.openPartitions.size >= partitioning!.maxOpenPartitions) {
            row.partition = partition;
            quarantine = true;
            this.metrics.quarantined.inc(this.labels);
          }
        }
        buffer = this.buffer(origin, tenure, derived, quarantine ? null : partition, quarantine);
      }
      this.append(buffer, event, row, time);
      if (this.openBytes > this.config.memory.maxBufferedBytes * 0.75) {
        this.relieveMemory();
        await this.waitForCapacity();
      }
    }
  }

  async flush(): Promise<void> {
    for (const buffer of [...this.buffers.values()]) this.roll(buffer, 'flush');
    await Promise.all([...this.inflight]);
  }

  /** Rolls and uploads the tenure's open files now (graceful end of its lease). */
  async flushShard(tenure: Tenure): Promise<void> {
    for (const buffer of [...this.buffers.values()]) if (buffer.tenure === tenure) this.roll(buffer, 'flush');
    await Promise.all([...(this.inflightByTenure.get(tenure) ?? [])]);
  }

  /**
   * The tenure ended: its open files are dropped unwritten (their events stay unacked; the next tenure
   * reads them again), its uploads are aborted, and its replay state is forgotten. Resolves once none of
   * its commits can send anything any more.
   */
  async closeShard(tenure: Tenure): Promise<void> {
    for (const buffer of [...this.buffers.values()]) if (buffer.tenure === tenure) this.discard(buffer);
    this.metrics.bufferedBytes.set(this.labels, this.openBytes + this.pendingBytes);
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
      while (this.buffers.size > 0 || this.inflight.size > 0);
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
    for (const buffer of this.buffers.values()) clearTimeout(buffer.timer);
    await this.encoder.close();
    this.registrar?.close();
    await Promise.all([...this.tmpFiles].map((file) => rm(file, { force: true })));
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

  private buffer(
    origin: RecordOrigin,
    tenure: Tenure,
    derived: boolean,
    partition: string | null,
    quarantine: boolean,
  ): FileBuffer {
    // Consecutive events usually go to the same open file: reuse it without building its id.
    const last = this.lastBuffer;
    if (
      last !== undefined &&
      last.tenure === tenure &&
      last.shardId === origin.shardId &&
      last.stream === origin.stream &&
      last.partition === partition &&
      last.derived === derived &&
      last.quarantine === quarantine &&
      this.buffers.get(last.id) === last
    ) {
      return last;
    }
    const id = bufferId(origin, tenure, derived, partition, quarantine);
    let buffer = this.buffers.get(id);
    if (!buffer) {
      buffer = {
        id,
        stream: origin.stream,
        shardId: origin.shardId,
        tenure,
        partition,
        quarantine,
        derived,
        rows: [],
        acks: [],
        bytes: 0,
        sorted: true,
        minTime: Number.POSITIVE_INFINITY,
        maxTime: Number.NEGATIVE_INFINITY,
        minArrival: Number.POSITIVE_INFINITY,
        maxArrival: Number.NEGATIVE_INFINITY,
        timer: undefined,
      };
      this.buffers.set(id, buffer);
      if (partition !== null)
        this.openPartitions.set(partition, (this.openPartitions.get(partition) ?? 0) + 1);
      this.metrics.openPartitions.set(this.labels, this.openPartitions.size);
      this.metrics.openFiles.set(this.labels, this.buffers.size);
    }
    this.lastBuffer = buffer;
    return buffer;
  }

  private deadLetter(event: PipelineEvent, reason: string): void {
    this.metrics.deadLetters.inc(this.labels);
    this.ctx.dlq.put(
      { origin: event.origin, index: event.index, data: event.raw, reason, component: this.component },
      event.ack,
    );
  }

  private append(buffer: FileBuffer, event: PipelineEvent, row: StagedRow, time: number): void {
    const rows = buffer.rows;
    if (rows.length === 0) {
      buffer.timer = setTimeout(() => this.roll(buffer, 'age'), this.config.roll.maxFileAgeMs);
      buffer.timer.unref();
    } else if (buffer.sorted && compareRows(rows[rows.length - 1]!, row) >= 0) {
      buffer.sorted = false;
    }
    rows.push(row);
    buffer.acks.push(event.ack);
    const bytes = estimateRowBytes(row);
    buffer.bytes += bytes;
    this.openBytes += bytes;
    if (time < buffer.minTime) buffer.minTime = time;
    if (time > buffer.maxTime) buffer.maxTime = time;
    const arrival = event.origin.arrivalTime.getTime();
    if (arrival < buffer.minArrival) buffer.minArrival = arrival;
    if (arrival > buffer.maxArrival) buffer.maxArrival = arrival;
  }

  /** Rolls the largest open files until they hold at most 60% of the cap (hysteresis: few scans). */
  private relieveMemory(): void {
    const target = this.config.memory.maxBufferedBytes * 0.6;
    const largestFirst = [...this.buffers.values()].sort((a, b) => b.bytes - a.bytes);
    for (const buffer of largestFirst) {
      if (this.openBytes <= target) break;
      this.roll(buffer, 'memory');
    }
  }

  /** Closes an open file without writing it (its tenure ended): its rows and acks are let go. */
  private discard(buffer: FileBuffer): void {
    this.unlist(buffer);
    this.openBytes -= buffer.bytes;
    buffer.rows = [];
    buffer.acks = [];
    buffer.bytes = 0;
  }

  /** Takes an open file out of the open set (it is rolled or discarded). */
  private unlist(buffer: FileBuffer): void {
    clearTimeout(buffer.timer);
    buffer.timer = undefined;
    if (this.lastBuffer === buffer) this.lastBuffer = undefined;
    if (this.buffers.get(buffer.id) === buffer) {
      this.buffers.delete(buffer.id);
      if (buffer.partition !== null) {
        const open = (this.openPartitions.get(buffer.partition) ?? 1) - 1;
        if (open > 0) this.openPartitions.set(buffer.partition, open);
        else this.openPartitions.delete(buffer.partition);
      }
      this.metrics.openPartitions.set(this.labels, this.openPartitions.size);
      this.metrics.openFiles.set(this.labels, this.buffers.size);
    }
  }

  private roll(buffer: FileBuffer, reason: RollReason): void {
    this.unlist(buffer);
    if (buffer.rows.length === 0) return;
    if (!buffer.tenure.active) {
      this.discard(buffer);
      return;
    }
    this.metrics.rolls.inc({ ...this.labels, reason });
    const rows = buffer.rows;
    const acks = buffer.acks;
    const bytes = buffer.bytes;
    buffer.rows = [];
    buffer.acks = [];
    buffer.bytes = 0;
    this.openBytes -= bytes;
    this.pendingBytes += bytes;
    this.pendingFiles += 1;
    let mine = this.inflightByTenure.get(buffer.tenure);
    if (!mine) {
      mine = new Set();
      this.inflightByTenure.set(buffer.tenure, mine);
    }
    const tenureCommits = mine;
    const committed = this.commit(buffer, rows, acks, bytes)
      .catch((err: unknown) => {
        // Not expected (every step retries); the events stay unacked and are read again after a restart.
        this.logger.error(
          { error: (err as Error)?.message, stream: buffer.stream, shardId: buffer.shardId },
          'commit failed',
        );
      })
      .finally(() => {
        this.pendingFiles -= 1;
        this.inflight.delete(committed);
        tenureCommits.delete(committed);
        if (tenureCommits.size === 0) this.inflightByTenure.delete(buffer.tenure);
        this.wakeCapacityWaiters();
      });
    this.inflight.add(committed);
    tenureCommits.add(committed);
  }

  /**
   * Encodes the file, writes its manifest, uploads the data object, then acks. Resolves without acking only
   * when the sink is closed. The commit point is the data object (with the manifest's file id) existing.
   */
  private async commit(buffer: FileBuffer, rows: StagedRow[], acks: Ack[], bytes: number): Promise<void> {
    let released = false;
    const release = () => {
      if (released) return;
      released = true;
      this.pendingBytes -= bytes;
      this.metrics.bufferedBytes.set(this.labels, this.openBytes + this.pendingBytes);
      this.wakeCapacityWaiters();
    };
    const rowCount = rows.length;
    if (!buffer.sorted) rows.sort(compareRows);
    const first = positionOf(rows[0]!);
    const last = positionOf(rows[rowCount - 1]!);
    const partitions = buffer.quarantine
      ? [...new Set(rows.map((r) => r.partition!))].sort()
      : buffer.partition !== null
        ? [buffer.partition]
        : [];
    const positions = buffer.derived ? '' : encodePositions(rows.map(positionOf));
    this.fileCounter += 1;
    const tmpFile = path.join(
      this.config.tmpDir,
      `ksw-parquet-${process.pid}-${this.fileCounter}-${randomUUID().slice(0, 8)}.parquet`,
    );
    this.tmpFiles.add(tmpFile);
    const context = { stream: buffer.stream, shardId: buffer.shardId, first: formatEventPosition(first) };
    // Every step stops when the sink closes or the file's tenure ends (lost, fenced: others may read the
    // shard now, so nothing of this tenure may land any more).
    const tenure = buffer.tenure;
    const signal = withTenure(this.abort.signal, tenure);
    try {
      const encoded = await retryUntilAborted(
        'parquet encode',
        async () => {
          await mkdir(this.config.tmpDir, { recursive: true });
          return this.encoder.encode(
            buffer.quarantine ? this.quarantineColumns : this.columns,
            rows,
            tmpFile,
            {
              stream: buffer.stream,
              shardId: buffer.shardId,
            },
          );
        },
        {
          signal,
          logger: this.logger,
          onError: () => this.metrics.uploadErrors.inc(this.labels),
          context,
          backoff: this.options.backoff,
        },
      );
      release(); // the rows live in the file now
      rows.length = 0;
      if (!encoded || !tenure.active) return;
      const fileBytes = encoded.value;
      const dir = `${this.config.prefix}${
        buffer.quarantine
          ? this.config.partitioning!.quarantinePrefix
          : buffer.partition !== null
            ? `${buffer.partition}/`
            : ''
      }`;
      // Derived events (e.g. RED windows) are not the same on a replay: their key is their content, so the
      // same windows overwrite each other and different ones never collide.
      const key = objectKey(
        dir,
        buffer.stream,
        buffer.shardId,
        first,
        last,
        buffer.derived ? await hashFile(tmpFile) : undefined,
      );
      const fileId = randomUUID();
      const eventTime = (ms: number) => (Number.isFinite(ms) ? new Date(ms).toISOString() : null);
      if (!buffer.derived) {
        const manifest: Manifest = {
          version: 1,
          fileId,
          bucket: this.config.bucket,
          dataKey: key,
          stream: buffer.stream,
          shardId: buffer.shardId,
          partition: buffer.quarantine ? this.config.partitioning!.quarantinePrefix : buffer.partition,
          quarantine: buffer.quarantine,
          partitions,
          rows: rowCount,
          firstPosition: formatEventPosition(first),
          lastPosition: formatEventPosition(last),
          minEventTime: eventTime(buffer.minTime),
          maxEventTime: eventTime(buffer.maxTime),
          positions,
        };
        const mKey = manifestKey(
          manifestDir(this.manifestPrefix, buffer.stream, buffer.shardId),
          { sequenceNumber: last.sequenceNumber, subSequenceNumber: last.subSequenceNumber },
          key,
        );
        if (!tenure.active || !(await this.service.putJson(mKey, manifest, signal))) return;
      }
      await this.slots.acquire();
      let uploaded: boolean;
      try {
        uploaded =
          tenure.active &&
          (await this.service.upload(
            {
              key,
              path: tmpFile,
              bytes: fileBytes,
              metadata: {
                'ksw-file-id': fileId,
                rows: String(rowCount),
                stream: buffer.stream,
                shard: buffer.shardId,
                'first-position': formatEventPosition(first),
                'last-position': formatEventPosition(last),
                'min-event-time': eventTime(buffer.minTime) ?? '',
                'max-event-time': eventTime(buffer.maxTime) ?? '',
                'min-arrival-time': eventTime(buffer.minArrival) ?? '',
                'max-arrival-time': eventTime(buffer.maxArrival) ?? '',
              },
            },
            signal,
          ));
      } finally {
        this.slots.release();
      }
      if (!uploaded) return;
      this.metrics.files.inc(this.labels);
      this.metrics.rows.inc(this.labels, rowCount);
      this.metrics.fileBytes.observe(this.labels, fileBytes);
      this.metrics.fileRows.observe(this.labels, rowCount);
      this.logger.debug({ key, rows: rowCount, bytes: fileBytes }, 'parquet file uploaded');
      for (const ack of acks) {
        try {
          ack.done();
        } catch (err) {
          this.logger.error({ error: (err as Error).message, key }, 'ack failed');
        }
      }
      if (!buffer.quarantine && buffer.partition !== null) this.registerPartition(buffer.partition);
    } finally {
      release();
      await rm(tmpFile, { force: true });
      this.tmpFiles.delete(tmpFile);
    }
  }

  /** Fire and forget: the data is durable and acked already; a failure is retried with the next file. */
  private registerPartition(partition: string): void {
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

/** Loads the Glue client (~0.2 s of module loading) with the first registration, not at worker start. */
function lazyGlueRegistrar(config: RegistrationConfig, s3: S3Client, location: string): PartitionRegistrar {
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

function bufferId(
  origin: ShardRef,
  tenure: Tenure,
  derived: boolean,
  partition: string | null,
  quarantine: boolean,
): string {
  return `${tenureKey(origin, tenure)}\n${derived ? 'd' : 'e'}${quarantine ? 'q' : 'p'}\n${partition ?? ''}`;
}

/** True when the buffer's last row comes from the same record as `origin`. */
function continuesRecord(buffer: FileBuffer, origin: RecordOrigin): boolean {
  const last = buffer.rows[buffer.rows.length - 1];
  return (
    last !== undefined &&
    last.sequenceNumber === origin.sequenceNumber &&
    last.subSequenceNumber === origin.subSequenceNumber
  );
}

function positionOf(row: StagedRow): EventPosition {
  return { sequenceNumber: row.sequenceNumber, subSequenceNumber: row.subSequenceNumber, index: row.index };
}

function compareRows(a: StagedRow, b: StagedRow): number {
  return (
    compareSequence(a.sequenceNumber, b.sequenceNumber) ||
    a.subSequenceNumber - b.subSequenceNumber ||
    a.index - b.index
  );
}

async function hashFile(file: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  return hash.digest('hex').slice(0, 16);
}

export { compareEventPosition };
