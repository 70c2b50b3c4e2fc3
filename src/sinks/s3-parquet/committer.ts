/**
 * Committing a rolled file: encode it (DuckDB, to a temporary file), write its manifest, upload the data
 * object, then ack its events. The commit point is the data object existing with the manifest's file id.
 *
 * Every step runs in the file's scope: it stops when the sink closes or when the file's lease tenure
 * ends (lost, fenced, failed: others may read the shard now), and it checks the tenure right before each
 * request, so nothing of an ended tenure lands after it. An S3 error that retrying cannot cure fails the
 * tenure (`tenure.fail('sink')`): its shard is released and read again once the cause is fixed, instead
 * of the upload being retried silently forever.
 */
import { createHash, randomUUID } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import { withTenure } from '../../core/tenure.js';
import type { StagedRow, TableColumn } from './columns.js';
import type { ParquetSinkConfig } from './config.js';
import type { ParquetEncoder } from './encoder.js';
import {
  type EventPosition,
  encodePositions,
  formatEventPosition,
  type Manifest,
  manifestDir,
  manifestKey,
} from './manifest.js';
import type { ParquetSinkMetrics } from './metrics.js';
import { objectKey } from './object-keys.js';
import { compareRows, type RolledFile } from './open-files.js';
import type { PartitionRegistrations } from './partition-registrations.js';
import {
  type BackoffOptions,
  type ParquetUploadService,
  PermanentStorageError,
  type RequestScope,
  retryUntilAborted,
} from './service.js';

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

export interface CommitterOptions {
  readonly config: ParquetSinkConfig;
  readonly service: ParquetUploadService;
  readonly encoder: ParquetEncoder;
  readonly registrations: PartitionRegistrations;
  readonly metrics: ParquetSinkMetrics;
  readonly labels: { sink: string };
  readonly logger: Logger;
  /** The sink's signal (aborted when it closes). */
  readonly signal: AbortSignal;
  readonly columns: readonly TableColumn[];
  readonly quarantineColumns: readonly TableColumn[];
  readonly manifestPrefix: string;
  readonly backoff?: BackoffOptions;
  /**
   * Called once a file's data object is uploaded, before its events are acked. Returning a promise takes
   * the acks over (the Iceberg mode acks them once the file is committed to the table) and the commit
   * resolves with it; undefined acks them now.
   */
  readonly handOff?: (file: UploadedFile) => Promise<void> | undefined;
}

/** A data object just uploaded, with the acks of its events. */
export interface UploadedFile {
  readonly key: string;
  readonly bytes: number;
  readonly rows: number;
  readonly stream: string;
  readonly shardId: string;
  /** Hive partition path, or null (unpartitioned, or a quarantine file). */
  readonly partition: string | null;
  readonly quarantine: boolean;
  readonly derived: boolean;
  /** Min event (partition) time of the file's rows, ms since the epoch. */
  readonly minTimeMs: number;
  readonly tenure: import('../../core/component.js').Tenure;
  readonly acks: readonly { done(): void }[];
  /** The rolled file this upload came from. */
  readonly source: RolledFile;
}

export class FileCommitter {
  private readonly slots: Slots;
  private readonly tmpFiles = new Set<string>();
  private fileCounter = 0;

  constructor(private readonly opts: CommitterOptions) {
    this.slots = new Slots(opts.config.uploadConcurrency);
  }

  /**
   * Commits the file; resolves without acking when the scope ended or the tenure failed. `released` is
   * called once the rows live in the encoded file (so the sink can account their memory as freed).
   */
  async commit(file: RolledFile, released: () => void): Promise<void> {
    const { config, service, metrics, labels } = this.opts;
    const { buffer, acks } = file;
    const rows = file.rows;
    const tenure = buffer.tenure;
    const scope: RequestScope = {
      signal: withTenure(this.opts.signal, tenure),
      proceed: () => tenure.writable,
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
      config.tmpDir,
      `ksw-parquet-${process.pid}-${this.fileCounter}-${randomUUID().slice(0, 8)}.parquet`,
    );
    this.tmpFiles.add(tmpFile);
    const context = { stream: buffer.stream, shardId: buffer.shardId, first: formatEventPosition(first) };
    let done = false;
    const release = () => {
      if (done) return;
      done = true;
      released();
    };
    try {
      const encoded = await retryUntilAborted(
        'parquet encode',
        async () => {
          await mkdir(config.tmpDir, { recursive: true });
          return this.opts.encoder.encode(
            buffer.quarantine ? this.opts.quarantineColumns : this.opts.columns,
            rows,
            tmpFile,
            { stream: buffer.stream, shardId: buffer.shardId },
          );
        },
        {
          signal: scope.signal,
          ...(scope.proceed ? { proceed: scope.proceed } : {}),
          logger: this.opts.logger,
          onError: () => metrics.uploadErrors.inc(labels),
          context,
          backoff: this.opts.backoff,
        },
      );
      release(); // the rows live in the file now
      rows.length = 0;
      if (!encoded || !tenure.writable) return;
      const fileBytes = encoded.value;
      const dir = `${config.prefix}${
        buffer.quarantine
          ? config.partitioning!.quarantinePrefix
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
          bucket: config.bucket,
          dataKey: key,
          stream: buffer.stream,
          shardId: buffer.shardId,
          partition: buffer.quarantine ? config.partitioning!.quarantinePrefix : buffer.partition,
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
          manifestDir(this.opts.manifestPrefix, buffer.stream, buffer.shardId),
          { sequenceNumber: last.sequenceNumber, subSequenceNumber: last.subSequenceNumber },
          key,
        );
        if (!(await service.putJson(mKey, manifest, scope))) return;
      }
      await this.slots.acquire();
      let uploaded: boolean;
      try {
        uploaded = await service.upload(
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
          scope,
        );
      } finally {
        this.slots.release();
      }
      if (!uploaded) return;
      metrics.files.inc(labels);
      metrics.rows.inc(labels, rowCount);
      metrics.fileBytes.observe(labels, fileBytes);
      metrics.fileRows.observe(labels, rowCount);
      this.opts.logger.debug({ key, rows: rowCount, bytes: fileBytes }, 'parquet file uploaded');
      const handedOff = this.opts.handOff?.({
        key,
        bytes: fileBytes,
        rows: rowCount,
        stream: buffer.stream,
        shardId: buffer.shardId,
        partition: buffer.quarantine ? null : buffer.partition,
        quarantine: buffer.quarantine,
        derived: buffer.derived,
        minTimeMs: buffer.minTime,
        tenure,
        acks,
        source: file,
      });
      if (handedOff) {
        await handedOff;
        return;
      }
      for (const ack of acks) {
        try {
          ack.done();
        } catch (err) {
          this.opts.logger.error({ error: (err as Error).message, key }, 'ack failed');
        }
      }
      if (!buffer.quarantine && buffer.partition !== null) this.opts.registrations.register(buffer.partition);
    } catch (err) {
      if (!(err instanceof PermanentStorageError)) throw err;
      metrics.permanentErrors.inc({ ...labels, error: err.errorName });
      this.opts.logger.error(
        { ...context, bucket: config.bucket, error: err.errorName, reason: err.message },
        'S3 refuses the file for a reason retrying cannot cure (check the bucket, the IAM policy, the KMS key); releasing the shard, its records stay unacked',
      );
      tenure.fail('sink', err);
    } finally {
      release();
      await rm(tmpFile, { force: true });
      this.tmpFiles.delete(tmpFile);
    }
  }

  /** Removes temporary files still on disk (at close). */
  async close(): Promise<void> {
    await Promise.all([...this.tmpFiles].map((file) => rm(file, { force: true })));
  }
}

function positionOf(row: StagedRow): EventPosition {
  return { sequenceNumber: row.sequenceNumber, subSequenceNumber: row.subSequenceNumber, index: row.index };
}

async function hashFile(file: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  return hash.digest('hex').slice(0, 16);
}
