import assert from 'node:assert/strict';
import type { KinesisClient } from '@aws-sdk/client-kinesis';
import { afterAll, beforeAll, describe, it } from 'vitest';
import {
  type PollingConsumerConfig,
  PollingShardReader,
  pollingConsumerConfigSchema,
  type StartingPoint,
} from '../../src/consumers/polling.js';
import type { SourceRecord } from '../../src/core/records.js';
import { ShardWatermark } from '../../src/core/watermark.js';
import { createRegistry } from '../../src/metrics/registry.js';
import {
  createStream,
  putRecords,
  silentLogger,
  startTestStack,
  type TestStack,
  waitFor,
} from '../helpers/stack.js';

/** Injects failures into chosen Kinesis commands of a real client (the emulators never throttle). */
function injectFaults(
  client: KinesisClient,
  plan: (command: string, input: Record<string, unknown>) => Error | undefined,
) {
  const seen: Array<{ command: string; input: Record<string, unknown> }> = [];
  const name = `fault-${Math.random()}`;
  client.middlewareStack.add(
    (next, context) => async (args) => {
      const command = String(context.commandName);
      const input = args.input as Record<string, unknown>;
      seen.push({ command, input });
      const err = plan(command, input);
      if (err) throw err;
      return next(args);
    },
    { step: 'initialize', name },
  );
  return { seen, remove: () => client.middlewareStack.remove(name) };
}

function awsError(name: string, status: number): Error {
  return Object.assign(new Error(`injected ${name}`), {
    name,
    $fault: 'client',
    $metadata: { httpStatusCode: status },
  });
}

describe('PollingShardReader against kinesalite', () => {
  let t: TestStack;
  let shardId: string;
  let sequences: string[];
  const stream = 'reader-test';

  beforeAll(async () => {
    t = await startTestStack();
    [shardId] = (await createStream(t.aws.kinesis, stream, 1)) as [string];
    const put = await putRecords(
      t.aws.kinesis,
      stream,
      Array.from({ length: 30 }, (_, i) => ({ partitionKey: `k${i}`, data: JSON.stringify({ i }) })),
    );
    sequences = put.map((p) => p.sequenceNumber);
  });
  afterAll(async () => {
    await t.stop();
  });

  function reader(start: StartingPoint, overrides: Partial<PollingConsumerConfig> = {}) {
    const config = pollingConsumerConfigSchema.parse({
      type: 'polling',
      stream,
      maxRecordsPerCall: 7,
      idleIntervalMs: 20,
      busyIntervalMs: 0,
      backoffBaseMs: 5,
      backoffMaxMs: 20,
      ...overrides,
    });
    const watermark = new ShardWatermark(config.maxInFlightBytes);
    const got: SourceRecord[] = [];
    const metrics = createRegistry(false);
    const r = new PollingShardReader(config, shardId, start, {
      kinesis: t.aws.kinesis,
      logger: silentLogger,
      metrics,
      watermark,
      deliver: async (records) => {
        got.push(...records);
        for (const rec of records) rec.ack.done();
      },
    });
    return { r, got, watermark, metrics };
  }

  it('reads every record in order from TRIM_HORIZON and moves the watermark', async () => {
    const { r, got, watermark } = reader({ kind: 'initial', position: 'TRIM_HORIZON' });
    const run = r.run();
    await waitFor(() => got.length === 30, 10_000, '30 records');
    r.stop();
    assert.equal(await run, 'stopped');
    assert.deepEqual(
      got.map((g) => g.origin.sequenceNumber),
      sequences,
    );
    assert.equal(watermark.watermark?.sequenceNumber, sequences[29]);
  });

  it('a full batch is read again at once, even when MillisBehindLatest says 0 (as kinesalite always does)', async () => {
    // 30 records in batches of 7: four full batches, then 2. An idle wait after a full batch would stall
    // the read for a minute; only the last, partial batch may wait.
    const { r, got } = reader({ kind: 'initial', position: 'TRIM_HORIZON' }, { idleIntervalMs: 60_000 });
    const run = r.run();
    await waitFor(() => got.length === 30, 10_000, '30 records without an idle wait in between');
    r.stop();
    assert.equal(await run, 'stopped');
  });

  it('resumes right after a checkpoint', async () => {
    const { r, got } = reader({
      kind: 'after',
      position: { sequenceNumber: sequences[9]!, subSequenceNumber: 0 },
    });
    const run = r.run();
    await waitFor(() => got.length === 20, 10_000, '20 records');
    r.stop();
    await run;
    assert.equal(got[0]!.origin.sequenceNumber, sequences[10]);
  });

  it('LATEST skips existing records; AT_TIMESTAMP in the past reads them', async () => {
    const latest = reader({ kind: 'initial', position: 'LATEST' });
    const run = latest.r.run();
    await new Promise((r) => setTimeout(r, 300));
    latest.r.stop();
    await run;
    assert.equal(latest.got.length, 0);
    const at = reader({
      kind: 'initial',
      position: 'AT_TIMESTAMP',
      timestamp: new Date(Date.now() - 3_600_000),
    });
    const run2 = at.r.run();
    await waitFor(() => at.got.length === 30, 10_000, '30 records');
    at.r.stop();
    await run2;
  });

  it('recovers from an expired iterator without losing or repeating records', async () => {
    let getRecordsCalls = 0;
    const faults = injectFaults(t.aws.kinesis, (command) => {
      if (command !== 'GetRecordsCommand') return undefined;
      getRecordsCalls += 1;
      return getRecordsCalls === 3 ? awsError('ExpiredIteratorException', 400) : undefined;
    });
    try {
      const { r, got, metrics } = reader({ kind: 'initial', position: 'TRIM_HORIZON' });
      const run = r.run();
      await waitFor(() => got.length === 30, 10_000, '30 records');
      r.stop();
      await run;
      assert.deepEqual(
        got.map((g) => g.origin.sequenceNumber),
        sequences,
        'each record exactly once, in order',
      );
      const iterators = faults.seen
        .filter((s) => s.command === 'GetShardIteratorCommand')
        .map((s) => s.input);
      assert.equal(iterators.length, 2);
      assert.equal(iterators[1]!.ShardIteratorType, 'AFTER_SEQUENCE_NUMBER');
      assert.equal(
        iterators[1]!.StartingSequenceNumber,
        sequences[13],
        'after the last record read (2 calls x 7)',
      );
      const text = await metrics.metrics();
      assert.match(text, /ksw_kinesis_expired_iterators_total\{stream="reader-test",shard="[^"]+"\} 1/);
    } finally {
      faults.remove();
    }
  });

  it('backs off on throttling and transient errors, then continues', async () => {
    let failures = 0;
    const faults = injectFaults(t.aws.kinesis, (command) => {
      if (command !== 'GetRecordsCommand') return undefined;
      failures += 1;
      if (failures <= 3) return awsError('ProvisionedThroughputExceededException', 400);
      if (failures === 4) return awsError('InternalFailure', 500);
      return undefined;
    });
    try {
      const { r, got, metrics } = reader({ kind: 'initial', position: 'TRIM_HORIZON' });
      const run = r.run();
      await waitFor(() => got.length === 30, 10_000, '30 records');
      r.stop();
      await run;
      assert.deepEqual(
        got.map((g) => g.origin.sequenceNumber),
        sequences,
      );
      const text = await metrics.metrics();
      assert.match(
        text,
        /ksw_kinesis_read_errors_total\{[^}]*error="ProvisionedThroughputExceededException"\} 3/,
      );
      assert.match(text, /ksw_kinesis_read_errors_total\{[^}]*error="InternalFailure"\} 1/);
    } finally {
      faults.remove();
    }
  });

  it('stops fetching while in-flight bytes are over the limit (backpressure)', async () => {
    const config = pollingConsumerConfigSchema.parse({
      type: 'polling',
      stream,
      maxRecordsPerCall: 5,
      idleIntervalMs: 10,
      busyIntervalMs: 0,
      maxInFlightBytes: 1024,
    });
    const watermark = new ShardWatermark(30); // 5 records of 7-8 bytes exceed it
    const got: SourceRecord[] = [];
    let pressure = 0;
    const r = new PollingShardReader(
      config,
      shardId,
      { kind: 'initial', position: 'TRIM_HORIZON' },
      {
        kinesis: t.aws.kinesis,
        logger: silentLogger,
        metrics: createRegistry(false),
        watermark,
        deliver: async (records) => {
          got.push(...records);
        },
        onBackpressure: () => {
          pressure += 1;
        },
      },
    );
    const run = r.run();
    await waitFor(() => got.length >= 5, 5_000, 'first batch');
    await new Promise((res) => setTimeout(res, 200));
    assert.equal(got.length, 5, 'no second fetch while over the limit');
    assert.ok(pressure >= 1);
    for (const g of got) g.ack.done();
    await waitFor(() => got.length >= 10, 5_000, 'second batch after acks');
    r.stop();
    for (const g of got.slice(5)) g.ack.done();
    await run;
  });
});
