import assert from 'node:assert/strict';
import { GetObjectCommand, ListObjectsV2Command } from '@aws-sdk/client-s3';
import { describe, it } from 'vitest';
import { listKeys } from '../../src/cli/redrive.js';
import {
  AWS_POINTER_CLASS,
  pointerDocument,
  readPointer,
  unsafeKeyReason,
} from '../../src/core/s3-pointer.js';
import { createRegistry } from '../../src/metrics/registry.js';
import {
  PointerError,
  PointerFetchAbortedError,
  S3PointerResolver,
  s3PointerConfigSchema,
} from '../../src/processors/s3-pointer-resolver.js';

/** An S3 stand-in: records every command, answers GetObject with `{}` or fails it transiently. */
function fakeS3(opts: { fail?: boolean } = {}) {
  const commands: unknown[] = [];
  return {
    commands,
    send: (async (command: unknown) => {
      commands.push(command);
      if (opts.fail) {
        throw Object.assign(new Error('slow down'), { name: 'SlowDown', $metadata: { httpStatusCode: 503 } });
      }
      if (command instanceof ListObjectsV2Command) {
        return {
          Contents: [
            { Key: 'dlq/s/a.jsonl' },
            { Key: 'dlq/../lake/b.jsonl' },
            { Key: 'dlq//c.jsonl' },
            { Key: 'other/d.jsonl' },
          ],
        };
      }
      return {
        Body: (async function* () {
          yield Buffer.from('{}');
        })(),
      };
    }) as never,
  };
}

describe('pointer key rules', () => {
  it('refuses dot segments, empty segments, backslashes, encoded separators and control characters', () => {
    for (const key of [
      '../secret/x',
      'a/../../b',
      './a',
      'a/.',
      '/a',
      'a//b',
      'a/',
      'a\\..\\b',
      'a/%2e%2e/b',
      'a%2Fb',
      'a\u0000b',
      'k'.repeat(1025),
    ]) {
      assert.ok(unsafeKeyReason(key), key);
      assert.throws(() => readPointer(pointerDocument({ bucket: 'allowed', key })), /not fetched/, key);
      assert.throws(
        () => readPointer([AWS_POINTER_CLASS, { s3BucketName: 'allowed', s3Key: key }]),
        /not fetched/,
        key,
      );
    }
    for (const key of ['a', 'a/b.json', 'offload/2026/..x', 'a.b/c..d', 'é/ü'])
      assert.equal(unsafeKeyReason(key), undefined);
  });

  it('the resolver turns an unsafe key into pointer_invalid without any request', async () => {
    const s3 = fakeS3();
    const r = new S3PointerResolver(
      s3PointerConfigSchema.parse({ enabled: true, allowedBuckets: ['allowed'] }),
      s3,
      createRegistry(false),
    );
    assert.throws(
      () => r.pointerOf(Buffer.from(JSON.stringify(pointerDocument({ bucket: 'allowed', key: '../x/y' })))),
      (e: unknown) => e instanceof PointerError && e.kind === 'pointer_invalid',
    );
    await assert.rejects(
      r.fetch({ bucket: 'allowed', key: 'a/../b', format: 'ksw' }),
      (e: unknown) => e instanceof PointerError && e.kind === 'pointer_invalid',
    );
    assert.equal(s3.commands.length, 0);
  });
});

describe('allowlist with key prefixes and the expected bucket owner', () => {
  it('fetches only under an allowed prefix, and sends ExpectedBucketOwner', async () => {
    const s3 = fakeS3();
    const r = new S3PointerResolver(
      s3PointerConfigSchema.parse({
        enabled: true,
        allowedBuckets: ['shared/offload/', 'other'],
        expectedBucketOwner: '123456789012',
      }),
      s3,
      createRegistry(false),
    );
    await r.fetch({ bucket: 'shared', key: 'offload/a.json', format: 'ksw' });
    await r.fetch({ bucket: 'other', key: 'anything.json', format: 'ksw' });
    await assert.rejects(
      r.fetch({ bucket: 'shared', key: 'lake/part-0.parquet', format: 'ksw' }),
      (e: unknown) =>
        e instanceof PointerError &&
        e.kind === 'pointer_bucket_not_allowed' &&
        /allowed prefix/.test(e.message),
    );
    const gets = s3.commands.filter((c) => c instanceof GetObjectCommand) as GetObjectCommand[];
    assert.deepEqual(
      gets.map((c) => [c.input.Bucket, c.input.Key, c.input.ExpectedBucketOwner]),
      [
        ['shared', 'offload/a.json', '123456789012'],
        ['other', 'anything.json', '123456789012'],
      ],
    );
  });

  it('rejects unusable allowlist entries and owners at start-up', () => {
    assert.throws(() => s3PointerConfigSchema.parse({ allowedBuckets: ['bkt/../x/'] }), /path segment/);
    assert.throws(
      () => s3PointerConfigSchema.parse({ allowedBuckets: ['Not_A_Bucket'] }),
      /not a valid S3 bucket/,
    );
    assert.throws(() => s3PointerConfigSchema.parse({ expectedBucketOwner: 'me' }), /12-digit/);
    assert.ok(s3PointerConfigSchema.parse({ allowedBuckets: ['b-1/a/b/'] }));
  });
});

describe('abortable retries', () => {
  it('a retry wait ends when the signal aborts, and the fetch is neither resolved nor dead-lettered', async () => {
    const s3 = fakeS3({ fail: true });
    const abort = new AbortController();
    const r = new S3PointerResolver(
      s3PointerConfigSchema.parse({
        enabled: true,
        allowedBuckets: ['b-1'],
        retryBudgetMs: 600_000,
        backoffBaseMs: 60_000,
        backoffMaxMs: 60_000,
      }),
      s3,
      createRegistry(false),
      undefined,
      () => 0.99,
      abort.signal,
    );
    const started = Date.now();
    const pending = r.fetch({ bucket: 'b-1', key: 'k', format: 'ksw' });
    setTimeout(() => abort.abort(), 50);
    await assert.rejects(pending, PointerFetchAbortedError);
    assert.ok(Date.now() - started < 5_000, 'did not wait out the 60 s backoff');
    assert.equal(s3.commands.length, 1);
  });
});

describe('redrive reads only safe keys under its prefix', () => {
  it('skips listed keys with dot or empty segments, or outside the prefix', async () => {
    const s3 = fakeS3();
    assert.deepEqual(await listKeys(s3, 'dlq-bucket', 'dlq/'), ['dlq/s/a.jsonl']);
  });
});
