/**
 * Batching, rolling and acks of the Parquet sink. Each shard has its own buffer of converted rows;
 * a buffer is rolled into a file when a size limit is reached (checked between Kinesis records, so
 * the events of one record never end up in two files), when it gets too old, or on flush. A rolled
 * file is encoded, uploaded, and only then are its events acked.
 *
 * Object keys are derived from the positions of the first and last event, so a replay after a crash
 * overwrites rather than duplicates; on `openShard` the sink also recognises objects committed after
 * the checkpoint and acks their events without writing them again, so that every record ends up in
 * exactly one object even when the new run rolls at different points.
 */
import { randomUUID } from 'node:crypto';
import { mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import type { Ack } from '../../core/ack.js';
import { settlesWithin } from '../../core/backoff.js';
import type { ComponentContext, ShardRef, Sink } from '../../core/component.js';
import { compareSequence, type PipelineEvent, type RecordOrigin } from '../../core/records.js';
import type { ShardPosition } from '../../core/watermark.js';
import { counter, gauge, histogram } from '../../metrics/registry.js';
import type { ParquetSinkConfig } from './config.js';
import { type Cell, ParquetEncoder, RowBuilder } from './encoder.js';
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

const OBJECT_NAME = /^(\d+)(?:\.(\d+))?_(\d+)(?:\.(\d+))?\.parquet$/;

/** The first/last positions encoded in an object's file name, or undefined for foreign names. */
export function parseObjectName(name: string): { first: ShardPosition; last: ShardPosition } | undefined {
  const match = OBJECT_NAME.exec(name);
  if (!match) return undefined;
  const [, firstSeq, firstSub = '0', lastSeq, lastSub = '0'] = match;
  return {
    first: { sequenceNumber: firstSeq!, subSequenceNumber: Number(firstSub) },
    last: { sequenceNumber: lastSeq!, subSequenceNumber: Number(lastSub) },
  };
}

export function shardPrefix(prefix: string, stream: string, shardId: string): string {
  return `${prefix}${stream}/${shardId}/`;
}

export function objectKey(
  prefix: string,
  stream: string,
  shardId: string,
  first: ShardPosition,
  last: ShardPosition,
): string {
  return `${shardPrefix(prefix, stream, shardId)}${formatPosition(first)}_${formatPosition(last)}.parquet`;
}

interface ReplayRange {
  readonly key: string;
  readonly first: ShardPosition;
  readonly last: ShardPosition;
}

interface ShardBuffer {
  readonly stream: string;
  readonly shardId: string;
  rows: Cell[][];
  acks: Ack[];
  rawBytes: number;
  first: ShardPosition | undefined;
  last: ShardPosition | undefined;
  minArrival: number;
  maxArrival: number;
  timer: NodeJS.Timeout | undefined;
  /** Objects of a previous run beyond the checkpoint, sorted by first position. */
  replay: ReplayRange[];
}

interface RolledFile {
  readonly stream: string;
  readonly shardId: string;
  rows: Cell[][];
  readonly rowCount: number;
  readonly acks: Ack[];
  readonly first: ShardPosition;
  readonly last: ShardPosition;
  readonly minArrival: number;
  readonly maxArrival: number;
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
    bufferedBytes: gauge(ctx.metrics, {
      name: 'ksw_parquet_buffered_bytes',
      help: 'Raw bytes of events buffered in shard files not rolled yet.',
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
      help: 'Failed attempts to encode, upload or list Parquet files (each is retried).',
      labelNames,
    }),
    replaySkipped: counter(ctx.metrics, {
      name: 'ksw_parquet_replay_skipped_events_total',
      help: 'Replayed events acked without writing because an object of the previous run already holds them.',
      labelNames,
    }),
    deadLetters: counter(ctx.metrics, {
      name: 'ksw_parquet_dead_letters_total',
      help: 'Events sent to the dead-letter queue because a value did not fit its column type.',
      labelNames,
    }),
  };
}

export interface ParquetSinkOptions {
  /** Retry backoff for encode/upload/list failures (tests shorten it). */
  readonly backoff?: BackoffOptions;
}

export class S3ParquetSink implements Sink {
  private readonly logger: Logger;
  private readonly metrics: ReturnType<typeof createMetrics>;
  private readonly labels: { sink: string };
  private readonly rowBuilder: RowBuilder;
  private readonly encoder: ParquetEncoder;
  private readonly service: ParquetUploadService;
  private readonly abort = new AbortController();
  private readonly slots: Slots;
  private readonly shards = new Map<string, ShardBuffer>();
  private readonly inflight = new Set<Promise<void>>();
  private readonly tmpFiles = new Set<string>();
  private capacityWaiters: Array<() => void> = [];
  private pendingFiles = 0;
  private bufferedBytes = 0;
  private fileCounter = 0;
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
    this.rowBuilder = new RowBuilder(config.columns, config.recordColumn);
    this.encoder = new ParquetEncoder({
      columns: this.rowBuilder.columns,
      compression: config.compression,
      rowGroupRows: config.rowGroupRows,
    });
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
    });
  }

  async openShard(shard: ShardRef, checkpoint: ShardPosition | undefined): Promise<void> {
    const buffer = this.shardBuffer(shard);
    const dir = shardPrefix(this.config.prefix, shard.stream, shard.shardId);
    const keys = await this.service.listKeys(dir);
    if (!keys) return; // closed meanwhile: nothing will be written any more
    const ranges: ReplayRange[] = [];
    for (const key of keys) {
      const parsed = parseObjectName(key.slice(dir.length));
      if (!parsed) continue;
      // Without a checkpoint the shard starts over, so every object may hold records about to be replayed.
      if (checkpoint && comparePosition(parsed.last, checkpoint) <= 0) continue;
      ranges.push({ key, ...parsed });
    }
    ranges.sort((a, b) => comparePosition(a.first, b.first));
    buffer.replay = ranges;
    if (ranges.length > 0) {
      this.logger.info(
        { stream: shard.stream, shardId: shard.shardId, objects: ranges.length },
        'objects committed after the checkpoint found; their events will be acked without rewriting',
      );
    }
  }

  async write(events: PipelineEvent[]): Promise<void> {
    if (this.closed) throw new Error(`sink ${this.name} is closed`);
    await this.waitForCapacity();
    const { maxFileRows, maxFileBytes } = this.config.roll;
    for (const event of events) {
      const shard = this.shardBuffer(event.origin);
      const position: ShardPosition = {
        sequenceNumber: event.origin.sequenceNumber,
        subSequenceNumber: event.origin.subSequenceNumber,
      };
      // Converted first even when replayed: an event that failed conversion in the previous run is not in
      // that run's object, and dead-lettering it again is the only way to be sure its letter exists.
      const built = this.rowBuilder.build(event);
      if (!built.ok) {
        this.deadLetter(event, built.reason);
        continue;
      }
      if (this.coveredByReplay(shard, position)) {
        // Roll first so no new file's key range straddles an object of the previous run.
        if (shard.rows.length > 0) {
          this.roll(shard);
          await this.waitForCapacity();
        }
        this.metrics.replaySkipped.inc(this.labels);
        event.ack.done();
        continue;
      }
      if (
        shard.last !== undefined &&
        comparePosition(shard.last, position) !== 0 &&
        (shard.rows.length >= maxFileRows || shard.rawBytes >= maxFileBytes)
      ) {
        this.roll(shard);
        await this.waitForCapacity();
      }
      this.append(shard, event, built.row, position);
    }
  }

  async flush(): Promise<void> {
    for (const shard of this.shards.values()) this.roll(shard);
    await Promise.all([...this.inflight]);
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
      while ([...this.shards.values()].some((s) => s.rows.length > 0) || this.inflight.size > 0);
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
    for (const shard of this.shards.values()) clearTimeout(shard.timer);
    await this.encoder.close();
    await Promise.all([...this.tmpFiles].map((file) => rm(file, { force: true })));
  }

  private shardBuffer(ref: ShardRef | RecordOrigin): ShardBuffer {
    const id = `${ref.stream}\n${ref.shardId}`;
    let shard = this.shards.get(id);
    if (!shard) {
      shard = {
        stream: ref.stream,
        shardId: ref.shardId,
        rows: [],
        acks: [],
        rawBytes: 0,
        first: undefined,
        last: undefined,
        minArrival: Number.POSITIVE_INFINITY,
        maxArrival: Number.NEGATIVE_INFINITY,
        timer: undefined,
        replay: [],
      };
      this.shards.set(id, shard);
    }
    return shard;
  }

  private coveredByReplay(shard: ShardBuffer, position: ShardPosition): boolean {
    const ranges = shard.replay;
    if (ranges.length === 0) return false;
    // Events arrive in order: a range that ends before this event can never match again.
    while (ranges.length > 0 && comparePosition(ranges[0]!.last, position) < 0) ranges.shift();
    return ranges.some(
      (r) => comparePosition(r.first, position) <= 0 && comparePosition(position, r.last) <= 0,
    );
  }

  private deadLetter(event: PipelineEvent, reason: string): void {
    this.metrics.deadLetters.inc(this.labels);
    this.ctx.dlq.put(
      { origin: event.origin, index: event.index, data: event.raw, reason, component: this.component },
      event.ack,
    );
  }

  private append(shard: ShardBuffer, event: PipelineEvent, row: Cell[], position: ShardPosition): void {
    if (shard.rows.length === 0) {
      shard.first = position;
      shard.timer = setTimeout(() => this.roll(shard), this.config.roll.maxFileAgeMs);
      shard.timer.unref();
    }
    shard.rows.push(row);
    shard.acks.push(event.ack);
    shard.last = position;
    const bytes = event.raw.byteLength;
    shard.rawBytes += bytes;
    this.bufferedBytes += bytes;
    this.metrics.bufferedBytes.set(this.labels, this.bufferedBytes);
    const arrival = event.origin.arrivalTime.getTime();
    if (arrival < shard.minArrival) shard.minArrival = arrival;
    if (arrival > shard.maxArrival) shard.maxArrival = arrival;
  }

  private roll(shard: ShardBuffer): void {
    clearTimeout(shard.timer);
    shard.timer = undefined;
    if (shard.rows.length === 0 || !shard.first || !shard.last) return;
    const file: RolledFile = {
      stream: shard.stream,
      shardId: shard.shardId,
      rows: shard.rows,
      rowCount: shard.rows.length,
      acks: shard.acks,
      first: shard.first,
      last: shard.last,
      minArrival: shard.minArrival,
      maxArrival: shard.maxArrival,
    };
    this.bufferedBytes -= shard.rawBytes;
    this.metrics.bufferedBytes.set(this.labels, this.bufferedBytes);
    shard.rows = [];
    shard.acks = [];
    shard.rawBytes = 0;
    shard.first = undefined;
    shard.last = undefined;
    shard.minArrival = Number.POSITIVE_INFINITY;
    shard.maxArrival = Number.NEGATIVE_INFINITY;

    this.pendingFiles += 1;
    const committed = this.commit(file)
      .catch((err: unknown) => {
        // Not expected (every step retries); the events stay unacked and are read again after a restart.
        this.logger.error(
          { error: (err as Error)?.message, stream: file.stream, shardId: file.shardId },
          'commit failed',
        );
      })
      .finally(() => {
        this.pendingFiles -= 1;
        this.inflight.delete(committed);
        this.wakeCapacityWaiters();
      });
    this.inflight.add(committed);
  }

  /** Encodes, uploads and acks one rolled file. Resolves without acking only when the sink is closed. */
  private async commit(file: RolledFile): Promise<void> {
    const key = objectKey(this.config.prefix, file.stream, file.shardId, file.first, file.last);
    this.fileCounter += 1;
    const tmpFile = path.join(
      this.config.tmpDir,
      `ksw-parquet-${process.pid}-${this.fileCounter}-${randomUUID().slice(0, 8)}.parquet`,
    );
    this.tmpFiles.add(tmpFile);
    try {
      const encoded = await retryUntilAborted(
        'parquet encode',
        async () => {
          await mkdir(this.config.tmpDir, { recursive: true });
          return this.encoder.encode(file.rows, tmpFile, { stream: file.stream, shardId: file.shardId });
        },
        {
          signal: this.abort.signal,
          logger: this.logger,
          onError: () => this.metrics.uploadErrors.inc(this.labels),
          context: { key },
          backoff: this.options.backoff,
        },
      );
      if (!encoded) return;
      file.rows = []; // the rows live in the file now
      const bytes = encoded.value;
      await this.slots.acquire();
      let uploaded: boolean;
      try {
        uploaded = await this.service.upload({
          key,
          path: tmpFile,
          bytes,
          metadata: {
            rows: String(file.rowCount),
            stream: file.stream,
            shard: file.shardId,
            'first-sequence': formatPosition(file.first),
            'last-sequence': formatPosition(file.last),
            'min-arrival-time': isoOrEmpty(file.minArrival),
            'max-arrival-time': isoOrEmpty(file.maxArrival),
          },
        });
      } finally {
        this.slots.release();
      }
      if (!uploaded) return;
      this.metrics.files.inc(this.labels);
      this.metrics.rows.inc(this.labels, file.rowCount);
      this.metrics.fileBytes.observe(this.labels, bytes);
      this.metrics.fileRows.observe(this.labels, file.rowCount);
      this.logger.debug({ key, rows: file.rowCount, bytes }, 'parquet file uploaded');
      for (const ack of file.acks) {
        try {
          ack.done();
        } catch (err) {
          this.logger.error({ error: (err as Error).message, key }, 'ack failed');
        }
      }
    } finally {
      await rm(tmpFile, { force: true });
      this.tmpFiles.delete(tmpFile);
    }
  }

  private async waitForCapacity(): Promise<void> {
    while (this.pendingFiles > 2 * this.config.uploadConcurrency && !this.abort.signal.aborted) {
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

function isoOrEmpty(ms: number): string {
  return Number.isFinite(ms) ? new Date(ms).toISOString() : '';
}
