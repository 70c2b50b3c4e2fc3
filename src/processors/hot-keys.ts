/**
 * Hot partition key detection. A shard accepts 1 MiB/s or 1,000 records/s of writes; one partition key
 * always maps to one shard, so a key that takes most of that budget throttles its producers no matter
 * how many shards the stream has. Resharding does not help: the key has to change.
 *
 * Rates are measured on the records' ApproximateArrivalTimestamp (when Kinesis accepted them), in
 * tumbling windows, so a consumer catching up on a backlog measures the producers' rate, not its own
 * read rate. When a window closes, each key whose share of the shard's budget (the larger of its byte
 * share and its record share) exceeds `share` is counted and logged (at most once a minute per key).
 */
import type { Logger } from 'pino';
import type { Counter, Gauge, Registry } from 'prom-client';
import { z } from 'zod';
import type { SourceRecord } from '../core/records.js';
import { counter, gauge } from '../metrics/registry.js';

export const hotKeyConfigSchema = z
  .object({
    enabled: z.boolean().default(true).describe('Watch partition keys for a hot key.'),
    share: z
      .number()
      .gt(0)
      .max(1)
      .default(0.5)
      .describe(
        "A key is hot when, within one window, it takes more than this share of its shard's write budget (1 MiB/s or 1,000 records/s, whichever it uses more of).",
      ),
    windowMs: z
      .number()
      .int()
      .min(1_000)
      .default(1_000)
      .describe('Window length, by arrival timestamp; the budget scales with it.'),
    shardBytesPerSecond: z
      .number()
      .int()
      .min(1)
      .default(1_048_576)
      .describe("A shard's write budget in bytes per second (data plus partition key)."),
    shardRecordsPerSecond: z
      .number()
      .int()
      .min(1)
      .default(1_000)
      .describe("A shard's write budget in records per second."),
  })
  .strict()
  .describe('Hot partition key detection: a metric and a warning when one key dominates a shard.');

export type HotKeyConfig = z.infer<typeof hotKeyConfigSchema>;

interface ShardWindow {
  start: number;
  keys: Map<string, { bytes: number; records: number }>;
}

export interface HotKey {
  readonly stream: string;
  readonly shardId: string;
  readonly partitionKey: string;
  readonly share: number;
  readonly bytes: number;
  readonly records: number;
  readonly windowStart: Date;
}

export class HotKeyDetector {
  private readonly windows = new Map<string, ShardWindow>();
  private readonly lastLogged = new Map<string, number>();
  /** Shards whose hot-key series exists (created at 0 on the first record, so increase() sees the first). */
  private readonly seen = new Set<string>();
  private readonly hot: Counter<'stream' | 'shard'>;
  private readonly topShare: Gauge<'stream' | 'shard'>;

  constructor(
    private readonly config: HotKeyConfig,
    metrics: Registry,
    private readonly logger?: Logger,
    private readonly onHotKey?: (hot: HotKey) => void,
  ) {
    this.hot = counter(metrics, {
      name: 'ksw_hot_partition_keys_total',
      help: "Windows in which one partition key took more than hotKeys.share of its shard's write budget",
      labelNames: ['stream', 'shard'],
    });
    this.topShare = gauge(metrics, {
      name: 'ksw_partition_key_top_share',
      help: "Largest share of the shard's write budget taken by one partition key in the last closed window",
      labelNames: ['stream', 'shard'],
    });
  }

  observe(records: readonly SourceRecord[]): void {
    for (const r of records) {
      const shardKey = `${r.origin.stream}\u0000${r.origin.shardId}`;
      const at = r.origin.arrivalTime.getTime();
      const start = at - (at % this.config.windowMs);
      let w = this.windows.get(shardKey);
      if (!w) {
        w = { start, keys: new Map() };
        this.windows.set(shardKey, w);
        if (!this.seen.has(shardKey)) {
          this.seen.add(shardKey);
          this.hot.inc({ stream: r.origin.stream, shard: r.origin.shardId }, 0);
        }
      } else if (start > w.start) {
        this.close(r.origin.stream, r.origin.shardId, w);
        w.start = start;
        w.keys = new Map();
      }
      // Records are read in arrival order, so an earlier window only shows up after a reshard merge;
      // counting it into the current one errs on the side of reporting.
      const bytes = r.data.byteLength + Buffer.byteLength(r.origin.partitionKey);
      const k = w.keys.get(r.origin.partitionKey);
      if (k) {
        k.bytes += bytes;
        k.records += 1;
      } else {
        w.keys.set(r.origin.partitionKey, { bytes, records: 1 });
      }
    }
  }

  private close(stream: string, shardId: string, w: ShardWindow): void {
    const seconds = this.config.windowMs / 1000;
    const byteBudget = this.config.shardBytesPerSecond * seconds;
    const recordBudget = this.config.shardRecordsPerSecond * seconds;
    let top = 0;
    for (const [partitionKey, k] of w.keys) {
      const share = Math.max(k.bytes / byteBudget, k.records / recordBudget);
      if (share > top) top = share;
      if (share <= this.config.share) continue;
      this.hot.inc({ stream, shard: shardId });
      const hot: HotKey = {
        stream,
        shardId,
        partitionKey,
        share,
        bytes: k.bytes,
        records: k.records,
        windowStart: new Date(w.start),
      };
      this.onHotKey?.(hot);
      const logKey = `${stream}\u0000${partitionKey}`;
      const now = Date.now();
      if (now - (this.lastLogged.get(logKey) ?? 0) >= 60_000) {
        this.lastLogged.set(logKey, now);
        if (this.lastLogged.size > 10_000) this.lastLogged.clear();
        this.logger?.warn(
          { ...hot, share: Math.round(share * 1000) / 1000 },
          'hot partition key: one key takes most of its shard write budget; producers of this key will be throttled whatever the shard count',
        );
      }
    }
    this.topShare.set({ stream, shard: shardId }, top);
  }
}
