/** Pure logic of the OpenSearch sink: ids, times and index names, bulk sizing, classification, AIMD, templates, config. */
import assert from 'node:assert/strict';
import { describe, it } from 'vitest';
import { Ack } from '../../src/core/ack.js';
import type { PipelineEvent } from '../../src/core/records.js';
import {
  AdaptiveLimit,
  classifyItem,
  classifyRequestFailure,
  planBatches,
  statusClass,
} from '../../src/sinks/opensearch/bulk.js';
import { openSearchSinkConfigSchema } from '../../src/sinks/opensearch/config.js';
import {
  canonicalJson,
  checkIndexPattern,
  compileDocumentId,
  DocumentError,
  indexName,
  parseTime,
  templatePattern,
} from '../../src/sinks/opensearch/naming.js';
import { candidateFields } from '../../src/sinks/opensearch/offload.js';
import {
  indexTemplateBody,
  ismPolicyBody,
  RED_WINDOW_MAPPINGS,
  SPAN_MAPPINGS,
} from '../../src/sinks/opensearch/templates.js';
import { origin } from '../helpers/fakes.js';

function event(value: Record<string, unknown>, index = 0): PipelineEvent {
  return {
    origin: origin('49590338271490256608559692538361571095921575989136588898', { subSequenceNumber: 3 }),
    index,
    value,
    raw: new Uint8Array(),
    ack: new Ack(() => undefined),
  };
}

describe('document ids', () => {
  it('origin: stream/shard/sequence/sub/index', () => {
    const id = compileDocumentId('origin');
    assert.equal(
      id(event({}, 2)),
      's/shardId-000000000000/49590338271490256608559692538361571095921575989136588898/3/2',
    );
  });

  it('origin for derived events (RED windows): named by their content, never by the record they borrow the position of (finding 8)', () => {
    const id = compileDocumentId('origin');
    const span = event({ traceId: 't', spanId: 's' }, 0);
    const window = (requestCount: number): PipelineEvent => ({
      ...event({ service: 'cart', windowStart: 'T0', requestCount }, 0),
      derived: true,
    });
    // Before the fix all three had the span's id: `create` kept the first and dropped the others as 409s.
    assert.notEqual(id(window(3)), id(span));
    assert.notEqual(id(window(3)), id(window(4)), "another processor's window from the same record");
    assert.equal(id(window(3)), id(window(3)), 'the same window written again is the same document');
    assert.match(id(window(3)), /^derived-[A-Za-z0-9_-]{43}$/);
  });

  it('field, with and without hashing; a missing or empty field is a DocumentError', () => {
    assert.equal(compileDocumentId({ field: 'span.id', hash: false })(event({ span: { id: 'abc' } })), 'abc');
    const hashed = compileDocumentId({ field: 'spanId', hash: true })(event({ spanId: 'abc' }));
    assert.match(hashed, /^[A-Za-z0-9_-]{43}$/);
    assert.throws(() => compileDocumentId({ field: 'spanId', hash: false })(event({})), DocumentError);
    assert.throws(() => compileDocumentId({ field: 'spanId', hash: false })(event({ spanId: '' })), /empty/);
    assert.equal(
      compileDocumentId({ field: 'n', hash: false })(event({ n: 12345678901234567890n })),
      '12345678901234567890',
    );
  });

  it('templates mix fields (objects as canonical JSON) and origin parts; same window, same id', () => {
    const id = compileDocumentId({
      template:
        '{sourceStream}/{sourceShardId}/{windowStart}/{service}/{dimensions}#{$shard}:{$sequence}.{$sub}.{$index}',
      hash: false,
    });
    const a = id(
      event({
        sourceStream: 'spans',
        sourceShardId: 'sh-1',
        windowStart: 'T0',
        service: 'cart',
        dimensions: { b: '2', a: '1' },
      }),
    );
    const b = id(
      event({
        service: 'cart',
        dimensions: { a: '1', b: '2' },
        windowStart: 'T0',
        sourceShardId: 'sh-1',
        sourceStream: 'spans',
      }),
    );
    assert.equal(a, b, 'key order does not matter');
    assert.equal(
      a,
      'spans/sh-1/T0/cart/{"a":"1","b":"2"}#shardId-000000000000:49590338271490256608559692538361571095921575989136588898.3.0',
    );
    assert.throws(() => compileDocumentId({ template: '{$nope}', hash: false }), /unknown id placeholder/);
  });

  it('hashes ids longer than 512 bytes (OpenSearch limit)', () => {
    const id = compileDocumentId({ template: '{a}', hash: false })(event({ a: 'x'.repeat(600) }));
    assert.equal(id.length, 43);
  });

  it('canonical JSON sorts keys at every level and keeps bigints exact', () => {
    assert.equal(
      canonicalJson({ b: [{ d: 1, c: 2 }], a: 9007199254740993n }),
      '{"a":9007199254740993,"b":[{"c":2,"d":1}]}',
    );
  });
});

describe('document time and index names', () => {
  it('reads nanoseconds exactly, keeping every digit for date_nanos', () => {
    const t = parseTime('1700000000123456789', 'ns', 'f');
    assert.equal(t.ms, 1_700_000_000_123);
    assert.equal(t.iso, '2023-11-14T22:13:20.123456789Z');
    assert.equal(parseTime(1_700_000_000_123_450n, 'us', 'f').iso, '2023-11-14T22:13:20.12345Z');
    assert.equal(parseTime(1_700_000_000, 's', 'f').iso, '2023-11-14T22:13:20.000Z');
    assert.equal(parseTime('2024-05-06T07:08:00.000Z', 'ms', 'f').ms, Date.UTC(2024, 4, 6, 7, 8));
  });

  it('rejects what is not a time, or a time in the wrong unit', () => {
    assert.throws(() => parseTime(undefined, 'ms', 'f'), /f is missing/);
    assert.throws(() => parseTime('yesterday', 'ms', 'f'), /not a time/);
    assert.throws(() => parseTime({}, 'ms', 'f'), /object, not a time/);
    assert.throws(() => parseTime('1700000000123456789', 'ms', 'f'), /outside years/);
  });

  it('fills date patterns in UTC from the document time', () => {
    const ms = Date.UTC(2024, 0, 1, 23, 30); // Monday of ISO week 1 of 2024
    assert.equal(indexName('traces-%{yyyy.MM.dd}', ms), 'traces-2024.01.01');
    assert.equal(indexName('traces-%{yyyy.MM.dd.HH}', ms), 'traces-2024.01.01.23');
    assert.equal(indexName('traces-%{xxxx.ww}', Date.UTC(2021, 0, 3)), 'traces-2020.53', 'ISO week-year');
    assert.equal(indexName('traces-write', ms), 'traces-write');
    assert.equal(templatePattern('traces-%{yyyy.MM.dd}'), 'traces-*');
    assert.throws(() => checkIndexPattern('t-%{yyyy.MMM}'), /unsupported date pattern/);
  });
});

describe('bulk sizing', () => {
  it('cuts by count and bytes; an oversized item goes alone', () => {
    const items = [5, 5, 5, 20, 5, 5, 5, 5].map((bytes, i) => ({ bytes, i }));
    const batches = planBatches(items, 3, 12).map((b) => b.map((x) => x.i));
    assert.deepEqual(batches, [[0, 1], [2], [3], [4, 5], [6, 7]]);
    assert.deepEqual(
      planBatches(items, 2, 1_000).map((b) => b.length),
      [2, 2, 2, 2],
    );
  });
});

describe('retry classification', () => {
  it('per item', () => {
    assert.equal(classifyItem({ status: 201 }, 'create').kind, 'indexed');
    assert.equal(
      classifyItem({ status: 409, error: { type: 'version_conflict_engine_exception' } }, 'create').kind,
      'exists',
    );
    assert.equal(
      classifyItem({ status: 409, error: { type: 'version_conflict_engine_exception' } }, 'index').kind,
      'reject',
    );
    const throttled = classifyItem(
      { status: 429, error: { type: 'es_rejected_execution_exception', reason: 'queue full' } },
      'create',
    );
    assert.deepEqual(throttled, {
      kind: 'retry',
      throttled: true,
      reason: 'status 429: es_rejected_execution_exception: queue full',
    });
    assert.equal(
      classifyItem({ status: 500, error: { type: 'es_rejected_execution_exception' } }, 'create').kind,
      'retry',
    );
    assert.deepEqual(
      classifyItem({ status: 503, error: { type: 'unavailable_shards_exception' } }, 'create'),
      {
        kind: 'retry',
        throttled: false,
        reason: 'status 503: unavailable_shards_exception: ',
      },
    );
    assert.equal(
      classifyItem({ status: 403, error: { type: 'cluster_block_exception' } }, 'create').kind,
      'retry',
    );
    const conflict = classifyItem(
      {
        status: 400,
        error: {
          type: 'mapper_parsing_exception',
          reason: 'failed to parse field [x]',
          caused_by: { type: 'number_format_exception', reason: 'For input string: "a"' },
        },
      },
      'create',
    );
    assert.deepEqual(conflict, {
      kind: 'reject',
      reason:
        'status 400: mapper_parsing_exception: failed to parse field [x] (caused by: number_format_exception: For input string: "a")',
    });
    assert.equal(
      classifyItem({ status: 404, error: { type: 'index_not_found_exception' } }, 'create').kind,
      'reject',
    );
  });

  it('whole requests', () => {
    assert.deepEqual(classifyRequestFailure(429), { kind: 'retry', throttled: true });
    assert.deepEqual(classifyRequestFailure(502), { kind: 'retry', throttled: false });
    assert.deepEqual(classifyRequestFailure(undefined), { kind: 'retry', throttled: false });
    assert.deepEqual(classifyRequestFailure(403), { kind: 'retry', throttled: false });
    assert.deepEqual(classifyRequestFailure(413), { kind: 'split' });
    assert.deepEqual(classifyRequestFailure(400), { kind: 'split' });
    assert.deepEqual([undefined, 200, 409, 429, 404, 503].map(statusClass), [
      'network',
      '2xx',
      '409',
      '429',
      '4xx',
      '5xx',
    ]);
  });
});

describe('adaptive concurrency', () => {
  it('halves on 429 (once per cooldown), grows by one after a run of successes', () => {
    let now = 0;
    const limit = new AdaptiveLimit(8, 1_000, () => now);
    limit.onThrottled();
    limit.onThrottled(); // same storm, within the cooldown
    assert.equal(limit.limit, 4);
    now = 1_500;
    limit.onThrottled();
    assert.equal(limit.limit, 2);
    now = 3_000;
    limit.onThrottled();
    now = 4_500;
    limit.onThrottled();
    assert.equal(limit.limit, 1, 'never below one');
    limit.onSuccess();
    assert.equal(limit.limit, 2);
    limit.onSuccess();
    assert.equal(limit.limit, 2);
    limit.onSuccess();
    assert.equal(limit.limit, 3);
    for (let i = 0; i < 100; i++) limit.onSuccess();
    assert.equal(limit.limit, 8, 'never above the configured maximum');
  });
});

describe('templates', () => {
  it('map every field of the shared document shapes', () => {
    const spanFields = [
      'traceId',
      'spanId',
      'parentSpanId',
      'traceState',
      'name',
      'kind',
      'serviceName',
      'startTimeUnixNano',
      'endTimeUnixNano',
      'durationNano',
      'status',
      'attributes',
      'resource',
      'scope',
      'events',
      'links',
      'sampling',
    ];
    for (const f of spanFields) assert.ok(f in SPAN_MAPPINGS.properties, `span field ${f}`);
    const redFields = [
      'windowStart',
      'windowEnd',
      'service',
      'operation',
      'spanKind',
      'statusCode',
      'dimensions',
      'overflow',
      'requestCount',
      'errorCount',
      'durationSumMs',
      'durationMinMs',
      'durationMaxMs',
      'durationBucketBoundsMs',
      'durationBucketCounts',
      'sourceStream',
      'sourceShardId',
    ];
    for (const f of redFields) assert.ok(f in RED_WINDOW_MAPPINGS.properties, `RED field ${f}`);
    assert.equal(SPAN_MAPPINGS.properties.startTimeUnixNano.type, 'long');
    assert.equal(RED_WINDOW_MAPPINGS.dynamic, 'strict');
  });

  it('template and ISM bodies', () => {
    const body = indexTemplateBody({
      kind: 'spans',
      indexPatterns: ['t-*'],
      shards: 2,
      replicas: 1,
      refreshInterval: '5s',
      dataStream: true,
      serverless: false,
    }) as {
      data_stream?: object;
      template: { settings: { index: Record<string, unknown> } };
    };
    assert.deepEqual(body.data_stream, {});
    assert.equal(body.template.settings.index.number_of_shards, 2);
    const serverless = indexTemplateBody({
      kind: 'spans',
      indexPatterns: ['t-*'],
      shards: 2,
      replicas: 1,
      refreshInterval: '5s',
      dataStream: false,
      serverless: true,
    }) as typeof body;
    assert.deepEqual(serverless.template.settings.index, {});
    const ism = ismPolicyBody({ name: 'p', deleteAfter: '7d', warmAfter: '1d' }, ['t-*']) as {
      policy: { states: Array<{ name: string }>; ism_template: unknown };
    };
    assert.deepEqual(
      ism.policy.states.map((s) => s.name),
      ['hot', 'warm', 'delete'],
    );
    assert.deepEqual(ism.policy.ism_template, [{ index_patterns: ['t-*'], priority: 100 }]);
  });
});

describe('field offload candidates', () => {
  it('top-level fields by default; `x.*` expands members (whose keys may contain dots)', () => {
    const doc = { a: 1, attributes: { 'db.statement': 's', 'http.url': 'u' }, offloaded: {} };
    assert.deepEqual(candidateFields(doc, [], 'offloaded'), [['a'], ['attributes']]);
    assert.deepEqual(candidateFields(doc, ['attributes.*', 'missing', 'a'], 'offloaded'), [
      ['attributes', 'db.statement'],
      ['attributes', 'http.url'],
      ['a'],
    ]);
  });
});

describe('config', () => {
  const base = { type: 'opensearch', index: 'traces-%{yyyy.MM.dd}' };
  it('accepts a minimal config with safe defaults', () => {
    const c = openSearchSinkConfigSchema.parse({ ...base, endpoint: 'http://127.0.0.1:9200' });
    assert.equal(c.action, 'create');
    assert.equal(c.documentId, 'origin');
    assert.equal(c.bulk.maxBytes, 5 * 1024 * 1024);
    assert.equal(c.retry.budgetMs, 300_000);
  });

  it('names the field and the fix for contradictions', () => {
    const issues = (v: Record<string, unknown>) =>
      openSearchSinkConfigSchema.safeParse(v).error?.issues.map((i) => `${i.path.join('.')}: ${i.message}`) ??
      [];
    assert.match(issues(base).join('\n'), /endpoint: set exactly one of endpoint/);
    assert.match(issues({ ...base, domainName: 'traces' }).join('\n'), /domainName needs auth/);
    assert.match(
      issues({ ...base, endpoint: 'http://x', dataStream: true, action: 'index' }).join('\n'),
      /action: data streams accept only `create`/,
    );
    assert.match(issues({ ...base, endpoint: 'http://x', index: 'Traces' }).join('\n'), /index: lowercase/);
    assert.match(
      issues({ ...base, endpoint: 'http://x', index: 't-%{yyyy.MMM}' }).join('\n'),
      /index: .*unsupported date pattern/,
    );
    assert.match(
      issues({ ...base, endpoint: 'http://x', documentId: { template: '{$shardId}' } }).join('\n'),
      /documentId: unknown id placeholder \{\$shardId\}/,
    );
    assert.match(
      issues({
        ...base,
        endpoint: 'http://x',
        auth: { type: 'aws_sigv4', service: 'aoss' },
        template: { kind: 'spans', ismPolicy: { name: 'p', deleteAfter: '7d' } },
      }).join('\n'),
      /no ISM/,
    );
  });
});
