/**
 * The processor chain: record stages + decode -> processors -> routing -> sinks. Data flows forward
 * only; each event's ack is split once per sink it is written to, so a record is acked when every sink
 * it was routed to made it durable (or at once when it was routed nowhere on purpose).
 */
import type { Processor, Sink } from '../core/component.js';
import type { PipelineEvent, SourceRecord } from '../core/records.js';

/** Turns fetched records into events (gzip, chunks, S3 pointers, JSON); see processors/decode.ts. */
export interface EventSource {
  decode(records: readonly SourceRecord[]): PipelineEvent[] | Promise<PipelineEvent[]>;
  close?(): void;
}

/** Decides `event.sinks` for events that do not name their sinks yet; see processors/router.ts. */
export interface EventRouter {
  route(events: PipelineEvent[]): void;
}

export class Pipeline {
  private lastPressureFlush = 0;
  private readonly sinkIndex = new Map<string, number>();

  constructor(
    private readonly decoder: EventSource,
    private readonly processors: readonly Processor[],
    readonly sinks: readonly Sink[],
    private readonly router?: EventRouter,
    /** Sees every fetched record before decoding (hot-key detection). */
    private readonly observe?: (records: readonly SourceRecord[]) => void,
  ) {
    sinks.forEach((s, i) => {
      this.sinkIndex.set(s.name, i);
    });
    processors.forEach((p, i) => {
      p.start?.((events) => this.runFrom(i + 1, events));
    });
  }

  async push(records: readonly SourceRecord[]): Promise<void> {
    this.observe?.(records);
    const events = await this.decoder.decode(records);
    await this.runFrom(0, events);
  }

  /** Runs events through processors `from..` then routing and delivery. */
  private async runFrom(from: number, input: PipelineEvent[]): Promise<void> {
    let events = input;
    for (let i = from; i < this.processors.length; i++) {
      if (events.length === 0) return;
      events = await this.processors[i]!.process(events);
    }
    await this.deliver(events);
  }

  private async deliver(events: PipelineEvent[]): Promise<void> {
    if (events.length === 0) return;
    this.router?.route(events);
    if (this.sinks.length === 1 && events.every((e) => e.sinks === undefined)) {
      await this.sinks[0]!.write(events);
      return;
    }
    const perSink: PipelineEvent[][] = this.sinks.map(() => []);
    for (const event of events) {
      const targets = event.sinks;
      if (targets === undefined) {
        const parts = event.ack.split(this.sinks.length);
        for (let i = 0; i < parts.length; i++) perSink[i]!.push({ ...event, ack: parts[i]! });
        continue;
      }
      if (targets.length === 1) {
        // One target keeps the event and its ack as they are: no copy per event on the usual path.
        perSink[this.sinkOf(targets[0]!)]!.push(event);
        continue;
      }
      const parts = event.ack.split(targets.length);
      for (let t = 0; t < targets.length; t++) {
        perSink[this.sinkOf(targets[t]!)]!.push({ ...event, ack: parts[t]! });
      }
    }
    await Promise.all(
      this.sinks.map((sink, i) => (perSink[i]!.length > 0 ? sink.write(perSink[i]!) : undefined)),
    );
  }

  private sinkOf(name: string): number {
    const i = this.sinkIndex.get(name);
    // Config validation makes every route name a configured sink; reaching this is a bug.
    if (i === undefined) throw new Error(`event routed to unknown sink "${name}"`);
    return i;
  }

  /**
   * A shard is paused on backpressure: what it waits for is probably buffered in a sink that would only
   * roll on age. Flush now (at most once a second) so the watermark can move.
   */
  relievePressure(): void {
    const now = Date.now();
    if (now - this.lastPressureFlush < 1_000) return;
    this.lastPressureFlush = now;
    void this.flushSinks().catch(() => undefined);
  }

  /** Releases what processors hold back (in chain order), then makes every sink durable. */
  async flush(): Promise<void> {
    let held: PipelineEvent[] = [];
    for (const processor of this.processors) {
      if (held.length > 0) held = await processor.process(held);
      if (processor.flush) held.push(...(await processor.flush()));
    }
    await this.deliver(held);
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
