/**
 * Child process for the memory-cap test: runs one Parquet sink against s3rver with many partition values
 * and a memory cap, feeding synthetic events as fast as the sink accepts them, so the parent can sample
 * this process's RSS from outside. Prints one JSON line with what happened when done.
 *   node --import tsx parquet-memory-child.ts '<json options>'
 */
import { S3Client } from '@aws-sdk/client-s3';
import pino from 'pino';
import { Ack } from '../../src/core/ack.js';
import type { AwsClients } from '../../src/core/aws.js';
import type { PipelineEvent } from '../../src/core/records.js';
import { detachedTenure } from '../../src/core/tenure.js';
import { createRegistry } from '../../src/metrics/registry.js';
import { parquetSinkConfigSchema } from '../../src/sinks/s3-parquet/config.js';
import { S3ParquetSink } from '../../src/sinks/s3-parquet/index.js';
import { MemoryDeadLetterQueue } from './fakes.js';

interface Options {
  endpoint: string;
  bucket: string;
  prefix: string;
  tmpDir: string;
  events: number;
  partitions: number;
  maxBufferedBytes: number;
  maxFileRows: number;
}

const options = JSON.parse(process.argv[2]!) as Options;
const s3 = new S3Client({
  region: 'us-east-1',
  endpoint: options.endpoint,
  forcePathStyle: true,
  credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' },
  requestChecksumCalculation: 'WHEN_REQUIRED',
  responseChecksumValidation: 'WHEN_REQUIRED',
});
const registry = createRegistry(false);
const dlq = new MemoryDeadLetterQueue();
const sink = new S3ParquetSink(
  'memory',
  parquetSinkConfigSchema.parse({
    type: 's3_parquet',
    bucket: options.bucket,
    prefix: options.prefix,
    tmpDir: options.tmpDir,
    partitioning: { template: 'svc={field:svc}', maxOpenPartitions: options.partitions * 2 },
    memory: { maxBufferedBytes: options.maxBufferedBytes },
    roll: { maxFileRows: options.maxFileRows, maxFileAgeMs: 3_600_000 },
    uploadConcurrency: 8,
    columns: [
      { name: 'n', type: 'int64' },
      { name: 'service', type: 'string', path: 'svc' },
      { name: 'payload', type: 'string' },
    ],
  }),
  { logger: pino({ level: 'warn' }), metrics: registry, aws: { s3 } as unknown as AwsClients, dlq },
  { backoff: { baseMs: 20, maxMs: 500 } },
);

let acked = 0;
const filler = 'x'.repeat(900);
const base = 49_600_000_000_000_000_000_000_000_000_000_000_000_000_000n;
process.stdout.write(`${JSON.stringify({ ready: true, rss: process.memoryUsage().rss })}\n`);
await sink.openShard(detachedTenure({ stream: 'mem', shardId: 'shardId-000000000000' }), undefined);
for (let start = 0; start < options.events; start += 500) {
  const batch: PipelineEvent[] = [];
  for (let i = start; i < Math.min(options.events, start + 500); i++) {
    // Partition values spread like hashed keys: every partition sees events throughout the run.
    const svc = `service-${String((i * 7919) % options.partitions).padStart(4, '0')}`;
    const value = { n: i, svc, payload: `${filler}${i}` };
    batch.push({
      origin: {
        stream: 'mem',
        shardId: 'shardId-000000000000',
        sequenceNumber: (base + BigInt(i)).toString(),
        subSequenceNumber: 0,
        partitionKey: svc,
        arrivalTime: new Date(1_763_769_600_000 + i),
      },
      index: 0,
      value,
      raw: Buffer.from(JSON.stringify(value)),
      ack: new Ack(() => {
        acked += 1;
      }),
    });
  }
  await sink.write(batch);
}
await sink.close();
s3.destroy();
const metric = async (name: string) => (await registry.getSingleMetric(name)?.get())?.values ?? [];
const rolls = Object.fromEntries(
  (await metric('ksw_parquet_rolls_total')).map((v) => [String(v.labels.reason), v.value]),
);
process.stdout.write(
  `${JSON.stringify({
    done: true,
    acked,
    deadLetters: dlq.letters.length,
    files: (await metric('ksw_parquet_files_total'))[0]?.value ?? 0,
    rows: (await metric('ksw_parquet_rows_total'))[0]?.value ?? 0,
    rolls,
  })}\n`,
);
