/**
 * The processor chain: record stages + decode -> processors -> routing -> sinks. Data flows forward
 * only; each event's ack is split once per sink it is written to, so a record is acked when every sink
 * it was routed to made it durable (or at once when it was routed nowhere on purpose).
 *
 * It is also where a lease tenure's lifecycle reaches every component (`ShardChain`): `openShard` when a
 * tenure starts, `flushShard` when it ends gracefully (processors release what they hold of it, sinks
 * make it durable, before the final checkpoint), `closeShard` once it has ended (everything still held of
 * it is dropped). A failure anywhere in the chain fails the tenures of the events involved, so their
 * shards are released and read again rather than left with acks that never complete.
 */
import type { DeadLetterQueue, Processor, ShardChain, Sink, Tenure } from '../core/component.js';
import { eventWithAck, type PipelineEvent, type SourceRecord } from '../core/records.js';

/** Turns fetched records into events (gzip, chunks, S3 pointers, JSON); see processors/decode.ts. */
export interface EventSource {
  decode(records: readonly SourceRecord[]): PipelineEvent[] | Promise<PipelineEvent[]>;
  /** The tenure ended: drop what is held of it (incomplete chunked messages). */
  closeShard?(tenure: Tenure): void;
  close?(): void;
}

/** Decides `event.sinks` for events that do not name their sinks yet; see processors/router.ts. */
export interface EventRouter {
  route(events: PipelineEvent[]): void;
}

/** The stage of `ksw_shard_failures_total` for failures of the chain. */
export const DELIVER_STAGE = 'deliver';

export class Pipeline implements ShardChain {
  /** When each backpressured tenure last asked the sinks to flush early (at most once a second each). */
  private readonly lastPressureFlush = new WeakMap<Tenure, number>();
  private readonly sinkIndex = new Map<string, number>();
  /** Per sink: the tenures it has been handed events of (dropped when the tenure is closed). */
  private readonly tenuresOfSink: Array<Set<Tenure>>;

  constructor(
    private readonly decoder: EventSource,
    private readonly processors: readonly Processor[],
    readonly sinks: readonly Sink[],
    private readonly router?: EventRouter,
    /** Sees every fetched record before decoding (hot-key detection). */
    private readonly observe?: (records: readonly SourceRecord[]) => void,
    /** Flushed at a tenure's graceful end and told when it ends, like the sinks. */
    private readonly dlq?: DeadLetterQueue,
  ) {
    sinks.forEach((s, i) => {
      this.sinkIndex.set(s.name, i);
    });
    this.tenuresOfSink = sinks.map(() => new Set<Tenure>());
    processors.forEach((p, i) => {
      p.start?.((events) => this.runFrom(i + 1, events));
    });
  }

  /** A shard's batch: records of one tenure, in order. Records of an ended tenure are ignored. */
  async deliver(records: SourceRecord[]): Promise<void> {
    return this.push(records);
  }

  async push(records: readonly SourceRecord[]): Promise<void> {
    const live = records.every((r) => r.ack.tenure.active)
      ? records
      : records.filter((r) => r.ack.tenure.active);
    if (live.length === 0) return;
    this.observe?.(live);
    let events: PipelineEvent[];
    try {
      events = await this.decoder.decode(live);
    } catch (err) {
      failTenures(live, err);
      throw err;
    }
    await this.runFrom(0, events);
  }

  /** Runs events through processors `from..` then routing and delivery. */
  private async runFrom(from: number, input: PipelineEvent[]): Promise<void> {
    let events = input;
    for (let i = from; i < this.processors.length; i++) {
      if (events.length === 0) return;
      try {
        events = await this.processors[i]!.process(events);
      } catch (err) {
        failTenures(events, err);
        throw err;
      }
    }
    await this.deliverEvents(events);
  }

  private async deliverEvents(input: PipelineEvent[]): Promise<void> {
    // What a processor released late may belong to a tenure that has ended meanwhile: not ours to write.
    const events = input.every((e) => e.ack.tenure.active) ? input : input.filter((e) => e.ack.tenure.active);
    if (events.length === 0) return;
    try {
      await this.route(events);
    } catch (err) {
      failTenures(events, err);
      throw err;
    }
  }

  private async route(events: PipelineEvent[]): Promise<void> {
    this.router?.route(events);
    if (this.sinks.length === 1 && events.every((e) => e.sinks === undefined)) {
      this.noteTenures(0, events);
      await this.sinks[0]!.write(events);
      return;
    }
    const perSink: PipelineEvent[][] = this.sinks.map(() => []);
    for (const event of events) {
      const targets = event.sinks;
      if (targets === undefined) {
        const parts = event.ack.split(this.sinks.length);
        for (let i = 0; i < parts.length; i++) perSink[i]!.push(eventWithAck(event, parts[i]!));
        continue;
      }
      if (targets.length === 1) {
        // One target keeps the event and its ack as they are: no copy per event on the usual path.
        perSink[this.sinkOf(targets[0]!)]!.push(event);
        continue;
      }
      const parts = event.ack.split(targets.length);
      for (let t = 0; t < targets.length; t++) {
        perSink[this.sinkOf(targets[t]!)]!.push(eventWithAck(event, parts[t]!));
      }
    }
    for (let i = 0; i < perSink.length; i++) if (perSink[i]!.length > 0) this.noteTenures(i, perSink[i]!);
    await Promise.all(
      this.sinks.map((sink, i) => (perSink[i]!.length > 0 ? sink.write(perSink[i]!) : undefined)),
    );
  }

  /** Remembers that sink `i` holds (or held) events of these tenures, for `relievePressure`. */
  private noteTenures(i: number, events: readonly PipelineEvent[]): void {
    const seen = this.tenuresOfSink[i]!;
    let last: Tenure | undefined;
    for (const e of events) {
      const t = e.ack.tenure;
      if (t === last) continue;
      last = t;
      seen.add(t);
    }
  }

  private sinkOf(name: string): number {
    const i = this.sinkIndex.get(name);
    // Config validation makes every route name a configured sink; reaching this is a bug.
    if (i === undefined) throw new Error(`event routed to unknown sink "${name}"`);
    return i;
  }

  async openShard(tenure: Tenure, checkpoint: Parameters<ShardChain['openShard']>[1]): Promise<void> {
    for (const sink of this.sinks) await sink.openShard?.(tenure, checkpoint);
  }

  /**
   * Graceful end of a tenure: each processor, in chain order, releases what it holds of the tenure (what
   * earlier processors released passes through it first); then the sinks and the DLQ make the tenure's
   * buffered events durable. The caller then waits for the tenure's watermark and checkpoints.
   */
  async flushShard(tenure: Tenure): Promise<void> {
    let held: PipelineEvent[] = [];
    for (const processor of this.processors) {
      if (held.length > 0) held = await processor.process(held);
      if (processor.flushShard) held.push(...(await processor.flushShard(tenure)));
    }
    await this.deliverEvents(held);
    await Promise.all([
      ...this.sinks.map((s) => (s.flushShard ? s.flushShard(tenure) : s.flush())),
      this.dlq ? (this.dlq.flushShard ? this.dlq.flushShard(tenure) : this.dlq.flush()) : undefined,
    ]);
  }

  /** The tenure ended: every component drops what it still holds of it. */
  async closeShard(tenure: Tenure): Promise<void> {
    this.decoder.closeShard?.(tenure);
    for (const processor of this.processors) await processor.closeShard?.(tenure);
    for (const seen of this.tenuresOfSink) seen.delete(tenure);
    await Promise.all([...this.sinks.map((s) => s.closeShard?.(tenure)), this.dlq?.closeShard?.(tenure)]);
  }

  /**
   * A shard is paused on backpressure: what it waits for is probably buffered in a sink that would only
   * roll on age. The sinks that were handed events of that tenure flush that tenure's data now (at most
   * once a second per tenure) so its watermark can move; other sinks, and other shards' open files, keep
   * filling up to their roll limits (flushing everything here made many small files). A sink without
   * `flushShard` flushes everything.
   */
  relievePressure(tenure: Tenure): void {
    const now = Date.now();
    if (now - (this.lastPressureFlush.get(tenure) ?? 0) < 1_000) return;
    this.lastPressureFlush.set(tenure, now);
    const flushes: Promise<void>[] = [];
    this.sinks.forEach((sink, i) => {
      if (!this.tenuresOfSink[i]!.has(tenure)) return;
      flushes.push(sink.flushShard ? sink.flushShard(tenure) : sink.flush());
    });
    void Promise.all(flushes).catch(() => undefined);
  }

  /** Releases what processors hold back (in chain order), then makes every sink durable. */
  async flush(): Promise<void> {
    let held: PipelineEvent[] = [];
    for (const processor of this.processors) {
      if (held.length > 0) held = await processor.process(held);
      if (processor.flush) held.push(...(await processor.flush()));
    }
    await this.deliverEvents(held);
    await this.flushSinks();
  }

  /** Stops processors' clocks (after `flush`). */
  async close(): Promise<void> {
    for (const processor of this.processors) await processor.close?.();
    this.decoder.close?.();
  }

  private async flushSinks(): Promise<void> {
    await Promise.all(this.sinks.map((s) => s.flush()));
  }
}

/** Fails (once each) the tenures of the events or records a failed step was handling. */
function failTenures(items: ReadonlyArray<{ ack: { tenure: Tenure } }>, err: unknown): void {
  const seen = new Set<Tenure>();
  for (const item of items) {
    const tenure = item.ack.tenure;
    if (seen.has(tenure)) continue;
    seen.add(tenure);
    tenure.fail(DELIVER_STAGE, err);
  }
}
