/**
 * Claim check against real objects in s3rver: each pointer format resolves; each failure (foreign
 * bucket, missing object, checksum and size mismatch, oversize, gzip bomb, malformed pointer, S3 down)
 * sends the pointer record to the DLQ with the reason; transient errors are retried. Then the whole way:
 * `ksw produce` offloads a 5 MiB payload (and chunks another), the worker resolves it, and the Parquet
 * row holds the payload byte for byte.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import { CreateBucketCommand, GetObjectCommand, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, it } from 'vitest';
import { validateConfig } from '../../src/config/load.js';
import { Ack } from '../../src/core/ack.js';
import type { AwsClients } from '../../src/core/aws.js';
import type { SourceRecord } from '../../src/core/records.js';
import { AWS_POINTER_CLASS, pointerDocument, sha256Hex } from '../../src/core/s3-pointer.js';
import { createRegistry } from '../../src/metrics/registry.js';
import { decodeConfigSchema, RecordDecoder } from '../../src/processors/decode.js';
import { Worker } from '../../src/runtime/worker.js';
import { MemoryDeadLetterQueue, origin } from '../helpers/fakes.js';
import { download, duck } from '../helpers/parquet.js';
import {
  createStream,
  silentLogger,
  startS3Only,
  startTestStack,
  type TestStack,
  waitFor,
} from '../helpers/stack.js';

const ROOT = path.resolve(import.meta.dirname, '../..');
const CLI = path.join(ROOT, 'src/cli/main.ts');
const PAYLOADS = 'payloads';
const FOREIGN = 'someone-elses-bucket';

function rec(seq: string, data: string | Uint8Array, acked: string[]): SourceRecord {
  return {
    origin: origin(seq),
    data: typeof data === 'string' ? Buffer.from(data) : data,
    ack: new Ack(() => acked.push(seq)),
  };
}

/** Counts GetObject calls per bucket, and can fail the next N calls with a transient error. */
class CountingS3 {
  readonly gets: string[] = [];
  failNext = 0;
  constructor(private readonly s3: S3Client) {}
  send: S3Client['send'] = (async (command: unknown) => {
    if (command instanceof GetObjectCommand) {
      this.gets.push(command.input.Bucket!);
      if (this.failNext > 0) {
        this.failNext -= 1;
        throw Object.assign(new Error('We encountered an internal error. Please try again.'), {
          name: 'InternalError',
          $metadata: { httpStatusCode: 500 },
        });
      }
    }
    return (this.s3.send as (c: unknown) => Promise<unknown>)(command);
  }) as S3Client['send'];
}

describe('S3 pointer resolution against s3rver', () => {
  let s3: { aws: AwsClients; stop(): Promise<void> };
  const put = async (key: string, body: Uint8Array, bucket = PAYLOADS) => {
    await s3.aws.s3.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: body }));
  };

  beforeAll(async () => {
    s3 = await startS3Only([PAYLOADS, FOREIGN]);
  });
  afterAll(async () => {
    await s3.stop();
  });

  function decoder(extra: Record<string, unknown> = {}, gzip: Record<string, unknown> = {}) {
    const dlq = new MemoryDeadLetterQueue();
    const counting = new CountingS3(s3.aws.s3);
    const metrics = createRegistry(false);
    const d = new RecordDecoder(
      decodeConfigSchema.parse({
        gzip,
        s3Pointers: {
          enabled: true,
          allowedBuckets: [PAYLOADS],
          backoffBaseMs: 5,
          backoffMaxMs: 20,
          ...extra,
        },
      }),
      dlq,
      metrics,
      { s3: counting },
    );
    return { d, dlq, counting, metrics };
  }

  it('resolves our envelope and the AWS extended-client format, in record order, verifying size and sha256', async () => {
    const a = Buffer.from(JSON.stringify({ which: 'ksw', blob: 'é'.repeat(300_000) }));
    const b = Buffer.from('{"which":"aws-1"}\n{"which":"aws-2"}');
    await put('k/a.json', a);
    await put('k/b.json', b);
    const { d, dlq, counting, metrics } = decoder();
    const acked: string[] = [];
    const events = await d.decode([
      rec(
        '1',
        JSON.stringify(
          pointerDocument({ bucket: PAYLOADS, key: 'k/a.json', size: a.byteLength, sha256: sha256Hex(a) }),
        ),
        acked,
      ),
      rec('2', '{"which":"inline"}', acked),
      rec('3', JSON.stringify([AWS_POINTER_CLASS, { s3BucketName: PAYLOADS, s3Key: 'k/b.json' }]), acked),
    ]);
    assert.equal(dlq.letters.length, 0, dlq.letters.map((l) => l.reason).join('; '));
    assert.deepEqual(
      events.map((e) => e.value.which),
      ['ksw', 'inline', 'aws-1', 'aws-2'],
    );
    assert.deepEqual(Buffer.from(events[0]!.raw), a);
    assert.deepEqual(counting.gets, [PAYLOADS, PAYLOADS]);
    for (const e of events) e.ack.done();
    assert.deepEqual(acked.sort(), ['1', '2', '3']);
    assert.match(await metrics.metrics(), /ksw_s3_pointer_resolved_total\{format="aws-extended-client"\} 1/);
    d.close();
  });

  it('never fetches from a bucket that is not allowed: DLQ with the reason', async () => {
    await put('secret.json', Buffer.from('{"secret":true}'), FOREIGN);
    const { d, dlq, counting } = decoder();
    const acked: string[] = [];
    const pointer = JSON.stringify([AWS_POINTER_CLASS, { s3BucketName: FOREIGN, s3Key: 'secret.json' }]);
    const events = await d.decode([rec('1', pointer, acked)]);
    assert.equal(events.length, 0);
    assert.deepEqual(counting.gets, []);
    assert.match(dlq.letters[0]!.reason, /not in decode\.s3Pointers\.allowedBuckets; not fetched/);
    assert.equal(Buffer.from(dlq.letters[0]!.data).toString(), pointer);
    assert.deepEqual(acked, ['1']);
    d.close();
  });

  it('sends missing objects, checksum and size mismatches, oversize objects and malformed pointers to the DLQ', async () => {
    const body = Buffer.from(JSON.stringify({ x: 'y'.repeat(5000) }));
    await put('ok.json', body);
    const { d, dlq } = decoder({ maxObjectBytes: 4096 });
    const acked: string[] = [];
    const small = Buffer.from('{"small":1}');
    await put('small.json', small);
    const events = await d.decode([
      rec('1', JSON.stringify(pointerDocument({ bucket: PAYLOADS, key: 'nope.json' })), acked),
      rec(
        '2',
        JSON.stringify(
          pointerDocument({ bucket: PAYLOADS, key: 'small.json', sha256: sha256Hex(Buffer.from('other')) }),
        ),
        acked,
      ),
      rec('3', JSON.stringify(pointerDocument({ bucket: PAYLOADS, key: 'small.json', size: 999 })), acked),
      rec('4', JSON.stringify(pointerDocument({ bucket: PAYLOADS, key: 'ok.json' })), acked),
      rec('5', JSON.stringify(pointerDocument({ bucket: PAYLOADS, key: 'ok.json', size: 1_000_000 })), acked),
      rec('6', '{"$s3pointer":{"v":1,"bucket":"payloads"}}', acked),
      rec(
        '7',
        JSON.stringify(
          pointerDocument({
            bucket: PAYLOADS,
            key: 'small.json',
            size: small.byteLength,
            sha256: sha256Hex(small),
          }),
        ),
        acked,
      ),
    ]);
    assert.deepEqual(
      events.map((e) => e.value.small),
      [1],
    );
    const reasons = dlq.letters.map((l) => `${l.origin.sequenceNumber}: ${l.reason}`).sort();
    assert.equal(reasons.length, 6, reasons.join('\n'));
    assert.match(reasons[0]!, /^1: .*nope\.json does not exist/);
    assert.match(reasons[1]!, /^2: .*SHA-256 of the object does not match/);
    assert.match(reasons[2]!, /^3: .*has 11 bytes, the pointer says 999/);
    assert.match(reasons[3]!, /^4: .*over decode\.s3Pointers\.maxObjectBytes|^4: .*larger than/);
    assert.match(reasons[4]!, /^5: .*declares 1000000 bytes/);
    assert.match(reasons[5]!, /^6: malformed S3 pointer: .*bucket and key/);
    events[0]!.ack.done();
    assert.deepEqual(acked.sort(), ['1', '2', '3', '4', '5', '6', '7']);
    d.close();
  });

  it('inflates a gzip object behind a pointer, and dead-letters a gzip bomb behind one', async () => {
    const lines = Buffer.from('{"g":1}\n{"g":2}');
    await put('g.json.gz', gzipSync(lines));
    await put('bomb.gz', gzipSync(Buffer.alloc(32 * 1024 * 1024, 0x20)));
    const { d, dlq } = decoder({}, { maxDecompressedBytes: 1024 * 1024 });
    const bombPointer = JSON.stringify(pointerDocument({ bucket: PAYLOADS, key: 'bomb.gz' }));
    const events = await d.decode([
      rec('1', JSON.stringify(pointerDocument({ bucket: PAYLOADS, key: 'g.json.gz' })), []),
      rec('2', bombPointer, []),
    ]);
    assert.deepEqual(
      events.map((e) => e.value.g),
      [1, 2],
    );
    assert.equal(dlq.letters.length, 1);
    assert.match(dlq.letters[0]!.reason, /inflates past decode\.gzip\.maxDecompressedBytes/);
    assert.equal(
      Buffer.from(dlq.letters[0]!.data).toString(),
      bombPointer,
      'the DLQ keeps the pointer record',
    );
    d.close();
  });

  it('retries transient S3 errors, and dead-letters after the retry budget', async () => {
    const body = Buffer.from('{"after":"retries"}');
    await put('flaky.json', body);
    const pointer = JSON.stringify(
      pointerDocument({ bucket: PAYLOADS, key: 'flaky.json', sha256: sha256Hex(body) }),
    );
    const ok = decoder();
    ok.counting.failNext = 3;
    const events = await ok.d.decode([rec('1', pointer, [])]);
    assert.equal(events[0]?.value.after, 'retries');
    assert.equal(ok.counting.gets.length, 4);
    assert.match(await ok.metrics.metrics(), /ksw_s3_pointer_retries_total 3/);
    ok.d.close();

    const down = decoder({ retryBudgetMs: 200 });
    down.counting.failNext = 1_000_000;
    const acked: string[] = [];
    assert.equal((await down.d.decode([rec('2', pointer, acked)])).length, 0);
    assert.ok(down.counting.gets.length >= 2);
    assert.match(down.dlq.letters[0]!.reason, /could not be fetched after \d+ attempts.*InternalError/);
    assert.deepEqual(acked, ['2']);
    down.d.close();
  });

  it('bounds concurrent fetches', async () => {
    for (let i = 0; i < 12; i++) await put(`c/${i}.json`, Buffer.from(JSON.stringify({ i })));
    const { d } = decoder({ concurrency: 2 });
    let inFlight = 0;
    let peak = 0;
    const send = (d as unknown as { pointers: { s3: { send: S3Client['send'] } } }).pointers.s3;
    const inner = send.send;
    send.send = (async (c: never) => {
      inFlight += 1;
      peak = Math.max(peak, inFlight);
      try {
        await new Promise((r) => setTimeout(r, 20));
        return await inner(c);
      } finally {
        inFlight -= 1;
      }
    }) as S3Client['send'];
    const events = await d.decode(
      Array.from({ length: 12 }, (_, i) =>
        rec(String(i + 1), JSON.stringify(pointerDocument({ bucket: PAYLOADS, key: `c/${i}.json` })), []),
      ),
    );
    assert.deepEqual(
      events.map((e) => e.value.i),
      Array.from({ length: 12 }, (_, i) => i),
    );
    assert.equal(peak, 2);
    d.close();
  });
});

describe('claim check end to end: ksw produce -> Kinesis -> worker -> Parquet', () => {
  let t: TestStack;
  beforeAll(async () => {
    t = await startTestStack();
  });
  afterAll(async () => {
    await t.stop();
  });

  it('a 5 MiB payload offloaded by `produce` and a chunked 3 MiB one arrive in Parquet byte-identical', async () => {
    const stream = 'claim-check';
    const bucket = 'cc-lake';
    await t.aws.s3.send(new CreateBucketCommand({ Bucket: bucket }));
    await createStream(t.aws.kinesis, stream, 2);
    // Random base64 does not compress and has no JSON escapes, so the payload's bytes are its JSON text.
    const big = JSON.stringify({ id: 'big-1', blob: randomBytes(3_932_160).toString('base64') });
    assert.ok(big.length > 5 * 1024 * 1024);
    const chunked = JSON.stringify({ id: 'chunked-1', blob: randomBytes(2_359_296).toString('base64') });
    const dir = path.join(t.dir, 'produce');
    mkdirSync(dir, { recursive: true });
    writeFileSync(path.join(dir, 'big.json'), big);
    writeFileSync(path.join(dir, 'chunked.json'), chunked);
    writeFileSync(path.join(dir, 'small.ndjson'), '{"id":"s1"}\n{"id":"s2"}\n');
    writeFileSync(
      path.join(dir, 'aws.yaml'),
      `aws:\n${Object.entries({ region: t.stack.awsConfig.region })
        .map(([k, v]) => `  ${k}: ${v}`)
        .join(
          '\n',
        )}\n  endpoints: ${JSON.stringify(t.stack.awsConfig.endpoints)}\n  credentials: ${JSON.stringify(t.stack.awsConfig.credentials)}\n  s3ChecksumMode: when_required\n`,
    );
    const produce = (...args: string[]) => {
      const r = spawnSync(
        process.execPath,
        ['--import', 'tsx', CLI, 'produce', '--stream', stream, '-c', path.join(dir, 'aws.yaml'), ...args],
        {
          cwd: ROOT,
          encoding: 'utf8',
          timeout: 120_000,
        },
      );
      assert.equal(r.status, 0, `produce failed: ${r.stderr}`);
      return JSON.parse(r.stdout.trim().split('\n').pop()!) as Record<string, number>;
    };
    const bigOut = produce(
      '--file',
      path.join(dir, 'big.json'),
      '--format',
      'whole',
      '--partition-key',
      'order-42',
      '--offload-bucket',
      bucket,
      '--offload-prefix',
      'offload/',
    );
    assert.equal(bigOut.offloaded, 1);
    const chunkOut = produce(
      '--file',
      path.join(dir, 'chunked.json'),
      '--format',
      'whole',
      '--partition-key',
      'order-43',
      '--large',
      'chunk',
    );
    assert.equal(chunkOut.chunked, 1);
    const smallOut = produce(
      '--file',
      path.join(dir, 'small.ndjson'),
      '--partition-key-field',
      'id',
      '--offload-bucket',
      bucket,
    );
    assert.equal(smallOut.inline, 2);
    // Bad input to produce: a clear message and exit 2
    const bad = spawnSync(
      process.execPath,
      ['--import', 'tsx', CLI, 'produce', '--stream', stream, '--large', 's3'],
      {
        cwd: ROOT,
        encoding: 'utf8',
        input: '{"a":1}\n',
      },
    );
    assert.equal(bad.status, 2);
    assert.match(bad.stderr, /--offload-bucket: large: s3 needs a bucket/);

    const config = validateConfig({
      app: { name: 'cc', workerId: 'cc-1' },
      aws: t.stack.awsConfig,
      consumers: [{ type: 'polling', stream, idleIntervalMs: 100, busyIntervalMs: 0 }],
      checkpoints: { table: 'cc-leases', intervalMs: 300, shardSyncIntervalMs: 1_000 },
      decode: { s3Pointers: { enabled: true, allowedBuckets: [bucket] } },
      sinks: {
        lake: {
          type: 's3_parquet',
          bucket,
          prefix: 'lake/',
          roll: { maxFileAgeMs: 500 },
          columns: [
            { name: 'id', type: 'string' },
            { name: 'blob', type: 'string' },
          ],
        },
      },
      dlq: { type: 's3', bucket, prefix: 'dlq/', maxBatchAgeMs: 200 },
      server: { port: 0 },
      shutdown: { deadlineMs: 15_000 },
    });
    const worker = await Worker.start(config, { logger: silentLogger });
    const parquetDir = path.join(t.dir, 'cc-parquet');
    try {
      await waitFor(
        async () => {
          const files = await download(t.aws.s3, bucket, 'lake/', parquetDir).catch(() => []);
          if (files.length === 0) return false;
          // s3rver may serve an object while it is still writing it: a torn read just means "not yet".
          const rows = await duck(
            `SELECT count(*)::INT AS n FROM read_parquet('${parquetDir}/**/*.parquet')`,
          ).catch(() => [{ n: -1 }]);
          return rows[0]!.n === 4;
        },
        60_000,
        'four rows in Parquet',
      );
    } finally {
      await worker.stop();
    }
    const rows = await duck(
      `SELECT id, blob, _record, _partition_key FROM read_parquet('${parquetDir}/**/*.parquet') ORDER BY id`,
    );
    assert.deepEqual(
      rows.map((r) => r.id),
      ['big-1', 'chunked-1', 's1', 's2'],
    );
    const sha = (s: unknown) => createHash('sha256').update(String(s)).digest('hex');
    assert.equal(sha(rows[0]!._record), sha(big), 'the 5 MiB payload is byte-identical in _record');
    assert.equal(rows[0]!.blob, JSON.parse(big).blob);
    assert.equal(rows[0]!._partition_key, 'order-42');
    assert.equal(sha(rows[1]!._record), sha(chunked), 'the chunked payload is byte-identical');
    assert.equal(rows[1]!._partition_key, 'order-43');
    // The offloaded object stays (fan-out consumers may need it); expiry is a lifecycle rule's job.
    const stored = await t.aws.s3.send(
      new GetObjectCommand({
        Bucket: bucket,
        Key: `offload/${createHash('sha256').update(big).digest('hex')}`,
      }),
    );
    assert.equal((await stored.Body!.transformToString()).length, big.length);
  });
});
