/**
 * ksw redrive against s3rver, into the Parquet sink (the OpenSearch redrive runs against a real node in
 * test/services/opensearch-e2e.test.ts): letters the sink writes are removed, letters it rejects again stay
 * with the new reason, letters of other components and undecodable ones stay untouched; a dry run changes
 * nothing; re-running never writes a letter twice.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import { CreateBucketCommand, GetObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, it } from 'vitest';
import { decodeLetterData, redrive } from '../../src/cli/redrive.js';
import { validateConfig } from '../../src/config/load.js';
import { type AwsClients, awsConfigSchema, createAwsClients } from '../../src/core/aws.js';
import { type Emulator, startS3rver } from '../../src/local/emulators.js';
import { formatDeadLetter, parseDeadLetterLine } from '../../src/sinks/s3-dead-letter.js';
import { origin } from '../helpers/fakes.js';
import { download, duck, listKeys } from '../helpers/parquet.js';
import { silentLogger } from '../helpers/stack.js';

const BUCKET = 'redrive-bucket';
const KEY = 'dlq/s/shardId-000000000000/10_13.jsonl';

describe('ksw redrive (s3rver, Parquet sink)', () => {
  let dir: string;
  let s3rver: Emulator;
  let aws: AwsClients;
  let awsConfig: Record<string, unknown>;

  beforeAll(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'ksw-redrive-'));
    s3rver = await startS3rver({ dir: path.join(dir, 's3') });
    awsConfig = {
      endpoints: { s3: s3rver.endpoint },
      credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' },
      s3ChecksumMode: 'when_required',
    };
    aws = createAwsClients(awsConfigSchema.parse(awsConfig));
    await aws.s3.send(new CreateBucketCommand({ Bucket: BUCKET }));
  });
  afterAll(async () => {
    aws.destroy();
    await s3rver.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  const config = () =>
    validateConfig({
      aws: awsConfig,
      consumers: [{ type: 'polling', stream: 's' }],
      sinks: {
        lake: {
          type: 's3_parquet',
          bucket: BUCKET,
          prefix: 'lake/',
          tmpDir: path.join(dir, 'tmp'),
          columns: [
            { name: 'spanId', type: 'string' },
            { name: 'n', type: 'int64' },
          ],
        },
      },
      dlq: { type: 's3', bucket: BUCKET, prefix: 'dlq/' },
    });

  async function dlqLines() {
    const out = await aws.s3.send(new GetObjectCommand({ Bucket: BUCKET, Key: KEY }));
    return (await out.Body!.transformToString()).trim().split('\n').map(parseDeadLetterLine);
  }

  it('writes what the sink accepts, keeps the rest, and is safe to re-run', async () => {
    const letter = (seq: string, data: string | Uint8Array, component: string, reason: string) =>
      formatDeadLetter(
        {
          origin: origin(seq),
          index: 0,
          data: typeof data === 'string' ? Buffer.from(data) : data,
          reason,
          component,
        },
        new Date('2024-01-01T00:00:00Z'),
      );
    const body = [
      letter('10', '{"spanId":"a","n":9007199254740993}', 'sink:lake', 'upload failed long ago'),
      letter('11', '{"spanId":"b","n":"not a number"}', 'sink:lake', 'n is not an int64'),
      letter('12', '{"truncated": ', 'decode', 'invalid JSON'),
      letter('13', gzipSync('{"spanId":"d","n":4}'), 'sink:other', 'other sink'),
    ].join('\n');
    await aws.s3.send(new PutObjectCommand({ Bucket: BUCKET, Key: KEY, Body: `${body}\n` }));

    const dry = await redrive(
      config(),
      { sink: 'lake', bucket: BUCKET, prefix: 'dlq/', dryRun: true },
      silentLogger,
    );
    assert.equal(dry.replayed, 3, 'all decodable letters would be replayed');
    assert.equal((await dlqLines()).length, 4, 'a dry run changes nothing');
    assert.deepEqual(await listKeys(aws.s3, BUCKET, 'lake/'), []);

    const first = await redrive(
      config(),
      { sink: 'lake', bucket: BUCKET, prefix: 'dlq/', component: 'sink:lake' },
      silentLogger,
    );
    assert.deepEqual(first, {
      objects: 1,
      letters: 4,
      replayed: 2,
      written: 1,
      failedAgain: 1,
      skipped: 2,
      deletedObjects: 0,
      rewrittenObjects: 1,
    });
    const lines = await dlqLines();
    assert.deepEqual(
      lines.map((l) => [l.sequenceNumber, l.component]),
      [
        ['12', 'decode'],
        ['13', 'sink:other'],
        ['11', 'sink:lake'],
      ],
    );
    assert.match(lines[2]!.reason, /^column n: expected int64/, 'the new reason from the sink');
    assert.notEqual(lines[2]!.failedAt, '2024-01-01T00:00:00.000Z');
    assert.equal(Buffer.from(lines[2]!.data, 'base64').toString(), '{"spanId":"b","n":"not a number"}');

    // Data objects only: the sink also writes a manifest per file under lake/_ksw/.
    const files = (await download(aws.s3, BUCKET, 'lake/', path.join(dir, 'out1'))).filter((f) =>
      f.endsWith('.parquet'),
    );
    assert.equal(files.length, 1);
    const rows = await duck(
      `SELECT spanId, n::VARCHAR AS n, _sequence_number AS q FROM read_parquet('${files[0]}')`,
    );
    assert.deepEqual(rows, [{ spanId: 'a', n: '9007199254740993', q: '10' }], 'original origin, exact int64');

    // Re-run: the written letter is gone, so nothing is written twice; the rejected one fails again.
    const second = await redrive(
      config(),
      { sink: 'lake', bucket: BUCKET, prefix: 'dlq/', component: 'sink:lake' },
      silentLogger,
    );
    assert.equal(second.written, 0);
    assert.equal(second.failedAgain, 1);
    assert.equal(
      (await listKeys(aws.s3, BUCKET, 'lake/')).filter((k) => k.endsWith('.parquet')).length,
      1,
      'no second data object',
    );
    assert.equal((await dlqLines()).length, 3);
  });

  it('decodes gzip-compressed letters and rejects non-objects', () => {
    assert.deepEqual(decodeLetterData(gzipSync('{"a":1}')), { a: 1 });
    assert.throws(() => decodeLetterData(Buffer.from('[1]')), /expected a JSON object/);
    assert.throws(() => decodeLetterData(Buffer.from([0xc3, 0x28])));
  });
});
