/**
 * Consumer types by `type:`. Each opens once per stream at start-up (enhanced fan-out registers its stream
 * consumer then) and creates one reader per shard lease the coordinator holds.
 */
import type { KinesisClient } from '@aws-sdk/client-kinesis';
import type { Logger } from 'pino';
import {
  type EfoConsumerConfig,
  EfoShardReader,
  efoConsumerConfigSchema,
  registerStreamConsumer,
} from './efo.js';
import { type FileConsumerConfig, fileConsumerConfigSchema } from './file.js';
import { type PollingConsumerConfig, PollingShardReader, pollingConsumerConfigSchema } from './polling.js';
import type { ShardReader, ShardReaderDeps, StartingPoint } from './shard-reader.js';

export const consumerRegistry = {
  polling: { schema: pollingConsumerConfigSchema, description: 'GetRecords polling consumer' },
  efo: {
    schema: efoConsumerConfigSchema,
    description: 'Enhanced fan-out consumer (RegisterStreamConsumer + SubscribeToShard)',
  },
  file: {
    schema: fileConsumerConfigSchema,
    description: 'Records from a local file or stdin, one per line (no Kinesis, no lease table)',
  },
} as const;

export type ConsumerConfig = PollingConsumerConfig | EfoConsumerConfig | FileConsumerConfig;

/** The consumers that read Kinesis shards through the lease coordinator. */
export type KinesisConsumerConfig = PollingConsumerConfig | EfoConsumerConfig;

export function isKinesisConsumer(config: ConsumerConfig): config is KinesisConsumerConfig {
  return config.type !== 'file';
}

export interface ConsumerContext {
  readonly kinesis: KinesisClient;
  /** Client for SubscribeToShard (HTTP/2 against AWS). */
  readonly kinesisSubscribe: KinesisClient;
  readonly logger: Logger;
  /** Default enhanced fan-out consumer name (the application name). */
  readonly appName: string;
  readonly signal?: AbortSignal;
}

/** A consumer opened for one stream: makes a reader per shard. */
export interface StreamConsumer {
  readonly config: KinesisConsumerConfig;
  createReader(shardId: string, start: StartingPoint, deps: ShardReaderDeps): ShardReader;
}

export async function openConsumer(
  config: KinesisConsumerConfig,
  ctx: ConsumerContext,
): Promise<StreamConsumer> {
  switch (config.type) {
    case 'polling':
      return {
        config,
        createReader: (shardId, start, deps) => new PollingShardReader(config, shardId, start, deps),
      };
    case 'efo': {
      const consumerArn = await registerStreamConsumer(
        ctx.kinesisSubscribe,
        config.stream,
        config.consumerName ?? ctx.appName,
        {
          timeoutMs: config.registerTimeoutMs,
          logger: ctx.logger,
          ...(ctx.signal ? { signal: ctx.signal } : {}),
        },
      );
      return {
        config,
        createReader: (shardId, start, deps) =>
          new EfoShardReader(config, consumerArn, shardId, start, {
            ...deps,
            subscribeClient: ctx.kinesisSubscribe,
          }),
      };
    }
  }
}
