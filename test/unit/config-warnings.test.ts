import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { main } from '../../src/cli/commands.js';
import { ConfigError } from '../../src/config/errors.js';
import { loadConfigSource, validateConfig } from '../../src/config/load.js';
import { bucketNameProblem, semanticWarnings } from '../../src/config/warnings.js';

const base = {
  consumers: [{ type: 'polling', stream: 'spans' }],
  sinks: { lake: { type: 's3_parquet', bucket: 'my-lake' } },
  dlq: { type: 's3', bucket: 'my-lake' },
};
const warnings = (raw: Record<string, unknown>) => semanticWarnings(validateConfig({ ...base, ...raw }));
const dir = mkdtempSync(path.join(tmpdir(), 'ksw-warn-'));

afterEach(() => vi.restoreAllMocks());

describe('semantic warnings', () => {
  it('the example configs have none', () => {
    for (const f of ['worker.yaml', 'traces.yaml']) {
      const { config } = loadConfigSource(path.join(import.meta.dirname, '../../examples', f), {
        STREAM_NAME: 's',
        LAKE_BUCKET: 'lake',
      });
      expect(semanticWarnings(config), f).toEqual([]);
    }
  });

  it('red_metrics after a sampler counts only sampled spans', () => {
    const w = warnings({
      processors: [
        { type: 'otel_spans' },
        { type: 'tail_sampling', policies: [{ name: 'all', type: 'probabilistic', probability: 1 }] },
        { type: 'red_metrics', sinks: ['lake'] },
      ],
    });
    expect(w).toEqual([
      expect.objectContaining({
        path: 'processors.2',
        message: expect.stringMatching(
          /^red_metrics comes after tail_sampling \(processors\.1\), so requests, errors and durations count only the sampled spans/,
        ),
      }),
    ]);
    expect(
      warnings({
        processors: [
          { type: 'otel_spans' },
          { type: 'red_metrics', sinks: ['lake'] },
          { type: 'head_sampling', probability: 0.5 },
        ],
      }),
    ).toEqual([]);
  });

  it('span processors without otel_spans before them', () => {
    expect(warnings({ processors: [{ type: 'red_metrics', sinks: ['lake'] }] })).toEqual([
      {
        path: 'processors.0',
        message: expect.stringContaining(
          'there is no otel_spans processor: put { type: otel_spans } before it',
        ),
      },
    ]);
    expect(
      warnings({ processors: [{ type: 'head_sampling', probability: 0.5 }, { type: 'otel_spans' }] })[0],
    ).toMatchObject({
      path: 'processors.0',
      message: expect.stringContaining('it comes later (processors.1)'),
    });
  });

  it('a route on a field no span has', () => {
    const w = warnings({
      processors: [{ type: 'otel_spans' }],
      sinks: {
        lake: { type: 's3_parquet', bucket: 'my-lake' },
        errors: { type: 's3_parquet', bucket: 'my-lake' },
      },
      routing: {
        routes: [
          { name: 'errors', where: ['statusCode >= 2'], sinks: ['errors'] },
          { name: 'ok', where: ['status.code == 2', 'attributes["http.route"] exists'], sinks: ['errors'] },
        ],
        default: { sinks: ['lake'] },
      },
    });
    expect(w).toEqual([
      {
        path: 'routing.routes.0.where.0',
        message: expect.stringMatching(
          /^span events have no field "statusCode", so route "errors" never matches; span fields: traceId, /,
        ),
      },
    ]);
    // without otel_spans the fields are the producer's: nothing to say
    expect(
      warnings({ routing: { routes: [{ name: 'x', where: ['statusCode >= 2'], sinks: ['lake'] }] } }),
    ).toEqual([]);
  });

  it('invalid bucket names', () => {
    expect(bucketNameProblem('my-lake')).toBeUndefined();
    expect(bucketNameProblem('My_Lake')).toMatch(/lowercase letters/);
    expect(bucketNameProblem('a..b')).toMatch(/two dots/);
    expect(bucketNameProblem('192.168.1.1')).toMatch(/IP address/);
    expect(bucketNameProblem('x'.repeat(64))).toMatch(/3 to 63/);
    expect(bucketNameProblem('xn--abc')).toMatch(/reserves/);
    expect(warnings({ sinks: { lake: { type: 's3_parquet', bucket: 'My_Lake' } } })).toEqual([
      { path: 'sinks.lake.bucket', message: expect.stringMatching(/^bucket name "My_Lake" may hold only/) },
    ]);
  });

  it('a file consumer whose file is missing', () => {
    expect(warnings({ consumers: [{ type: 'file', path: path.join(dir, 'nope.ndjson') }] })).toEqual([
      { path: 'consumers.0.path', message: expect.stringMatching(/^no file .*nope\.ndjson here/) },
    ]);
  });
});

describe('positions', () => {
  it('every validation problem names file:line:column, an unknown field at its key', () => {
    const file = path.join(dir, 'bad.yaml');
    writeFileSync(
      file,
      'consumers:\n  - type: polling\n    stream: s\n    startPositon: LATEST\nsinks:\n  lake: { type: s3_parquet, bucket: my-lake, compression: lz5 }\ndlq: { type: s3, bucket: my-lake }\n',
    );
    try {
      loadConfigSource(file, {});
      expect.unreachable();
    } catch (err) {
      expect(err).toBeInstanceOf(ConfigError);
      const problems = (err as ConfigError).problems;
      expect(problems.map((p) => [p.at, p.path])).toEqual([
        [`${file}:4:19`, 'consumers[0]'],
        [`${file}:6:59`, 'sinks.lake.compression'],
      ]);
      expect((err as ConfigError).message).toContain(
        `  - ${file}:4:19 consumers[0]: unknown field "startPositon"`,
      );
    }
  });

  it('a YAML syntax error is one problem at its position', () => {
    const file = path.join(dir, 'indent.yaml');
    writeFileSync(
      file,
      'consumers:\n  - type: polling\n    stream: s\n   sinks:\n  lake: { type: s3_parquet, bucket: b }\n',
    );
    try {
      loadConfigSource(file, {});
      expect.unreachable();
    } catch (err) {
      const problems = (err as ConfigError).problems;
      expect(problems).toHaveLength(1);
      expect(problems[0]!.at).toMatch(new RegExp(`^${file.replace(/[.]/g, '\\.')}:\\d+:\\d+$`));
      expect(problems[0]!.message).toMatch(
        /^YAML syntax error: .*; check the indentation and quoting here and just above/,
      );
    }
  });

  it('ksw validate prints each warning at its position', async () => {
    const file = path.join(dir, 'warn.yaml');
    writeFileSync(
      file,
      'consumers: [{ type: polling, stream: s }]\nprocessors:\n  - type: red_metrics\n    sinks: [lake]\nsinks: { lake: { type: s3_parquet, bucket: my-lake } }\ndlq: { type: s3, bucket: my-lake }\n',
    );
    let err = '';
    vi.spyOn(process.stderr, 'write').mockImplementation((c) => {
      err += String(c);
      return true;
    });
    vi.spyOn(process.stdout, 'write').mockImplementation(() => true);
    expect(await main(['validate', '-c', file])).toBe(0);
    expect(err).toMatch(
      new RegExp(
        `^${file.replace(/[.]/g, '\\.')}:3:5: warning: processors\\.0: red_metrics works on span events`,
      ),
    );
  });
});
