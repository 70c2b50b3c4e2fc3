import assert from 'node:assert/strict';
import path from 'node:path';
import { describe, it } from 'vitest';
import { loadConfig, validateConfig } from '../../src/config/load.js';
import type { PipelineEvent } from '../../src/core/records.js';
import { createRegistry } from '../../src/metrics/registry.js';
import { HeadSampler, headSamplingConfigSchema } from '../../src/processors/head-sampling.js';
import { TailSampler, tailSamplingConfigSchema } from '../../src/processors/tail-sampling.js';
import { inSample, saltSeed, traceIdPosition } from '../../src/processors/trace-hash.js';
import { AckLedger, spanEvent, traceWorkload, type Workload } from '../helpers/traces.js';

/** The article's policy: 100 % of errors, 80 % of traces >= 1 s, 20 % of the rest. */
const ARTICLE_POLICIES = [
  { name: 'errors', type: 'status_code' },
  { name: 'slow', type: 'latency', thresholdMs: 1000, probability: 0.8 },
  { name: 'rest', type: 'probabilistic', probability: 0.2 },
];

/** |observed - expected| within `sigmas` standard deviations of a binomial(n, p). */
function withinBinomial(kept: number, n: number, p: number, sigmas = 5): boolean {
  const sd = Math.sqrt(n * p * (1 - p));
  return Math.abs(kept - n * p) <= sigmas * sd;
}

interface Run {
  kept: PipelineEvent[];
  ledger: AckLedger;
  sampler: TailSampler;
  metrics: ReturnType<typeof createRegistry>;
}

/** Drives a tail sampler through a workload on a virtual clock; `batch` spans per process() call. */
async function runTail(w: Workload, over: Record<string, unknown> = {}, batch = 100): Promise<Run> {
  const clock = { now: 0 };
  const metrics = createRegistry(false);
  const config = tailSamplingConfigSchema.parse({
    type: 'tail_sampling',
    decisionWaitMs: 5_000,
    quietPeriodMs: 1_000,
    policies: ARTICLE_POLICIES,
    ...over,
  });
  const sampler = new TailSampler('tail', config, metrics, () => clock.now);
  const ledger = new AckLedger();
  const kept: PipelineEvent[] = [];
  const d = w.deliveries;
  for (let i = 0; i < d.length; i += batch) {
    const slice = d.slice(i, i + batch);
    clock.now = slice[0]!.at;
    kept.push(...sampler.process(slice.map((x) => spanEvent(x.span, ledger.ack()))));
    kept.push(...sampler.tick());
  }
  clock.now += 60_000;
  kept.push(...sampler.tick());
  kept.push(...(await sampler.flush()));
  return { kept, ledger, sampler, metrics };
}

describe('trace hash', () => {
  it('is uniform over generated trace ids and differs by salt', () => {
    const ids = traceWorkload({ traces: 20_000, seed: 99 }).traces.map((t) => t.traceId);
    const bins = new Array(10).fill(0);
    for (const id of ids) bins[Math.floor(traceIdPosition(id) * 10)] += 1;
    for (const b of bins) assert.ok(withinBinomial(b, ids.length, 0.1), `bin ${b}`);
    // Sequential, non-random ids still sample at the right rate.
    let seqKept = 0;
    for (let i = 0; i < 20_000; i++) if (inSample(i.toString(16).padStart(32, '0'), 0.3)) seqKept += 1;
    assert.ok(withinBinomial(seqKept, 20_000, 0.3), `sequential ids: ${seqKept}`);
    const a = ids.filter((id) => inSample(id, 0.5, saltSeed('a'))).length;
    const both = ids.filter(
      (id) => inSample(id, 0.5, saltSeed('a')) && inSample(id, 0.5, saltSeed('b')),
    ).length;
    assert.ok(withinBinomial(both, a, 0.5), 'salts give independent samples');
    // Nested samples: with the same salt, a 10 % sample lies inside the 20 % sample.
    assert.ok(ids.every((id) => !inSample(id, 0.1) || inSample(id, 0.2)));
  });
});

describe('head_sampling', () => {
  it('keeps a consistent share of whole traces, the same on every run and in any order', () => {
    const w = traceWorkload({ traces: 10_000, seed: 21 });
    const run = (order: number[]) => {
      const s = new HeadSampler(
        'head',
        headSamplingConfigSchema.parse({ type: 'head_sampling', probability: 0.25 }),
        createRegistry(false),
      );
      const ledger = new AckLedger();
      const kept = s.process(order.map((i) => spanEvent(w.deliveries[i]!.span, ledger.ack())));
      assert.equal(ledger.completed, w.deliveries.length - kept.length, 'dropped spans are acked');
      return kept;
    };
    const idx = w.deliveries.map((_, i) => i);
    const a = run(idx);
    const b = run([...idx].reverse());
    const traces = new Set(a.map((e) => e.value.traceId));
    assert.deepEqual(new Set(b.map((e) => e.value.traceId)), traces);
    assert.ok(withinBinomial(traces.size, w.traces.length, 0.25), `${traces.size} traces kept`);
    const spansKept = new Map<unknown, number>();
    for (const e of a) spansKept.set(e.value.traceId, (spansKept.get(e.value.traceId) ?? 0) + 1);
    for (const t of w.traces) {
      if (traces.has(t.traceId)) assert.equal(spansKept.get(t.traceId), t.spans.length, 'whole traces');
    }
    assert.deepEqual(a[0]!.value.sampling, { policy: 'head', probability: 0.25 });
  });

  it('head then tail sampling: nested samples (same salt) keep the smaller probability, independent ones multiply', async () => {
    const w = traceWorkload({ traces: 2_000, seed: 61, errorRate: 0 });
    const run = (tailSalt: string) => {
      const head = new HeadSampler(
        'head',
        headSamplingConfigSchema.parse({ type: 'head_sampling', probability: 0.5 }),
        createRegistry(false),
      );
      const tail = new TailSampler(
        'tail',
        tailSamplingConfigSchema.parse({
          type: 'tail_sampling',
          hashSalt: tailSalt,
          policies: [{ name: 'rest', type: 'probabilistic', probability: 0.5 }],
        }),
        createRegistry(false),
      );
      return tail.process(head.process(w.deliveries.map((d) => spanEvent(d.span, new AckLedger().ack()))));
    };
    const spans = w.deliveries.length;
    const nested = run('');
    for (const e of nested) assert.deepEqual(e.value.sampling, { policy: 'head/rest', probability: 0.5 });
    assert.ok(withinBinomial(nested.length / 5, spans / 5, 0.5), `nested: ${nested.length} of ${spans}`);
    const independent = run('other');
    for (const e of independent)
      assert.deepEqual(e.value.sampling, { policy: 'head/rest', probability: 0.25 });
    assert.ok(
      withinBinomial(independent.length / 5, spans / 5, 0.25),
      `independent: ${independent.length} of ${spans}`,
    );
  });
});

describe('tail_sampling', () => {
  it("keeps 100 % of error traces, 80 % of slow ones and 20 % of the rest (the article's policy), whole", async () => {
    const w = traceWorkload({
      traces: 20_000,
      seed: 7,
      errorRate: 0.02,
      slowRate: 0.05,
      lateRate: 0.02,
      lateByMs: 30_000,
    });
    const { kept, ledger, metrics } = await runTail(w);
    const keptByTrace = new Map<string, PipelineEvent[]>();
    for (const e of kept) {
      const id = e.value.traceId as string;
      keptByTrace.set(id, [...(keptByTrace.get(id) ?? []), e]);
    }
    let errors = 0;
    let slow = 0;
    let slowKept = 0;
    let rest = 0;
    let restKept = 0;
    for (const t of w.traces) {
      const k = keptByTrace.get(t.traceId);
      // Whole traces: every span, the late one included (decision cache).
      if (k) assert.equal(k.length, t.spans.length, `trace ${t.traceId} kept in part`);
      if (t.error) {
        errors += 1;
        assert.ok(k, `error trace ${t.traceId} dropped`);
        assert.deepEqual(k[0]!.value.sampling, { policy: 'errors', probability: 1 });
      } else if (t.slow) {
        slow += 1;
        if (k) {
          slowKept += 1;
          assert.deepEqual(k[0]!.value.sampling, { policy: 'slow', probability: 0.8 });
        }
      } else {
        rest += 1;
        if (k) {
          restKept += 1;
          assert.deepEqual(k[0]!.value.sampling, { policy: 'rest', probability: 0.2 });
        }
      }
    }
    assert.ok(errors > 300 && slow > 800, `workload has ${errors} error and ${slow} slow traces`);
    assert.ok(withinBinomial(slowKept, slow, 0.8), `slow: ${slowKept} of ${slow}`);
    assert.ok(withinBinomial(restKept, rest, 0.2), `rest: ${restKept} of ${rest}`);
    // Dropped spans were acked here; kept ones wait for their sinks.
    const keptSpans = kept.length;
    assert.equal(ledger.completed, ledger.created - keptSpans);
    for (const e of kept) e.ack.done();
    assert.equal(ledger.pending, 0);
    const triggers = await metrics.getSingleMetric('ksw_tail_sampling_decision_triggers_total')!.get();
    const by = Object.fromEntries(triggers.values.map((v) => [v.labels.trigger, v.value]));
    assert.equal(by.early, errors, 'error traces are decided when their error span arrives');
    assert.ok((by.complete ?? 0) > 15_000, 'complete traces are decided after the quiet period');
    // Spans arriving after their trace's decision take the cached one: the late spans, and the spans of
    // error traces that follow the error span (decided early).
    const errorSeen = new Set<string>();
    let afterDecision = 0;
    for (const d of w.deliveries) {
      if (d.late || errorSeen.has(d.span.traceId)) afterDecision += 1;
      else if (d.span.status.code === 2) errorSeen.add(d.span.traceId);
    }
    const late = await metrics.getSingleMetric('ksw_tail_sampling_late_spans_total')!.get();
    assert.equal(
      late.values.reduce((n, v) => n + v.value, 0),
      afterDecision,
    );
  });

  it('decides the same on the same input, run twice', async () => {
    const w = traceWorkload({ traces: 3_000, seed: 17, lateRate: 0.05, lateByMs: 20_000 });
    const summary = (r: Run) =>
      r.kept.map((e) => `${e.value.spanId}:${(e.value.sampling as { policy: string }).policy}`).sort();
    const a = await runTail(w);
    const b = await runTail(w, {}, 37);
    assert.deepEqual(summary(a), summary(b));
  });

  it('decides without a root after decisionWaitMs, and a trace whose first policy matches at once', async () => {
    const clock = { now: 0 };
    const s = new TailSampler(
      't',
      tailSamplingConfigSchema.parse({
        type: 'tail_sampling',
        decisionWaitMs: 5_000,
        quietPeriodMs: 1_000,
        policies: [{ name: 'all', type: 'probabilistic', probability: 1 }, ...ARTICLE_POLICIES.slice(1)],
      }),
      createRegistry(false),
      () => clock.now,
    );
    const t = traceWorkload({ traces: 1, seed: 2 }).traces[0]!;
    const ledger = new AckLedger();
    // probabilistic first: decided at the first span.
    assert.equal(s.process([spanEvent(t.spans[1]!, ledger.ack())]).length, 1);
    const s2 = new TailSampler(
      't2',
      tailSamplingConfigSchema.parse({
        type: 'tail_sampling',
        decisionWaitMs: 5_000,
        quietPeriodMs: 1_000,
        policies: [{ name: 'x', type: 'latency', thresholdMs: 0.001 }],
      }),
      createRegistry(false),
      () => clock.now,
    );
    const u = traceWorkload({ traces: 1, seed: 3 }).traces[0]!;
    const children = u.spans.filter((x) => x.parentSpanId !== '');
    const s3 = new TailSampler(
      't3',
      tailSamplingConfigSchema.parse({
        type: 'tail_sampling',
        decisionWaitMs: 5_000,
        quietPeriodMs: 1_000,
        policies: [
          { name: 'e', type: 'status_code' },
          { name: 'all', type: 'probabilistic', probability: 1 },
        ],
      }),
      createRegistry(false),
      () => clock.now,
    );
    assert.equal(s3.process(children.map((c) => spanEvent(c, ledger.ack()))).length, 0, 'no root: buffered');
    clock.now = 4_999;
    assert.equal(s3.tick().length, 0);
    assert.equal(s3.memory.traces, 1);
    clock.now = 5_000;
    assert.equal(s3.tick().length, children.length, 'decided at decisionWaitMs');
    assert.equal(s3.memory.bytes, 0);
    assert.ok(s2);
  });

  it('stays within its memory budget: giant traces are decided oldest first', async () => {
    const w = traceWorkload({ traces: 2_000, seed: 31, giantSpans: 3_000, giantEvery: 500 });
    const budget = 2 * 1024 * 1024;
    const { kept, sampler, metrics, ledger } = await runTail(
      w,
      { maxBufferedBytes: budget, decisionWaitMs: 60_000, quietPeriodMs: 30_000 },
      200,
    );
    const maxSpan = Math.max(...w.deliveries.map((d) => Buffer.byteLength(JSON.stringify(d.span)))) * 4 + 300;
    assert.ok(sampler.memory.peak <= budget + maxSpan, `peak ${sampler.memory.peak} over budget ${budget}`);
    assert.ok(sampler.memory.peak > budget * 0.8, 'the budget was reached');
    const triggers = await metrics.getSingleMetric('ksw_tail_sampling_decision_triggers_total')!.get();
    assert.ok((triggers.values.find((v) => v.labels.trigger === 'memory')?.value ?? 0) > 0);
    // Nothing lost: every span is kept or acked.
    for (const e of kept) e.ack.done();
    assert.equal(ledger.pending, 0);
    // Error traces are still kept whole, whatever forced their decision.
    const keptIds = new Set(kept.map((e) => e.value.traceId));
    for (const t of w.traces) if (t.error) assert.ok(keptIds.has(t.traceId));
    const gauges = await metrics.getSingleMetric('ksw_tail_sampling_budget_bytes')!.get();
    assert.equal(gauges.values[0]!.value, budget);
  });

  it('keeps traces matching an attribute policy', async () => {
    const w = traceWorkload({ traces: 2_000, seed: 41 });
    const { kept } = await runTail(w, {
      policies: [
        {
          name: 'pay',
          type: 'attribute',
          where: ['attributes["http.route"] == "/api/pay"', 'serviceName == "frontend"'],
        },
      ],
    });
    const pay = w.traces.filter((t) => t.spans.some((s) => s.attributes['http.route'] === '/api/pay'));
    assert.ok(pay.length > 100);
    assert.deepEqual(new Set(kept.map((e) => e.value.traceId)), new Set(pay.map((t) => t.traceId)));
  });

  it('rate limits per second, and composite members share their budget', async () => {
    // 2,000 traces of 5 spans within 2 virtual seconds.
    const w = traceWorkload({ traces: 2_000, seed: 51, errorRate: 0.1 });
    const rl = await runTail(w, {
      quietPeriodMs: 0,
      policies: [{ name: 'rl', type: 'rate_limit', spansPerSecond: 500 }],
    });
    const perSecond = new Map<number, number>();
    // Traces are decided when complete: quiet period 0 -> at the next tick after their root.
    for (const e of rl.kept) {
      const at = w.deliveries.find((d) => d.span.spanId === e.value.spanId)!.at;
      const sec = Math.floor(at / 1000);
      perSecond.set(sec, (perSecond.get(sec) ?? 0) + 1);
    }
    for (const [, n] of perSecond) assert.ok(n <= 505, `rate ${n}/s`);
    assert.ok(rl.kept.length >= 900, `kept ${rl.kept.length}`);

    const comp = await runTail(w, {
      quietPeriodMs: 0,
      policies: [
        {
          name: 'budget',
          type: 'composite',
          maxSpansPerSecond: 400,
          policies: [
            { name: 'errors', type: 'status_code', share: 0.5 },
            { name: 'any', type: 'probabilistic', probability: 1 },
          ],
        },
      ],
    });
    const byMember = new Map<string, number>();
    for (const e of comp.kept) {
      const p = (e.value.sampling as { policy: string }).policy;
      byMember.set(p, (byMember.get(p) ?? 0) + 1);
    }
    const seconds = Math.ceil((w.deliveries[w.deliveries.length - 1]!.at + 1) / 1000);
    assert.ok((byMember.get('budget.any') ?? 0) <= 200 * seconds + 5);
    assert.ok((byMember.get('budget.errors') ?? 0) > 0);
    assert.ok(comp.kept.length <= 400 * seconds + 10);
  });

  it("the example config (examples/traces.yaml) is the article's policy, after RED", () => {
    const c = loadConfig(path.join(import.meta.dirname, '../../examples/traces.yaml'), {
      STREAM_NAME: 'spans',
      LAKE_BUCKET: 'my-lake',
    });
    assert.deepEqual(
      c.processors.map((p) => p.type),
      ['otel_spans', 'red_metrics', 'tail_sampling'],
    );
    const tail = c.processors[2] as { policies: unknown[] };
    assert.deepEqual(tail.policies, [
      { name: 'errors', type: 'status_code', statusCodes: ['ERROR'], probability: 1 },
      { name: 'slow', type: 'latency', thresholdMs: 1000, probability: 0.8 },
      { name: 'rest', type: 'probabilistic', probability: 0.2 },
    ]);
  });

  it('validates its config at start-up, naming the field', () => {
    assert.throws(
      () =>
        validateConfig(
          config({
            type: 'tail_sampling',
            policies: [{ name: 'x', type: 'attribute', where: ['status 500'] }],
          }),
        ),
      /processors\[0\]\.policies.*write <field> <op> <value>/s,
    );
    assert.throws(
      () => validateConfig(config({ type: 'tail_sampling', policies: [{ name: 'x', type: 'latency' }] })),
      /thresholdMs/,
    );
    assert.throws(
      () =>
        validateConfig(
          config({
            type: 'tail_sampling',
            policies: [
              { name: 'a', type: 'probabilistic', probability: 1 },
              { name: 'a', type: 'status_code' },
            ],
          }),
        ),
      /two policies are named "a"/,
    );
    assert.throws(
      () => validateConfig(config({ type: 'red_metrics', sinks: ['nope'] })),
      /processors\[0\]\.sinks\[0\].*no sink is named "nope"/s,
    );
    const ok = validateConfig(config({ type: 'tail_sampling', policies: ARTICLE_POLICIES }));
    assert.equal(ok.processors.length, 1);
  });
});

function config(processor: Record<string, unknown>) {
  return {
    consumers: [{ type: 'polling', stream: 's' }],
    processors: [processor],
    sinks: { lake: { type: 's3_parquet', bucket: 'lake-bucket' } },
    dlq: { type: 's3', bucket: 'lake-bucket' },
  };
}
