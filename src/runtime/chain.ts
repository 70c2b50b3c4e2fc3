/**
 * Builds the chain of a config: decoder, processors in order, routing, hot-key detection, the given sinks
 * and the DLQ. Shared by the worker and `ksw test` (which gives capturing sinks and DLQ).
 */
import type { WorkerConfig } from '../config/schema.js';
import type { ComponentContext, Sink } from '../core/component.js';
import { RecordDecoder } from '../processors/decode.js';
import { HotKeyDetector } from '../processors/hot-keys.js';
import { createProcessor, processorNames } from '../processors/registry.js';
import { PartitionKeyRouter } from '../processors/router.js';
import { Pipeline } from './pipeline.js';

/** `signal`: aborted at shutdown, so pointer fetches waiting out S3 errors stop retrying (their records are read again). */
export function createPipeline(
  config: WorkerConfig,
  ctx: ComponentContext,
  sinks: Sink[],
  signal?: AbortSignal,
): Pipeline {
  const { logger, metrics, aws, dlq } = ctx;
  const decoder = new RecordDecoder(config.decode, dlq, metrics, {
    s3: aws.s3,
    ...(signal ? { signal } : {}),
    logger: logger.child({ component: 'decode' }),
  });
  const names = processorNames(config.processors as Array<{ type: string; name?: string }>);
  const processors = config.processors.map((processorConfig, i) =>
    createProcessor(names[i]!, processorConfig, { ...ctx, logger: logger.child({ processor: names[i] }) }),
  );
  const router = config.routing
    ? new PartitionKeyRouter(config.routing, metrics, logger.child({ component: 'router' }))
    : undefined;
  const hotKeys = config.hotKeys.enabled
    ? new HotKeyDetector(config.hotKeys, metrics, logger.child({ component: 'hot-keys' }))
    : undefined;
  return new Pipeline(decoder, processors, sinks, router, hotKeys && ((r) => hotKeys.observe(r)), dlq);
}
