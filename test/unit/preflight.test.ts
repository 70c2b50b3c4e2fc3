import { describe, expect, it } from 'vitest';
import { reportError } from '../../src/cli/errors.js';
import { validateConfig } from '../../src/config/load.js';
import type { AwsClients } from '../../src/core/aws.js';
import { preflight, preflightChecks, StartupCheckError } from '../../src/runtime/preflight.js';

const sinks = { lake: { type: 's3_parquet', bucket: 'my-lake' } };
const dlq = { type: 's3', bucket: 'my-lake' };
const notFound = (name: string, status: number) =>
  Object.assign(new Error(''), { name, $metadata: { httpStatusCode: status } });
const silent = { warn: () => undefined } as never;

describe('start-up checks', () => {
  it('check Kinesis streams only: a file consumer names no stream to look up', () => {
    const config = validateConfig({
      consumers: [
        { type: 'file', path: 'in.ndjson' },
        { type: 'polling', stream: 'spans' },
      ],
      sinks,
      dlq,
    });
    const fields = preflightChecks(config, {} as AwsClients).map((c) => c.field);
    expect(fields).toEqual(['consumers[1].stream', 'sinks.lake.bucket']);
  });

  it('a file-only config against a stack without that stream passes; each permanent problem is one line of the report', async () => {
    const fileOnly = validateConfig({ consumers: [{ type: 'file', path: 'in.ndjson' }], sinks, dlq });
    const sent: string[] = [];
    const aws = {
      kinesis: {
        send: async () => {
          sent.push('ListShards');
          throw notFound('ResourceNotFoundException', 400);
        },
      },
      s3: { send: async () => sent.push('HeadBucket') },
    } as unknown as AwsClients;
    await preflight(fileOnly, aws, silent);
    expect(sent).toEqual(['HeadBucket']);

    const both = validateConfig({ consumers: [{ type: 'polling', stream: 'spans' }], sinks, dlq });
    const broken = {
      kinesis: { send: async () => Promise.reject(notFound('ResourceNotFoundException', 400)) },
      s3: { send: async () => Promise.reject(notFound('NotFound', 404)) },
    } as unknown as AwsClients;
    const err = await preflight(both, broken, silent).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StartupCheckError);
    const text = reportError('run', err, false).text;
    // The CLI prints every problem with its field and fix, not only the heading line.
    expect(text).toMatch(
      /^run: start-up check failed:\n {2}consumers\[0\]\.stream: Kinesis stream spans does not exist/,
    );
    expect(text).toMatch(/\n {2}sinks\.lake\.bucket: S3 bucket my-lake does not exist \(NoSuchBucket\)/);
    expect(text).not.toMatch(/--debug|\n\s+at /);
  });
});
