/**
 * pyarrow (PyPI) reads what the Parquet sink wrote: an independent implementation from the one that
 * encoded it, compared value by value (int64 extremes, nulls, non-ASCII, timestamps).
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { GetObjectCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, it } from 'vitest';
import { Ack } from '../../src/core/ack.js';
import type { AwsClients } from '../../src/core/aws.js';
import type { PipelineEvent } from '../../src/core/records.js';
import { createRegistry } from '../../src/metrics/registry.js';
import { parquetSinkConfigSchema, S3ParquetSink } from '../../src/sinks/s3-parquet/index.js';
import { MemoryDeadLetterQueue, origin } from '../helpers/fakes.js';
import { listKeys } from '../helpers/parquet.js';
import { silentLogger, startS3Only } from '../helpers/stack.js';

const python = process.env.KSW_PYTHON;
if (!python) throw new Error('KSW_PYTHON is not set: run this tier with `npm run test:services`');

const READER = `
import json, sys, pyarrow.parquet as pq
t = pq.read_table(sys.argv[1])
md = pq.ParquetFile(sys.argv[1]).metadata
rows = []
for r in t.to_pylist():
    rows.append({k: (str(v) if isinstance(v, int) and not isinstance(v, bool) else (v.isoformat() if hasattr(v, 'isoformat') else v)) for k, v in r.items()})
print(json.dumps({"rows": rows, "codec": md.row_group(0).column(0).compression, "types": {f.name: str(f.type) for f in t.schema}}))
`;

describe('Parquet read back by pyarrow', () => {
  let dir: string;
  let aws: AwsClients;
  let s3: Awaited<ReturnType<typeof startS3Only>>;

  beforeAll(async () => {
    s3 = await startS3Only(['pyarrow-bucket']);
    aws = s3.aws;
    dir = s3.dir;
  });
  afterAll(async () => {
    await s3.stop();
  });

  it('every value matches, including int64 extremes, nulls, non-ASCII text and timestamps', async () => {
    const values = [
      { id: '-9223372036854775808', name: 'ünïcødé 日本 🚀', ts: '1700000000123456789', ok: true },
      { id: '9223372036854775807', name: null, ts: '1700000000000000001', ok: false },
      { id: '0', name: 'plain', ts: null, ok: null },
    ];
    const dlq = new MemoryDeadLetterQueue();
    const sink = new S3ParquetSink(
      'lake',
      parquetSinkConfigSchema.parse({
        type: 's3_parquet',
        bucket: 'pyarrow-bucket',
        columns: [
          { name: 'id', type: 'int64' },
          { name: 'name', type: 'string' },
          { name: 'ts', type: 'int64' },
          { name: 'at', type: 'timestamp_us', path: 'ts', timeUnit: 'ns' },
          { name: 'ok', type: 'boolean' },
        ],
      }),
      { logger: silentLogger, metrics: createRegistry(false), aws, dlq },
    );
    const acks: Ack[] = [];
    const events: PipelineEvent[] = values.map((value, i) => {
      const ack = new Ack(() => undefined);
      acks.push(ack);
      return {
        origin: origin(String(100 + i)),
        index: 0,
        value,
        raw: Buffer.from(JSON.stringify(value)),
        ack,
      };
    });
    await sink.write(events);
    await sink.close();
    assert.ok(acks.every((a) => a.completed));
    assert.equal(dlq.letters.length, 0);
    const [key] = (await listKeys(aws.s3, 'pyarrow-bucket', '')).filter((k) => k.endsWith('.parquet'));
    const file = path.join(dir, 'out.parquet');
    const body = await aws.s3.send(new GetObjectCommand({ Bucket: 'pyarrow-bucket', Key: key! }));
    writeFileSync(file, await body.Body!.transformToByteArray());
    const out = JSON.parse(execFileSync(python!, ['-c', READER, file], { encoding: 'utf8' })) as {
      rows: Array<Record<string, string | boolean | null>>;
      codec: string;
      types: Record<string, string>;
    };
    assert.equal(out.codec, 'ZSTD');
    assert.equal(out.types.id, 'int64');
    assert.match(out.types.at!, /^timestamp\[us/);
    assert.deepEqual(
      out.rows.map((r) => [r.id, r.name, r.ts, r.ok]),
      values.map((v) => [v.id, v.name, v.ts, v.ok]),
    );
    assert.equal(out.rows[0]!.at, '2023-11-14T22:13:20.123456');
    assert.equal(out.rows[2]!.at, null);
    assert.deepEqual(
      out.rows.map((r) => r._sequence_number),
      ['100', '101', '102'],
    );
  });

  it('spans schema: nested maps, structs and lists of structs, int64 extremes and timestamps read back by pyarrow', async () => {
    const spans = [
      {
        traceId: '0af7651916cd43dd8448eb211c80319c',
        spanId: 'b7ad6b7169203331',
        parentSpanId: '',
        name: 'ünïcødé 日本 🚀',
        kind: 'SPAN_KIND_SERVER',
        serviceName: 'cart',
        startTimeUnixNano: '-9223372036854775808',
        endTimeUnixNano: '9223372036854775807',
        durationNano: '9223372036854775807',
        status: { code: 2, message: 'ошибка' },
        attributes: { 'http.status_code': 503, route: '/api/cart', ok: true },
        resource: { 'service.name': 'cart' },
        events: [{ timeUnixNano: '1700000000123456789', name: 'exception', attributes: { type: 'Timeout' } }],
        links: [],
      },
      {
        traceId: 'ffffffffffffffffffffffffffffffff',
        spanId: '0000000000000001',
        parentSpanId: 'b7ad6b7169203331',
        name: 'child',
        kind: 'SPAN_KIND_CLIENT',
        serviceName: 'pay',
        startTimeUnixNano: '1700000000000000001',
        endTimeUnixNano: '1700000000000000002',
        durationNano: '1',
        status: { code: 0, message: '' },
        attributes: {},
        resource: {},
        scope: { name: 'lib', version: '1.0' },
        sampling: { policy: 'errors', probability: 0.25 },
      },
    ];
    const sink = new S3ParquetSink(
      'spans',
      parquetSinkConfigSchema.parse({
        type: 's3_parquet',
        bucket: 'pyarrow-bucket',
        prefix: 'spans/',
        schema: 'spans',
      }),
      { logger: silentLogger, metrics: createRegistry(false), aws, dlq: new MemoryDeadLetterQueue() },
    );
    await sink.write(
      spans.map((value, i) => ({
        origin: origin(String(200 + i)),
        index: 0,
        value,
        raw: Buffer.from(JSON.stringify(value)),
        ack: new Ack(() => undefined),
      })),
    );
    await sink.close();
    const [key] = (await listKeys(aws.s3, 'pyarrow-bucket', 'spans/')).filter((k) => k.endsWith('.parquet'));
    const file = path.join(dir, 'spans.parquet');
    const body = await aws.s3.send(new GetObjectCommand({ Bucket: 'pyarrow-bucket', Key: key! }));
    writeFileSync(file, await body.Body!.transformToByteArray());
    const reader = `
import json, sys, datetime, pyarrow.parquet as pq
def conv(v):
    if isinstance(v, bool) or v is None or isinstance(v, str) or isinstance(v, float): return v
    if isinstance(v, int): return str(v)
    if isinstance(v, datetime.datetime): return v.isoformat()
    if isinstance(v, dict): return {k: conv(x) for k, x in v.items()}
    if isinstance(v, list): return [conv(x) for x in v]
    if isinstance(v, tuple): return [conv(x) for x in v]
    raise TypeError(type(v))
t = pq.read_table(sys.argv[1])
print(json.dumps({"rows": [conv(r) for r in t.to_pylist()], "types": {f.name: str(f.type) for f in t.schema}}))
`;
    const out = JSON.parse(execFileSync(python!, ['-c', reader, file], { encoding: 'utf8' })) as {
      rows: Array<Record<string, unknown>>;
      types: Record<string, string>;
    };
    assert.equal(out.types.startTimeUnixNano, 'int64');
    assert.match(out.types.startTime!, /^timestamp\[us/);
    assert.match(out.types.attributes!, /^map<string, string/);
    assert.match(out.types.events!, /^list<element: struct<timeUnixNano: int64, time: timestamp\[us/);
    const [first, second] = out.rows;
    assert.equal(first!.name, 'ünïcødé 日本 🚀');
    assert.equal(first!.startTimeUnixNano, '-9223372036854775808');
    assert.equal(first!.endTimeUnixNano, '9223372036854775807');
    assert.deepEqual(first!.status, { code: '2', message: 'ошибка' });
    // pyarrow gives a map as a list of (key, value) pairs; non-string attribute values are their JSON text.
    assert.deepEqual(first!.attributes, [
      ['http.status_code', '503'],
      ['route', '/api/cart'],
      ['ok', 'true'],
    ]);
    assert.deepEqual(first!.events, [
      {
        timeUnixNano: '1700000000123456789',
        time: '2023-11-14T22:13:20.123456',
        name: 'exception',
        attributes: [['type', 'Timeout']],
      },
    ]);
    assert.deepEqual(first!.links, []);
    assert.equal(first!.scope, null);
    assert.equal(first!.sampling, null);
    assert.deepEqual(second!.scope, { name: 'lib', version: '1.0' });
    assert.deepEqual(second!.sampling, { policy: 'errors', probability: 0.25 });
    assert.equal(second!.startTime, '2023-11-14T22:13:20');
    assert.deepEqual(second!.attributes, []);
    assert.equal(second!.events, null);
  });
});
