/**
 * A fleet of shard coordinators in one test process, each with its own worker id, lease table client and a
 * capturing "pipeline": every delivered record is logged (worker, shard, position, partition key, payload)
 * in one global order, and acked after a small random delay like a sink would. Lets tests check delivery,
 * order across reshards and lease movement precisely, without Parquet in between.
 */

import type { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import type { KinesisClient } from '@aws-sdk/client-kinesis';
import {
  type CheckpointConfig,
  checkpointConfigSchema,
  ShardCoordinator,
} from '../../src/consumers/coordinator.js';
import { LeaseTable } from '../../src/consumers/lease-table.js';
import { consumerRegistry, type KinesisConsumerConfig } from '../../src/consumers/registry.js';
import type { Sink } from '../../src/core/component.js';
import { compareSequence, type SourceRecord } from '../../src/core/records.js';
import { createRegistry } from '../../src/metrics/registry.js';
import { seededRandom } from '../../src/producer/synthetic-spans.js';
import { MemoryDeadLetterQueue } from './fakes.js';
import { silentLogger } from './stack.js';

export interface Delivery {
  readonly order: number;
  readonly worker: string;
  readonly stream: string;
  readonly shardId: string;
  readonly sequenceNumber: string;
  readonly subSequenceNumber: number;
  readonly partitionKey: string;
  readonly data: string;
  /** When it was handed to the capture (Date.now()). */
  readonly at: number;
  /** The tenure it was read in. */
  readonly tenure: string;
  ackOrder?: number;
}

export interface FleetMember {
  readonly id: string;
  readonly coordinator: ShardCoordinator;
  readonly metrics: ReturnType<typeof createRegistry>;
  readonly dlq: MemoryDeadLetterQueue;
  stopped: boolean;
}

export class TestFleet {
  readonly deliveries: Delivery[] = [];
  readonly members = new Map<string, FleetMember>();
  private order = 0;
  private readonly random = seededRandom(99);
  private readonly pendingAcks = new Set<NodeJS.Timeout>();

  constructor(
    private readonly opts: {
      kinesis: KinesisClient;
      kinesisSubscribe?: KinesisClient;
      dynamodb: DynamoDBClient;
      table: string;
      consumers: Array<Record<string, unknown>>;
      checkpoints?: Partial<CheckpointConfig>;
      /** Largest random delay before a delivered record is acked (a sink's buffering). */
      maxAckDelayMs?: number;
      logger?: import('pino').Logger;
      /** Sinks whose openShard the coordinator calls when it takes a lease (deliveries still go to capture). */
      sinks?: Sink[];
      /** The process instance (tenure token prefix) of a member; default random per member. */
      instanceOf?: (id: string) => string;
      /** A member's own DynamoDB client (e.g. through a fault proxy); default `dynamodb`. */
      dynamodbFor?: (id: string) => DynamoDBClient;
      /** Makes the chain reject a delivery (a sink write that throws) when it returns true. */
      failDeliver?: (worker: string, records: readonly SourceRecord[]) => boolean;
    },
  ) {}

  private parseConsumers(): KinesisConsumerConfig[] {
    return this.opts.consumers.map((c) => {
      const def = consumerRegistry[c.type as keyof typeof consumerRegistry];
      return def.schema.parse(c) as KinesisConsumerConfig;
    });
  }

  /** Starts a member; `name` tells two members with the same worker `id` apart (default: the id). */
  async start(id: string, name = id): Promise<FleetMember> {
    const metrics = createRegistry(false);
    const dlq = new MemoryDeadLetterQueue();
    const coordinator = new ShardCoordinator(
      this.parseConsumers(),
      checkpointConfigSchema.parse({ table: this.opts.table, ...this.opts.checkpoints }),
      {
        kinesis: this.opts.kinesis,
        ...(this.opts.kinesisSubscribe ? { kinesisSubscribe: this.opts.kinesisSubscribe } : {}),
        leases: new LeaseTable(this.opts.dynamodbFor?.(name) ?? this.opts.dynamodb, this.opts.table),
        logger: (this.opts.logger ?? silentLogger).child({ worker: name }),
        metrics,
        workerId: id,
        dlq,
        appName: 'fleet-test',
        chain: {
          deliver: async (records) => {
            if (this.opts.failDeliver?.(name, records))
              throw new Error(`injected: a sink write of ${name} failed`);
            this.capture(name, records);
          },
          openShard: async (tenure, checkpoint) => {
            for (const sink of this.opts.sinks ?? []) await sink.openShard?.(tenure, checkpoint);
          },
          flushShard: async () => {},
          closeShard: async (tenure) => {
            for (const sink of this.opts.sinks ?? []) await sink.closeShard?.(tenure);
          },
          relievePressure: () => {},
        },
        ...(this.opts.instanceOf ? { instance: this.opts.instanceOf(name) } : {}),
      },
    );
    const member: FleetMember = { id, coordinator, metrics, dlq, stopped: false };
    this.members.set(name, member);
    await coordinator.start();
    return member;
  }

  private capture(worker: string, records: SourceRecord[]): void {
    const max = this.opts.maxAckDelayMs ?? 20;
    for (const r of records) {
      // As the pipeline does: records of an ended tenure are not handed to the sinks.
      if (!r.ack.tenure.active) continue;
      const d: Delivery = {
        order: this.order++,
        worker,
        stream: r.origin.stream,
        shardId: r.origin.shardId,
        sequenceNumber: r.origin.sequenceNumber,
        subSequenceNumber: r.origin.subSequenceNumber,
        partitionKey: r.origin.partitionKey,
        data: Buffer.from(r.data).toString('utf8'),
        at: Date.now(),
        tenure: r.ack.tenure.token,
      };
      this.deliveries.push(d);
      const timer = setTimeout(
        () => {
          this.pendingAcks.delete(timer);
          d.ackOrder = this.order++;
          r.ack.done();
        },
        Math.floor(this.random() * max),
      );
      this.pendingAcks.add(timer);
    }
  }

  /** Graceful stop, as the worker does at SIGTERM: stop reading, drain, checkpoint, release. */
  async stop(id: string): Promise<void> {
    const member = this.members.get(id)!;
    if (member.stopped) return;
    member.stopped = true;
    await member.coordinator.stopReading();
    await member.coordinator.waitDrained(10_000);
    await member.coordinator.checkpointAndRelease();
  }

  async stopAll(): Promise<void> {
    await Promise.all([...this.members.keys()].map((id) => this.stop(id)));
  }

  /** Distinct records delivered, keyed by stream/shard/sequence/sub. */
  distinct(): Map<string, Delivery> {
    const map = new Map<string, Delivery>();
    for (const d of this.deliveries) {
      const key = `${d.stream}/${d.shardId}/${d.sequenceNumber}/${d.subSequenceNumber}`;
      if (!map.has(key)) map.set(key, d);
    }
    return map;
  }

  duplicates(): number {
    return this.deliveries.length - this.distinct().size;
  }

  held(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const [id, m] of this.members) if (!m.stopped) out[id] = m.coordinator.heldKeys().length;
    return out;
  }
}

/** For each partition key, the first deliveries of its `n` values must be in increasing order. */
export function orderViolations(deliveries: readonly Delivery[], field = 'n'): string[] {
  const firstSeen = new Set<string>();
  const lastN = new Map<string, number>();
  const problems: string[] = [];
  for (const d of deliveries) {
    const id = `${d.stream}/${d.shardId}/${d.sequenceNumber}/${d.subSequenceNumber}`;
    if (firstSeen.has(id)) continue;
    firstSeen.add(id);
    const n = (JSON.parse(d.data) as Record<string, number>)[field]!;
    const prev = lastN.get(d.partitionKey);
    if (prev !== undefined && n < prev)
      problems.push(`${d.partitionKey}: ${n} after ${prev} (shard ${d.shardId})`);
    lastN.set(d.partitionKey, Math.max(prev ?? -1, n));
  }
  return problems;
}

/** Sorts positions of one shard. */
export function byPosition(a: Delivery, b: Delivery): number {
  return compareSequence(a.sequenceNumber, b.sequenceNumber) || a.subSequenceNumber - b.subSequenceNumber;
}
