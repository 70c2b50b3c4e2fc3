import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { describe, it } from 'vitest';
import { ConfigError } from '../../src/config/errors.js';
import { validateConfig } from '../../src/config/load.js';
import { Ack } from '../../src/core/ack.js';
import type { Sink } from '../../src/core/component.js';
import type { PipelineEvent, SourceRecord } from '../../src/core/records.js';
import { createRegistry } from '../../src/metrics/registry.js';
import { compileCondition, parseFieldPath } from '../../src/processors/conditions.js';
import { kinesisHashKey, PartitionKeyRouter, routingConfigSchema } from '../../src/processors/router.js';
import { Pipeline } from '../../src/runtime/pipeline.js';
import { origin } from '../helpers/fakes.js';

describe('conditions', () => {
  it('parses dotted and quoted paths', () => {
    assert.deepEqual(parseFieldPath('a.b'), ['a', 'b']);
    assert.deepEqual(parseFieldPath('attributes["http.route"].x'), ['attributes', 'http.route', 'x']);
    assert.throws(() => parseFieldPath('a..b'), /expected a field name/);
    assert.throws(() => parseFieldPath("a['x']"), /use \["key"\]/);
  });

  it('compares numbers, including bigint and numeric strings', () => {
    const c = compileCondition('status >= 500');
    assert.equal(c.test({ status: 500 }), true);
    assert.equal(c.test({ status: 499 }), false);
    assert.equal(c.test({ status: '503' }), true);
    assert.equal(c.test({ status: 600n }), true);
    assert.equal(c.test({ status: 'n/a' }), false);
    assert.equal(c.test({}), false);
    assert.equal(compileCondition('d < 1.5').test({ d: 1.4 }), true);
    assert.equal(compileCondition('d > 1.5').test({ d: 1.5 }), false);
    assert.equal(compileCondition('d <= 1.5').test({ d: 1.5 }), true);
  });

  it('compares strings, booleans and null; exists and missing', () => {
    assert.equal(compileCondition('service == "checkout"').test({ service: 'checkout' }), true);
    assert.equal(compileCondition('service != "checkout"').test({ service: 'cart' }), true);
    assert.equal(
      compileCondition('attributes["http.route"] == "/a=b"').test({ attributes: { 'http.route': '/a=b' } }),
      true,
    );
    assert.equal(compileCondition('ok == true').test({ ok: true }), true);
    assert.equal(compileCondition('ok == true').test({ ok: 'true' }), false);
    assert.equal(compileCondition('x == null').test({}), true);
    assert.equal(compileCondition('error exists').test({ error: false }), true);
    assert.equal(compileCondition('error exists').test({}), false);
    assert.equal(compileCondition('error missing').test({}), true);
  });

  it('rejects unreadable conditions with a hint', () => {
    assert.throws(() => compileCondition('status 500'), /write <field> <op> <value>/);
    assert.throws(() => compileCondition('service == checkout'), /write it as JSON/);
    assert.throws(() => compileCondition('x >= true'), /needs a number or a string/);
    assert.throws(() => compileCondition('x == [1]'), /not an object or array/);
  });
});

function event(partitionKey: string, value: Record<string, unknown>, seq = '1'): PipelineEvent {
  return {
    origin: origin(seq, { partitionKey }),
    index: 0,
    value,
    raw: new Uint8Array(),
    ack: new Ack(() => {}),
  };
}

function router(config: unknown) {
  const metrics = createRegistry(false);
  return { router: new PartitionKeyRouter(routingConfigSchema.parse(config), metrics), metrics };
}

describe('PartitionKeyRouter', () => {
  it('matches exact, prefix, regex and hash range on the partition key', () => {
    const md5 = (k: string) => BigInt(`0x${createHash('md5').update(k).digest('hex')}`);
    assert.equal(kinesisHashKey('abc'), md5('abc'));
    const h = md5('key-7');
    const { router: r } = router({
      routes: [
        { name: 'exact', partitionKey: { exact: ['a', 'b'] }, sinks: ['s1'] },
        { name: 'prefix', partitionKey: { prefix: 'tenant-' }, sinks: ['s2'] },
        { name: 'regex', partitionKey: { regex: '^x\\d+$' }, sinks: ['s3'] },
        {
          name: 'hash',
          partitionKey: { hashRange: { from: (h - 1n).toString(), to: h.toString() } },
          sinks: ['s4'],
        },
      ],
    });
    const events = [
      event('a', {}),
      event('tenant-9', {}),
      event('x12', {}),
      event('x12y', {}),
      event('key-7', {}),
      event('key-8', {}),
    ];
    r.route(events);
    assert.deepEqual(
      events.map((e) => e.sinks),
      [['s1'], ['s2'], ['s3'], [], ['s4'], []],
    );
  });

  it('a hash range follows the explicit hash key when the producer set one (plain or KPL user record)', () => {
    const { router: r } = router({
      routes: [{ name: 'low', partitionKey: { hashRange: { from: '0', to: '1000' } }, sinks: ['s1'] }],
    });
    const withExplicit = {
      ...event('key-7', {}),
      origin: origin('1', { partitionKey: 'key-7', explicitHashKey: '999' }),
    };
    const without = event('key-7', {});
    r.route([withExplicit, without]);
    assert.deepEqual(withExplicit.sinks, ['s1']);
    assert.deepEqual(without.sinks, []);
  });

  it('combines partition-key and field conditions; all_matches unions sinks, first_match stops', () => {
    const routes = [
      { name: 'errors', where: ['status >= 500'], sinks: ['search', 'lake'] },
      {
        name: 'checkout',
        partitionKey: { prefix: 'co-' },
        where: ['service == "checkout"'],
        sinks: ['lake', 'audit'],
      },
    ];
    const all = router({ routes, default: { sinks: ['lake'] } });
    const first = router({ mode: 'first_match', routes, default: { sinks: ['lake'] } });
    const make = () => [
      event('co-1', { status: 503, service: 'checkout' }),
      event('co-1', { status: 200, service: 'checkout' }),
      event('zz', { status: 200, service: 'checkout' }),
      event('zz', { status: 500 }),
    ];
    const a = make();
    all.router.route(a);
    assert.deepEqual(
      a.map((e) => e.sinks),
      [['search', 'lake', 'audit'], ['lake', 'audit'], ['lake'], ['search', 'lake']],
    );
    const f = make();
    first.router.route(f);
    assert.deepEqual(
      f.map((e) => e.sinks),
      [['search', 'lake'], ['lake', 'audit'], ['lake'], ['search', 'lake']],
    );
  });

  it('counts matches per route and default across batches (counters are added up once per batch)', async () => {
    const { router: r, metrics } = router({
      routes: [
        { name: 'errors', where: ['status >= 500'], sinks: ['search'] },
        { name: 'all', sinks: ['lake'] },
      ],
      default: { sinks: ['lake'] },
    });
    const batch = () => [
      event('a', { status: 500 }),
      event('b', { status: 200 }),
      event('c', { status: 503 }),
    ];
    const first = batch();
    r.route(first);
    r.route(batch());
    assert.deepEqual(
      first.map((e) => e.sinks),
      [['search', 'lake'], ['lake'], ['search', 'lake']],
    );
    const text = await metrics.metrics();
    assert.match(text, /ksw_route_events_total\{route="errors"\} 4/);
    assert.match(text, /ksw_route_events_total\{route="all"\} 6/);
    const none = router({
      routes: [{ name: 'x', partitionKey: { exact: 'x' }, sinks: ['s'] }],
      default: { sinks: ['d'] },
    });
    none.router.route([event('y', {}), event('z', {})]);
    assert.match(await none.metrics.metrics(), /ksw_route_events_total\{route="default"\} 2/);
  });

  it('counts unmatched events and leaves events that name their sinks alone', async () => {
    const { router: r, metrics } = router({
      routes: [{ name: 'only', partitionKey: { exact: 'k' }, sinks: ['s'] }],
    });
    const preset = event('zz', {});
    preset.sinks = ['other'];
    const events = [event('nope', {}), preset, event('k', {})];
    r.route(events);
    assert.deepEqual(
      events.map((e) => e.sinks),
      [[], ['other'], ['s']],
    );
    const text = await metrics.metrics();
    assert.match(text, /ksw_route_unmatched_total 1/);
    assert.match(text, /ksw_route_events_total\{route="only"\} 1/);
  });
});

class MemorySink implements Sink {
  readonly written: PipelineEvent[] = [];
  constructor(readonly name: string) {}
  async write(events: PipelineEvent[]): Promise<void> {
    for (const e of events) {
      this.written.push(e);
      e.ack.done();
    }
  }
  async flush(): Promise<void> {}
  async close(): Promise<void> {}
}

describe('Pipeline with routing', () => {
  it('writes every record to exactly the sinks its route names and acks each record once', async () => {
    const sinks = ['lake', 'search', 'audit'].map((n) => new MemorySink(n));
    const { router: r } = router({
      routes: [
        { name: 'errors', where: ['status >= 500'], sinks: ['search', 'lake'] },
        { name: 'audit', partitionKey: { prefix: 'audit-' }, sinks: ['audit'] },
      ],
      default: { sinks: ['lake'] },
    });
    const acked: string[] = [];
    const decoder = {
      decode: (records: readonly SourceRecord[]) =>
        records.map((rec) => ({
          origin: rec.origin,
          index: 0,
          value: JSON.parse(Buffer.from(rec.data).toString()) as Record<string, unknown>,
          raw: rec.data,
          ack: rec.ack,
        })),
    };
    const pipeline = new Pipeline(decoder, [], sinks, r);
    const expected = new Map<string, string[]>();
    const records: SourceRecord[] = [];
    for (let i = 0; i < 300; i++) {
      const status = [200, 404, 500, 503][i % 4]!;
      const key = i % 3 === 0 ? `audit-${i}` : `k-${i}`;
      const seq = String(1000 + i);
      const want = new Set<string>();
      if (status >= 500) {
        want.add('search');
        want.add('lake');
      }
      if (key.startsWith('audit-')) want.add('audit');
      if (want.size === 0) want.add('lake');
      expected.set(seq, [...want].sort());
      records.push({
        origin: origin(seq, { partitionKey: key }),
        data: Buffer.from(JSON.stringify({ status })),
        ack: new Ack(() => acked.push(seq)),
      });
    }
    await pipeline.push(records);
    const actual = new Map<string, string[]>();
    for (const sink of sinks) {
      for (const e of sink.written)
        actual.set(e.origin.sequenceNumber, [...(actual.get(e.origin.sequenceNumber) ?? []), sink.name]);
    }
    for (const [seq, want] of expected) assert.deepEqual(actual.get(seq)?.sort(), want, `record ${seq}`);
    assert.equal(acked.length, 300);
    assert.equal(new Set(acked).size, 300);
  });

  it('acks events routed nowhere at delivery', async () => {
    const sink = new MemorySink('lake');
    const { router: r } = router({ routes: [{ name: 'x', partitionKey: { exact: 'x' }, sinks: ['lake'] }] });
    const acked: string[] = [];
    const decoder = {
      decode: (records: readonly SourceRecord[]) =>
        records.map((rec) => ({ origin: rec.origin, index: 0, value: {}, raw: rec.data, ack: rec.ack })),
    };
    const pipeline = new Pipeline(decoder, [], [sink], r);
    await pipeline.push([
      {
        origin: origin('1', { partitionKey: 'y' }),
        data: new Uint8Array(),
        ack: new Ack(() => acked.push('1')),
      },
      {
        origin: origin('2', { partitionKey: 'x' }),
        data: new Uint8Array(),
        ack: new Ack(() => acked.push('2')),
      },
    ]);
    assert.deepEqual(acked.sort(), ['1', '2']);
    assert.deepEqual(
      sink.written.map((e) => e.origin.sequenceNumber),
      ['2'],
    );
  });
});

describe('routing config validation', () => {
  const base = {
    consumers: [{ type: 'polling', stream: 's' }],
    dlq: { type: 's3', bucket: 'bkt' },
    sinks: { lake: { type: 's3_parquet', bucket: 'bkt', columns: [{ name: 'a', type: 'string' }] } },
  };
  function problems(routing: unknown): string {
    try {
      validateConfig({ ...base, routing });
    } catch (err) {
      assert.ok(err instanceof ConfigError);
      return err.message;
    }
    return '';
  }

  it('accepts a valid routing section', () => {
    assert.equal(
      problems({
        routes: [{ name: 'r', where: ['status >= 500'], sinks: ['lake'] }],
        default: { sinks: [] },
      }),
      '',
    );
  });

  it('names an unknown sink with the configured ones', () => {
    assert.match(
      problems({ routes: [{ name: 'r', sinks: ['search'] }] }),
      /routing\.routes\[0\]\.sinks\[0\].*no sink is named "search"; configured sinks: lake/s,
    );
    assert.match(problems({ routes: [], default: { sinks: ['nope'] } }), /routing\.default\.sinks\[0\]/);
  });

  it('rejects bad conditions, regexes, hash ranges and empty matches at start-up', () => {
    assert.match(
      problems({ routes: [{ name: 'r', where: ['status 500'], sinks: ['lake'] }] }),
      /where\[0\].*<field> <op> <value>/s,
    );
    assert.match(
      problems({ routes: [{ name: 'r', partitionKey: { regex: '(' }, sinks: ['lake'] }] }),
      /regex/,
    );
    assert.match(
      problems({
        routes: [{ name: 'r', partitionKey: { hashRange: { from: '10', to: '1' } }, sinks: ['lake'] }],
      }),
      /from is greater than to/,
    );
    assert.match(
      problems({ routes: [{ name: 'r', partitionKey: {}, sinks: ['lake'] }] }),
      /at least one of exact, prefix, regex, hashRange/,
    );
    assert.match(
      problems({
        routes: [
          {
            name: 'r',
            partitionKey: { hashRange: { from: '0', to: (2n ** 128n).toString() } },
            sinks: ['lake'],
          },
        ],
      }),
      /2\^128-1/,
    );
  });
});
