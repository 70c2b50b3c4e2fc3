/**
 * The Parquet sink's Iceberg mode against moto (PyPI, server mode: Glue Data Catalog and S3), read by an
 * independent reader: pyiceberg's GlueCatalog loads the table the worker committed (the same catalog kind)
 * and reads every row with pyarrow. Checks: counts, exact int64 nanoseconds, timestamps, nested columns;
 * no data file is added twice across the snapshot history; events are acked only once their file is in
 * the table; a file uploaded but never committed (a crash between upload and commit) is written again on
 * replay, and files already in the table are not.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { CreateDatabaseCommand, GlueClient } from '@aws-sdk/client-glue';
import { CreateBucketCommand, ListObjectsV2Command } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, it } from 'vitest';
import { Ack } from '../../src/core/ack.js';
import { type AwsClients, awsConfigSchema, createAwsClients } from '../../src/core/aws.js';
import type { PipelineEvent } from '../../src/core/records.js';
import { detachedTenure } from '../../src/core/tenure.js';
import { createRegistry } from '../../src/metrics/registry.js';
import { generateSpans } from '../../src/producer/synthetic-spans.js';
import { parquetSinkConfigSchema, S3ParquetSink } from '../../src/sinks/s3-parquet/index.js';
import { MemoryDeadLetterQueue } from '../helpers/fakes.js';
import { type GluePeer, peerKind, peers } from '../helpers/peers/index.js';
import { silentLogger, waitFor } from '../helpers/stack.js';

const STREAM = 'spans';
const SHARDS = ['shardId-000000000000', 'shardId-000000000001'];
const CREDENTIALS = { accessKeyId: 'testing', secretAccessKey: 'testing' };

const READ_TABLE = `
import json, sys
from pyiceberg.catalog.glue import GlueCatalog
ep = sys.argv[1]
catalog = GlueCatalog('glue', **{
    'glue.endpoint': ep, 'glue.region': 'us-east-1',
    'glue.access-key-id': 'testing', 'glue.secret-access-key': 'testing',
    's3.endpoint': ep, 's3.region': 'us-east-1',
    's3.access-key-id': 'testing', 's3.secret-access-key': 'testing',
})
table = catalog.load_table('lake.spans')
rows = table.scan().to_arrow().to_pylist()
added = []
for snapshot in table.metadata.snapshots:
    for manifest in snapshot.manifests(table.io):
        for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=False):
            if entry.snapshot_id == snapshot.snapshot_id and int(entry.status) == 1:
                added.append(entry.data_file.file_path)
print(json.dumps({
    'count': len(rows),
    'ids': sorted(r['spanId'] for r in rows),
    'sumStartNanos': str(sum(r['startTimeUnixNano'] for r in rows)),
    'maxStartNanos': str(max(r['startTimeUnixNano'] for r in rows)),
    'minStartTime': min(r['startTime'] for r in rows).isoformat(),
    'sample': next(r for r in rows if r['spanId'] == sys.argv[2]),
    'snapshots': len(table.metadata.snapshots),
    'added': added,
    'spec': str(table.spec()),
    'summaries': [s.summary.additional_properties.get('ksw.files') for s in table.metadata.snapshots],
}, default=str))
`;

/** An instant in nanoseconds as Python's naive datetime.isoformat() prints it (microseconds). */
function isoMicros(nanos: bigint): string {
  const micros = nanos / 1000n;
  const base = new Date(Number(micros / 1000n)).toISOString().slice(0, 19);
  const fraction = (micros % 1_000_000n).toString().padStart(6, '0');
  return fraction === '000000' ? base : `${base}.${fraction}`;
}

function python(args: string[]): Promise<string> {
  const bin = process.env.KSW_PYTHON;
  if (!bin) throw new Error('KSW_PYTHON is not set (npm run test:services sets it)');
  return new Promise((resolve, reject) =>
    execFile(bin, args, { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) =>
      err ? reject(new Error(`python exited with ${err.code}: ${stderr}`)) : resolve(stdout),
    ),
  );
}

// The reader runs in the tier's Python (KSW_PYTHON, set by scripts/services/run.sh, which installs pyiceberg).
// Only the containers tier may go without it (its peers are images; it installs no Python): there the suite is
// skipped and its title says why. Anywhere else a missing KSW_PYTHON fails the suite instead of hiding it.
const noPython = process.env.KSW_PEERS === 'container' && !process.env.KSW_PYTHON;
describe.skipIf(noPython)(
  `Iceberg tables through the Glue catalog, read by pyiceberg (moto, ${peerKind()})${
    noPython
      ? ' [skipped: the containers tier has no Python for pyiceberg; the services tier runs this suite]'
      : ''
  }`,
  () => {
    let moto: GluePeer;
    let aws: AwsClients;

    beforeAll(async () => {
      moto = await (await peers()).glue();
      aws = createAwsClients(
        awsConfigSchema.parse({
          region: 'us-east-1',
          endpoints: { s3: moto.endpoint },
          credentials: CREDENTIALS,
          s3ChecksumMode: 'when_required',
        }),
      );
      await aws.s3.send(new CreateBucketCommand({ Bucket: 'lake' }));
      const glue = new GlueClient({ region: 'us-east-1', endpoint: moto.endpoint, credentials: CREDENTIALS });
      await glue.send(new CreateDatabaseCommand({ DatabaseInput: { Name: 'lake' } }));
      glue.destroy();
    });
    afterAll(async () => {
      aws?.destroy();
      await moto?.stop();
    });

    const spans = [...generateSpans(400, { seed: 3, startNanos: 1_767_225_599_000_000_001n })];
    function events(from: number, to: number): PipelineEvent[] {
      return spans.slice(from, to).map((span, i) => {
        const n = from + i;
        const shardId = SHARDS[n % 2]!;
        return {
          origin: {
            stream: STREAM,
            shardId,
            sequenceNumber: `4959${String(n + 1).padStart(52, '0')}`,
            subSequenceNumber: 0,
            partitionKey: span.traceId,
            arrivalTime: new Date(1_767_225_600_000 + n),
          },
          index: 0,
          value: span as unknown as Record<string, unknown>,
          raw: Buffer.from(JSON.stringify(span)),
          ack: new Ack(() => undefined),
        };
      });
    }

    function sink(name: string, commitIntervalMs: number) {
      const config = parquetSinkConfigSchema.parse({
        type: 's3_parquet',
        bucket: 'lake',
        prefix: 'spans/',
        schema: 'spans',
        partitioning: { template: 'dt={yyyy}-{MM}-{dd}/hour={HH}/service={field:serviceName}' },
        roll: { maxFileRows: 8 },
        iceberg: {
          catalog: { type: 'glue', database: 'lake', table: 'spans', endpoint: moto.endpoint },
          commitIntervalMs,
        },
      });
      return new S3ParquetSink(
        name,
        config,
        { logger: silentLogger, metrics: createRegistry(false), aws, dlq: new MemoryDeadLetterQueue() },
        { backoff: { baseMs: 5, maxMs: 50 } },
      );
    }

    async function dataObjects(): Promise<string[]> {
      const out = await aws.s3.send(new ListObjectsV2Command({ Bucket: 'lake', Prefix: 'spans/dt=' }));
      return (out.Contents ?? []).map((o) => o.Key!).filter((k) => k.endsWith('.parquet'));
    }

    it('commits files to the table, acks only after the commit, and pyiceberg reads every row exactly', async () => {
      // 1. Commits wait (interval 10 min): files are uploaded, nothing is acked until flush commits them.
      const first = sink('iceberg-1', 600_000);
      for (const shardId of SHARDS)
        await first.openShard(detachedTenure({ stream: STREAM, shardId }), undefined);
      const batch1 = events(0, 300);
      await first.write(batch1);
      await waitFor(async () => (await dataObjects()).length > 0, 20_000, 'uploads');
      await new Promise((r) => setTimeout(r, 300));
      assert.equal(batch1.filter((e) => e.ack.completed).length, 0, 'no ack before the table commit');
      await first.flush();
      assert.equal(batch1.filter((e) => e.ack.completed).length, 300, 'every event acked after the commit');
      await first.close();

      // 2. A crash between upload and commit: the second sink's files are uploaded, never committed.
      const crashed = sink('iceberg-crashed', 600_000);
      for (const shardId of SHARDS)
        await crashed.openShard(detachedTenure({ stream: STREAM, shardId }), undefined);
      const before = (await dataObjects()).length;
      const lost = events(300, 400);
      await crashed.write(lost);
      await waitFor(async () => (await dataObjects()).length > before, 20_000, 'uncommitted uploads');
      // (never closed: a crash. Its commit timer is unref'd and 10 minutes away.)

      // 3. Restart from no checkpoint: everything is replayed; files in the table are skipped, the rest
      //    (the crashed run's uploads) written and committed.
      const restarted = sink('iceberg-2', 100);
      for (const shardId of SHARDS)
        await restarted.openShard(detachedTenure({ stream: STREAM, shardId }), undefined);
      const replay = events(0, 400);
      await restarted.write(replay);
      await restarted.flush();
      assert.equal(replay.filter((e) => e.ack.completed).length, 400);
      await restarted.close();

      const sample = spans[7]!;
      const out = JSON.parse(await python(['-c', READ_TABLE, moto.endpoint, sample.spanId]));
      assert.equal(out.count, 400, 'every span once');
      assert.deepEqual(out.ids, spans.map((s) => s.spanId).sort());
      const expectedSum = spans.reduce((n, s) => n + BigInt(s.startTimeUnixNano), 0n);
      assert.equal(out.sumStartNanos, expectedSum.toString(), 'int64 nanoseconds exact (beyond 2^53)');
      const maxStart = spans.reduce(
        (m, s) => (BigInt(s.startTimeUnixNano) > m ? BigInt(s.startTimeUnixNano) : m),
        0n,
      );
      assert.equal(out.maxStartNanos, maxStart.toString());
      const minStart = spans.reduce(
        (m, s) => (BigInt(s.startTimeUnixNano) < m ? BigInt(s.startTimeUnixNano) : m),
        maxStart,
      );
      assert.equal(out.minStartTime, isoMicros(minStart), 'TIMESTAMP(MICROS) read as the same instant');
      assert.equal(out.sample.serviceName, sample.serviceName);
      assert.equal(out.sample.traceId, sample.traceId);
      assert.equal(out.sample.status.code, sample.status.code);
      const attributes = new Map<string, string>(out.sample.attributes);
      assert.equal(attributes.get('http.route'), String(sample.attributes['http.route']), 'map column');
      assert.equal(
        new Set(out.added).size,
        out.added.length,
        'no data file added twice in the snapshot history',
      );
      assert.ok(out.snapshots >= 2, 'the first run and the replay committed');
      assert.match(out.spec, /hour\(\d+\)|startTime_hour/);
    });
  },
);
