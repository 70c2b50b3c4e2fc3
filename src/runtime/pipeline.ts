/**
 * The processor chain: decode -> processors -> sinks. Data flows forward only; each event's ack is
 * split once per sink it is written to, so a record is acked when every sink made it durable.
 */
import type { Processor, Sink } from '../core/component.js';
import type { PipelineEvent, SourceRecord } from '../core/records.js';
import type { RecordDecoder } from '../processors/decode.js';

export class Pipeline {
  private lastPressureFlush = 0;

  constructor(
    private readonly decoder: RecordDecoder,
    private readonly processors: readonly Processor[],
    readonly sinks: readonly Sink[],
  ) {}

  async push(records: readonly SourceRecord[]): Promise<void> {
    let events = this.decoder.decode(records);
    for (const processor of this.processors) {
      if (events.length === 0) return;
      events = await processor.process(events);
    }
    await this.deliver(events);
  }

  private async deliver(events: PipelineEvent[]): Promise<void> {
    if (events.length === 0) return;
    if (this.sinks.length === 1) {
      await this.sinks[0]!.write(events);
      return;
    }
    const perSink: PipelineEvent[][] = this.sinks.map(() => []);
    for (const event of events) {
      const parts = event.ack.split(this.sinks.length);
      for (let i = 0; i < parts.length; i++) perSink[i]!.push({ ...event, ack: parts[i]! });
    }
    await Promise.all(this.sinks.map((sink, i) => sink.write(perSink[i]!)));
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

  /** Releases what processors hold back, then makes every sink durable. */
  async flush(): Promise<void> {
    let held: PipelineEvent[] = [];
    for (const processor of this.processors) {
      if (held.length > 0) held = await processor.process(held);
      if (processor.flush) held.push(...(await processor.flush()));
    }
    await this.deliver(held);
    await this.flushSinks();
  }

  private async flushSinks(): Promise<void> {
    await Promise.all(this.sinks.map((s) => s.flush()));
  }
}
