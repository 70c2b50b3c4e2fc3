/**
 * Pipeline tests declared in YAML (`ksw test FILE`): records in, the events each sink receives and the
 * dead letters out, through the real chain of a config (decoder, processors, routing), with capturing
 * sinks and DLQ instead of S3/OpenSearch and a file consumer instead of Kinesis. Nothing is written
 * anywhere and no AWS call is made (except for S3 pointers in the input, which the decoder resolves).
 *
 * A test's input is fed as one shard, then the chain is flushed as at a graceful end of the shard
 * (processors release what they hold: tail sampling decides, RED windows close), then every ack must be
 * complete. Then each expectation is checked; each failure is one line naming the test and what differed.
 */
import { Readable } from 'node:stream';
import pino from 'pino';
import { z } from 'zod';
import type { WorkerConfig } from '../config/schema.js';
import { FileSource, fieldPathSchema, fileConsumerConfigSchema } from '../consumers/file.js';
import type { Ack } from '../core/ack.js';
import { createAwsClients } from '../core/aws.js';
import type { DeadLetter, DeadLetterQueue, Sink } from '../core/component.js';
import type { PipelineEvent } from '../core/records.js';
import { createRegistry } from '../metrics/registry.js';
import { createPipeline } from './chain.js';

const expectedEvents = z
  .array(z.record(z.string(), z.unknown()))
  .describe(
    'Events as partial documents: each must match a different event (fields not named are not compared).',
  );

const sinkExpectation = z
  .object({
    count: z
      .number()
      .int()
      .min(0)
      .optional()
      .describe('Exactly this many events (default with `events`: their number).'),
    events: expectedEvents
      .optional()
      .describe('The events the sink receives, in any order; no other events.'),
    contains: expectedEvents.optional().describe('Events the sink receives among others.'),
  })
  .strict();

export const pipelineTestSchema = z
  .object({
    name: z.string().min(1),
    stream: z
      .string()
      .min(1)
      .optional()
      .describe("The records' stream name (default: the first consumer's)."),
    partitionKeyField: fieldPathSchema
      .optional()
      .describe('Field of each input record used as its partition key.'),
    input: z
      .array(z.unknown())
      .min(1)
      .describe('Records, one per item: an object or array is JSON-encoded, a string is taken as it is.'),
    expect: z
      .object({
        sinks: z
          .record(z.string(), sinkExpectation)
          .default({})
          .describe('Per sink name; sinks not named are not checked.'),
        deadLetters: z
          .object({
            count: z.number().int().min(0).optional(),
            reasons: z
              .array(z.string())
              .optional()
              .describe('Substrings: each must occur in the reason of a different dead letter.'),
          })
          .strict()
          .optional(),
      })
      .strict(),
  })
  .strict();

export const pipelineTestFileSchema = z
  .object({
    config: z.string().min(1).describe('The worker config under test, relative to this file.'),
    env: z
      .record(z.string(), z.union([z.string(), z.number(), z.boolean()]))
      .default({})
      .describe("Variables for the config's VAR references (on top of the environment)."),
    tests: z.array(pipelineTestSchema).min(1),
  })
  .strict();

export type PipelineTest = z.infer<typeof pipelineTestSchema>;

export interface TestOutcome {
  readonly name: string;
  readonly failures: string[];
  readonly events: Record<string, Record<string, unknown>[]>;
  readonly deadLetters: Array<{ reason: string; component: string; data: string }>;
}

/** JSON-like view of a value for comparing and printing: bigint as its decimal string, Date as ISO. */
export function plain(value: unknown): unknown {
  if (typeof value === 'bigint') return value.toString();
  if (value instanceof Date) return value.toISOString();
  if (value instanceof Uint8Array) return Buffer.from(value).toString('utf8');
  if (Array.isArray(value)) return value.map(plain);
  if (value && typeof value === 'object')
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, plain(v)]));
  return value;
}

/** Whether `actual` has every field of `expected` with an equal value (recursively; arrays element-wise). */
export function matches(actual: unknown, expected: unknown): boolean {
  if (expected === null || typeof expected !== 'object') {
    if (typeof expected === 'number' && typeof actual === 'string') return String(expected) === actual;
    return Object.is(actual, expected);
  }
  if (Array.isArray(expected)) {
    return (
      Array.isArray(actual) &&
      actual.length === expected.length &&
      expected.every((e, i) => matches(actual[i], e))
    );
  }
  if (!actual || typeof actual !== 'object' || Array.isArray(actual)) return false;
  return Object.entries(expected).every(([k, v]) => matches((actual as Record<string, unknown>)[k], v));
}

/** Assigns each expected to a different actual (greedy, in order); returns the expected ones left over. */
function unmatched(actual: readonly unknown[], expected: readonly unknown[]): unknown[] {
  const used = new Set<number>();
  const missing: unknown[] = [];
  for (const e of expected) {
    const i = actual.findIndex((a, j) => !used.has(j) && matches(a, e));
    if (i === -1) missing.push(e);
    else used.add(i);
  }
  return missing;
}

class CapturingSink implements Sink {
  readonly events: Record<string, unknown>[] = [];
  constructor(readonly name: string) {}
  async write(events: PipelineEvent[]): Promise<void> {
    for (const e of events) {
      this.events.push(plain(e.value) as Record<string, unknown>);
      e.ack.done();
    }
  }
  async flush(): Promise<void> {}
  async close(): Promise<void> {}
}

class CapturingDlq implements DeadLetterQueue {
  readonly letters: TestOutcome['deadLetters'] = [];
  put(letter: DeadLetter, ack: Ack): void {
    this.letters.push({
      reason: letter.reason,
      component: letter.component,
      data: Buffer.from(letter.data).toString('utf8'),
    });
    ack.done();
  }
  async flush(): Promise<void> {}
  async close(): Promise<void> {}
}

function record(item: unknown): string {
  return typeof item === 'string' ? item : JSON.stringify(item);
}

/** Runs one test through the chain of `config`. */
export async function runPipelineTest(config: WorkerConfig, test: PipelineTest): Promise<TestOutcome> {
  const logger = pino({ level: 'silent' });
  const metrics = createRegistry(false);
  const aws = createAwsClients(config.aws);
  const dlq = new CapturingDlq();
  const sinks = Object.keys(config.sinks).map((name) => new CapturingSink(name));
  const failures: string[] = [];
  for (const name of Object.keys(test.expect.sinks))
    if (!config.sinks[name])
      failures.push(
        `expect.sinks.${name}: the config has no sink "${name}" (sinks: ${Object.keys(config.sinks).join(', ')})`,
      );
  const pipeline = createPipeline(config, { logger, metrics, aws, dlq }, sinks);
  const stream = test.stream ?? config.consumers[0]?.stream ?? 'test';
  const source = new FileSource(
    fileConsumerConfigSchema.parse({
      type: 'file',
      path: '-',
      stream,
      ...(test.partitionKeyField ? { partitionKeyField: test.partitionKeyField } : {}),
    }),
    {
      chain: pipeline,
      logger,
      metrics,
      drainTimeoutMs: 5_000,
      input: Readable.from([
        Buffer.from(`${test.input.map((item) => record(item).replace(/\n/g, ' ')).join('\n')}\n`),
      ]),
    },
  );
  try {
    const result = await source.run();
    await pipeline.flush();
    if (result.error !== undefined)
      failures.push(`the chain failed: ${(result.error as Error).message ?? String(result.error)}`);
    else if (!result.drained)
      failures.push(`${source.inFlightRecords} record(s) were never acked (held by a processor?)`);
  } finally {
    await pipeline.close();
    aws.destroy();
  }
  const events = Object.fromEntries(sinks.map((s) => [s.name, s.events]));
  for (const [name, want] of Object.entries(test.expect.sinks)) {
    const got = events[name];
    if (!got) continue;
    const count = want.count ?? want.events?.length;
    if (count !== undefined && got.length !== count)
      failures.push(`sink ${name}: ${got.length} event(s), expected ${count}`);
    for (const missing of unmatched(got, [...(want.events ?? []), ...(want.contains ?? [])]))
      failures.push(`sink ${name}: no event matches ${JSON.stringify(missing)}`);
  }
  const letters = test.expect.deadLetters;
  if (letters?.count !== undefined && dlq.letters.length !== letters.count)
    failures.push(
      `dead letters: ${dlq.letters.length}, expected ${letters.count}${dlq.letters.length ? ` (reasons: ${dlq.letters.map((l) => JSON.stringify(l.reason)).join(', ')})` : ''}`,
    );
  const used = new Set<number>();
  for (const reason of letters?.reasons ?? []) {
    const i = dlq.letters.findIndex((l, j) => !used.has(j) && l.reason.includes(reason));
    if (i === -1) failures.push(`dead letters: no reason contains ${JSON.stringify(reason)}`);
    else used.add(i);
  }
  return { name: test.name, failures, events, deadLetters: dlq.letters };
}
