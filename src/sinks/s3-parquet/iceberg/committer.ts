/**
 * The Iceberg mode's table committer: uploaded data files wait here (their events unacked) and are
 * committed to the table together, one snapshot per commit, at most `commitIntervalMs` after the first of
 * them arrived, at once when `maxFilesPerCommit` wait, or as soon as possible while the sink is flushing.
 * Only after the snapshot is in the catalog are the files' events acked, so the checkpoint passes a record
 * only once its file is in the table. A failed commit is retried with backoff; files of a tenure that ended
 * meanwhile are dropped unacked (the next tenure reads those records again and writes them again).
 */
import type { Logger } from 'pino';
import type { Tenure } from '../../../core/component.js';
import { type BackoffOptions, retryUntilAborted } from '../service.js';
import type { CommitFile, IcebergTable } from './table.js';

interface Waiting {
  readonly file: CommitFile;
  readonly tenure: Tenure;
  readonly acks: readonly { done(): void }[];
  readonly done: () => void;
}

export interface TableCommitterOptions {
  readonly table: IcebergTable;
  readonly commitIntervalMs: number;
  readonly maxFilesPerCommit: number;
  readonly logger: Logger;
  readonly signal: AbortSignal;
  readonly backoff?: BackoffOptions;
  /** Told after each commit (metrics). */
  readonly onCommit?: (c: { files: number; skipped: number; conflicts: number; seconds: number }) => void;
  readonly onError?: () => void;
  /** Told the number of waiting files whenever it changes (gauge). */
  readonly onWaiting?: (files: number) => void;
}

export class TableCommitter {
  private waiting: Waiting[] = [];
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private hurrying = 0;

  constructor(private readonly opts: TableCommitterOptions) {}

  /** Queues an uploaded file; resolves once it is committed and its events acked (or it was dropped). */
  add(file: CommitFile, tenure: Tenure, acks: readonly { done(): void }[]): Promise<void> {
    return new Promise<void>((done) => {
      this.waiting.push({ file, tenure, acks, done });
      this.opts.onWaiting?.(this.waiting.length);
      this.schedule();
    });
  }

  /** While at least one flush is under way, files are committed as soon as they arrive. */
  hurry(delta: 1 | -1): void {
    this.hurrying += delta;
    if (delta > 0) this.schedule();
  }

  get pending(): number {
    return this.waiting.length;
  }

  private schedule(): void {
    if (this.waiting.length === 0 || this.running) return;
    const now = this.hurrying > 0 || this.waiting.length >= this.opts.maxFilesPerCommit;
    if (now) {
      if (this.timer) clearTimeout(this.timer);
      this.timer = undefined;
      // setImmediate: files that arrive in the same turn go into the same snapshot.
      setImmediate(() => this.start());
      return;
    }
    if (!this.timer) {
      this.timer = setTimeout(() => {
        this.timer = undefined;
        this.start();
      }, this.opts.commitIntervalMs);
      this.timer.unref();
    }
  }

  private start(): void {
    if (this.running || this.waiting.length === 0) return;
    this.running = this.commitWaiting().finally(() => {
      this.running = undefined;
      this.schedule();
    });
  }

  private async commitWaiting(): Promise<void> {
    const batch = this.waiting.splice(0, this.opts.maxFilesPerCommit);
    this.opts.onWaiting?.(this.waiting.length);
    const live = batch.filter((w) => w.tenure.writable);
    for (const w of batch) if (!live.includes(w)) w.done();
    if (live.length === 0) return;
    const started = process.hrtime.bigint();
    const result = await retryUntilAborted(
      'iceberg commit',
      () => this.opts.table.commit(live.map((w) => w.file)),
      {
        signal: this.opts.signal,
        // A tenure that ended stops nothing here: the others' files still need their commit.
        proceed: () => live.some((w) => w.tenure.writable),
        logger: this.opts.logger,
        onError: () => this.opts.onError?.(),
        context: { files: live.length },
        backoff: this.opts.backoff,
      },
    );
    if (result) {
      const r = result.value;
      this.opts.onCommit?.({
        files: r.added,
        skipped: r.skipped,
        conflicts: r.conflicts,
        seconds: Number(process.hrtime.bigint() - started) / 1e9,
      });
      this.opts.logger.debug(
        { snapshotId: r.snapshotId, files: r.added, skipped: r.skipped },
        'iceberg commit',
      );
      for (const w of live) {
        // Committed: the events are in the table even when their tenure has ended since (acking a
        // stale tenure's event is a no-op; the next tenure finds the file in the table and skips them).
        for (const ack of w.acks) ack.done();
      }
    }
    for (const w of live) w.done();
  }

  /** Drops the waiting files of an ended tenure (unacked). */
  closeShard(tenure: Tenure): void {
    const keep: Waiting[] = [];
    for (const w of this.waiting) {
      if (w.tenure === tenure) w.done();
      else keep.push(w);
    }
    this.waiting = keep;
    this.opts.onWaiting?.(this.waiting.length);
  }

  /** Commits what waits now and resolves when nothing is left or running. */
  async drain(): Promise<void> {
    this.hurry(1);
    try {
      while (this.waiting.length > 0 || this.running) {
        this.start();
        await this.running;
        if (this.opts.signal.aborted) return;
      }
    } finally {
      this.hurry(-1);
    }
  }

  close(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    for (const w of this.waiting) w.done();
    this.waiting = [];
  }
}
