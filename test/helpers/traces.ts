/**
 * A deterministic trace workload for the span processors, with its ground truth: traces from the
 * synthetic span generator (errors, slow traces), some spans delivered late (after their trace's decision
 * wait), and optionally giant traces larger than a tail sampler's memory budget. Arrival times are on a
 * virtual clock so tests drive processors without real waiting.
 */
import { Ack } from '../../src/core/ack.js';
import type { PipelineEvent, RecordOrigin } from '../../src/core/records.js';
import { generateSpans, type SyntheticSpan, seededRandom } from '../../src/producer/synthetic-spans.js';

export interface TraceTruth {
  readonly traceId: string;
  readonly spans: SyntheticSpan[];
  readonly error: boolean;
  /** Longest span >= 1 s (the root covers its children, so this is the trace duration >= 1 s). */
  readonly slow: boolean;
  readonly giant: boolean;
}

export interface Delivery {
  readonly span: SyntheticSpan;
  /** Virtual ms at which the span arrives. */
  readonly at: number;
  readonly late: boolean;
}

export interface WorkloadOptions {
  traces: number;
  seed?: number;
  spansPerTrace?: number;
  errorRate?: number;
  slowRate?: number;
  /** Virtual ms between the starts of consecutive traces. */
  traceGapMs?: number;
  /** Share of traces that have one child span delivered `lateByMs` after the rest. */
  lateRate?: number;
  lateByMs?: number;
  /** Giant traces (spans each) inserted every `giantEvery` traces. */
  giantSpans?: number;
  giantEvery?: number;
}

export interface Workload {
  readonly traces: TraceTruth[];
  /** Every span in arrival order. */
  readonly deliveries: Delivery[];
}

export function traceWorkload(opts: WorkloadOptions): Workload {
  const perTrace = opts.spansPerTrace ?? 5;
  const all = [
    ...generateSpans(opts.traces * perTrace, {
      seed: opts.seed ?? 42,
      spansPerTrace: perTrace,
      errorRate: opts.errorRate ?? 0.02,
      slowRate: opts.slowRate ?? 0.05,
    }),
  ];
  const byTrace = new Map<string, SyntheticSpan[]>();
  for (const s of all) {
    const list = byTrace.get(s.traceId);
    if (list) list.push(s);
    else byTrace.set(s.traceId, [s]);
  }
  const traces: TraceTruth[] = [];
  const giantEvery = opts.giantEvery ?? 0;
  let giantSeed = 1_000;
  for (const [traceId, spans] of byTrace) {
    traces.push(truthOf(traceId, spans, false));
    if (giantEvery > 0 && traces.length % giantEvery === 0) {
      const giant = [
        ...generateSpans(opts.giantSpans ?? 5_000, {
          seed: giantSeed++,
          spansPerTrace: opts.giantSpans ?? 5_000,
          errorRate: 0,
          slowRate: 0,
        }),
      ];
      traces.push(truthOf(giant[0]!.traceId, giant, true));
    }
  }
  const random = seededRandom((opts.seed ?? 42) + 1);
  const gap = opts.traceGapMs ?? 1;
  const lateRate = opts.lateRate ?? 0;
  const lateBy = opts.lateByMs ?? 60_000;
  const deliveries: Delivery[] = [];
  traces.forEach((t, i) => {
    const at = i * gap;
    const lateIndex =
      t.spans.length > 1 && random() < lateRate ? 1 + Math.floor(random() * (t.spans.length - 1)) : -1;
    t.spans.forEach((span, k) => {
      deliveries.push({ span, at: k === lateIndex ? at + lateBy : at, late: k === lateIndex });
    });
  });
  deliveries.sort((a, b) => a.at - b.at);
  return { traces, deliveries };
}

function truthOf(traceId: string, spans: SyntheticSpan[], giant: boolean): TraceTruth {
  return {
    traceId,
    spans,
    giant,
    error: spans.some((s) => s.status.code === 2),
    slow: spans.some((s) => Number(s.durationNano) >= 1e9),
  };
}

/** Acks of the events a test created, so it can check which completed. */
export class AckLedger {
  completed = 0;
  created = 0;
  ack(): Ack {
    this.created += 1;
    return new Ack(() => {
      this.completed += 1;
    });
  }
  get pending(): number {
    return this.created - this.completed;
  }
}

let seq = 1_000_000n;

/** A span event as `otel_spans` would emit it; one record per span, the traceId as partition key. */
export function spanEvent(
  span: SyntheticSpan | Record<string, unknown>,
  ack: Ack,
  shardId = 'shardId-000000000000',
  stream = 'spans',
  raw?: Uint8Array,
): PipelineEvent {
  seq += 1n;
  const origin: RecordOrigin = {
    stream,
    shardId,
    sequenceNumber: seq.toString(),
    subSequenceNumber: 0,
    partitionKey: String((span as { traceId?: unknown }).traceId ?? 'pk'),
    arrivalTime: new Date(0),
  };
  const value = { ...(span as Record<string, unknown>) };
  return { origin, index: 0, value, raw: raw ?? Buffer.from(JSON.stringify(span), 'utf8'), ack };
}
