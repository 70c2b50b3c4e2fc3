import type { ComponentDefinition, Sink } from '../../core/component.js';
import { type OpenSearchSinkConfig, openSearchSinkConfigSchema } from './config.js';
import { OpenSearchSink } from './sink.js';

export { type OpenSearchSinkConfig, openSearchSinkConfigSchema } from './config.js';
export { OpenSearchSink } from './sink.js';

export const openSearchSinkDefinition: ComponentDefinition<OpenSearchSinkConfig, Sink> = {
  description:
    'Indexes events into OpenSearch (self-managed, Amazon OpenSearch Service or Serverless) with the bulk API: ' +
    'deterministic ids, date-pattern indices, per-item retries within a time budget, adaptive concurrency, ' +
    'dead-lettering; acks documents once indexed.',
  schema: openSearchSinkConfigSchema,
  create: (name, config, ctx) => new OpenSearchSink(name, config, ctx),
};
