/**
 * The worker process: wires config -> AWS clients -> DLQ, sinks, decoder, pipeline -> shard coordinator,
 * and the operations server. `stop()` is the graceful shutdown: stop fetching, release what processors
 * hold, flush sinks and the DLQ, wait until the watermarks cover everything (or the deadline passes),
 * checkpoint, release the leases.
 */
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import type { Readable } from 'node:stream';
import type { Logger } from 'pino';
import { type Counter, Gauge, type Registry } from 'prom-client';
import type { WorkerConfig } from '../config/schema.js';
import { ShardCoordinator, type ShardStatus } from '../consumers/coordinator.js';
import { type FileConsumerConfig, type FileRunResult, FileSource } from '../consumers/file.js';
import { LeaseTable } from '../consumers/lease-table.js';
import { isKinesisConsumer } from '../consumers/registry.js';
import { type AwsClients, countSdkRetries, createAwsClients } from '../core/aws.js';
import type { ComponentContext, DeadLetterQueue, Sink } from '../core/component.js';
import { createRegistry, zeroSeries } from '../metrics/registry.js';
import { type OpsServer, startOpsServer } from '../metrics/server.js';
import { processorNames } from '../processors/registry.js';
import { createDeadLetterQueue, createSink } from '../sinks/registry.js';
import { createPipeline } from './chain.js';
import { DeadLetterWarnings } from './dlq-warnings.js';
import { createLogger } from './logger.js';
import type { Pipeline } from './pipeline.js';
import { preflight } from './preflight.js';
import { ProgressLog } from './progress-log.js';

export interface WorkerStatus {
  readonly ready: boolean;
  readonly workerId: string;
  readonly shards: ShardStatus[];
}

/** Worker.start was asked to stop (its signal aborted) before start-up finished; the worker is stopped. */
export class StartAbortedError extends Error {
  constructor() {
    super('stop requested during start-up');
    this.name = 'StartAbortedError';
  }
}

export function defaultWorkerId(): string {
  return `${hostname()}-${randomBytes(4).toString('hex')}`;
}

export class Worker {
  private started = false;
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
    /** Absent when every consumer is a file consumer (no Kinesis, no lease table). */
    private readonly coordinator: ShardCoordinator | undefined,
    private readonly server: OpsServer,
    private readonly files: readonly FileSource[],
    private readonly shutdownSignal: AbortController,
  ) {}

  private progress: ProgressLog | undefined;

  /** Results of the file consumers, once each has consumed its input and its acks are done. */
  private fileRuns: Promise<FileRunResult[]> = Promise.resolve([]);

  /**
   * Resolves when the worker has nothing more to read: every consumer is a file consumer and all of them
   * consumed their input with every record acked. Never resolves while a Kinesis consumer is configured.
   */
  get finished(): Promise<FileRunResult[]> {
    return this.coordinator ? new Promise(() => undefined) : this.fileRuns;
  }

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
      /** Aborting it during start-up stops the worker (within shutdown.deadlineMs) and rejects with StartAbortedError. */
      signal?: AbortSignal;
      /** Instead of opening `path`, the input of a file consumer (tests, `ksw test`). */
      fileInput?: (config: FileConsumerConfig) => Readable;
    } = {},
  ): Promise<Worker> {
    const logger =
      opts.logger ?? createLogger(config.log.level, config.app.name, undefined, config.log.format);
    const workerId = opts.workerId ?? config.app.workerId ?? defaultWorkerId();
    const metrics = opts.registry ?? createRegistry();
    metrics.setDefaultLabels({ app: config.app.name });
    const aws = createAwsClients(config.aws);
    countSdkRetries(aws, metrics);
    const base = { logger, metrics, aws };
    const dlq = new DeadLetterWarnings(
      createDeadLetterQueue(config.dlq, base),
      logger.child({ component: 'dlq' }),
      config.log.dlqWarnIntervalMs,
      `s3://${config.dlq.bucket}/${config.dlq.prefix}`,
    );
    const ctx: ComponentContext = { ...base, dlq };
    const sinks = Object.entries(config.sinks).map(([name, sinkConfig]) => {
      const sink = createSink(name, sinkConfig, { ...ctx, logger: logger.child({ sink: name }) });
      return opts.wrapSink ? opts.wrapSink(name, sink) : sink;
    });
    const shutdownSignal = new AbortController();
    const pipeline = createPipeline(config, ctx, sinks, shutdownSignal.signal);
    const kinesisConsumers = config.consumers.filter(isKinesisConsumer);
    const fileConsumers = config.consumers.filter((c): c is FileConsumerConfig => c.type === 'file');
    const files = fileConsumers.map(
      (c) =>
        new FileSource(c, {
          chain: pipeline,
          logger: logger.child({ component: 'file', stream: c.stream }),
          metrics,
          ...(opts.fileInput ? { input: opts.fileInput(c) } : {}),
        }),
    );
    zeroDeadLetterSeries(
      metrics,
      config.processors.flatMap((p, i) =>
        p.type === 'otel_spans'
          ? [`processor:${processorNames(config.processors as Array<{ type: string; name?: string }>)[i]}`]
          : [],
      ),
      Object.keys(config.sinks).map((name) => `sink:${name}`),
    );
    const coordinator =
      kinesisConsumers.length === 0
        ? undefined
        : new ShardCoordinator(kinesisConsumers, config.checkpoints, {
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
      notReadyReason: () => (worker ? worker.notReadyReason : 'starting'),
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
      files,
      shutdownSignal,
    );
    const w = worker;
    new Gauge({
      name: 'ksw_worker_ready',
      help: '1 while the worker is ready: started, not shutting down, its last shard sync succeeded, and it holds leases or its last lease scan succeeded (what /readyz answers)',
      registers: [metrics],
      collect() {
        this.set(w.ready ? 1 : 0);
      },
    });
    const signal = opts.signal;
    const aborted = () => {
      logger.warn('stop requested during start-up; stopping within shutdown.deadlineMs');
      return w.stop();
    };
    if (signal?.aborted) {
      await aborted();
      throw new StartAbortedError();
    }
    const onAbort = new Promise<'aborted'>((resolve) =>
      signal?.addEventListener('abort', () => resolve('aborted'), { once: true }),
    );
    const starting = (async () => {
      await preflight(config, aws, logger);
      await coordinator?.start();
      return 'started' as const;
    })();
    let outcome: 'started' | 'aborted';
    try {
      outcome = await Promise.race([starting, onAbort]);
    } catch (err) {
      await server.close();
      aws.destroy();
      throw err;
    }
    if (outcome === 'aborted') {
      // The start-up still running fails once stop() destroys the AWS clients; nothing waits for it.
      starting.catch(() => undefined);
      await aborted();
      throw new StartAbortedError();
    }
    worker.started = true;
    worker.fileRuns = Promise.all(files.map((f) => f.run()));
    worker.progress = new ProgressLog(metrics, logger, () => {
      const shards = w.status().shards;
      const all = [...shards, ...files];
      return {
        inFlightRecords: all.reduce((n, s) => n + s.inFlightRecords, 0),
        oldestUnackedAgeMs: Math.max(0, ...all.map((s) => s.oldestUnackedAgeMs)),
        shards: shards.length + files.length,
      };
    });
    worker.progress.start(config.log.progressIntervalMs);
    logger.info(
      {
        workerId,
        streams: config.consumers.map((c) => c.stream),
        shards: coordinator?.heldCount ?? 0,
        ...(files.length ? { files: fileConsumers.map((c) => c.path) } : {}),
        ops: server.address,
      },
      'worker started',
    );
    return worker;
  }

  /** Ready: started, not stopping, and the coordinator's conditions hold (see notReadyReason). */
  get ready(): boolean {
    return this.notReadyReason === undefined;
  }

  get notReadyReason(): string | undefined {
    if (!this.started) return 'starting';
    if (this.stopping) return 'shutting down';
    return this.coordinator?.notReadyReason;
  }

  status(): WorkerStatus {
    return { ready: this.ready, workerId: this.workerId, shards: this.coordinator?.status() ?? [] };
  }

  /** Graceful shutdown within `config.shutdown.deadlineMs`; safe to call more than once. */
  stop(): Promise<{ drained: boolean }> {
    this.stopping ??= this.doStop();
    return this.stopping;
  }

  private async doStop(): Promise<{ drained: boolean }> {
    const deadline = Date.now() + this.config.shutdown.deadlineMs;
    this.progress?.stop();
    this.logger.info('shutting down: stop fetching, flush, checkpoint');
    // Pointer fetches waiting out S3 errors stop retrying now; their records are not acked, so read again.
    this.shutdownSignal.abort();
    const remaining = () => deadline - Date.now();
    // Leave a slice of the deadline for the final checkpoint and lease release.
    const flushBudget = () => Math.max(0, remaining() - Math.min(2_000, this.config.shutdown.deadlineMs / 4));
    let drained = false;
    try {
      for (const f of this.files) f.stop();
      await withTimeout(this.coordinator?.stopReading() ?? Promise.resolve(), flushBudget());
      await withTimeout(
        (async () => {
          await this.pipeline.flush();
          await this.pipeline.close();
          await this.dlq.flush();
        })(),
        flushBudget(),
      );
      const runs = await withTimeout(this.fileRuns, flushBudget());
      const filesDrained = runs ? runs.every((r) => r.drained) : false;
      drained = this.coordinator
        ? (await this.coordinator.waitDrained(flushBudget())) && filesDrained
        : filesDrained;
    } catch (err) {
      this.logger.error({ err }, 'error while flushing at shutdown');
    }
    if (!drained) {
      this.logger.warn(
        'shutdown deadline reached before every record was acked; the rest will be read again',
      );
    }
    await withTimeout(
      this.coordinator?.checkpointAndRelease() ?? Promise.resolve(),
      Math.max(500, remaining()),
    ).catch((err) => this.logger.error({ err }, 'final checkpoint failed'));
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
      {
        drained,
        recordsFetched: await total('ksw_kinesis_records_fetched_total'),
        ...(this.files.length ? { fileRecordsRead: await total('ksw_file_records_read_total') } : {}),
      },
      'worker stopped',
    );
    return { drained };
  }
}

/**
 * `ksw_dlq_records_total` at 0 for every component that may dead-letter, so the first burst of letters is
 * seen by increase() (see zeroSeries): the decoder, chunk reassembly, KPL de-aggregation, span processors
 * and sinks. The DLQ owns the counter; a DLQ that exports none (a test's) leaves nothing to do.
 */
function zeroDeadLetterSeries(metrics: Registry, processors: string[], sinks: string[]): void {
  const letters = metrics.getSingleMetric('ksw_dlq_records_total') as Counter<'component'> | undefined;
  if (!letters) return;
  zeroSeries(
    letters,
    ['decode', 'decode.chunks', 'kpl', ...processors, ...sinks].map((component) => ({ component })),
  );
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
