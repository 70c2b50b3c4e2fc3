import { afterEach, describe, expect, it, vi } from 'vitest';
import { Ack } from '../../src/core/ack.js';
import type { DeadLetter, DeadLetterQueue } from '../../src/core/component.js';
import { counter, createRegistry, gauge } from '../../src/metrics/registry.js';
import { DeadLetterWarnings } from '../../src/runtime/dlq-warnings.js';
import { ProgressLog } from '../../src/runtime/progress-log.js';

function fakeLogger() {
  const lines: Array<{ level: string; fields: Record<string, unknown>; msg: string }> = [];
  const log = (level: string) => (fields: Record<string, unknown>, msg: string) =>
    lines.push({ level, fields, msg });
  return { lines, logger: { warn: log('warn'), info: log('info') } as never };
}

const letter = (seq: number, reason = 'invalid JSON'): DeadLetter => ({
  origin: {
    stream: 's',
    shardId: 'shardId-000000000000',
    sequenceNumber: String(seq),
    subSequenceNumber: 0,
    partitionKey: 'k',
    arrivalTime: new Date(0),
  },
  data: new Uint8Array([1]),
  reason,
  component: 'decode',
});

afterEach(() => vi.useRealTimers());

describe('dead-letter warnings', () => {
  it('warns at the first letter, then at most once per interval with the count and the last reason', async () => {
    vi.useFakeTimers();
    let now = 0;
    const inner: DeadLetterQueue & { put: ReturnType<typeof vi.fn> } = {
      put: vi.fn((_l: DeadLetter, ack: Ack) => ack.done()),
      flush: async () => undefined,
      close: async () => undefined,
    };
    const { lines, logger } = fakeLogger();
    const dlq = new DeadLetterWarnings(inner, logger, 10_000, 's3://b/dlq/', () => now);
    const acks = [1, 2, 3, 4].map(() => new Ack(() => undefined));
    dlq.put(letter(1), acks[0]!);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({
      level: 'warn',
      msg: 'record sent to the dead-letter queue',
      fields: { letters: 1, total: 1, sequenceNumber: '1', dlq: 's3://b/dlq/' },
    });
    now = 1_000;
    dlq.put(letter(2), acks[1]!);
    now = 2_000;
    dlq.put(letter(3, 'expected a JSON object'), acks[2]!);
    expect(lines).toHaveLength(1);
    now = 10_000;
    vi.advanceTimersByTime(9_000);
    expect(lines).toHaveLength(2);
    expect(lines[1]).toMatchObject({
      msg: '2 records sent to the dead-letter queue (the last one shown)',
      fields: { letters: 2, total: 3, reason: 'expected a JSON object', sequenceNumber: '3' },
    });
    now = 12_000;
    dlq.put(letter(4), acks[3]!);
    await dlq.close();
    expect(lines).toHaveLength(3);
    expect(lines[2]!.fields).toMatchObject({ letters: 1, total: 4 });
    expect(inner.put).toHaveBeenCalledTimes(4);
    expect(acks.every((a) => a.completed)).toBe(true);
  });

  it('interval 0 warns for every letter', () => {
    const { lines, logger } = fakeLogger();
    const dlq = new DeadLetterWarnings(
      { put: (_l, a) => a.done(), flush: async () => undefined, close: async () => undefined },
      logger,
      0,
      'x',
    );
    dlq.put(letter(1), new Ack(() => undefined));
    dlq.put(letter(2), new Ack(() => undefined));
    expect(lines).toHaveLength(2);
  });
});

describe('progress line', () => {
  it('reports rates since the previous line from the metrics, lag, unacked and checkpoints', async () => {
    const registry = createRegistry(false);
    const fetched = counter(registry, {
      name: 'ksw_kinesis_records_fetched_total',
      help: 'x',
      labelNames: ['shard'],
    });
    const rows = counter(registry, { name: 'ksw_parquet_rows_total', help: 'x' });
    const dlq = counter(registry, { name: 'ksw_dlq_records_total', help: 'x' });
    const lag = gauge(registry, {
      name: 'ksw_kinesis_millis_behind_latest',
      help: 'x',
      labelNames: ['shard'],
    });
    let now = 0;
    const { lines, logger } = fakeLogger();
    const progress = new ProgressLog(
      registry,
      logger,
      () => ({ inFlightRecords: 7, oldestUnackedAgeMs: 1500, shards: 2 }),
      () => now,
    );
    expect(await progress.line()).toBeUndefined();
    fetched.inc({ shard: 'a' }, 300);
    fetched.inc({ shard: 'b' }, 100);
    rows.inc(200);
    dlq.inc(3);
    lag.set({ shard: 'a' }, 250);
    lag.set({ shard: 'b' }, 900);
    now = 2_000;
    expect(await progress.line()).toEqual({
      recordsPerSec: 200,
      eventsWrittenPerSec: 100,
      deadLetters: 3,
      checkpoints: 0,
      maxLagMs: 900,
      unackedRecords: 7,
      oldestUnackedMs: 1500,
      shards: 2,
    });
    expect(lines.at(-1)).toMatchObject({ level: 'info', msg: 'progress' });
    progress.start(0);
    progress.stop();
  });
});
