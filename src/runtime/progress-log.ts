/**
 * The worker's periodic info line (`log.progressIntervalMs`): records read and events written per second
 * since the last line, dead letters, the largest lag behind the stream, records read but not yet acked
 * and the age of the oldest, checkpoints written. Read from the worker's own metrics, so it says what
 * `/metrics` says.
 */
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';

const COUNTERS = {
  read: ['ksw_kinesis_records_fetched_total', 'ksw_file_records_read_total'],
  written: ['ksw_parquet_rows_total', 'ksw_opensearch_documents_total'],
  dlq: ['ksw_dlq_records_total'],
  checkpoints: ['ksw_checkpoints_total'],
} as const;

export interface ProgressState {
  readonly inFlightRecords: number;
  readonly oldestUnackedAgeMs: number;
  readonly shards: number;
}

async function sum(registry: Registry, names: readonly string[]): Promise<number> {
  let total = 0;
  for (const name of names)
    for (const v of (await registry.getSingleMetric(name)?.get())?.values ?? []) total += v.value;
  return total;
}

async function max(registry: Registry, name: string): Promise<number> {
  const values = (await registry.getSingleMetric(name)?.get())?.values ?? [];
  return values.reduce((m, v) => Math.max(m, v.value), 0);
}

export class ProgressLog {
  private last: Record<keyof typeof COUNTERS, number> | undefined;
  private lastAt = 0;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly registry: Registry,
    private readonly logger: Logger,
    private readonly state: () => ProgressState,
    private readonly now: () => number = Date.now,
  ) {}

  start(intervalMs: number): void {
    if (intervalMs <= 0) return;
    void this.line(false);
    this.timer = setInterval(() => void this.line().catch(() => undefined), intervalMs);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }

  /** Computes (and logs, unless `log` is false) the line for the time since the previous one. */
  async line(log = true): Promise<Record<string, number> | undefined> {
    const current = {
      read: await sum(this.registry, COUNTERS.read),
      written: await sum(this.registry, COUNTERS.written),
      dlq: await sum(this.registry, COUNTERS.dlq),
      checkpoints: await sum(this.registry, COUNTERS.checkpoints),
    };
    const at = this.now();
    const previous = this.last;
    const seconds = Math.max(0.001, (at - this.lastAt) / 1000);
    this.last = current;
    this.lastAt = at;
    if (!previous) return undefined;
    const s = this.state();
    const fields = {
      recordsPerSec: Math.round((current.read - previous.read) / seconds),
      eventsWrittenPerSec: Math.round((current.written - previous.written) / seconds),
      deadLetters: current.dlq - previous.dlq,
      checkpoints: current.checkpoints - previous.checkpoints,
      maxLagMs: await max(this.registry, 'ksw_kinesis_millis_behind_latest'),
      unackedRecords: s.inFlightRecords,
      oldestUnackedMs: s.oldestUnackedAgeMs,
      shards: s.shards,
    };
    if (log) this.logger.info(fields, 'progress');
    return fields;
  }
}
