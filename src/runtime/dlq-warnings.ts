/**
 * A warning when records go to the dead-letter queue, rate-limited: the first letter is reported at once,
 * later ones at most once per `intervalMs` as a count with the last reason and position, and where the
 * letters are. A run with dead letters therefore never ends silently (`ksw_dlq_records_total` counts them
 * too). Wraps the configured DLQ; everything else passes through.
 */
import type { Logger } from 'pino';
import type { Ack } from '../core/ack.js';
import type { DeadLetter, DeadLetterQueue, Tenure } from '../core/component.js';

export class DeadLetterWarnings implements DeadLetterQueue {
  private pending = 0;
  private total = 0;
  private last: DeadLetter | undefined;
  private lastWarnAt = Number.NEGATIVE_INFINITY;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly inner: DeadLetterQueue,
    private readonly logger: Logger,
    private readonly intervalMs: number,
    /** Where the letters are, for the message (e.g. s3://bucket/dlq/). */
    private readonly where: string,
    private readonly now: () => number = Date.now,
  ) {}

  put(letter: DeadLetter, ack: Ack): void {
    this.pending += 1;
    this.total += 1;
    this.last = letter;
    const due = this.lastWarnAt + this.intervalMs;
    if (this.now() >= due) this.warn();
    else
      this.timer ??= setTimeout(() => {
        this.timer = undefined;
        this.warn();
      }, due - this.now()).unref();
    this.inner.put(letter, ack);
  }

  private warn(): void {
    if (this.pending === 0 || !this.last) return;
    const l = this.last;
    this.logger.warn(
      {
        letters: this.pending,
        total: this.total,
        component: l.component,
        reason: l.reason,
        stream: l.origin.stream,
        shard: l.origin.shardId,
        sequenceNumber: l.origin.sequenceNumber,
        dlq: this.where,
      },
      this.pending === 1
        ? 'record sent to the dead-letter queue'
        : `${this.pending} records sent to the dead-letter queue (the last one shown)`,
    );
    this.pending = 0;
    this.lastWarnAt = this.now();
  }

  flushShard(tenure: Tenure): Promise<void> {
    return this.inner.flushShard ? this.inner.flushShard(tenure) : this.inner.flush();
  }

  async closeShard(tenure: Tenure): Promise<void> {
    await this.inner.closeShard?.(tenure);
  }

  flush(): Promise<void> {
    return this.inner.flush();
  }

  async close(): Promise<void> {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.warn();
    await this.inner.close();
  }
}
