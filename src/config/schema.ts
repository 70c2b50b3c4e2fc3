/**
 * The worker's configuration: one YAML file. Every field's description and default here is its
 * documentation (`ksw config-docs` prints them). Component sections come from the components' own
 * schemas through the registries, keyed by `type:`.
 */
import { z } from 'zod';
import { checkpointConfigSchema } from '../consumers/coordinator.js';
import { type ConsumerConfig, consumerRegistry } from '../consumers/registry.js';
import { awsConfigSchema } from '../core/aws.js';
import { decodeConfigSchema } from '../processors/decode.js';
import { hotKeyConfigSchema } from '../processors/hot-keys.js';
import { type ProcessorConfig, processorRegistry } from '../processors/registry.js';
import { checkRouting, routedSinkNames, routingConfigSchema } from '../processors/router.js';
import { type DeadLetterConfig, dlqRegistry, type SinkConfig, sinkRegistry } from '../sinks/registry.js';
import { byType } from './registry-union.js';

const COMPONENT_NAME = /^[a-z][a-z0-9_-]{0,62}$/;

export const workerConfigSchema = z
  .object({
    app: z
      .object({
        name: z.string().min(1).default('ksw').describe('Application name, used in logs and metrics.'),
        workerId: z
          .string()
          .min(1)
          .optional()
          .describe(
            'Identity of this worker in the lease table. Default: hostname plus a random suffix (unique per process). Better: a stable id unique per replica (the pod name): logs, metrics and the lease table name the replica, and a restarted replica counts once in the fleet. Never start two live processes with one id: the second is detected (ksw_worker_id_conflicts_total) and reads nothing of what the first holds. A restarted worker takes its old leases once they expire (failoverMs), whatever its id.',
          ),
      })
      .strict()
      .default({ name: 'ksw' }),
    aws: awsConfigSchema.default(awsConfigSchema.parse({})),
    consumers: z
      .array(byType<ConsumerConfig>(consumerRegistry, 'consumer'))
      .min(1, 'at least one consumer is needed, e.g. [{ type: polling, stream: my-stream }]')
      .describe('The Kinesis streams to read, one consumer per stream.'),
    checkpoints: checkpointConfigSchema.default(checkpointConfigSchema.parse({})),
    decode: decodeConfigSchema.default(decodeConfigSchema.parse({})),
    processors: z
      .array(byType<ProcessorConfig>(processorRegistry, 'processor'))
      .default([])
      .describe(
        'Processors between decoding and routing, run in this order (e.g. RED metrics, then sampling).',
      ),
    routing: routingConfigSchema.optional(),
    hotKeys: hotKeyConfigSchema.default(hotKeyConfigSchema.parse({})),
    sinks: z
      .record(
        z.string().regex(COMPONENT_NAME, 'sink names are lowercase letters, digits, _ and -'),
        byType<SinkConfig>(sinkRegistry, 'sink'),
      )
      .refine((s) => Object.keys(s).length > 0, 'at least one sink is needed')
      .describe('Named sinks. Without a routing section every event is written to every sink.'),
    dlq: byType<DeadLetterConfig>(dlqRegistry, 'dlq').describe(
      'Dead-letter queue for records that cannot be decoded or written, with the reason.',
    ),
    server: z
      .object({
        host: z
          .string()
          .default('127.0.0.1')
          .describe(
            'Address for /metrics, /healthz and /readyz. Use 0.0.0.0 in a container so Prometheus and probes reach it.',
          ),
        port: z
          .number()
          .int()
          .min(0)
          .max(65_535)
          .default(9400)
          .describe('Port for /metrics, /healthz and /readyz (0 = any free port).'),
      })
      .strict()
      .default({ host: '127.0.0.1', port: 9400 }),
    log: z
      .object({
        level: z
          .enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace'])
          .default('info')
          .describe('pino log level.'),
        format: z
          .enum(['auto', 'json', 'pretty'])
          .default('auto')
          .describe(
            'json: one JSON object per line (for log collectors); pretty: readable lines; auto: pretty when stdout is a terminal, else json. `ksw run --log-format` overrides it.',
          ),
        progressIntervalMs: z
          .number()
          .int()
          .min(0)
          .default(30_000)
          .describe(
            'Every this many ms the worker logs one info line with record rates, lag, unacked records and acks since the last line (0 = never).',
          ),
        dlqWarnIntervalMs: z
          .number()
          .int()
          .min(0)
          .default(10_000)
          .describe(
            'Records sent to the DLQ are reported by a warning at most once per this many ms, with the count and the last reason (0 = a warning per letter).',
          ),
      })
      .strict()
      .default({ level: 'info', format: 'auto', progressIntervalMs: 30_000, dlqWarnIntervalMs: 10_000 }),
    shutdown: z
      .object({
        deadlineMs: z
          .number()
          .int()
          .min(100)
          .default(30_000)
          .describe(
            'On SIGTERM/SIGINT: stop fetching, flush sinks, checkpoint and exit within this time. Keep it below the orchestrator grace period (terminationGracePeriodSeconds / stopTimeout).',
          ),
      })
      .strict()
      .default({ deadlineMs: 30_000 }),
  })
  .strict()
  .superRefine((config, ctx) => {
    config.consumers.forEach((consumer, i) => {
      if (
        consumer.type === 'efo' &&
        !consumer.consumerName &&
        !/^[a-zA-Z0-9_.-]{1,128}$/.test(config.app.name)
      ) {
        ctx.addIssue({
          code: 'custom',
          path: ['consumers', i, 'consumerName'],
          message: `the enhanced fan-out consumer name defaults to app.name "${config.app.name}", which is not a valid consumer name (letters, digits, _ . -): set consumerName`,
        });
      }
    });
    const streams = config.consumers.map((c) => c.stream);
    streams.forEach((stream, i) => {
      if (streams.indexOf(stream) !== i) {
        ctx.addIssue({
          code: 'custom',
          path: ['consumers', i, 'stream'],
          message: `stream "${stream}" is already read by consumers[${streams.indexOf(stream)}]; one consumer per stream (leases are per shard)`,
        });
      }
    });
    const sinkNames = Object.keys(config.sinks);
    // Processors that emit their own events (red_metrics windows) name the sinks they go to.
    config.processors.forEach((processor, i) => {
      const targets = (processor as { sinks?: unknown }).sinks;
      if (!Array.isArray(targets)) return;
      targets.forEach((sink, j) => {
        if (!sinkNames.includes(sink as string)) {
          ctx.addIssue({
            code: 'custom',
            path: ['processors', i, 'sinks', j],
            message: `no sink is named "${sink}"; configured sinks: ${sinkNames.join(', ')}`,
          });
        }
      });
    });
    if (config.routing) {
      for (const { sink, path } of routedSinkNames(config.routing)) {
        if (!sinkNames.includes(sink)) {
          ctx.addIssue({
            code: 'custom',
            path: ['routing', ...path],
            message: `no sink is named "${sink}"; configured sinks: ${sinkNames.join(', ')}`,
          });
        }
      }
      try {
        checkRouting(config.routing);
      } catch (err) {
        ctx.addIssue({ code: 'custom', path: ['routing'], message: (err as Error).message });
      }
    }
  });

export type WorkerConfig = z.infer<typeof workerConfigSchema>;
