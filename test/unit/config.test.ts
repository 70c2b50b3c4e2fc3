import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError } from '../../src/config/errors.js';
import { interpolate, loadConfig, validateConfig } from '../../src/config/load.js';
import { semanticWarnings } from '../../src/config/warnings.js';

const minimal = {
  consumers: [{ type: 'polling', stream: 'spans' }],
  sinks: { lake: { type: 's3_parquet', bucket: 'lake-bucket' } },
  dlq: { type: 's3', bucket: 'lake-bucket' },
};

function problems(raw: unknown, env: NodeJS.ProcessEnv = {}): Array<{ path: string; message: string }> {
  try {
    validateConfig(raw, 'test.yaml', env);
  } catch (err) {
    assert.ok(err instanceof ConfigError, String(err));
    return [...err.problems];
  }
  assert.fail('expected the config to be rejected');
}

describe('config', () => {
  it('fills defaults for everything that has one', () => {
    const c = validateConfig(minimal, 'test.yaml', {});
    assert.equal((c.consumers[0] as { startPosition?: string }).startPosition, 'TRIM_HORIZON');
    assert.equal(c.checkpoints.intervalMs, 10_000);
    assert.equal(c.checkpoints.failoverMs, 10_000);
    assert.equal(c.server.host, '127.0.0.1');
    assert.equal(c.shutdown.deadlineMs, 30_000);
    assert.equal(c.aws.region, 'us-east-1');
    assert.equal(c.decode.format, 'auto');
  });

  it('enhanced fan-out consumers: defaults, a consumer name valid for Kinesis, one consumer per stream', () => {
    const c = validateConfig(
      {
        ...minimal,
        consumers: [
          { type: 'efo', stream: 'spans' },
          { type: 'polling', stream: 'other' },
        ],
      },
      'test.yaml',
      {},
    );
    const efo = c.consumers[0]!;
    assert.equal(efo.type, 'efo');
    if (efo.type === 'efo') {
      assert.equal(efo.resubscribeIntervalMs, 300_000);
      assert.equal(efo.deaggregate, true);
    }
    assert.match(
      problems({ ...minimal, app: { name: 'my app' }, consumers: [{ type: 'efo', stream: 'spans' }] })
        .map((p) => `${p.path}: ${p.message}`)
        .join('\n'),
      /consumers\[0\]\.consumerName: .*set consumerName/,
    );
    assert.match(
      problems({
        ...minimal,
        consumers: [
          { type: 'polling', stream: 'spans' },
          { type: 'efo', stream: 'spans' },
        ],
      })
        .map((p) => `${p.path}: ${p.message}`)
        .join('\n'),
      /consumers\[1\]\.stream: .*already read by consumers\[0\]/,
    );
    assert.match(
      problems({ ...minimal, consumers: [{ type: 'efo', stream: 's', resubscribeIntervalMs: 1000 }] })
        .map((p) => `${p.path}: ${p.message}`)
        .join('\n'),
      /resubscribeIntervalMs/,
    );
  });

  it('the example config validates with its variables set', () => {
    const c = loadConfig(path.join(import.meta.dirname, '../../examples/worker.yaml'), {
      STREAM_NAME: 'spans',
      LAKE_BUCKET: 'my-lake',
    });
    assert.equal(c.consumers[0]!.stream, 'spans');
    assert.equal(c.checkpoints.table, 'spans-to-lake-leases');
    assert.equal(c.server.port, 9400);
  });

  it('interpolates ${VAR} and ${VAR:-default}, typing whole-value references', () => {
    const found: Array<{ path: string; message: string }> = [];
    const out = interpolate(
      { a: '${PORT}', b: 'prefix-${NAME}-x', c: '${MISSING:-fallback}', d: ['${FLAG}'] },
      { PORT: '9500', NAME: 'n', FLAG: 'true' },
      found,
    );
    assert.deepEqual(out, { a: 9500, b: 'prefix-n-x', c: 'fallback', d: [true] });
    assert.deepEqual(found, []);
  });

  it('names the field and the variable when an environment variable is missing', () => {
    const p = problems({ ...minimal, consumers: [{ type: 'polling', stream: '$' + '{STREAM_NAME}' }] });
    assert.equal(p[0]!.path, 'consumers[0].stream');
    assert.match(p[0]!.message, /STREAM_NAME is not set/);
    assert.match(p[0]!.message, /\$\{STREAM_NAME:-value\}/);
  });

  it('reports every problem at once, each with its path and a hint', () => {
    const p = problems({
      consumers: [{ type: 'polling', stream: 'spans', startPosition: 'OLDEST', maxRecordsPerCal: 5 }],
      sinks: { lake: { type: 's3_parquet', bucket: 'bbb', compression: 'lz5' } },
      dlq: { type: 's3' },
      checkpoints: { intervalMs: 'often' },
    });
    const byPath = new Map(p.map((x) => [x.path, x.message]));
    assert.match(
      byPath.get('consumers[0].startPosition')!,
      /allowed values: "TRIM_HORIZON", "LATEST", "AT_TIMESTAMP"/,
    );
    assert.match(
      byPath.get('consumers[0]')!,
      /unknown field "maxRecordsPerCal" \(did you mean "maxRecordsPerCall"\?\)/,
    );
    assert.match(byPath.get('sinks.lake.compression')!, /allowed values/);
    assert.match(byPath.get('dlq.bucket')!, /required field is missing/);
    assert.match(byPath.get('checkpoints.intervalMs')!, /expected number, got "often"/);
  });

  it('lists the known types for an unknown sink type', () => {
    const p = problems({ ...minimal, sinks: { lake: { type: 'parquet' } } });
    assert.equal(p[0]!.path, 'sinks.lake.type');
    assert.match(p[0]!.message, /unknown sink type "parquet"; known types: s3_parquet/);
  });

  it('requires startTimestamp for AT_TIMESTAMP and checks it is a time', () => {
    const p = problems({
      ...minimal,
      consumers: [{ type: 'polling', stream: 's', startPosition: 'AT_TIMESTAMP' }],
    });
    assert.equal(p[0]!.path, 'consumers[0].startTimestamp');
    const q = problems({
      ...minimal,
      consumers: [
        { type: 'polling', stream: 's', startPosition: 'AT_TIMESTAMP', startTimestamp: 'yesterday' },
      ],
    });
    assert.match(q[0]!.message, /not an ISO-8601 time/);
  });

  it('catches a typo at the top level and unknown top-level sections', () => {
    const p = problems({ ...minimal, sink: {} });
    assert.match(p[0]!.message, /unknown field "sink" \(did you mean "sinks"\?\)/);
  });

  it('reports YAML syntax errors and unreadable files', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'cfg-'));
    const bad = path.join(dir, 'bad.yaml');
    writeFileSync(bad, 'consumers: [\n  - type: polling\n');
    assert.throws(
      () => loadConfig(bad, {}),
      (err: unknown) => err instanceof ConfigError && /YAML syntax error/.test(err.message),
    );
    assert.throws(
      () => loadConfig(path.join(dir, 'missing.yaml'), {}),
      /cannot read the config file: no such file; check the path/,
    );
  });
});

describe('semantic warnings', () => {
  const base = {
    consumers: [{ type: 'polling', stream: 's' }],
    dlq: { type: 's3', bucket: 'dlq-bucket' },
    sinks: {
      lake: { type: 's3_parquet', bucket: 'lake-bucket' },
      errors: { type: 's3_parquet', bucket: 'lake-bucket', prefix: 'e/' },
    },
  };
  it('warns about a sink that no route reaches, and not without routing', () => {
    const routed = validateConfig({
      ...base,
      routing: { routes: [{ name: 'all', sinks: ['lake'] }] },
    });
    expect(semanticWarnings(routed).map((w) => w.path)).toEqual(['sinks.errors']);
    expect(semanticWarnings(validateConfig(base))).toEqual([]);
  });
});
