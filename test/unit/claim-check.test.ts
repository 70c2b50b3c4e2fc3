/**
 * The claim-check producer (ksw produce's large-record path) in process, with a Kinesis and an S3 that
 * record what they are sent and enforce the real size limits: how each record travels, what reaches
 * Kinesis when an upload or a put fails, content-addressed keys, chunk order and reassembly, gzip before
 * the size check; and the pointer reader's answers to malformed pointers (the DLQ reasons users see).
 */
import assert from 'node:assert/strict';
import { gunzipSync } from 'node:zlib';
import {
  PutRecordsCommand,
  type PutRecordsCommandOutput,
  type PutRecordsResultEntry,
} from '@aws-sdk/client-kinesis';
import { PutObjectCommand } from '@aws-sdk/client-s3';
import { describe, it } from 'vitest';
import {
  AWS_POINTER_CLASS,
  POINTER_FIELD,
  PointerFormatError,
  readPointer,
  sha256Hex,
} from '../../src/core/s3-pointer.js';
import { decodeChunk, isChunk } from '../../src/processors/chunks.js';
import { ClaimCheckProducer, claimCheckConfigSchema } from '../../src/producer/claim-check.js';
import {
  KinesisProducer,
  MAX_BATCH_BYTES,
  MAX_RECORD_BYTES,
  ProducerError,
} from '../../src/producer/kinesis-producer.js';

const KiB = 1024;
const MiB = 1_048_576;

interface PutEntry {
  partitionKey: string;
  data: Buffer;
  explicitHashKey: string | undefined;
}

/** Kinesis that enforces the record and call limits and answers each entry with `answer`. */
function fakeKinesis(answer: (entry: PutEntry, n: number) => PutRecordsResultEntry = () => ({})) {
  const entries: PutEntry[] = [];
  const send = async (command: PutRecordsCommand): Promise<PutRecordsCommandOutput> => {
    assert.ok(command instanceof PutRecordsCommand);
    let bytes = 0;
    const out: PutRecordsResultEntry[] = [];
    for (const r of command.input.Records!) {
      const entry = {
        partitionKey: r.PartitionKey!,
        data: Buffer.from(r.Data!),
        explicitHashKey: r.ExplicitHashKey,
      };
      const size = entry.data.byteLength + Buffer.byteLength(entry.partitionKey);
      assert.ok(size <= MAX_RECORD_BYTES, `a ${size}-byte record reached Kinesis`);
      bytes += size;
      entries.push(entry);
      const a = answer(entry, entries.length);
      out.push(a.ErrorCode ? a : { ShardId: 'shardId-000000000000', SequenceNumber: String(entries.length) });
    }
    assert.ok(bytes <= MAX_BATCH_BYTES);
    return { $metadata: {}, Records: out, FailedRecordCount: out.filter((e) => e.ErrorCode).length };
  };
  return { client: { send } as never, entries };
}

/** S3 that keeps objects, or fails the uploads `fail` picks. */
function fakeS3(fail: (key: string) => Error | undefined = () => undefined) {
  const objects = new Map<string, { body: Buffer; contentType?: string; contentEncoding?: string }>();
  const send = async (command: PutObjectCommand) => {
    assert.ok(command instanceof PutObjectCommand);
    const key = command.input.Key!;
    const err = fail(key);
    if (err) throw err;
    objects.set(key, {
      body: Buffer.from(command.input.Body as Uint8Array),
      ...(command.input.ContentType ? { contentType: command.input.ContentType } : {}),
      ...(command.input.ContentEncoding ? { contentEncoding: command.input.ContentEncoding } : {}),
    });
    return {};
  };
  return { client: { send } as never, objects };
}

const payload = (bytes: number, seed = 1) => {
  const b = Buffer.alloc(bytes);
  // Incompressible enough that gzip does not bring it under the threshold.
  let x = seed;
  for (let i = 0; i < bytes; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    b[i] = x >>> 24;
  }
  return b;
};

describe('claim-check producer: S3 offload', () => {
  it('offloads what exceeds the threshold to a content-addressed key; the pointer keeps the keys; results in order', async () => {
    const kinesis = fakeKinesis();
    const s3 = fakeS3();
    const producer = new ClaimCheckProducer(new KinesisProducer(kinesis.client, 'st'), s3.client, {
      bucket: 'payloads',
    });
    const big = payload(2 * MiB);
    const results = await producer.put([
      { partitionKey: 'a', data: Buffer.from('{"small":1}') },
      { partitionKey: 'order-7', data: big, explicitHashKey: '42' },
      { partitionKey: 'c', data: payload(900 * KiB - 1) }, // data + key = the threshold: stays inline
    ]);
    assert.deepEqual(
      results.map((r) => r.carried),
      ['inline', 's3', 'inline'],
    );
    const key = `claim-check/${sha256Hex(big)}`;
    assert.equal(results[1]!.key, key);
    assert.deepEqual(s3.objects.get(key), { body: big, contentType: 'application/json' });
    assert.equal(kinesis.entries.length, 3);
    const pointerEntry = kinesis.entries[1]!;
    assert.equal(
      pointerEntry.partitionKey,
      'order-7',
      'the pointer goes to the shard the payload would have',
    );
    assert.equal(pointerEntry.explicitHashKey, '42');
    assert.deepEqual(readPointer(JSON.parse(pointerEntry.data.toString())), {
      bucket: 'payloads',
      key,
      format: 'ksw',
      size: big.byteLength,
      sha256: sha256Hex(big),
      contentType: 'application/json',
      partitionKey: 'order-7',
    });
    assert.deepEqual(producer.stats, {
      inline: 2,
      offloaded: 1,
      offloadedBytes: big.byteLength,
      chunked: 0,
      chunkRecords: 0,
    });
  });

  it('the same payload put again overwrites its object instead of leaving an orphan', async () => {
    const s3 = fakeS3();
    const producer = new ClaimCheckProducer(new KinesisProducer(fakeKinesis().client, 'st'), s3.client, {
      bucket: 'payloads',
      prefix: 'p/',
    });
    const big = payload(MiB);
    const [first] = await producer.put([{ partitionKey: 'k', data: big }]);
    const [again] = await producer.put([{ partitionKey: 'other', data: big }]);
    assert.equal(first!.key, again!.key);
    assert.deepEqual([...s3.objects.keys()], [`p/${sha256Hex(big)}`]);
  });

  it('a failed upload puts nothing: no pointer to an object that is not there', async () => {
    const kinesis = fakeKinesis();
    const big = payload(MiB, 2);
    const denied = Object.assign(new Error('Access Denied'), { name: 'AccessDenied' });
    const s3 = fakeS3((key) => (key.endsWith(sha256Hex(big)) ? denied : undefined));
    const producer = new ClaimCheckProducer(new KinesisProducer(kinesis.client, 'st'), s3.client, {
      bucket: 'payloads',
    });
    await assert.rejects(
      producer.put([
        { partitionKey: 'a', data: Buffer.from('{}') },
        { partitionKey: 'b', data: big },
        { partitionKey: 'c', data: payload(MiB, 3) },
      ]),
      /Access Denied/,
    );
    assert.equal(kinesis.entries.length, 0, 'nothing of the put reached Kinesis');
  });

  it('gzip comes before the size check: a compressible payload stays inline; offloaded objects say gzip', async () => {
    const kinesis = fakeKinesis();
    const s3 = fakeS3();
    const producer = new ClaimCheckProducer(new KinesisProducer(kinesis.client, 'st'), s3.client, {
      bucket: 'payloads',
      gzip: true,
    });
    const compressible = Buffer.from(JSON.stringify({ text: 'x'.repeat(3 * MiB) }));
    const results = await producer.put([
      { partitionKey: 'a', data: compressible },
      { partitionKey: 'b', data: payload(2 * MiB) },
    ]);
    assert.deepEqual(
      results.map((r) => r.carried),
      ['inline', 's3'],
    );
    assert.deepEqual(gunzipSync(kinesis.entries[0]!.data), compressible);
    const object = s3.objects.get(results[1]!.key!)!;
    assert.equal(object.contentEncoding, 'gzip');
    assert.deepEqual(gunzipSync(object.body), payload(2 * MiB));
  });

  it('refuses a configuration that cannot offload, naming the field', () => {
    const parsed = claimCheckConfigSchema.safeParse({ large: 's3' });
    assert.equal(parsed.success, false);
    assert.deepEqual(parsed.error!.issues[0]!.path, ['bucket']);
    assert.match(parsed.error!.issues[0]!.message, /large: s3 needs a bucket/);
    assert.throws(
      () =>
        new ClaimCheckProducer(new KinesisProducer(fakeKinesis().client, 'st'), undefined, { bucket: 'bkt' }),
      /large: s3 needs an S3 client/,
    );
    // Chunk mode needs no S3 at all.
    new ClaimCheckProducer(new KinesisProducer(fakeKinesis().client, 'st'), undefined, { large: 'chunk' });
  });
});

describe('claim-check producer: chunks', () => {
  it('splits a large record into ordered chunks under the limit that reassemble exactly', async () => {
    const kinesis = fakeKinesis();
    const producer = new ClaimCheckProducer(new KinesisProducer(kinesis.client, 'st'), undefined, {
      large: 'chunk',
    });
    const big = payload(2 * MiB + 5);
    const results = await producer.put([
      { partitionKey: 'k', data: big, explicitHashKey: '7' },
      { partitionKey: 'small', data: Buffer.from('{}') },
    ]);
    assert.deepEqual(results[0], {
      shardId: 'shardId-000000000000',
      sequenceNumber: '4',
      carried: 'chunks',
      chunks: 3,
    });
    assert.equal(results[1]!.carried, 'inline');
    const chunks = kinesis.entries.filter((e) => isChunk(e.data));
    assert.equal(chunks.length, 3);
    assert.ok(chunks.every((c) => c.partitionKey === 'k' && c.explicitHashKey === '7'));
    const decoded = chunks.map((c) => decodeChunk(c.data));
    assert.deepEqual(
      decoded.map((d) => d.header.i),
      [0, 1, 2],
      'put one after another, in order',
    );
    assert.equal(new Set(decoded.map((d) => d.header.id)).size, 1);
    const last = decoded[2]!.header;
    assert.deepEqual([last.last, last.n, last.size, last.sha256], [true, 3, big.byteLength, sha256Hex(big)]);
    assert.deepEqual(Buffer.concat(decoded.map((d) => d.payload)), big);
    assert.deepEqual(producer.stats, {
      inline: 1,
      offloaded: 0,
      offloadedBytes: 0,
      chunked: 1,
      chunkRecords: 3,
    });
  });

  it('a chunk that cannot be put fails the put, and the chunks after it are not sent', async () => {
    // The second chunk record is throttled on every attempt.
    const kinesis = fakeKinesis((entry) =>
      isChunk(entry.data) && decodeChunk(entry.data).header.i === 1
        ? { ErrorCode: 'ProvisionedThroughputExceededException', ErrorMessage: 'slow down' }
        : {},
    );
    const producer = new ClaimCheckProducer(
      new KinesisProducer(kinesis.client, 'st', { maxAttempts: 3, backoffBaseMs: 1, backoffMaxMs: 2 }),
      undefined,
      { large: 'chunk' },
    );
    const err = await producer.put([{ partitionKey: 'k', data: payload(2 * MiB + 5) }]).catch((e) => e);
    assert.ok(err instanceof ProducerError, String(err));
    assert.equal(err.lastError, 'ProvisionedThroughputExceededException');
    const sent = kinesis.entries.map((e) => decodeChunk(e.data).header.i);
    assert.deepEqual(sent, [0, 1, 1, 1], 'chunk 2 never sent after chunk 1 gave up');
  });
});

describe('pointers: malformed ones are named, foreign JSON is not a pointer', () => {
  const bad = (body: unknown) => ({ [POINTER_FIELD]: body });
  const ok = { v: 1, bucket: 'b', key: 'k' };
  it.each([
    [bad({ ...ok, v: 2 }), /unsupported \$s3pointer version 2/],
    [bad(null), /\$s3pointer must be an object/],
    [bad([ok]), /\$s3pointer must be an object/],
    [{ ...bad(ok), extra: 1 }, /a \$s3pointer envelope must have no other fields/],
    [bad({ ...ok, bucket: '' }), /needs non-empty bucket and key/],
    [bad({ ...ok, size: -1 }), /\$s3pointer\.size must be a non-negative integer/],
    [bad({ ...ok, size: 1.5 }), /\$s3pointer\.size must be a non-negative integer/],
    [bad({ ...ok, sha256: 'ABC' }), /\$s3pointer\.sha256 must be 64 lowercase hex digits/],
    [bad({ ...ok, contentType: 5 }), /\$s3pointer\.contentType must be a string/],
    [bad({ ...ok, partitionKey: {} }), /\$s3pointer\.partitionKey must be a string/],
    [[AWS_POINTER_CLASS, null], /PayloadS3Pointer without a body/],
    [[AWS_POINTER_CLASS, { s3BucketName: 'b' }], /PayloadS3Pointer needs non-empty s3BucketName and s3Key/],
  ])('%j', (value, reason) => {
    assert.throws(
      () => readPointer(value),
      (err: unknown) => err instanceof PointerFormatError && reason.test((err as Error).message),
    );
  });

  it('reads the AWS extended clients pointer; anything else is not a pointer', () => {
    assert.deepEqual(readPointer([AWS_POINTER_CLASS, { s3BucketName: 'b', s3Key: 'k' }]), {
      bucket: 'b',
      key: 'k',
      format: 'aws-extended-client',
    });
    for (const value of [['x', {}], [AWS_POINTER_CLASS], null, 'text', 5, { bucket: 'b', key: 'k' }]) {
      assert.equal(readPointer(value), undefined, JSON.stringify(value));
    }
  });
});
