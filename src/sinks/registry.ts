import type { z } from 'zod';
import type { ComponentContext, DeadLetterQueue, Sink } from '../core/component.js';
import { openSearchSinkDefinition } from './opensearch/index.js';
import { s3DeadLetterDefinition } from './s3-dead-letter.js';
import { parquetSinkDefinition } from './s3-parquet/index.js';

/** Sink types by `type:`. */
export const sinkRegistry = {
  s3_parquet: parquetSinkDefinition,
  opensearch: openSearchSinkDefinition,
} as const;

/** Dead-letter queue types by `type:`. */
export const dlqRegistry = {
  s3: s3DeadLetterDefinition,
} as const;

export type SinkConfig = z.infer<(typeof sinkRegistry)[keyof typeof sinkRegistry]['schema']>;
export type DeadLetterConfig = z.infer<(typeof dlqRegistry)[keyof typeof dlqRegistry]['schema']>;

export function createSink(name: string, config: SinkConfig, ctx: ComponentContext): Sink {
  const def = sinkRegistry[config.type as keyof typeof sinkRegistry];
  return def.create(name, config as never, ctx);
}

export function createDeadLetterQueue(
  config: DeadLetterConfig,
  ctx: Omit<ComponentContext, 'dlq'>,
): DeadLetterQueue {
  const def = dlqRegistry[config.type as keyof typeof dlqRegistry];
  return def.create('dlq', config as never, ctx as ComponentContext);
}
