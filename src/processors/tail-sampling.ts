/**
 * `tail_sampling`: buffers the spans of each trace and decides once it knows the whole trace, so it can
 * keep every error trace and every slow one and only a sample of the rest (policies in
 * sampling-policies.ts). Producers put the traceId as the Kinesis partition key, so all spans of a trace
 * reach one shard, hence one worker: no forwarding tier between workers is needed (spans whose trace
 * arrives on several shards are counted by `otel_spans`).
 *
 * When a trace is decided:
 * - early: the first policy matches (e.g. `status_code` first and an error span arrives); not for rate
 *   limited policies, which must charge the whole trace against their budget;
 * - complete: its root span (no parentSpanId) has arrived and no span came for `quietPeriodMs`;
 * - wait: `decisionWaitMs` passed since its first span (a trace without root, or one that keeps going);
 * - memory: the buffered spans exceed `maxBufferedBytes`; the oldest traces are decided first until the
 *   buffer is under 90 % of the budget (so memory is bounded whatever the input);
 * - handoff: the lease of a shard with spans in the trace ends gracefully (balancing, shard end): the
 *   trace is decided then, so its kept spans reach the sinks before the handoff's checkpoint;
 * - flush: at shutdown, every pending trace.
 * Decisions are remembered in a bounded cache (`decisionCacheTraces`) so late spans of a decided trace get
 * the same decision; a late span whose trace fell out of the cache starts a new pending trace.
 *
 * Acks: kept spans go downstream with their ack and `sampling: {policy, probability}`; dropped spans are
 * acked here (deliberately not written). A buffered span holds its ack, so its shard's checkpoint cannot
 * pass it: the checkpoint lags by at most `decisionWaitMs` (plus the sinks' own latency), and after a crash
 * buffered spans are read again and decided again, the same way (hash-based probabilities; only rate limits
 * depend on timing). Events that are not spans (RED window documents, anything without a traceId) pass
 * at once. When a shard's lease tenure ends without a graceful handoff (lost, fenced, failed), the spans
 * of that tenure are dropped from their pending traces unacked: the next owner reads them again.
 */
import type { Counter, Gauge, Registry } from 'prom-client';
import { z } from 'zod';
import type { ComponentContext, Downstream, Processor, Tenure } from '../core/component.js';
import type { PipelineEvent } from '../core/records.js';
import { counter, gauge } from '../metrics/registry.js';
import type { Condition } from './conditions.js';
import { markSampled } from './head-sampling.js';
import { hasLazyRaw } from './otel-spans.js';
import {
  type CompiledPolicy,
  compilePolicies,
  type Decision,
  NO_MATCH,
  type TailPolicyConfig,
  type TraceFacts,
  tailPolicySchema,
} from './sampling-policies.js';
import { inSample, saltSeed } from './trace-hash.js';

const MiB = 1024 * 1024;

export const tailSamplingConfigSchema = z
  .object({
    type: z.literal('tail_sampling'),
    name: z.string().min(1).optional().describe('Processor name (metrics label). Default: the type.'),
    decisionWaitMs: z
      .number()
      .int()
      .min(100)
      .default(30_000)
      .describe(
        'Longest a trace waits for its decision, from its first span. Also the bound on the checkpoint lag this processor adds.',
      ),
    quietPeriodMs: z
      .number()
      .int()
      .min(0)
      .default(5_000)
      .describe('A trace whose root span arrived is complete once no span arrived for this long.'),
    maxBufferedBytes: z
      .number()
      .int()
      .min(64 * 1024)
      .default(256 * MiB)
      .describe(
        'Memory budget for buffered spans (estimated: 4 x raw bytes + 300 per span + 300 per trace, measured against the heap in a 1M-span test). Over it, the oldest traces are decided at once.',
      ),
    decisionCacheTraces: z
      .number()
      .int()
      .min(0)
      .default(100_000)
      .describe('Decisions remembered for late spans (traceIds, oldest forgotten first).'),
    hashSalt: z
      .string()
      .default('')
      .describe('Salt of the traceId hash behind the probabilities (see head_sampling.hashSalt).'),
    policies: z
      .array(tailPolicySchema)
      .min(1)
      .describe(
        'Evaluated in order; the first policy whose condition matches decides (keep with its probability and rate, else drop). No match: dropped.',
      ),
  })
  .strict()
  .superRefine((c, ctx) => {
    if (c.quietPeriodMs > c.decisionWaitMs) {
      ctx.addIssue({
        code: 'custom',
        path: ['quietPeriodMs'],
        message: `must not exceed decisionWaitMs (${c.decisionWaitMs})`,
      });
    }
    try {
      compilePolicies(c.policies as TailPolicyConfig[]);
    } catch (err) {
      ctx.addIssue({ code: 'custom', path: ['policies'], message: (err as Error).message });
    }
  })
  .describe(
    'Tail sampling: buffers each trace until it is complete (or a wait/memory limit), then keeps it by policy (errors, latency, attributes, probability, rate, composite).',
  );

export type TailSamplingConfig = z.infer<typeof tailSamplingConfigSchema>;

const SPAN_OVERHEAD_BYTES = 300;
const TRACE_OVERHEAD_BYTES = 300;
const RAW_FACTOR = 4;

type Trigger = 'early' | 'complete' | 'wait' | 'memory' | 'handoff' | 'flush';

interface Tally {
  kept: number;
  dropped: number;
  lateKept: number;
  lateDropped: number;
  decisions: Map<Decision, number>;
  triggers: Record<Trigger, number>;
}

function newTally(): Tally {
  return {
    kept: 0,
    dropped: 0,
    lateKept: 0,
    lateDropped: 0,
    decisions: new Map(),
    triggers: { early: 0, complete: 0, wait: 0, memory: 0, handoff: 0, flush: 0 },
  };
}

interface PendingTrace extends TraceFacts {
  spans: PipelineEvent[];
  bytes: number;
  firstAt: number;
  lastAt: number;
  rootSeen: boolean;
  /** When the quiet-period scan should look at this trace next (its position in `rooted`). */
  checkAt: number;
  decided: boolean;
}

/** Folds one span into its trace's facts (what the policies look at). */
function addSpanFacts(t: PendingTrace, v: Record<string, unknown>, conds: readonly Condition[][]): void {
  const code = (v.status as { code?: unknown } | undefined)?.code;
  t.statusMask |= code === 2 ? 4 : code === 1 ? 2 : 1;
  const dur = Number(v.durationNano);
  if (dur > t.maxSpanNanos) t.maxSpanNanos = dur;
  const start = Number(v.startTimeUnixNano);
  if (start < t.minStartNanos) t.minStartNanos = start;
  if (start + dur > t.maxEndNanos) t.maxEndNanos = start + dur;
  for (let i = 0; i < conds.length; i++) {
    const bit = 1 << i;
    if ((t.attributeMask & bit) === 0 && conds[i]!.every((c) => c.test(v))) t.attributeMask |= bit;
  }
  t.spanCount += 1;
}

/** Estimated heap + buffer bytes of a span: its raw bytes (kept alive) and the decoded object. */
function spanBytes(event: PipelineEvent): number {
  // A lazily serialised `raw` (spans from OTLP requests) is not forced: estimate from the value instead.
  const bytes = hasLazyRaw(event) ? approxJsonBytes(event.value, 0) : event.raw.byteLength;
  return bytes * RAW_FACTOR + SPAN_OVERHEAD_BYTES;
}

function approxJsonBytes(v: unknown, depth: number): number {
  if (typeof v === 'string') return v.length + 3;
  if (typeof v === 'number' || typeof v === 'bigint') return 12;
  if (v === null || typeof v !== 'object' || depth > 8) return 5;
  let n = 2;
  if (Array.isArray(v)) {
    for (const x of v) n += approxJsonBytes(x, depth + 1) + 1;
    return n;
  }
  for (const k in v) n += k.length + 4 + approxJsonBytes((v as Record<string, unknown>)[k], depth + 1);
  return n;
}

export class TailSampler implements Processor {
  private readonly pending = new Map<string, PendingTrace>();
  /**
   * Traces whose root arrived, in the order they are due for a quiet-period check. A span arriving for a
   * listed trace only updates its lastAt; the scan moves a trace that turns out busy to the back, so
   * spans cost no reordering.
   */
  private readonly rooted = new Map<string, PendingTrace>();
  private readonly decisions = new Map<string, Decision>();
  private readonly policies: CompiledPolicy[];
  private readonly attributeConditions: Condition[][];
  private readonly seed: number;
  private bufferedBytes = 0;
  private bufferedSpans = 0;
  private downstream: Downstream | undefined;
  private timer: NodeJS.Timeout | undefined;
  private readonly sample: (traceId: string) => (p: number) => boolean;
  private readonly m: {
    spans: Counter<'processor' | 'decision'>;
    late: Counter<'processor' | 'decision'>;
    decisions: Counter<'processor' | 'policy' | 'decision'>;
    triggers: Counter<'processor' | 'trigger'>;
    pendingTraces: Gauge<'processor'>;
    pendingSpans: Gauge<'processor'>;
    oldestAge: Gauge<'processor'>;
    bytes: Gauge<'processor'>;
    budget: Gauge<'processor'>;
  };
  private readonly labels: { processor: string };
  private peakBytes = 0;
  private tally = newTally();

  constructor(
    readonly name: string,
    private readonly config: TailSamplingConfig,
    metrics: Registry,
    private readonly now: () => number = Date.now,
    private readonly onError: (err: unknown) => void = () => undefined,
  ) {
    this.seed = saltSeed(config.hashSalt);
    const compiled = compilePolicies(config.policies as TailPolicyConfig[], this.seed);
    this.policies = compiled.policies;
    this.attributeConditions = compiled.attributeConditions;
    const seed = this.seed;
    this.sample = (traceId) => (p) => inSample(traceId, p, seed);
    this.labels = { processor: name };
    const l = ['processor'] as const;
    this.m = {
      spans: counter(metrics, {
        name: 'ksw_tail_sampling_spans_total',
        help: 'Spans released by tail sampling, by decision (kept, dropped)',
        labelNames: ['processor', 'decision'],
      }),
      late: counter(metrics, {
        name: 'ksw_tail_sampling_late_spans_total',
        help: 'Spans that arrived after their trace was decided (decision from the cache: kept, dropped)',
        labelNames: ['processor', 'decision'],
      }),
      decisions: counter(metrics, {
        name: 'ksw_tail_sampling_traces_total',
        help: 'Traces decided, by the deciding policy ("" = no policy matched) and decision',
        labelNames: ['processor', 'policy', 'decision'],
      }),
      triggers: counter(metrics, {
        name: 'ksw_tail_sampling_decision_triggers_total',
        help: 'What made traces be decided: early (first policy matched), complete (root + quiet period), wait (decisionWaitMs), memory (budget), handoff (the lease of one of its shards ended gracefully), flush (shutdown)',
        labelNames: ['processor', 'trigger'],
      }),
      pendingTraces: gauge(metrics, {
        name: 'ksw_tail_sampling_pending_traces',
        help: 'Traces buffered awaiting a decision',
        labelNames: l,
      }),
      pendingSpans: gauge(metrics, {
        name: 'ksw_tail_sampling_pending_spans',
        help: 'Spans buffered awaiting a decision (their acks hold the checkpoint)',
        labelNames: l,
      }),
      oldestAge: gauge(metrics, {
        name: 'ksw_tail_sampling_oldest_pending_age_seconds',
        help: 'Age of the oldest pending trace (bounded by decisionWaitMs); the checkpoint lag it causes',
        labelNames: l,
      }),
      bytes: gauge(metrics, {
        name: 'ksw_tail_sampling_buffered_bytes',
        help: 'Estimated memory of buffered spans (compare with ksw_tail_sampling_budget_bytes)',
        labelNames: l,
      }),
      budget: gauge(metrics, {
        name: 'ksw_tail_sampling_budget_bytes',
        help: 'maxBufferedBytes: the memory budget of tail sampling',
        labelNames: l,
      }),
    };
    this.m.budget.set(this.labels, config.maxBufferedBytes);
    for (const decision of ['kept', 'dropped']) this.m.spans.inc({ processor: name, decision }, 0);
    this.updateGauges(this.now());
  }

  start(downstream: Downstream): void {
    this.downstream = downstream;
    const every = Math.min(
      1_000,
      Math.max(50, Math.floor(Math.min(this.config.quietPeriodMs || 1_000, this.config.decisionWaitMs) / 4)),
    );
    this.timer = setInterval(() => {
      const kept = this.tick();
      if (kept.length > 0 && this.downstream) this.downstream(kept).catch(this.onError);
    }, every);
    this.timer.unref();
  }

  /** Buffered bytes (estimate) now, and the most ever reached. */
  get memory(): { bytes: number; peak: number; traces: number; spans: number } {
    return {
      bytes: this.bufferedBytes,
      peak: this.peakBytes,
      traces: this.pending.size,
      spans: this.bufferedSpans,
    };
  }

  process(events: PipelineEvent[]): PipelineEvent[] {
    const now = this.now();
    const out: PipelineEvent[] = [];
    let lateKept = 0;
    let lateDropped = 0;
    const conds = this.attributeConditions;
    const first = this.policies[0]!.early ? this.policies[0] : undefined;
    let last: PendingTrace | undefined;
    for (const event of events) {
      const v = event.value;
      const traceId = v.traceId;
      if (event.derived || typeof traceId !== 'string') {
        out.push(event);
        continue;
      }
      // Spans of a trace usually come one after another: the trace of the previous span, still pending,
      // needs no map lookups (a pending trace is never in the decision cache).
      let t = last !== undefined && last.traceId === traceId && !last.decided ? last : undefined;
      const cached = t === undefined ? this.decisions.get(traceId) : undefined;
      if (cached !== undefined) {
        if (cached.keep) {
          markSampled(v, cached.mark);
          out.push(event);
          lateKept += 1;
        } else {
          event.ack.done();
          lateDropped += 1;
        }
        continue;
      }
      t ??= this.pending.get(traceId);
      if (t === undefined) {
        t = {
          traceId,
          statusMask: 0,
          maxSpanNanos: 0,
          minStartNanos: Number.POSITIVE_INFINITY,
          maxEndNanos: 0,
          attributeMask: 0,
          spanCount: 0,
          spans: [],
          bytes: TRACE_OVERHEAD_BYTES,
          firstAt: now,
          lastAt: now,
          rootSeen: false,
          checkAt: now,
          decided: false,
        };
        this.pending.set(traceId, t);
        this.bufferedBytes += TRACE_OVERHEAD_BYTES;
      }
      addSpanFacts(t, v, conds);
      last = t;
      // A one-element array for the first span: `[]` then push would reserve room for 17.
      if (t.spans.length === 0) t.spans = [event];
      else t.spans.push(event);
      const bytes = spanBytes(event);
      t.bytes += bytes;
      this.bufferedBytes += bytes;
      this.bufferedSpans += 1;
      t.lastAt = now;
      if (!t.rootSeen && (v.parentSpanId === '' || v.parentSpanId === undefined)) {
        t.rootSeen = true;
        t.checkAt = now;
        this.rooted.set(traceId, t);
      }
      if (first?.matches(t)) {
        this.decide(t, 'early', now, out);
        continue;
      }
      if (this.bufferedBytes > this.config.maxBufferedBytes) {
        if (this.bufferedBytes > this.peakBytes) this.peakBytes = this.bufferedBytes;
        this.relieveMemory(now, out);
      }
    }
    if (this.bufferedBytes > this.peakBytes) this.peakBytes = this.bufferedBytes;
    this.tally.lateKept += lateKept;
    this.tally.kept += lateKept;
    this.tally.lateDropped += lateDropped;
    this.tally.dropped += lateDropped;
    this.decideDue(now, out);
    this.updateGauges(now);
    return out;
  }

  /** Decides the traces that are complete or waited long enough; the timer calls it. */
  tick(now = this.now()): PipelineEvent[] {
    const out: PipelineEvent[] = [];
    this.decideDue(now, out);
    this.updateGauges(now);
    return out;
  }

  async flush(): Promise<PipelineEvent[]> {
    const now = this.now();
    const out: PipelineEvent[] = [];
    for (const t of [...this.pending.values()]) this.decide(t, 'flush', now, out);
    this.updateGauges(now);
    return out;
  }

  /** Decides now every pending trace holding a span of the tenure (a graceful end of its lease). */
  flushShard(tenure: Tenure): PipelineEvent[] {
    const now = this.now();
    const out: PipelineEvent[] = [];
    for (const t of [...this.pending.values()]) {
      if (t.spans.some((e) => e.ack.tenure === tenure)) this.decide(t, 'handoff', now, out);
    }
    this.updateGauges(now);
    return out;
  }

  /**
   * The tenure ended: its spans leave their pending traces unacked (the next owner reads them again and
   * buffers them anew); a trace left without spans is forgotten.
   */
  closeShard(tenure: Tenure): void {
    for (const t of [...this.pending.values()]) {
      if (!t.spans.some((e) => e.ack.tenure === tenure)) continue;
      const kept = t.spans.filter((e) => e.ack.tenure !== tenure);
      let bytes = 0;
      for (const e of t.spans) if (e.ack.tenure === tenure) bytes += spanBytes(e);
      this.bufferedSpans -= t.spans.length - kept.length;
      this.bufferedBytes -= bytes;
      t.bytes -= bytes;
      t.spans = kept;
      // The facts must describe the spans that are left (the dropped ones come back with the next tenure).
      t.statusMask = 0;
      t.maxSpanNanos = 0;
      t.minStartNanos = Number.POSITIVE_INFINITY;
      t.maxEndNanos = 0;
      t.attributeMask = 0;
      t.spanCount = 0;
      t.rootSeen = false;
      for (const e of kept) {
        addSpanFacts(t, e.value, this.attributeConditions);
        if (e.value.parentSpanId === '' || e.value.parentSpanId === undefined) t.rootSeen = true;
      }
      if (!t.rootSeen) this.rooted.delete(t.traceId);
      if (kept.length === 0) {
        t.decided = true; // never decided: just gone, like a trace that was never seen
        this.pending.delete(t.traceId);
        this.rooted.delete(t.traceId);
        this.bufferedBytes -= t.bytes;
      }
    }
    this.updateGauges(this.now());
  }

  async close(): Promise<void> {
    clearInterval(this.timer);
  }

  private decideDue(now: number, out: PipelineEvent[]): void {
    const waitCutoff = now - this.config.decisionWaitMs;
    for (const t of this.pending.values()) {
      if (t.firstAt > waitCutoff) break;
      this.decide(t, 'wait', now, out);
    }
    const quietCutoff = now - this.config.quietPeriodMs;
    for (const t of this.rooted.values()) {
      // Entries (re-)inserted in this scan have checkAt > quietCutoff, so the loop ends at them.
      if (t.checkAt > quietCutoff) break;
      if (t.lastAt <= quietCutoff) {
        this.decide(t, 'complete', now, out);
      } else {
        this.rooted.delete(t.traceId);
        t.checkAt = t.lastAt;
        this.rooted.set(t.traceId, t);
      }
    }
  }

  private relieveMemory(now: number, out: PipelineEvent[]): void {
    const target = this.config.maxBufferedBytes * 0.9;
    for (const t of this.pending.values()) {
      if (this.bufferedBytes <= target) break;
      this.decide(t, 'memory', now, out);
    }
  }

  private evaluate(t: PendingTrace, now: number): Decision {
    const sample = this.sample(t.traceId);
    for (const p of this.policies) {
      if (p.matches(t)) return p.decide(t, sample, now);
    }
    return NO_MATCH;
  }

  private decide(t: PendingTrace, trigger: Trigger, now: number, out: PipelineEvent[]): void {
    const decision = this.evaluate(t, now);
    t.decided = true;
    this.pending.delete(t.traceId);
    this.rooted.delete(t.traceId);
    this.bufferedBytes -= t.bytes;
    this.bufferedSpans -= t.spans.length;
    this.remember(t.traceId, decision);
    const n = t.spans.length;
    const tally = this.tally;
    if (decision.keep) {
      for (const e of t.spans) {
        markSampled(e.value, decision.mark);
        out.push(e);
      }
      tally.kept += n;
    } else {
      for (const e of t.spans) e.ack.done();
      tally.dropped += n;
    }
    t.spans = [];
    tally.decisions.set(decision, (tally.decisions.get(decision) ?? 0) + 1);
    tally.triggers[trigger] += 1;
  }

  /** Counters are updated once per call, not per trace (prom-client hashes label sets on every inc). */
  private flushTally(): void {
    const t = this.tally;
    const p = this.name;
    if (t.kept > 0) this.m.spans.inc({ processor: p, decision: 'kept' }, t.kept);
    if (t.dropped > 0) this.m.spans.inc({ processor: p, decision: 'dropped' }, t.dropped);
    if (t.lateKept > 0) this.m.late.inc({ processor: p, decision: 'kept' }, t.lateKept);
    if (t.lateDropped > 0) this.m.late.inc({ processor: p, decision: 'dropped' }, t.lateDropped);
    for (const [d, n] of t.decisions) {
      this.m.decisions.inc({ processor: p, policy: d.policy, decision: d.keep ? 'kept' : 'dropped' }, n);
    }
    for (const trigger of Object.keys(t.triggers) as Trigger[]) {
      if (t.triggers[trigger] > 0) this.m.triggers.inc({ processor: p, trigger }, t.triggers[trigger]);
    }
    this.tally = newTally();
  }

  private remember(traceId: string, decision: Decision): void {
    const max = this.config.decisionCacheTraces;
    if (max === 0) return;
    if (this.decisions.size >= max) {
      const oldest = this.decisions.keys().next().value;
      if (oldest !== undefined) this.decisions.delete(oldest);
    }
    this.decisions.set(traceId, decision);
  }

  private updateGauges(now: number): void {
    this.flushTally();
    this.m.pendingTraces.set(this.labels, this.pending.size);
    this.m.pendingSpans.set(this.labels, this.bufferedSpans);
    this.m.bytes.set(this.labels, this.bufferedBytes);
    const oldest = this.pending.values().next().value;
    this.m.oldestAge.set(this.labels, oldest ? (now - oldest.firstAt) / 1000 : 0);
  }
}

export function createTailSampler(
  name: string,
  config: TailSamplingConfig,
  ctx: ComponentContext,
): Processor {
  return new TailSampler(name, config, ctx.metrics, Date.now, (err) =>
    ctx.logger.error({ err }, 'could not deliver sampled spans; they stay unacked and will be read again'),
  );
}
