/**
 * The worker process: wires config -> AWS clients -> DLQ, sinks, decoder, pipeline -> shard coordinator,
 * and the operations server. `stop()` is the graceful shutdown: stop fetching, release what processors
 * hold, flush sinks and the DLQ, wait until the watermarks cover everything (or the deadline passes),
 * checkpoint, release the leases.
 */
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import type { WorkerConfig } from '../config/schema.js';
import { ShardCoordinator, type ShardStatus } from '../consumers/coordinator.js';
import { LeaseTable } from '../consumers/lease-table.js';
import { type AwsClients, countSdkRetries, createAwsClients } from '../core/aws.js';
import type { ComponentContext, DeadLetterQueue, Sink } from '../core/component.js';
import { createRegistry, gauge } from '../metrics/registry.js';
import { type OpsServer, startOpsServer } from '../metrics/server.js';
import { RecordDecoder } from '../processors/decode.js';
import { HotKeyDetector } from '../processors/hot-keys.js';
import { createProcessor, processorNames } from '../processors/registry.js';
import { PartitionKeyRouter } from '../processors/router.js';
import { createDeadLetterQueue, createSink } from '../sinks/registry.js';
import { createLogger } from './logger.js';
import { Pipeline } from './pipeline.js';

export interface WorkerStatus {
  readonly ready: boolean;
  readonly workerId: string;
  readonly shards: ShardStatus[];
}

export function defaultWorkerId(): string {
  return `${hostname()}-${randomBytes(4).toString('hex')}`;
}

export class Worker {
  private ready = false;
  private stopping: Promise<{ drained: boolean }> | undefined;

  private constructor(
    readonly config: WorkerConfig,
    readonly workerId: string,
    readonly logger: Logger,
    readonly metrics: Registry,
    private readonly aws: AwsClients,
    private readonly dlq: DeadLetterQueue,
    private readonly sinks: Sink[],
    private readonly pipeline: Pipeline,
    private readonly coordinator: ShardCoordinator,
    private readonly server: OpsServer,
    private readonly shutdownSignal: AbortController,
  ) {}

  get address(): { host: string; port: number } {
    return this.server.address;
  }

  static async start(
    config: WorkerConfig,
    opts: {
      logger?: Logger;
      workerId?: string;
      registry?: Registry;
      /** Wraps each configured sink (embedding, fault injection in tests); default: the sink itself. */
      wrapSink?: (name: string, sink: Sink) => Sink;
    } = {},
  ): Promise<Worker> {
    const logger = opts.logger ?? createLogger(config.log.level, config.app.name);
    const workerId = opts.workerId ?? config.app.workerId ?? defaultWorkerId();
    const metrics = opts.registry ?? createRegistry();
    metrics.setDefaultLabels({ app: config.app.name });
    const aws = createAwsClients(config.aws);
    countSdkRetries(aws, metrics);
    const base = { logger, metrics, aws };
    const dlq = createDeadLetterQueue(config.dlq, base);
    const ctx: ComponentContext = { ...base, dlq };
    const sinks = Object.entries(config.sinks).map(([name, sinkConfig]) => {
      const sink = createSink(name, sinkConfig, { ...ctx, logger: logger.child({ sink: name }) });
      return opts.wrapSink ? opts.wrapSink(name, sink) : sink;
    });
    const shutdownSignal = new AbortController();
    const decoder = new RecordDecoder(config.decode, dlq, metrics, {
      s3: aws.s3,
      signal: shutdownSignal.signal,
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
    const pipeline = new Pipeline(
      decoder,
      processors,
      sinks,
      router,
      hotKeys && ((r) => hotKeys.observe(r)),
      dlq,
    );
    const coordinator = new ShardCoordinator(config.consumers, config.checkpoints, {
      kinesis: aws.kinesis,
      kinesisSubscribe: aws.kinesisSubscribe,
      dlq,
      appName: config.app.name,
      leases: new LeaseTable(aws.dynamodb, config.checkpoints.table),
      logger,
      metrics,
      workerId,
      chain: pipeline,
    });
    let worker: Worker | undefined;
    const server = await startOpsServer({
      host: config.server.host,
      port: config.server.port,
      registry: metrics,
      ready: () => worker?.ready ?? false,
    });
    worker = new Worker(
      config,
      workerId,
      logger,
      metrics,
      aws,
      dlq,
      sinks,
      pipeline,
      coordinator,
      server,
      shutdownSignal,
    );
    gauge(metrics, {
      name: 'ksw_worker_ready',
      help: '1 while the worker is ready (started, not shutting down)',
    }).set(0);
    try {
      await coordinator.start();
    } catch (err) {
      await server.close();
      aws.destroy();
      throw err;
    }
    worker.ready = true;
    gauge(metrics, { name: 'ksw_worker_ready', help: '' }).set(1);
    logger.info(
      {
        workerId,
        streams: config.consumers.map((c) => c.stream),
        shards: coordinator.heldCount,
        ops: server.address,
      },
      'worker started',
    );
    return worker;
  }

  status(): WorkerStatus {
    return { ready: this.ready, workerId: this.workerId, shards: this.coordinator.status() };
  }

  /** Graceful shutdown within `config.shutdown.deadlineMs`; safe to call more than once. */
  stop(): Promise<{ drained: boolean }> {
    this.stopping ??= this.doStop();
    return this.stopping;
  }

  private async doStop(): Promise<{ drained: boolean }> {
    const deadline = Date.now() + this.config.shutdown.deadlineMs;
    this.ready = false;
    gauge(this.metrics, { name: 'ksw_worker_ready', help: '' }).set(0);
    this.logger.info('shutting down: stop fetching, flush, checkpoint');
    // Pointer fetches waiting out S3 errors stop retrying now; their records are not acked, so read again.
    this.shutdownSignal.abort();
    const remaining = () => deadline - Date.now();
    // Leave a slice of the deadline for the final checkpoint and lease release.
    const flushBudget = () => Math.max(0, remaining() - Math.min(2_000, this.config.shutdown.deadlineMs / 4));
    let drained = false;
    try {
      await withTimeout(this.coordinator.stopReading(), flushBudget());
      await withTimeout(
        (async () => {
          await this.pipeline.flush();
          await this.pipeline.close();
          await this.dlq.flush();
        })(),
        flushBudget(),
      );
      drained = await this.coordinator.waitDrained(flushBudget());
    } catch (err) {
      this.logger.error({ err }, 'error while flushing at shutdown');
    }
    if (!drained) {
      this.logger.warn(
        'shutdown deadline reached before every record was acked; the rest will be read again',
      );
    }
    await withTimeout(this.coordinator.checkpointAndRelease(), Math.max(500, remaining())).catch((err) =>
      this.logger.error({ err }, 'final checkpoint failed'),
    );
    // Sinks and DLQ get what is left of the deadline to finish anything still uploading, then stop.
    await withTimeout(
      Promise.all([...this.sinks.map((s) => s.close()), this.dlq.close()]),
      Math.max(100, remaining()),
    ).catch(() => undefined);
    await this.server.close();
    this.aws.destroy();
    // Lifetime totals, so an operator (or a rolling-restart test) can see what this process read and wrote.
    const total = async (name: string) =>
      ((await this.metrics.getSingleMetric(name)?.get())?.values ?? []).reduce((sum, v) => sum + v.value, 0);
    this.logger.info(
      { drained, recordsFetched: await total('ksw_kinesis_records_fetched_total') },
      'worker stopped',
    );
    return { drained };
  }
}

function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T | undefined> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    promise,
    new Promise<undefined>((resolve) => {
      timer = setTimeout(() => resolve(undefined), Math.max(0, ms));
    }),
  ]).finally(() => clearTimeout(timer));
}
