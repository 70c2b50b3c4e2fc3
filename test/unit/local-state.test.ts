import { describe, expect, it } from 'vitest';
import { awsConfigSchema, s3EndpointOverride } from '../../src/core/aws.js';
import { awsYaml, envLines, isAlive, isOurProcess, type LocalStackState } from '../../src/local/state.js';

const state: LocalStackState = {
  startedAt: '2026-12-02T00:00:00.000Z',
  dir: '/tmp/x',
  foreground: false,
  processes: [
    { name: 'kinesalite', pid: 11, endpoint: 'http://127.0.0.1:1001' },
    { name: 's3rver', pid: 12, endpoint: 'http://127.0.0.1:1002' },
    { name: 'dynalite', pid: 13, endpoint: 'http://127.0.0.1:1003' },
  ],
  aws: {
    region: 'us-east-1',
    endpoints: {
      kinesis: 'http://127.0.0.1:1001',
      s3: 'http://127.0.0.1:1002',
      dynamodb: 'http://127.0.0.1:1003',
    },
    credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' },
    s3ChecksumMode: 'when_required',
    subscribeProtocol: 'http2',
  },
  resources: { streams: [{ name: 'spans', shards: 4 }], buckets: ['lake'], tables: ['t1'] },
};

describe('local stack state', () => {
  it('prints the SDK environment and the names the examples read', () => {
    expect(envLines(state)).toEqual([
      'export AWS_REGION=us-east-1',
      'export AWS_ENDPOINT_URL_KINESIS=http://127.0.0.1:1001',
      'export AWS_ENDPOINT_URL_S3=http://127.0.0.1:1002',
      'export AWS_ENDPOINT_URL_DYNAMODB=http://127.0.0.1:1003',
      'export AWS_ACCESS_KEY_ID=S3RVER',
      'export AWS_SECRET_ACCESS_KEY=S3RVER',
      'export AWS_REQUEST_CHECKSUM_CALCULATION=WHEN_REQUIRED',
      'export AWS_RESPONSE_CHECKSUM_VALIDATION=WHEN_REQUIRED',
      'export STREAM_NAME=spans',
      'export LAKE_BUCKET=lake',
      'export LEASE_TABLE=t1',
      'export METRICS_HOST=127.0.0.1',
      'export METRICS_PORT=0',
    ]);
  });

  it('prints an aws: block that validates as the aws section', async () => {
    const { parse } = await import('yaml');
    const block = parse(awsYaml(state)).aws;
    expect(awsConfigSchema.parse(block).endpoints.s3).toBe('http://127.0.0.1:1002');
    expect(block.subscribeProtocol).toBeUndefined();
  });

  it('an S3 endpoint from the SDK variables counts as an override (path-style)', () => {
    const aws = awsConfigSchema.parse({});
    expect(s3EndpointOverride(aws, {})).toBeUndefined();
    expect(s3EndpointOverride(aws, { AWS_ENDPOINT_URL: 'http://a' })).toBe('http://a');
    expect(s3EndpointOverride(aws, { AWS_ENDPOINT_URL: 'http://a', AWS_ENDPOINT_URL_S3: 'http://s3' })).toBe(
      'http://s3',
    );
    expect(
      s3EndpointOverride(awsConfigSchema.parse({ endpoints: { s3: 'http://c' } }), {
        AWS_ENDPOINT_URL_S3: 'http://s3',
      }),
    ).toBe('http://c');
  });

  it('a PID is ours only while it runs the named emulator', () => {
    expect(isAlive(process.pid)).toBe(true);
    expect(isOurProcess(process.pid, 'kinesalite')).toBe(false);
    expect(isOurProcess(2 ** 22 + 7, 'kinesalite')).toBe(false);
  });
});
