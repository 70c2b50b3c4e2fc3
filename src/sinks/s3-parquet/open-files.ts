/**
 * The Parquet sink's open files: one buffer of staged rows per (tenure, shard, derived, partition or
 * quarantine), the count of open files per partition (for the open-partition cap), and the bytes they hold
 * (for the memory cap). A file never mixes tenures: when a lease tenure ends, its files are discarded whole.
 */
import type { Ack } from '../../core/ack.js';
import type { ShardRef, Tenure } from '../../core/component.js';
import { compareSequence, type PipelineEvent, type RecordOrigin } from '../../core/records.js';
import { tenureKey } from '../../core/tenure.js';
import type { StagedRow } from './columns.js';

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

export interface FileBuffer {
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

/** The rows and acks of a file taken out of the open set, for its commit. */
export interface RolledFile {
  readonly buffer: FileBuffer;
  readonly rows: StagedRow[];
  readonly acks: Ack[];
  readonly bytes: number;
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

export function compareRows(a: StagedRow, b: StagedRow): number {
  return (
    compareSequence(a.sequenceNumber, b.sequenceNumber) ||
    a.subSequenceNumber - b.subSequenceNumber ||
    a.index - b.index
  );
}

export class OpenFiles {
  private readonly buffers = new Map<string, FileBuffer>();
  /** Open files per partition path (across shards and tenures). */
  private readonly partitions = new Map<string, number>();
  private last: FileBuffer | undefined;
  /** Bytes of rows in open files. */
  bytes = 0;

  constructor(
    /** Called whenever the number of open files or partitions changes (gauges). */
    private readonly onChange: (files: number, partitions: number) => void,
    /** Arms the age timer of a file that got its first row. */
    private readonly onFirstRow: (buffer: FileBuffer) => NodeJS.Timeout,
  ) {}

  get size(): number {
    return this.buffers.size;
  }

  hasPartition(partition: string): boolean {
    return this.partitions.has(partition);
  }

  get partitionCount(): number {
    return this.partitions.size;
  }

  all(): FileBuffer[] {
    return [...this.buffers.values()];
  }

  ofTenure(tenure: Tenure): FileBuffer[] {
    return this.all().filter((b) => b.tenure === tenure);
  }

  /** The open file of a partition's natural (non-quarantine, decoded events) file, if any. */
  natural(origin: RecordOrigin, tenure: Tenure, partition: string | null): FileBuffer | undefined {
    return this.buffers.get(bufferId(origin, tenure, false, partition, false));
  }

  /** The open file for an event, opened when there is none. */
  get(
    origin: RecordOrigin,
    tenure: Tenure,
    derived: boolean,
    partition: string | null,
    quarantine: boolean,
  ): FileBuffer {
    // Consecutive events usually go to the same open file: reuse it without building its id.
    const last = this.last;
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
      if (partition !== null) this.partitions.set(partition, (this.partitions.get(partition) ?? 0) + 1);
      this.onChange(this.buffers.size, this.partitions.size);
    }
    this.last = buffer;
    return buffer;
  }

  append(buffer: FileBuffer, event: PipelineEvent, row: StagedRow, time: number): void {
    const rows = buffer.rows;
    if (rows.length === 0) buffer.timer = this.onFirstRow(buffer);
    else if (buffer.sorted && compareRows(rows[rows.length - 1]!, row) >= 0) buffer.sorted = false;
    rows.push(row);
    buffer.acks.push(event.ack);
    const bytes = estimateRowBytes(row);
    buffer.bytes += bytes;
    this.bytes += bytes;
    if (time < buffer.minTime) buffer.minTime = time;
    if (time > buffer.maxTime) buffer.maxTime = time;
    const arrival = event.origin.arrivalTime.getTime();
    if (arrival < buffer.minArrival) buffer.minArrival = arrival;
    if (arrival > buffer.maxArrival) buffer.maxArrival = arrival;
  }

  /** Takes a file out of the open set with its rows and acks (undefined when it holds none). */
  take(buffer: FileBuffer): RolledFile | undefined {
    this.unlist(buffer);
    if (buffer.rows.length === 0) return undefined;
    const rolled = { buffer, rows: buffer.rows, acks: buffer.acks, bytes: buffer.bytes };
    this.bytes -= buffer.bytes;
    buffer.rows = [];
    buffer.acks = [];
    buffer.bytes = 0;
    return rolled;
  }

  /** Closes a file without writing it (its tenure ended): its rows and acks are let go. */
  discard(buffer: FileBuffer): void {
    this.take(buffer);
  }

  /** The open files, largest first (the memory cap rolls from the front). */
  largestFirst(): FileBuffer[] {
    return this.all().sort((a, b) => b.bytes - a.bytes);
  }

  clearTimers(): void {
    for (const buffer of this.buffers.values()) clearTimeout(buffer.timer);
  }

  private unlist(buffer: FileBuffer): void {
    clearTimeout(buffer.timer);
    buffer.timer = undefined;
    if (this.last === buffer) this.last = undefined;
    if (this.buffers.get(buffer.id) !== buffer) return;
    this.buffers.delete(buffer.id);
    if (buffer.partition !== null) {
      const open = (this.partitions.get(buffer.partition) ?? 1) - 1;
      if (open > 0) this.partitions.set(buffer.partition, open);
      else this.partitions.delete(buffer.partition);
    }
    this.onChange(this.buffers.size, this.partitions.size);
  }
}

/** True when the buffer's last row comes from the same record as `origin`. */
export function continuesRecord(buffer: FileBuffer, origin: RecordOrigin): boolean {
  const last = buffer.rows[buffer.rows.length - 1];
  return (
    last !== undefined &&
    last.sequenceNumber === origin.sequenceNumber &&
    last.subSequenceNumber === origin.subSequenceNumber
  );
}
