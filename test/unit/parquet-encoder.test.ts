import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { DuckDBInstance } from '@duckdb/node-api';
import { parse as parseLossless } from 'lossless-json';
import { afterAll, describe, test } from 'vitest';
import { Ack } from '../../src/core/ack.js';
import type { PipelineEvent } from '../../src/core/records.js';
import { parquetSinkConfigSchema } from '../../src/sinks/s3-parquet/config.js';
import {
  type Conversion,
  convertValue,
  lookupPath,
  ParquetEncoder,
  parseIsoMicros,
  RowBuilder,
  scaleDecimal,
  stringifyJson,
} from '../../src/sinks/s3-parquet/encoder.js';
import { resolveSchema } from '../../src/sinks/s3-parquet/schemas.js';
import { formatPosition, objectKey, parseObjectName } from '../../src/sinks/s3-parquet/sink.js';

const INT64_MIN = -9223372036854775808n;
const INT64_MAX = 9223372036854775807n;

function ok(result: Conversion): unknown {
  assert.equal(result.ok, true, result.ok ? '' : result.reason);
  return (result as { value: unknown }).value;
}

function reason(result: Conversion): string {
  assert.equal(result.ok, false, `expected a failure, got ${String((result as { value: unknown }).value)}`);
  return (result as { reason: string }).reason;
}

describe('int64', () => {
  test('extremes as strings and bigints are exact', () => {
    assert.equal(ok(convertValue('int64', '-9223372036854775808')), INT64_MIN);
    assert.equal(ok(convertValue('int64', '9223372036854775807')), INT64_MAX);
    assert.equal(ok(convertValue('int64', INT64_MIN)), INT64_MIN);
    assert.equal(ok(convertValue('int64', INT64_MAX)), INT64_MAX);
    // An OTLP nanosecond timestamp that a double would round.
    assert.equal(ok(convertValue('int64', '1700000000123456789')), 1700000000123456789n);
  });

  test('safe JS numbers are accepted, unsafe ones rejected', () => {
    assert.equal(ok(convertValue('int64', 42)), 42n);
    assert.equal(ok(convertValue('int64', -(2 ** 53 - 1))), -(2n ** 53n - 1n));
    assert.match(reason(convertValue('int64', 2 ** 53)), /lost precision/);
    assert.match(
      reason(convertValue('int64', Number('1700000000123456789'))),
      /^expected int64, got 1700000000123456800 /,
    );
    assert.equal(reason(convertValue('int64', 1.5)), 'expected int64, got 1.5');
  });

  test('out of range and malformed values are rejected', () => {
    assert.match(reason(convertValue('int64', '9223372036854775808')), /out of range/);
    assert.match(reason(convertValue('int64', INT64_MIN - 1n)), /out of range/);
    assert.equal(reason(convertValue('int64', 'abc')), 'expected int64, got "abc"');
    assert.match(reason(convertValue('int64', '1e3')), /expected int64/);
    assert.match(reason(convertValue('int64', '12.0')), /expected int64/);
    assert.match(reason(convertValue('int64', '')), /expected int64/);
    assert.match(reason(convertValue('int64', true)), /expected int64, got true/);
    assert.match(reason(convertValue('int64', { a: 1 })), /expected int64, got a object/);
  });

  test('lossless-json numbers keep every digit', () => {
    const parsed = parseLossless('{"n": 9223372036854775807, "small": -5}') as Record<string, unknown>;
    assert.equal(ok(convertValue('int64', parsed.n)), INT64_MAX);
    assert.equal(ok(convertValue('int64', parsed.small)), -5n);
  });
});

describe('int32', () => {
  test('range is checked for every input form', () => {
    assert.equal(ok(convertValue('int32', 2147483647)), 2147483647);
    assert.equal(ok(convertValue('int32', '-2147483648')), -2147483648);
    assert.equal(ok(convertValue('int32', 7n)), 7);
    assert.match(reason(convertValue('int32', 2147483648)), /out of range/);
    assert.match(reason(convertValue('int32', '-2147483649')), /out of range/);
    assert.match(reason(convertValue('int32', 2n ** 40n)), /out of range/);
    assert.match(reason(convertValue('int32', 0.5)), /expected int32/);
  });
});

describe('double, boolean, string', () => {
  test('double', () => {
    assert.equal(ok(convertValue('double', 1.25)), 1.25);
    assert.equal(ok(convertValue('double', '-2.5e3')), -2500);
    assert.equal(ok(convertValue('double', 3n)), 3);
    assert.ok(Number.isNaN(ok(convertValue('double', 'NaN')) as number));
    assert.equal(ok(convertValue('double', '-Infinity')), Number.NEGATIVE_INFINITY);
    assert.match(reason(convertValue('double', 'abc')), /expected double/);
    assert.match(reason(convertValue('double', '')), /expected double/);
    assert.match(reason(convertValue('double', false)), /expected double/);
  });

  test('boolean', () => {
    assert.equal(ok(convertValue('boolean', true)), true);
    assert.equal(ok(convertValue('boolean', 'false')), false);
    assert.match(reason(convertValue('boolean', 1)), /expected boolean, got 1/);
    assert.match(reason(convertValue('boolean', 'yes')), /expected boolean/);
  });

  test('string', () => {
    assert.equal(ok(convertValue('string', 'ünïcødé 日本 🚀')), 'ünïcødé 日本 🚀');
    assert.equal(ok(convertValue('string', 42)), '42');
    assert.equal(ok(convertValue('string', 12345678901234567890n)), '12345678901234567890');
    assert.equal(ok(convertValue('string', false)), 'false');
    assert.match(reason(convertValue('string', { a: 1 })), /expected string, got a object/);
    assert.match(reason(convertValue('string', [1])), /expected string, got an array/);
  });

  test('long rejected strings are truncated in the reason', () => {
    const r = reason(convertValue('int64', 'x'.repeat(500)));
    assert.ok(r.length < 80, r);
  });
});

describe('null and undefined', () => {
  for (const type of [
    'string',
    'int32',
    'int64',
    'double',
    'boolean',
    'timestamp_ms',
    'timestamp_us',
    'json',
  ] as const) {
    test(`${type}: null and undefined become NULL`, () => {
      assert.equal(ok(convertValue(type, null)), null);
      assert.equal(ok(convertValue(type, undefined)), null);
    });
  }
});

describe('timestamps', () => {
  const iso = '2023-11-14T22:13:20.123456Z';
  test('numbers and decimal strings in each unit', () => {
    assert.equal(ok(convertValue('timestamp_ms', 1700000000123, 'ms')), 1700000000123n);
    assert.equal(ok(convertValue('timestamp_us', 1700000000123, 'ms')), 1700000000123000n);
    assert.equal(ok(convertValue('timestamp_ms', 1700000000.123, 's')), 1700000000123n);
    assert.equal(ok(convertValue('timestamp_us', 1700000000.123456, 's')), 1700000000123456n);
    assert.equal(ok(convertValue('timestamp_ms', '1700000000123456789', 'ns')), 1700000000123n);
    assert.equal(ok(convertValue('timestamp_us', '1700000000123456789', 'ns')), 1700000000123456n);
    assert.equal(ok(convertValue('timestamp_us', 1700000000123456789n, 'ns')), 1700000000123456n);
    assert.equal(ok(convertValue('timestamp_us', 1700000000123456, 'us')), 1700000000123456n);
    // Before the epoch, sub-unit parts round down (towards the past), not towards zero.
    assert.equal(ok(convertValue('timestamp_ms', '-1', 'ns')), -1n);
  });

  test('ISO strings, with offsets and fractions', () => {
    assert.equal(ok(convertValue('timestamp_us', iso)), 1700000000123456n);
    assert.equal(ok(convertValue('timestamp_ms', iso)), 1700000000123n);
    assert.equal(ok(convertValue('timestamp_us', '2023-11-14T23:43:20.123456+01:30')), 1700000000123456n);
    assert.equal(ok(convertValue('timestamp_ms', '2023-11-14 22:13:20')), 1700000000000n);
    assert.equal(ok(convertValue('timestamp_ms', '1970-01-01')), 0n);
    assert.equal(ok(convertValue('timestamp_ms', '0001-01-01T00:00:00Z')), -62135596800000n);
    assert.equal(ok(convertValue('timestamp_ms', new Date(1700000000123))), 1700000000123n);
    assert.equal(parseIsoMicros('2023-11-14T22:13:20.123456789Z'), 1700000000123456n);
  });

  test('invalid and out-of-range values are rejected', () => {
    assert.match(reason(convertValue('timestamp_ms', '2023-02-30T00:00:00Z')), /expected timestamp_ms/);
    assert.match(reason(convertValue('timestamp_ms', '2023-11-14T25:00:00Z')), /expected timestamp_ms/);
    assert.match(reason(convertValue('timestamp_ms', 'yesterday')), /expected timestamp_ms, got "yesterday"/);
    assert.match(reason(convertValue('timestamp_us', true)), /expected timestamp_us/);
    assert.match(reason(convertValue('timestamp_ms', 253402300800000, 'ms')), /outside years/);
    assert.match(reason(convertValue('timestamp_us', Number.NaN)), /expected timestamp_us/);
    assert.match(reason(convertValue('timestamp_ms', new Date(Number.NaN))), /expected timestamp_ms/);
  });

  test('scaleDecimal is exact', () => {
    assert.equal(scaleDecimal('1.5e-3', 6), 1500n);
    assert.equal(scaleDecimal('-1.0001', 3), -1001n);
    assert.equal(scaleDecimal('12', -1), 1n);
    assert.equal(scaleDecimal('1e999', 0), undefined);
  });
});

describe('json', () => {
  test('serializes nested values with bigints as digits', () => {
    const value = {
      a: [1, 'x', null, undefined],
      big: 9223372036854775807n,
      nested: { ok: true, skip: undefined },
    };
    const text = ok(convertValue('json', value)) as string;
    assert.equal(text, '{"a":[1,"x",null,null],"big":9223372036854775807,"nested":{"ok":true}}');
    // As the decoder parses big literals: bigint, everything else as number.
    const text2 = '{"n":12345678901234567890123,"m":-1,"d":{"at":"x","when":[0.5]}}';
    const parsed = parseLossless(text2, null, (t) => (/^-?\d{16,}$/.test(t) ? BigInt(t) : Number(t)));
    assert.equal(stringifyJson(parsed), text2);
    // The exact path (taken because of the bigint) treats Dates and strings as JSON.stringify does.
    const mixed = { b: 1n, at: new Date(0), s: 'ünï "q"\u2028', skip: () => 1 };
    assert.equal(stringifyJson(mixed), '{"b":1,"at":"1970-01-01T00:00:00.000Z","s":"ünï \\"q\\"\u2028"}');
  });

  test('matches JSON.stringify where that works', () => {
    const value = { s: 'a\nb\u2028', n: -0.5, arr: [[], {}], t: false, inf: Number.POSITIVE_INFINITY };
    // The bigint sends it down the exact path, which must agree with JSON.stringify on everything else.
    assert.equal(stringifyJson({ ...value, big: 1n }), JSON.stringify({ ...value, big: 1 }));
  });

  test('a circular value is rejected', () => {
    const value: Record<string, unknown> = {};
    value.self = value;
    assert.match(reason(convertValue('json', value)), /circular/);
  });
});

test('lookupPath follows own properties and array indexes only', () => {
  const value = { a: { b: [{ c: 1 }, { c: 2 }] }, 'x.y': 3 };
  assert.equal(lookupPath(value, ['a', 'b', '1', 'c']), 2);
  assert.equal(lookupPath(value, ['a', 'b', 'length']), undefined);
  assert.equal(lookupPath(value, ['constructor']), undefined);
  assert.equal(lookupPath(value, ['a', 'missing', 'c']), undefined);
});

test('object names round-trip positions', () => {
  assert.equal(formatPosition({ sequenceNumber: '49590', subSequenceNumber: 0 }), '49590');
  assert.equal(formatPosition({ sequenceNumber: '49590', subSequenceNumber: 3 }), '49590.3');
  const first = { sequenceNumber: '100', subSequenceNumber: 2, index: 0 };
  const last = { sequenceNumber: '205', subSequenceNumber: 0, index: 7 };
  const key = objectKey('lake/dt=2024-01-01/', 'my_stream.v2', 'shardId-000000000001', first, last);
  assert.equal(key, 'lake/dt=2024-01-01/my_stream.v2_shardId-000000000001_100.2_205-7.parquet');
  assert.deepEqual(parseObjectName(key.slice('lake/dt=2024-01-01/'.length)), {
    stream: 'my_stream.v2',
    shardId: 'shardId-000000000001',
    first,
    last,
  });
  assert.equal(
    parseObjectName('s_shardId-000000000001_100_205_d0123abcd.parquet')?.last.sequenceNumber,
    '205',
    'derived files carry a content hash',
  );
  assert.equal(parseObjectName('s_shardId-000000000001_100_205.jsonl'), undefined);
  assert.equal(parseObjectName('100_205.parquet'), undefined);
});

test('config rejects duplicate and reserved column names', () => {
  const base = { type: 's3_parquet', bucket: 'lake' } as const;
  assert.equal(
    parquetSinkConfigSchema.safeParse({ ...base, columns: [{ name: '_stream', type: 'string' }] }).success,
    false,
  );
  assert.equal(
    parquetSinkConfigSchema.safeParse({
      ...base,
      columns: [
        { name: 'a', type: 'string' },
        { name: 'A', type: 'int64' },
      ],
    }).success,
    false,
  );
  const parsed = parquetSinkConfigSchema.parse(base);
  assert.equal(parsed.roll.maxFileRows, 1_000_000);
  assert.equal(resolveSchema(parsed).recordColumn, '_record');
  assert.equal(
    resolveSchema(parquetSinkConfigSchema.parse({ ...base, schema: 'spans' })).recordColumn,
    false,
  );
});

function event(value: Record<string, unknown>, sequenceNumber = '100', index = 0): PipelineEvent {
  return {
    origin: {
      stream: 's',
      shardId: 'shardId-000000000000',
      sequenceNumber,
      subSequenceNumber: 0,
      partitionKey: 'pk',
      arrivalTime: new Date(1700000000123),
    },
    index,
    value,
    raw: Buffer.from(stringifyJson(value)),
    ack: new Ack(() => {}),
  };
}

describe('RowBuilder and ParquetEncoder', () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'parquet-encoder-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const columns = parquetSinkConfigSchema.parse({
    type: 's3_parquet',
    bucket: 'lake',
    columns: [
      { name: 'startTimeUnixNano', type: 'int64' },
      { name: 'service', type: 'string', path: 'resource.service' },
      { name: 'start', type: 'timestamp_us', path: 'startTimeUnixNano', timeUnit: 'ns' },
    ],
  }).columns;

  test('a bad value names the column and the value', () => {
    const rows = new RowBuilder(columns, '_record');
    const built = rows.build(event({ startTimeUnixNano: 'abc' }));
    assert.equal(built.ok, false);
    assert.equal((built as { reason: string }).reason, 'column startTimeUnixNano: expected int64, got "abc"');
  });

  test('rows written and read back by DuckDB hold the exact values', async () => {
    const rows = new RowBuilder(columns, '_record');
    const values = [
      { startTimeUnixNano: '1700000000123456789', resource: { service: 'ünïcødé 日本 🚀' } },
      { startTimeUnixNano: 1700000000123456789n },
      { resource: { service: null } },
    ];
    const built = values.map((v, i) => rows.build(event(v, String(100 + i), i)));
    const encoder = new ParquetEncoder({ compression: 'snappy', rowGroupRows: 2 });
    const file = path.join(dir, "it's.parquet");
    try {
      const bytes = await encoder.encode(
        rows.columns,
        built.map((b) => {
          assert.ok(b.ok);
          return b.row;
        }),
        file,
        { stream: 's', shardId: "shard'q" },
      );
      assert.ok(bytes > 0);
    } finally {
      await encoder.close();
    }
    const db = await DuckDBInstance.create(':memory:');
    const conn = await db.connect();
    const reader = await conn.runAndReadAll(
      'SELECT _stream, _shard_id, _sequence_number, _event_index, startTimeUnixNano, epoch_us(start) AS start_us, service, _record, ' +
        `epoch_ms(_arrival_time) AS arrival FROM read_parquet('${file.replaceAll("'", "''")}') ORDER BY _sequence_number`,
    );
    assert.deepEqual(reader.getRowObjectsJS(), [
      {
        _stream: 's',
        _shard_id: "shard'q",
        _sequence_number: '100',
        _event_index: 0,
        startTimeUnixNano: 1700000000123456789n,
        start_us: 1700000000123456n,
        service: 'ünïcødé 日本 🚀',
        _record: '{"startTimeUnixNano":"1700000000123456789","resource":{"service":"ünïcødé 日本 🚀"}}',
        arrival: 1700000000123n,
      },
      {
        _stream: 's',
        _shard_id: "shard'q",
        _sequence_number: '101',
        _event_index: 1,
        startTimeUnixNano: 1700000000123456789n,
        start_us: 1700000000123456n,
        service: null,
        _record: '{"startTimeUnixNano":1700000000123456789}',
        arrival: 1700000000123n,
      },
      {
        _stream: 's',
        _shard_id: "shard'q",
        _sequence_number: '102',
        _event_index: 2,
        startTimeUnixNano: null,
        start_us: null,
        service: null,
        _record: '{"resource":{"service":null}}',
        arrival: 1700000000123n,
      },
    ]);
    const schema = await conn.runAndReadAll(
      `SELECT name, type, converted_type FROM parquet_schema('${file.replaceAll("'", "''")}') WHERE name IN ('_arrival_time', 'start', '_stream') ORDER BY name`,
    );
    assert.deepEqual(schema.getRowObjectsJS(), [
      { name: '_arrival_time', type: 'INT64', converted_type: 'TIMESTAMP_MILLIS' },
      { name: '_stream', type: 'BYTE_ARRAY', converted_type: 'UTF8' },
      { name: 'start', type: 'INT64', converted_type: 'TIMESTAMP_MICROS' },
    ]);
    const codecs = await conn.runAndReadAll(
      `SELECT DISTINCT compression FROM parquet_metadata('${file.replaceAll("'", "''")}')`,
    );
    assert.deepEqual(codecs.getRowObjectsJS(), [{ compression: 'SNAPPY' }]);
    conn.closeSync();
    db.closeSync();
  });
});

/**
 * The rows are staged as NDJSON for DuckDB's read_json, with fast paths for the usual shapes of each type
 * (columns.ts). Every staged value must read back as exactly the cell `convertValue` defines, whichever path
 * it took: checked on edge cases and on seeded random values of every shape, through a real Parquet file.
 */
/** A string with each lone surrogate replaced by U+FFFD (String.prototype.toWellFormed, missing from the TS lib). */
const wellFormed = (s: string) =>
  s.replace(/[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g, '\ufffd');

describe('staged rows read back exactly (NDJSON staging, fast and general paths)', () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'parquet-staging-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  const COLUMNS = [
    { name: 's', type: 'string' },
    { name: 't', type: 'text' },
    { name: 'i64', type: 'int64' },
    { name: 'i32', type: 'int32' },
    { name: 'd', type: 'double' },
    { name: 'b', type: 'boolean' },
    { name: 'ms', type: 'timestamp_ms' },
    { name: 'us_ns', type: 'timestamp_us', timeUnit: 'ns' },
    { name: 'ms_s', type: 'timestamp_ms', timeUnit: 's' },
    { name: 'us_us', type: 'timestamp_us', timeUnit: 'us' },
    { name: 'ms_ns', type: 'timestamp_ms', timeUnit: 'ns' },
    { name: 'j', type: 'json' },
  ] as const;
  // How each column is read back: timestamps as integers in their unit.
  const READ = COLUMNS.map((c) =>
    c.type === 'timestamp_ms'
      ? `epoch_ms("${c.name}") AS "${c.name}"`
      : c.type === 'timestamp_us'
        ? `epoch_us("${c.name}") AS "${c.name}"`
        : `"${c.name}"`,
  ).join(', ');

  /** Inputs of every shape each column accepts (and some it refuses: those rows must be rejected). */
  function inputs(random: () => number): Record<string, unknown> {
    const int = (digits: number) => {
      let s = String(1 + Math.floor(random() * 9));
      for (let i = 1; i < digits; i++) s += String(Math.floor(random() * 10));
      return s;
    };
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(random() * xs.length)]!;
    const sign = () => (random() < 0.2 ? '-' : '');
    const digits = 1 + Math.floor(random() * 19);
    return {
      s: pick([
        'plain',
        'ünï 日本 🚀',
        'quote " back \\ nl \n tab \t nul \u0000',
        'lone \ud800 high',
        '\udc00 low',
        'esc \\ud800 text',
        42,
        -0,
        12345678901234567890n,
        true,
        1.5e300,
      ]),
      t: pick(['x', { a: [1, 2n], b: 'c' }, [1, 'two'], 7, false, 9007199254740993n, 'ok\u2028']),
      i64: pick([
        int(digits),
        sign() + int(digits),
        `00${int(3)}`,
        '9223372036854775807',
        '-9223372036854775808',
        '9223372036854775808',
        '1e3',
        '0',
        '-0',
        Number(sign() + int(Math.min(digits, 15))),
        BigInt(sign() + int(digits)),
        9223372036854775807n,
      ]),
      i32: pick([
        Number(sign() + int(1 + Math.floor(random() * 9))),
        `${sign()}${int(5)}`,
        2147483647,
        -2147483648,
        2147483648,
        7n,
        -0,
      ]),
      d: pick([
        random() * 10 ** Math.floor(random() * 40 - 20),
        -random(),
        Number.MAX_VALUE,
        Number.MIN_VALUE,
        -0,
        0,
        Number.NaN,
        Number.POSITIVE_INFINITY,
        Number.NEGATIVE_INFINITY,
        '-2.5e3',
        'NaN',
        3n,
        0.1 + 0.2,
      ]),
      b: pick([true, false, 'true', 'false']),
      ms: pick([
        Number(int(13)),
        int(13),
        '0',
        0,
        253402300799999,
        '-1',
        -62135596800000,
        '2023-11-14T22:13:20.123Z',
        1700000000123.7,
        'yesterday',
      ]),
      us_ns: pick([
        int(19),
        `${int(16)}`,
        '999',
        '0',
        '-1',
        '1700000000123456789',
        1700000000123456789n,
        '253402300799999999999',
        `${int(19)}.5`,
      ]),
      ms_s: pick([Number(int(10)), int(10), 1700000000.123, '1700000000.5', '0', 253402300799]),
      us_us: pick([
        int(16),
        Number(int(15)),
        '253402300799999999',
        '-62135596800000000',
        '2023-11-14 22:13:20.123456',
      ]),
      ms_ns: pick([int(19), '1', '0', '1700000000123999999']),
      j: pick([{ a: 1 }, [1, 2n], 'text', 5, null, { nested: { deep: ['x', 12345678901234567890n] } }]),
    };
  }

  test('every scalar type, edge cases and 2,000 random rows', async () => {
    const random = (() => {
      let a = 12345;
      return () => {
        a = (a + 0x6d2b79f5) >>> 0;
        let t = Math.imul(a ^ (a >>> 15), a | 1);
        t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
        return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
      };
    })();
    const columns = parquetSinkConfigSchema.parse({
      type: 's3_parquet',
      bucket: 'lake',
      columns: COLUMNS,
    }).columns;
    const builder = new RowBuilder(columns, false);
    const values: Array<Record<string, unknown>> = [];
    const rows = [];
    let rejected = 0;
    for (let i = 0; values.length < 2000; i++) {
      const value = inputs(random);
      const built = builder.build(event(value, String(1000 + i), values.length));
      // A row is rejected exactly when some value does not convert.
      const failing = COLUMNS.find(
        (c) => !convertValue(c.type, value[c.name], 'timeUnit' in c ? c.timeUnit : 'ms').ok,
      );
      assert.equal(built.ok, failing === undefined, `row ${i}: ${JSON.stringify(stringifyJson(value))}`);
      if (!built.ok) {
        assert.match(built.reason, new RegExp(`^column ${failing!.name}: `));
        rejected += 1;
        continue;
      }
      values.push(value);
      rows.push(built.row);
    }
    assert.ok(rejected > 50, 'the random inputs include values that must be rejected');
    const file = path.join(dir, 'scalars.parquet');
    const encoder = new ParquetEncoder({ compression: 'zstd', rowGroupRows: 512 });
    try {
      await encoder.encode(builder.columns, rows, file, { stream: 's', shardId: 'shard' });
    } finally {
      await encoder.close();
    }
    const db = await DuckDBInstance.create(':memory:');
    const conn = await db.connect();
    const read = (
      await conn.runAndReadAll(
        `SELECT _event_index, ${READ} FROM read_parquet('${file}') ORDER BY _event_index`,
      )
    ).getRowObjectsJS();
    conn.closeSync();
    db.closeSync();
    assert.equal(read.length, values.length);
    for (let i = 0; i < values.length; i++) {
      assert.equal(read[i]!._event_index, i);
      for (const c of COLUMNS) {
        const cell = ok(convertValue(c.type, values[i]![c.name], 'timeUnit' in c ? c.timeUnit : 'ms'));
        const expected = typeof cell === 'string' ? wellFormed(cell) : cell;
        const actual = read[i]![c.name];
        const where = `row ${i}, column ${c.name}, input ${stringifyJson(values[i]![c.name])}`;
        if (c.type === 'double') {
          // NaN equals NaN here. 0 and -0 are not told apart: DuckDB's Parquet writer keeps one of them per
          // column chunk (its dictionary treats them as equal), whatever the staging.
          const same = Object.is(actual, expected) || (actual === 0 && expected === 0);
          assert.ok(same, `${where}: ${actual} != ${expected}`);
        } else assert.equal(actual, expected, where);
      }
    }
  });

  test('nested values: exact int64s and timestamps, text maps of any value, struct fields, lone surrogates', async () => {
    const columns = parquetSinkConfigSchema.parse({
      type: 's3_parquet',
      bucket: 'lake',
      columns: [
        { name: 'attrs', type: 'map', values: 'text' },
        { name: 'counts', type: 'map', values: 'int64' },
        {
          name: 'ev',
          type: 'list',
          items: {
            type: 'struct',
            fields: [
              { name: 'n', type: 'int64' },
              { name: 'at', type: 'timestamp_us', timeUnit: 'ns', path: 'n' },
              { name: 'x', type: 'double' },
              { name: 'on', type: 'boolean' },
            ],
          },
        },
      ],
    }).columns;
    const builder = new RowBuilder(columns, false);
    const value = {
      attrs: {
        s: 'v\ud800',
        n: 200,
        big: 9223372036854775807n,
        o: { k: [1, 'x'] },
        nul: null,
        b: true,
        'k\u0000': 'nul key',
      },
      counts: { a: '9223372036854775807', b: -5, c: 12345678901234567n },
      ev: [{ n: '1700000000123456789', x: -0.5, on: 'true', extra: 'ignored' }, null, { n: 1, x: 1e300 }],
    };
    const built = builder.build(event(value, '5', 0));
    assert.ok(built.ok);
    const bad = builder.build(event({ ev: [{ x: Number.NaN }] }, '6', 0));
    assert.deepEqual(bad, {
      ok: false,
      reason: 'column ev: at [].x: NaN cannot be stored inside a nested column',
    });
    const file = path.join(dir, 'nested.parquet');
    const encoder = new ParquetEncoder({ compression: 'snappy', rowGroupRows: 512 });
    try {
      await encoder.encode(builder.columns, [built.row], file, { stream: 's', shardId: 'shard' });
    } finally {
      await encoder.close();
    }
    const db = await DuckDBInstance.create(':memory:');
    const conn = await db.connect();
    const [row] = (
      await conn.runAndReadAll(
        `SELECT map_entries(attrs) AS attrs, map_entries(counts) AS counts, [CASE WHEN e IS NULL THEN NULL ELSE {'n': e.n, 'at': epoch_us(e.at), 'x': e.x, 'on': e."on"} END for e in ev] AS ev FROM read_parquet('${file}')`,
      )
    ).getRowObjectsJS();
    conn.closeSync();
    db.closeSync();
    assert.deepEqual(row!.attrs, [
      { key: 's', value: 'v\ufffd' },
      { key: 'n', value: '200' },
      { key: 'big', value: '9223372036854775807' },
      { key: 'o', value: '{"k":[1,"x"]}' },
      { key: 'nul', value: null },
      { key: 'b', value: 'true' },
      { key: 'k\u0000', value: 'nul key' },
    ]);
    assert.deepEqual(row!.counts, [
      { key: 'a', value: 9223372036854775807n },
      { key: 'b', value: -5n },
      { key: 'c', value: 12345678901234567n },
    ]);
    assert.deepEqual(row!.ev, [
      { n: 1700000000123456789n, at: 1700000000123456n, x: -0.5, on: true },
      null,
      { n: 1n, at: 0n, x: 1e300, on: null },
    ]);
  });
});
