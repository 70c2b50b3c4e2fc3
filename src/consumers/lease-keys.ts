/**
 * Lease keys of an application: the shard id (the KCL's single-stream format) when the worker reads one
 * stream, `<stream>:<shardId>` when several streams share the lease table.
 */
import type { KinesisConsumerConfig } from './registry.js';

export class LeaseKeys {
  constructor(private readonly consumers: readonly KinesisConsumerConfig[]) {}

  of(stream: string, shardId: string): string {
    return this.consumers.length === 1 ? shardId : `${stream}:${shardId}`;
  }

  /** The consumer and shard of a lease key of this application, or undefined for foreign rows. */
  parse(key: string): { consumer: KinesisConsumerConfig; shardId: string } | undefined {
    if (this.consumers.length === 1) return { consumer: this.consumers[0]!, shardId: key };
    const at = key.indexOf(':');
    if (at < 0) return undefined;
    const consumer = this.consumers.find((c) => c.stream === key.slice(0, at));
    return consumer ? { consumer, shardId: key.slice(at + 1) } : undefined;
  }
}
