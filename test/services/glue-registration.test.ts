/**
 * Partition registration against moto's Glue (PyPI, server mode): the Parquet sink registers each partition
 * once when it gets its first file, with the values unescaped and the partition's location; registering
 * again (a new worker) is a success, not an error.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { createServer } from 'node:net';
import path from 'node:path';
import {
  CreateDatabaseCommand,
  CreateTableCommand,
  GetPartitionsCommand,
  GlueClient,
} from '@aws-sdk/client-glue';
import { afterAll, beforeAll, describe, it } from 'vitest';
import { Ack } from '../../src/core/ack.js';
import type { AwsClients } from '../../src/core/aws.js';
import type { PipelineEvent } from '../../src/core/records.js';
import { createRegistry } from '../../src/metrics/registry.js';
import { parquetSinkConfigSchema, S3ParquetSink } from '../../src/sinks/s3-parquet/index.js';
import { MemoryDeadLetterQueue } from '../helpers/fakes.js';
import { silentLogger, startS3Only, waitFor } from '../helpers/stack.js';

const python = process.env.KSW_PYTHON;
if (!python) throw new Error('KSW_PYTHON is not set: run this tier with `npm run test:services`');

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
    server.on('error', reject);
  });
}

describe('Glue partition registration (moto)', () => {
  let moto: ChildProcess;
  let endpoint: string;
  let s3: Awaited<ReturnType<typeof startS3Only>>;
  let aws: AwsClients;

  beforeAll(async () => {
    const port = await freePort();
    moto = spawn(python!, ['-m', 'moto.server', '-H', '127.0.0.1', '-p', String(port)], { stdio: 'ignore' });
    endpoint = `http://127.0.0.1:${port}`;
    await waitFor(
      async () => {
        try {
          return (await fetch(`${endpoint}/moto-api/`)).ok;
        } catch {
          return false;
        }
      },
      60_000,
      'moto server',
    );
    s3 = await startS3Only(['glue-lake']);
    aws = s3.aws;
  });
  afterAll(async () => {
    moto?.kill('SIGTERM');
    await s3?.stop();
  });

  it('registers each partition once with unescaped values; an existing partition is not an error', async () => {
    const glue = new GlueClient({
      region: 'us-east-1',
      endpoint,
      credentials: { accessKeyId: 'testing', secretAccessKey: 'testing' },
    });
    await glue.send(new CreateDatabaseCommand({ DatabaseInput: { Name: 'lake' } }));
    await glue.send(
      new CreateTableCommand({
        DatabaseName: 'lake',
        TableInput: {
          Name: 'events',
          PartitionKeys: [
            { Name: 'dt', Type: 'string' },
            { Name: 'svc', Type: 'string' },
          ],
          StorageDescriptor: {
            Columns: [{ Name: 'n', Type: 'bigint' }],
            Location: 's3://glue-lake/events/',
            InputFormat: 'org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat',
            OutputFormat: 'org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat',
            SerdeInfo: {
              SerializationLibrary: 'org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe',
            },
          },
        },
      }),
    );
    const config = parquetSinkConfigSchema.parse({
      type: 's3_parquet',
      bucket: 'glue-lake',
      prefix: 'events/',
      tmpDir: path.join(s3.dir, 'tmp'),
      partitioning: {
        template: 'dt={yyyy}-{MM}-{dd}/svc={field:svc}',
        time: { source: 'event', field: 'at' },
      },
      roll: { maxFileRows: 1 },
      columns: [{ name: 'n', type: 'int64' }],
      registration: { type: 'glue', database: 'lake', table: 'events', endpoint },
    });
    const run = async (values: Array<Record<string, unknown>>) => {
      const registry = createRegistry(false);
      const sink = new S3ParquetSink('glue', config, {
        logger: silentLogger,
        metrics: registry,
        aws: { ...aws, s3: aws.s3 },
        dlq: new MemoryDeadLetterQueue(),
      });
      const events: PipelineEvent[] = values.map((value, i) => ({
        origin: {
          stream: 's',
          shardId: 'shardId-000000000000',
          sequenceNumber: String(100 + i),
          subSequenceNumber: 0,
          partitionKey: 'k',
          arrivalTime: new Date(0),
        },
        index: 0,
        value,
        raw: Buffer.from(JSON.stringify(value)),
        ack: new Ack(() => undefined),
      }));
      await sink.write(events);
      await sink.flush();
      const metric = async (name: string) =>
        (await registry.getSingleMetric(name)?.get())?.values[0]?.value ?? 0;
      await waitFor(
        async () =>
          (await metric('ksw_parquet_partition_registrations_total')) +
            (await metric('ksw_parquet_partition_registration_errors_total')) >=
          2,
        30_000,
        'registrations',
      );
      const result = {
        registered: await metric('ksw_parquet_partition_registrations_total'),
        errors: await metric('ksw_parquet_partition_registration_errors_total'),
      };
      await sink.close();
      return result;
    };
    // Three files, two partitions (one with a value that needs escaping): two registrations.
    const values = [
      { n: 1, svc: 'cart', at: '2025-11-22T10:00:00Z' },
      { n: 2, svc: 'a/b', at: '2025-11-22T11:00:00Z' },
      { n: 3, svc: 'cart', at: '2025-11-22T12:00:00Z' },
    ];
    assert.deepEqual(await run(values), { registered: 2, errors: 0 });
    const partitions = (
      await glue.send(new GetPartitionsCommand({ DatabaseName: 'lake', TableName: 'events' }))
    ).Partitions!;
    assert.deepEqual(partitions.map((p) => [p.Values, p.StorageDescriptor?.Location]).sort(), [
      [['2025-11-22', 'a/b'], 's3://glue-lake/events/dt=2025-11-22/svc=a%2Fb/'],
      [['2025-11-22', 'cart'], 's3://glue-lake/events/dt=2025-11-22/svc=cart/'],
    ]);
    // A second worker registers the same partitions again: idempotent.
    assert.deepEqual(await run(values), { registered: 2, errors: 0 });
    glue.destroy();
  });
});
