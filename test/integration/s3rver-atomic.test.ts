/**
 * The local stack's S3 (s3rver with our preload) must store a PUT atomically, as S3 does: a client that dies
 * mid-body stores nothing and leaves the previous version whole. Without the preload s3rver keeps the
 * truncated body, which once left half a Parquet manifest behind a SIGKILLed worker.
 */
import assert from 'node:assert/strict';
import { request } from 'node:http';
import { GetObjectCommand, HeadObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, test } from 'vitest';
import type { AwsClients } from '../../src/core/aws.js';
import { startS3Only } from '../helpers/stack.js';

const BUCKET = 'atomic';

/** Sends the headers and the first `sent` bytes of a `declared`-byte body, then drops the connection. */
async function interruptedPut(endpoint: string, key: string, declared: number, sent: number): Promise<void> {
  const url = new URL(`${endpoint}/${BUCKET}/${key}`);
  await new Promise<void>((resolve) => {
    const req = request(url, {
      method: 'PUT',
      headers: { 'content-length': String(declared), 'content-type': 'application/octet-stream' },
    });
    req.on('error', () => resolve()); // the destroy below
    req.write(Buffer.alloc(sent, 0x61), () => {
      // Give the server time to write what it got, then vanish like a SIGKILLed client.
      setTimeout(() => {
        req.destroy();
        resolve();
      }, 200);
    });
  });
  await new Promise((r) => setTimeout(r, 300));
}

describe('local S3 (s3rver) stores a PUT atomically', () => {
  let s3: Awaited<ReturnType<typeof startS3Only>>;
  let aws: AwsClients;
  let endpoint: string;

  beforeAll(async () => {
    s3 = await startS3Only([BUCKET]);
    aws = s3.aws;
    const e = await aws.s3.config.endpoint!();
    endpoint = `${e.protocol}//${e.hostname}:${e.port}`;
  });
  afterAll(async () => {
    await s3.stop();
  });

  test('a PUT whose client dies mid-body stores nothing', async () => {
    await interruptedPut(endpoint, 'new.json', 100_000, 40_000);
    await assert.rejects(
      aws.s3.send(new HeadObjectCommand({ Bucket: BUCKET, Key: 'new.json' })),
      (err: Error) => err.name === 'NotFound',
    );
  });

  test('an interrupted overwrite leaves the previous version whole', async () => {
    const previous = JSON.stringify({ version: 1, rows: Array.from({ length: 2_000 }, (_, i) => i) });
    await aws.s3.send(new PutObjectCommand({ Bucket: BUCKET, Key: 'kept.json', Body: previous }));
    await interruptedPut(endpoint, 'kept.json', 100_000, 40_000);
    const out = await aws.s3.send(new GetObjectCommand({ Bucket: BUCKET, Key: 'kept.json' }));
    assert.equal(await out.Body!.transformToString(), previous);
    assert.equal(out.ContentLength, previous.length);
  });

  test('a complete PUT replaces the object, bytes and length', async () => {
    await aws.s3.send(new PutObjectCommand({ Bucket: BUCKET, Key: 'k', Body: 'first version, longer' }));
    await aws.s3.send(new PutObjectCommand({ Bucket: BUCKET, Key: 'k', Body: 'second' }));
    const out = await aws.s3.send(new GetObjectCommand({ Bucket: BUCKET, Key: 'k' }));
    assert.equal(await out.Body!.transformToString(), 'second');
  });
});
