/**
 * Processor types by `type:`. Processors run in the order the config lists them, between decoding and
 * routing. Each entry is the component's schema (its documentation) and its factory.
 */
import type { z } from 'zod';
import type { ComponentContext, ComponentDefinition, Processor } from '../core/component.js';
import { createHeadSampler, headSamplingConfigSchema } from './head-sampling.js';
import { createOtelSpans, otelSpansConfigSchema } from './otel-spans.js';
import { createRedMetrics, redMetricsConfigSchema } from './red-metrics.js';
import { createTailSampler, tailSamplingConfigSchema } from './tail-sampling.js';

function definition<T>(
  schema: z.ZodType<T>,
  create: (name: string, config: T, ctx: ComponentContext) => Processor,
): ComponentDefinition<T, Processor> {
  return { description: schema.description ?? '', schema, create };
}

export const processorRegistry = {
  otel_spans: definition(otelSpansConfigSchema, createOtelSpans),
  red_metrics: definition(redMetricsConfigSchema, createRedMetrics),
  head_sampling: definition(headSamplingConfigSchema, createHeadSampler),
  tail_sampling: definition(tailSamplingConfigSchema, createTailSampler),
} as const;

export type ProcessorConfig = z.infer<(typeof processorRegistry)[keyof typeof processorRegistry]['schema']>;

/** A processor's name: its `name:` when given, else its type (numbered when the type repeats). */
export function processorNames(configs: readonly { type: string; name?: string }[]): string[] {
  const seen = new Map<string, number>();
  return configs.map((c) => {
    if (c.name) return c.name;
    const n = (seen.get(c.type) ?? 0) + 1;
    seen.set(c.type, n);
    return n === 1 ? c.type : `${c.type}-${n}`;
  });
}

export function createProcessor(name: string, config: ProcessorConfig, ctx: ComponentContext): Processor {
  const def = processorRegistry[(config as { type: string }).type as keyof typeof processorRegistry];
  return (def as ComponentDefinition<unknown, Processor>).create(name, config, ctx);
}
