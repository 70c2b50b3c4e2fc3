import { Ack } from './ack.js';
import { DETACHED_TENURE, type Tenure } from './tenure.js';

/** A position in a shard: the last record (and KPL sub-record) covered. */
export interface ShardPosition {
  readonly sequenceNumber: string;
  readonly subSequenceNumber: number;
}

interface Entry {
  readonly position: ShardPosition;
  readonly bytes: number;
  readonly registeredAt: number;
  acked: boolean;
}

/**
 * Tracks the records of one shard in fetch order and computes the contiguous watermark: the highest
 * position such that it and every earlier record are acked. Only the watermark is ever checkpointed,
 * so a record that is still buffered in a sink (or a tail sampler) holds the checkpoint back.
 *
 * It also bounds the data in flight for the shard: `inFlightBytes` counts every record between the
 * watermark and the newest fetched record, and `waitForCapacity` blocks the fetch loop while it is
 * over the limit (backpressure instead of unbounded memory).
 *
 * A watermark belongs to one lease tenure (each take of a lease starts a new one): the acks it hands out
 * carry that tenure, and once `close()` is called (the tenure ended) it stops moving, so an ack completed
 * late by a sink can never move the checkpoint of a later tenure, whose watermark is another object.
 */
export class ShardWatermark {
  private readonly entries: Entry[] = [];
  private head = 0;
  private bytes = 0;
  private current: ShardPosition | undefined;
  private waiters: Array<() => void> = [];
  private drainWaiters: Array<() => void> = [];
  private closed = false;

  constructor(
    readonly maxInFlightBytes: number,
    initial?: ShardPosition,
    private readonly now: () => number = Date.now,
    readonly tenure: Tenure = DETACHED_TENURE,
  ) {
    this.current = initial;
  }

  /** Registers the next fetched record and returns its root ack. Records must be registered in order. */
  register(position: ShardPosition, bytes: number): Ack {
    const entry: Entry = { position, bytes, registeredAt: this.now(), acked: false };
    this.entries.push(entry);
    this.bytes += bytes;
    return new Ack(() => {
      entry.acked = true;
      this.advance();
    }, this.tenure);
  }

  /**
   * The tenure ended: the watermark stays where it is from now on, and whoever waits for capacity or for
   * the drain is released (the reader is stopping; a handoff gives up waiting).
   */
  close(): void {
    this.closed = true;
    this.wake();
  }

  /** The highest contiguous acked position, or the initial position when nothing was acked yet. */
  get watermark(): ShardPosition | undefined {
    return this.current;
  }

  get inFlightBytes(): number {
    return this.bytes;
  }

  get inFlightRecords(): number {
    return this.entries.length - this.head;
  }

  /** Age in ms of the oldest record not yet covered by the watermark (0 when none). */
  get oldestUnackedAgeMs(): number {
    const oldest = this.entries[this.head];
    return oldest ? this.now() - oldest.registeredAt : 0;
  }

  get hasCapacity(): boolean {
    return this.bytes < this.maxInFlightBytes;
  }

  /** Resolves when in-flight bytes are below the limit. */
  waitForCapacity(): Promise<void> {
    if (this.hasCapacity || this.closed) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  /** Resolves when every registered record is acked. */
  drained(): Promise<void> {
    if (this.inFlightRecords === 0 || this.closed) return Promise.resolve();
    return new Promise((resolve) => this.drainWaiters.push(resolve));
  }

  private advance(): void {
    if (this.closed) return;
    let moved = false;
    while (this.head < this.entries.length) {
      const entry = this.entries[this.head]!;
      if (!entry.acked) break;
      this.current = entry.position;
      this.bytes -= entry.bytes;
      this.head += 1;
      moved = true;
    }
    if (!moved) return;
    // Compact now and then so the array does not grow with the shard's lifetime.
    if (this.head > 4096 && this.head * 2 > this.entries.length) {
      this.entries.splice(0, this.head);
      this.head = 0;
    }
    this.wake();
  }

  private wake(): void {
    if ((this.closed || this.hasCapacity) && this.waiters.length > 0) {
      const waiters = this.waiters;
      this.waiters = [];
      for (const w of waiters) w();
    }
    if ((this.closed || this.inFlightRecords === 0) && this.drainWaiters.length > 0) {
      const waiters = this.drainWaiters;
      this.drainWaiters = [];
      for (const w of waiters) w();
    }
  }
}
