/**
 * S3 dead-letter queue against s3rver: letters are read back from the objects, parsed with
 * parseDeadLetterLine and compared with what was put, byte for byte.
 */
import assert from 'node:assert/strict';
import { GetObjectCommand, ListObjectsV2Command } from '@aws-sdk/client-s3';
import pino from 'pino';
import type { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, test } from 'vitest';
import { Ack } from '../../src/core/ack.js';
import type { AwsClients } from '../../src/core/aws.js';
import type { DeadLetter } from '../../src/core/component.js';
import type { RecordOrigin } from '../../src/core/records.js';
import { createRegistry } from '../../src/metrics/registry.js';
import {
  type DeadLetterLine,
  deadLetterFromLine,
  formatDeadLetter,
  parseDeadLetterLine,
  S3DeadLetterQueue,
  s3DeadLetterConfigSchema,
  s3DeadLetterDefinition,
} from '../../src/sinks/s3-dead-letter.js';
import { startS3Only } from '../helpers/stack.js';

const BUCKET = 'dead-letters';
const STREAM = 'orders';
const SHARD_A = 'shardId-000000000000';
const SHARD_B = 'shardId-000000000001';

function seq(n: number): string {
  return `4960${String(n).padStart(52, '0')}`;
}

function origin(shardId: string, n: number, sub = 0): RecordOrigin {
  return {
    stream: STREAM,
    shardId,
    sequenceNumber: seq(n),
    subSequenceNumber: sub,
    partitionKey: `pk-${n}`,
    arrivalTime: new Date(1_700_000_000_000 + n),
  };
}

async function metricSum(registry: Registry, name: string): Promise<number> {
  const metric = await registry.getSingleMetric(name)?.get();
  return (metric?.values ?? []).reduce((sum, v) => sum + v.value, 0);
}

async function waitUntil(cond: () => boolean, what: string, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('S3 dead-letter queue (s3rver)', () => {
  let _dir: string;
  let aws: AwsClients;
  let s3: Awaited<ReturnType<typeof startS3Only>>;

  beforeAll(async () => {
    s3 = await startS3Only([BUCKET]);
    aws = s3.aws;
    _dir = s3.dir;
  });
  afterAll(async () => {
    await s3.stop();
  });

  function dlq(config: Record<string, unknown>) {
    const registry = createRegistry(false);
    const queue = new S3DeadLetterQueue(
      'dlq',
      s3DeadLetterConfigSchema.parse({ type: 's3', bucket: BUCKET, maxBatchAgeMs: 60_000, ...config }),
      { logger: pino({ level: 'silent' }), metrics: registry, aws },
      { baseMs: 5, maxMs: 50 },
    );
    return { queue, registry };
  }

  async function keys(prefix: string): Promise<string[]> {
    const out = await aws.s3.send(new ListObjectsV2Command({ Bucket: BUCKET, Prefix: prefix }));
    return (out.Contents ?? []).map((o) => o.Key!).sort();
  }

  /** Keys without their letters hash: `<prefix><stream>/<shard>/<first>_<last>`. */
  async function ranges(prefix: string): Promise<string[]> {
    return (await keys(prefix)).map((k) => {
      const m = /^(.*)_[0-9a-f]{16}\.jsonl$/.exec(k);
      assert.ok(m, `a dead-letter key ends with _<16 hex>.jsonl: ${k}`);
      return m[1]!;
    });
  }

  /** The one object of a range (`<prefix><stream>/<shard>/<first>_<last>`). */
  async function keyOf(range: string): Promise<string> {
    const found = (await keys(range)).filter((k) => k.startsWith(`${range}_`));
    assert.equal(found.length, 1, `one object for ${range}: ${found.join(', ')}`);
    return found[0]!;
  }

  async function readLines(keyOrRange: string): Promise<DeadLetterLine[]> {
    const key = keyOrRange.endsWith('.jsonl') ? keyOrRange : await keyOf(keyOrRange);
    const out = await aws.s3.send(new GetObjectCommand({ Bucket: BUCKET, Key: key }));
    const text = await out.Body!.transformToString('utf8');
    assert.ok(text.endsWith('\n'));
    return text.trimEnd().split('\n').map(parseDeadLetterLine);
  }

  test('letters round-trip byte for byte, acks complete only after the write', async () => {
    const { queue, registry } = dlq({ prefix: 'rt/' });
    const notUtf8 = Uint8Array.from([0xff, 0xfe, 0x00, 0xc3, 0x28, 0x80, 0x0a, 0x22]);
    const letters: DeadLetter[] = [
      { origin: origin(SHARD_A, 5), data: notUtf8, reason: 'record is not valid UTF-8', component: 'decode' },
      {
        origin: origin(SHARD_A, 6, 2),
        index: 3,
        data: Buffer.from('{"a":"ünï 🚀"}'),
        reason: 'r "q"\n',
        component: 'sink:lake',
      },
      { origin: origin(SHARD_A, 7), data: new Uint8Array(0), reason: 'record is empty', component: 'decode' },
      // A view into a larger buffer: only the viewed bytes must be stored.
      {
        origin: origin(SHARD_B, 9),
        index: 0,
        data: Buffer.from('xxSLICEyy').subarray(2, 7),
        reason: 'bad',
        component: 'decode',
      },
    ];
    const acks = letters.map(() => new Ack(() => {}));
    const before = Date.now();
    letters.forEach((letter, i) => {
      queue.put(letter, acks[i]!);
    });
    assert.ok(
      acks.every((a) => !a.completed),
      'no ack before the write',
    );
    assert.equal(await metricSum(registry, 'ksw_dlq_buffered_records'), 4);
    assert.equal(await metricSum(registry, 'ksw_dlq_records_total'), 4);
    await queue.flush();
    assert.ok(acks.every((a) => a.completed));
    assert.equal(await metricSum(registry, 'ksw_dlq_buffered_records'), 0);
    await queue.close();

    assert.deepEqual(await ranges('rt/'), [
      `rt/${STREAM}/${SHARD_A}/${seq(5)}_${seq(7)}`,
      `rt/${STREAM}/${SHARD_B}/${seq(9)}_${seq(9)}`,
    ]);
    const lines = [
      ...(await readLines(`rt/${STREAM}/${SHARD_A}/${seq(5)}_${seq(7)}`)),
      ...(await readLines(`rt/${STREAM}/${SHARD_B}/${seq(9)}_${seq(9)}`)),
    ];
    assert.equal(lines.length, letters.length);
    lines.forEach((line, i) => {
      const letter = letters[i]!;
      assert.deepEqual(new Uint8Array(Buffer.from(line.data, 'base64')), new Uint8Array(letter.data));
      assert.equal(line.stream, STREAM);
      assert.equal(line.shardId, letter.origin.shardId);
      assert.equal(line.sequenceNumber, letter.origin.sequenceNumber);
      assert.equal(line.subSequenceNumber, letter.origin.subSequenceNumber);
      assert.equal(line.partitionKey, letter.origin.partitionKey);
      assert.equal(line.arrivalTime, letter.origin.arrivalTime.toISOString());
      assert.equal(line.index, letter.index ?? null);
      assert.equal(line.component, letter.component);
      assert.equal(line.reason, letter.reason);
      const failedAt = Date.parse(line.failedAt);
      assert.ok(failedAt >= before - 1 && failedAt <= Date.now(), line.failedAt);
      // What a redrive gets back is the letter that was put.
      const back = deadLetterFromLine(line);
      assert.deepEqual(
        { ...back, data: [...back.data] },
        { ...letter, data: [...letter.data], origin: { ...letter.origin } },
      );
    });
    assert.deepEqual(Object.keys(lines[0]!), [
      'stream',
      'shardId',
      'sequenceNumber',
      'subSequenceNumber',
      'partitionKey',
      'arrivalTime',
      'index',
      'component',
      'reason',
      'failedAt',
      'data',
    ]);
  });

  test('a batch is written when it reaches maxBatchRecords, and by age', async () => {
    const { queue } = dlq({ prefix: 'count/', maxBatchRecords: 2 });
    const acks = [1, 2, 3].map(() => new Ack(() => {}));
    acks.forEach((ack, i) => {
      queue.put(
        { origin: origin(SHARD_A, 10 + i), data: Buffer.from([i]), reason: 'x', component: 'decode' },
        ack,
      );
    });
    await waitUntil(() => acks[0]!.completed && acks[1]!.completed, 'the full batch');
    assert.equal(acks[2]!.completed, false);
    await queue.close();
    assert.ok(acks[2]!.completed);
    assert.deepEqual(await ranges('count/'), [
      `count/${STREAM}/${SHARD_A}/${seq(10)}_${seq(11)}`,
      `count/${STREAM}/${SHARD_A}/${seq(12)}_${seq(12)}`,
    ]);

    const aged = dlq({ prefix: 'aged/', maxBatchAgeMs: 50 }).queue;
    const ack = new Ack(() => {});
    aged.put({ origin: origin(SHARD_B, 1), data: Buffer.from('a'), reason: 'x', component: 'decode' }, ack);
    await waitUntil(() => ack.completed, 'the age roll');
    await aged.close();
    assert.deepEqual(await ranges('aged/'), [`aged/${STREAM}/${SHARD_B}/${seq(1)}_${seq(1)}`]);
  });

  test('two batches with the same range do not overwrite each other', async () => {
    const { queue } = dlq({ prefix: 'same/' });
    const first = new Ack(() => {});
    const second = new Ack(() => {});
    queue.put(
      { origin: origin(SHARD_A, 3), index: 0, data: Buffer.from('one'), reason: 'x', component: 'decode' },
      first,
    );
    await queue.flush();
    queue.put(
      { origin: origin(SHARD_A, 3), index: 1, data: Buffer.from('two'), reason: 'y', component: 'sink:lake' },
      second,
    );
    await queue.close();
    const written = await keys('same/');
    assert.equal(written.length, 2);
    const data = (await Promise.all(written.map(readLines)))
      .flat()
      .map((l) => Buffer.from(l.data, 'base64').toString());
    assert.deepEqual(data.sort(), ['one', 'two']);
  });

  test('letters of the same record range written by two processes (a restart) never overwrite each other (finding 5)', async () => {
    // The first process dead-letters record 3 in decode; after a restart the record is read again and a
    // sink dead-letters another of its events. Before the fix both batches had the key <3>_<3>.jsonl: the
    // second overwrote the first, acked, letter (a process remembered only its own last 10,000 keys).
    const first = dlq({ prefix: 'restart/' }).queue;
    const a = new Ack(() => {});
    first.put(
      { origin: origin(SHARD_A, 3), index: 0, data: Buffer.from('one'), reason: 'x', component: 'decode' },
      a,
    );
    await first.close();
    const second = dlq({ prefix: 'restart/' }).queue;
    const b = new Ack(() => {});
    second.put(
      { origin: origin(SHARD_A, 3), index: 1, data: Buffer.from('two'), reason: 'y', component: 'sink:lake' },
      b,
    );
    await second.close();
    let written = await keys('restart/');
    assert.equal(written.length, 2, `both letters kept: ${written.join(', ')}`);
    // The first letter again, in a third process (a replay that batches the same way): it overwrites
    // itself, nothing else.
    const third = dlq({ prefix: 'restart/' }).queue;
    const again = new Ack(() => {});
    third.put(
      { origin: origin(SHARD_A, 3), index: 0, data: Buffer.from('one'), reason: 'x', component: 'decode' },
      again,
    );
    await third.close();
    assert.ok(a.completed && b.completed && again.completed);
    written = await keys('restart/');
    assert.equal(written.length, 2, written.join(', '));
    const data = (await Promise.all(written.map(readLines)))
      .flat()
      .map((l) => Buffer.from(l.data, 'base64').toString());
    assert.deepEqual(data.sort(), ['one', 'two']);
  });

  test("letters of an ended tenure are not written; flushShard writes a tenure's letters now", async () => {
    const { ShardTenure } = await import('../../src/core/tenure.js');
    const { queue } = dlq({ prefix: 'tenure/' });
    const ended = new ShardTenure(STREAM, SHARD_A, 'p.1');
    const live = new ShardTenure(STREAM, SHARD_B, 'p.2');
    queue.put(
      { origin: origin(SHARD_A, 1), data: Buffer.from('a'), reason: 'r', component: 'decode' },
      new Ack(() => {}, ended),
    );
    const liveAck = new Ack(() => {}, live);
    queue.put(
      { origin: origin(SHARD_B, 2), data: Buffer.from('b'), reason: 'r', component: 'decode' },
      liveAck,
    );
    ended.end('lost');
    await queue.closeShard(ended);
    queue.put(
      { origin: origin(SHARD_A, 5), data: Buffer.from('c'), reason: 'r', component: 'decode' },
      new Ack(() => {}, ended),
    );
    await queue.flushShard(live);
    assert.ok(liveAck.completed);
    await queue.close();
    assert.deepEqual(await ranges('tenure/'), [`tenure/${STREAM}/${SHARD_B}/${seq(2)}_${seq(2)}`]);
  });

  test('an S3 failure is retried and acks complete only after success', async () => {
    const { queue, registry } = dlq({ prefix: 'flaky/' });
    const ack = new Ack(() => {});
    let failures = 2;
    const ackedWhenFailing: boolean[] = [];
    aws.s3.middlewareStack.add(
      (next, context) => async (args) => {
        if (context.commandName === 'PutObjectCommand' && failures-- > 0) {
          ackedWhenFailing.push(ack.completed);
          throw Object.assign(new Error('injected 503'), {
            name: 'ServiceUnavailable',
            $metadata: { httpStatusCode: 503 },
          });
        }
        return next(args);
      },
      { step: 'initialize', name: 'dlqInject503' },
    );
    try {
      queue.put(
        { origin: origin(SHARD_A, 42), data: Buffer.from([1, 2, 3]), reason: 'r', component: 'decode' },
        ack,
      );
      await queue.flush();
    } finally {
      aws.s3.middlewareStack.remove('dlqInject503');
    }
    assert.deepEqual(ackedWhenFailing, [false, false]);
    assert.ok(ack.completed);
    assert.equal(await metricSum(registry, 'ksw_dlq_write_errors_total'), 2);
    await queue.close();
    const [line] = await readLines(`flaky/${STREAM}/${SHARD_A}/${seq(42)}_${seq(42)}`);
    assert.deepEqual([...Buffer.from(line!.data, 'base64')], [1, 2, 3]);
  });

  test('parseDeadLetterLine validates', () => {
    const good = formatDeadLetter(
      { origin: origin(SHARD_A, 1), data: Buffer.from('x'), reason: 'r', component: 'decode' },
      new Date(0),
    );
    assert.equal(parseDeadLetterLine(good).failedAt, '1970-01-01T00:00:00.000Z');
    const broken = (patch: Record<string, unknown>) => JSON.stringify({ ...JSON.parse(good), ...patch });
    assert.throws(() => parseDeadLetterLine(broken({ data: 'not base64!' })));
    assert.throws(() => parseDeadLetterLine(broken({ sequenceNumber: '12a' })));
    assert.throws(() => parseDeadLetterLine(broken({ arrivalTime: 'yesterday' })));
    assert.throws(() => parseDeadLetterLine(broken({ index: -1 })));
    assert.throws(() => parseDeadLetterLine('{"stream":'));
  });

  test('the definition creates a working queue', async () => {
    const config = s3DeadLetterDefinition.schema.parse({ type: 's3', bucket: BUCKET, prefix: 'def/' });
    assert.equal(config.maxBatchRecords, 500);
    const registry = createRegistry(false);
    const queue = s3DeadLetterDefinition.create('dlq', config, {
      logger: pino({ level: 'silent' }),
      metrics: registry,
      aws,
      dlq: undefined as never,
    });
    const ack = new Ack(() => {});
    queue.put({ origin: origin(SHARD_B, 77), data: Buffer.from('z'), reason: 'r', component: 'decode' }, ack);
    await queue.close();
    assert.ok(ack.completed);
    assert.deepEqual(await ranges('def/'), [`def/${STREAM}/${SHARD_B}/${seq(77)}_${seq(77)}`]);
  });
});
