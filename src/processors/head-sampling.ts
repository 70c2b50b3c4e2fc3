/**
 * `head_sampling`: keeps a fixed share of traces, decided from the traceId alone (trace-hash.ts), so
 * the decision is the same for every span of a trace, on every worker and on every replay, and needs no
 * buffering: spans leave at once. Cheap and blunt: it cannot prefer errors or slow traces (use
 * `tail_sampling` for that). Dropped spans are acked (deliberately not written); kept spans carry
 * `sampling: {policy, probability}` so counts can be re-weighted (a kept span stands for 1/probability).
 * Events that are not spans (RED windows, anything without a traceId) pass untouched.
 */
import type { Counter, Registry } from 'prom-client';
import { z } from 'zod';
import type { ComponentContext, Processor } from '../core/component.js';
import type { PipelineEvent } from '../core/records.js';
import { counter } from '../metrics/registry.js';
import { inSample, saltSeed } from './trace-hash.js';

export const headSamplingConfigSchema = z
  .object({
    type: z.literal('head_sampling'),
    name: z
      .string()
      .min(1)
      .optional()
      .describe('Processor name (metrics label, `sampling.policy`). Default: the type.'),
    probability: z
      .number()
      .gt(0)
      .max(1)
      .describe('Share of traces kept, e.g. 0.25 for 25 %. The decision is a hash of the traceId.'),
    hashSalt: z
      .string()
      .default('')
      .describe(
        'Salt for the traceId hash. Samplers with the same salt agree (a 10 % sample is inside a 20 % one); a different salt gives an independent sample.',
      ),
  })
  .strict()
  .describe('Consistent head sampling by traceId hash: no buffering, same decision everywhere.');

export type HeadSamplingConfig = z.infer<typeof headSamplingConfigSchema>;

export interface SamplingMark {
  policy: string;
  probability: number;
}

/** The hash seed behind each mark, to tell nested samples (same seed) from independent ones. */
const markSeeds = new WeakMap<object, number>();

/** A shared, frozen `sampling` value for the spans a policy keeps, remembering the hash seed it used. */
export function samplingMark(policy: string, probability: number, seed: number): Readonly<SamplingMark> {
  const mark = Object.freeze({ policy, probability });
  markSeeds.set(mark, seed);
  return mark;
}

/**
 * Records on a kept span which policy kept it. A span already marked by an earlier sampler gets both policy
 * names and their joint probability: the smaller one when both hashed the traceId with the same seed (the
 * samples are nested: a 25 % sample lies inside a 50 % one), the product otherwise (independent samples).
 */
export function markSampled(value: Record<string, unknown>, mark: Readonly<SamplingMark>): void {
  const prior = value.sampling as SamplingMark | undefined;
  if (prior === undefined || prior === null || typeof prior.probability !== 'number') {
    value.sampling = mark;
    return;
  }
  const seed = markSeeds.get(mark);
  const nested = seed !== undefined && markSeeds.get(prior) === seed;
  const combined = {
    policy: `${prior.policy}/${mark.policy}`,
    probability: nested
      ? Math.min(prior.probability, mark.probability)
      : prior.probability * mark.probability,
  };
  if (nested) markSeeds.set(combined, seed);
  value.sampling = combined;
}

export class HeadSampler implements Processor {
  private readonly seed: number;
  private readonly spans: Counter<'processor' | 'decision'>;
  private readonly kept: { processor: string; decision: string };
  private readonly dropped: { processor: string; decision: string };
  private readonly mark: Readonly<SamplingMark>;

  constructor(
    readonly name: string,
    private readonly config: HeadSamplingConfig,
    metrics: Registry,
  ) {
    this.seed = saltSeed(config.hashSalt);
    this.spans = counter(metrics, {
      name: 'ksw_head_sampling_spans_total',
      help: 'Spans seen by head sampling, by decision (kept, dropped)',
      labelNames: ['processor', 'decision'],
    });
    this.kept = { processor: name, decision: 'kept' };
    this.dropped = { processor: name, decision: 'dropped' };
    this.mark = samplingMark(name, config.probability, this.seed);
  }

  process(events: PipelineEvent[]): PipelineEvent[] {
    const out: PipelineEvent[] = [];
    const p = this.config.probability;
    let kept = 0;
    let dropped = 0;
    for (const event of events) {
      const traceId = event.value.traceId;
      if (event.derived || typeof traceId !== 'string') {
        out.push(event);
        continue;
      }
      if (inSample(traceId, p, this.seed)) {
        markSampled(event.value, this.mark);
        out.push(event);
        kept += 1;
      } else {
        event.ack.done();
        dropped += 1;
      }
    }
    if (kept > 0) this.spans.inc(this.kept, kept);
    if (dropped > 0) this.spans.inc(this.dropped, dropped);
    return out;
  }
}

export function createHeadSampler(
  name: string,
  config: HeadSamplingConfig,
  ctx: ComponentContext,
): Processor {
  return new HeadSampler(name, config, ctx.metrics);
}
