import { pollingConsumerConfigSchema } from './polling.js';

/** Consumer types by `type:`. Enhanced fan-out joins with the fleet issue. */
export const consumerRegistry = {
  polling: { schema: pollingConsumerConfigSchema, description: 'GetRecords polling consumer' },
} as const;

export type ConsumerConfig = import('zod').infer<typeof pollingConsumerConfigSchema>;
