import { DETACHED_TENURE, type Tenure } from './tenure.js';

/**
 * The one acknowledgement type of the pipeline. Data flows forward; acks flow back through `Ack`.
 *
 * A record's root ack is created by its shard's `ShardWatermark`. Whatever the chain does to a record
 * (decode it into several events, route an event to several sinks, drop it deliberately) it turns
 * the ack into parts with `split(n)` and hands one part to each holder. The root completes when every
 * part has completed; only then can the watermark (and so the checkpoint) pass the record.
 *
 * There is deliberately no negative ack: a part that cannot be completed is retried by its holder or
 * sent to the dead-letter queue (which then completes it). A record whose ack never completes simply
 * holds the checkpoint back, so after a crash it is read again: nothing is lost.
 *
 * Every ack belongs to the lease tenure of its record's shard (`tenure`; parts inherit it). Holders check
 * `ack.tenure.active` before writing: once the tenure ended, its events must not be written any more (the
 * next tenure reads them again), and completing its acks no longer moves any checkpoint.
 */
export class Ack {
  private pending = 1;
  private readonly onComplete: () => void;
  /** The lease tenure the record was read in; `DETACHED_TENURE` for acks made outside any lease. */
  readonly tenure: Tenure;

  constructor(onComplete: () => void, tenure: Tenure = DETACHED_TENURE) {
    this.onComplete = onComplete;
    this.tenure = tenure;
  }

  /** True once every part has completed. */
  get completed(): boolean {
    return this.pending === 0;
  }

  /** Completes this ack (or this part). Completing twice is a bug in the holder and throws. */
  done(): void {
    if (this.pending <= 0) throw new Error('Ack completed twice');
    this.pending -= 1;
    if (this.pending === 0) this.onComplete();
  }

  /**
   * Replaces this ack by `n` parts; this ack completes when all of them have completed.
   * `split(0)` completes it at once (the record was deliberately dropped).
   * The caller must not call `done()` on this ack afterwards, only on the parts.
   */
  split(n: number): Ack[] {
    if (this.pending !== 1) throw new Error('Ack can only be split while it is the only part');
    if (n === 0) {
      this.done();
      return [];
    }
    if (n === 1) return [this];
    this.pending = n;
    const parts: Ack[] = [];
    for (let i = 0; i < n; i++) parts.push(new Ack(() => this.done(), this.tenure));
    return parts;
  }
}

/** Completes all acks of a batch; used by sinks once a batch is durable. */
export function ackAll(items: Iterable<{ ack: Ack }>): void {
  for (const item of items) item.ack.done();
}
