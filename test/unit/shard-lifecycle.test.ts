/**
 * Lease tenures through the chain: what a tenure is (deadline, end, failure), acks and watermarks that
 * carry it, and the shard lifecycle hooks of the decoder (chunks), processors (tail sampling, RED) and
 * the pipeline. Several tests reproduce findings of issue 15 and fail on the code before tenures.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'vitest';
import { Ack } from '../../src/core/ack.js';
import type { Processor, Sink, Tenure } from '../../src/core/component.js';
import type { RedWindowDocument } from '../../src/core/documents.js';
import type { PipelineEvent, SourceRecord } from '../../src/core/records.js';
import {
  DETACHED_TENURE,
  ShardTenure,
  TenureTokens,
  tenureKey,
  tokenInstance,
} from '../../src/core/tenure.js';
import { ShardWatermark } from '../../src/core/watermark.js';
import { createRegistry } from '../../src/metrics/registry.js';
import { encodeChunks } from '../../src/processors/chunks.js';
import { decodeConfigSchema, RecordDecoder } from '../../src/processors/decode.js';
import { RedMetricsProcessor, redMetricsConfigSchema } from '../../src/processors/red-metrics.js';
import { TailSampler, tailSamplingConfigSchema } from '../../src/processors/tail-sampling.js';
import { Pipeline } from '../../src/runtime/pipeline.js';
import { MemoryDeadLetterQueue, origin } from '../helpers/fakes.js';
import { ManualClock } from '../helpers/manual-clock.js';
import { spanEvent } from '../helpers/traces.js';

const SHARD = 'shardId-000000000000';

function tenure(token = 'p1.1', clock = new ManualClock()) {
  return new ShardTenure('s', SHARD, token, clock);
}

describe('ShardTenure', () => {
  it('is active until its fencing deadline passes, even before the fence timer runs (a paused process)', async () => {
    const clock = new ManualClock();
    const t = tenure('p1.1', clock);
    let fenced = 0;
    t.whenFenced(() => fenced++);
    t.setDeadline(clock.now() + 1_000);
    assert.equal(t.active, true);
    // The clock passes the deadline but no timer has run yet: the tenure is already inactive.
    (clock as unknown as { t: number }).t += 1_001;
    assert.equal(t.active, false);
    assert.equal(fenced, 0);
    await clock.advance(0);
    assert.equal(fenced, 1, 'the fence timer fires');
    assert.equal(t.ended, undefined, 'the coordinator ends it (as fenced)');
    t.end('fenced');
    assert.equal(t.ended, 'fenced');
    assert.ok(t.signal.aborted);
    assert.match(String((t.signal.reason as Error).message), /ended \(fenced\)/);
  });

  it('writes stop a write lead before the deadline; reading goes on until the deadline', () => {
    const clock = new ManualClock();
    const t = new ShardTenure('s', SHARD, 'p1.1', clock, 300);
    t.setDeadline(clock.now() + 1_000);
    (clock as unknown as { t: number }).t += 750;
    assert.equal(t.active, true);
    assert.equal(t.writable, false, 'within 300 ms of the deadline no write is started');
    assert.equal(DETACHED_TENURE.writable, true);
  });

  it('a successful lease write moves the deadline; the first end wins; fail() reports only while active', () => {
    const clock = new ManualClock();
    const t = tenure('p1.1', clock);
    const failures: string[] = [];
    t.whenFailed((stage) => failures.push(stage));
    t.setDeadline(clock.now() + 1_000);
    t.setDeadline(clock.now() + 5_000);
    assert.equal(t.deadline, clock.now() + 5_000);
    t.fail('deliver', new Error('x'));
    assert.equal(t.end('lost'), true);
    assert.equal(t.end('released'), false);
    assert.equal(t.ended, 'lost');
    t.fail('deliver', new Error('late'));
    assert.deepEqual(failures, ['deliver']);
  });

  it('tokens are unique per process instance and take; the instance is recoverable', () => {
    const a = new TenureTokens('aaaa');
    const b = new TenureTokens();
    const tokens = [a.next(), a.next(), b.next()];
    assert.equal(new Set(tokens).size, 3);
    assert.equal(tokenInstance(tokens[0]), 'aaaa');
    assert.equal(tokenInstance(tokens[1]), 'aaaa');
    assert.notEqual(tokenInstance(tokens[2]), 'aaaa');
    assert.equal(tokenInstance(undefined), undefined);
    assert.equal(tokenInstance('no-dot'), undefined);
  });
});

describe('acks and watermarks carry their tenure', () => {
  it('parts inherit the tenure; a detached ack has the detached tenure', () => {
    const t = tenure();
    const root = new Ack(() => undefined, t);
    const parts = root.split(3);
    assert.ok(parts.every((p) => p.tenure === t));
    assert.equal(new Ack(() => undefined).tenure, DETACHED_TENURE);
    assert.equal(DETACHED_TENURE.active, true);
  });

  it('a closed watermark no longer moves: a late ack of an ended tenure cannot move a checkpoint', () => {
    const t = tenure();
    const wm = new ShardWatermark(1_000, undefined, Date.now, t);
    const a = wm.register({ sequenceNumber: '1', subSequenceNumber: 0 }, 1);
    const b = wm.register({ sequenceNumber: '2', subSequenceNumber: 0 }, 1);
    assert.equal(a.tenure, t);
    a.done();
    assert.equal(wm.watermark?.sequenceNumber, '1');
    wm.close();
    b.done();
    assert.equal(wm.watermark?.sequenceNumber, '1');
  });

  it('close() releases whoever waits for capacity or for the drain', async () => {
    const wm = new ShardWatermark(1, undefined, Date.now, tenure());
    wm.register({ sequenceNumber: '1', subSequenceNumber: 0 }, 5);
    const waits = [wm.waitForCapacity(), wm.drained()];
    wm.close();
    await Promise.all(waits);
  });
});

describe('chunked messages across tenures', () => {
  function chunkRecords(t: ShardTenure, chunks: Buffer[], from: number, acked: string[]): SourceRecord[] {
    const wm = new ShardWatermark(1 << 30, undefined, Date.now, t);
    return chunks.map((c, i) => {
      const seq = String(from + i);
      const ack = wm.register({ sequenceNumber: seq, subSequenceNumber: 0 }, c.byteLength);
      return {
        origin: origin(seq),
        data: c,
        ack: new Ack(() => {
          acked.push(seq);
          ack.done();
        }, t),
      };
    });
  }

  it('a shard read again by a later tenure reassembles a message that the previous tenure held partly (not dead-lettered)', async () => {
    const dlq = new MemoryDeadLetterQueue();
    const d = new RecordDecoder(decodeConfigSchema.parse({}), dlq, createRegistry(false));
    const chunks = encodeChunks(Buffer.from(JSON.stringify({ big: 'x'.repeat(3000) })), 1000, 'm1');
    assert.equal(chunks.length, 4);
    const acked: string[] = [];
    const first = tenure('p1.1');
    // The first tenure reads chunks 0 and 1, then loses the lease (no closeShard yet: even then the
    // next tenure must not be confused by the old partial message).
    assert.deepEqual(await d.decode(chunkRecords(first, chunks.slice(0, 2), 10, acked)), []);
    first.end('lost');
    const second = tenure('p1.2');
    const events = await d.decode(chunkRecords(second, chunks, 10, acked));
    assert.equal(dlq.letters.length, 0, 'before tenures: "chunk 0 arrived after chunk 1", all to the DLQ');
    assert.equal(events.length, 1);
    assert.equal(events[0]!.ack.tenure, second, 'the reassembled record carries its tenure');
    d.closeShard(first);
    events[0]!.ack.done();
    assert.deepEqual(acked, ['10', '11', '12', '13']);
    d.close();
  });

  it("closeShard drops the tenure's partial messages without dead-lettering them", async () => {
    const dlq = new MemoryDeadLetterQueue();
    const metrics = createRegistry(false);
    const d = new RecordDecoder(decodeConfigSchema.parse({}), dlq, metrics);
    const t = tenure('p1.1');
    const chunks = encodeChunks(Buffer.from('{"a":1}'.padEnd(2500, ' ')), 1000, 'm2');
    await d.decode(chunkRecords(t, chunks.slice(0, 2), 1, []));
    const pending = async () =>
      (await metrics.getSingleMetric('ksw_chunk_pending_messages')!.get()).values[0]!.value;
    assert.equal(await pending(), 1);
    t.end('lost');
    d.closeShard(t);
    assert.equal(await pending(), 0);
    assert.equal(dlq.letters.length, 0);
    d.close();
  });
});

function span(traceId: string, spanId: string, parentSpanId = '', extra: Record<string, unknown> = {}) {
  return {
    traceId,
    spanId,
    parentSpanId,
    serviceName: 'svc',
    name: 'op',
    kind: 'SERVER',
    status: { code: 0 },
    startTimeUnixNano: '1000000000',
    durationNano: '1000000',
    ...extra,
  };
}

function counted(t: ShardTenure | typeof DETACHED_TENURE, log: string[], id: string): Ack {
  return new Ack(() => log.push(id), t);
}

describe('tail sampling and the shard lifecycle', () => {
  function sampler(clock: { now: number }) {
    const config = tailSamplingConfigSchema.parse({
      type: 'tail_sampling',
      decisionWaitMs: 30_000,
      quietPeriodMs: 5_000,
      // The first policy never matches these spans, so nothing is decided early; the second keeps all.
      policies: [
        { name: 'slow', type: 'latency', thresholdMs: 100_000 },
        { name: 'all', type: 'probabilistic', probability: 1 },
      ],
    });
    return new TailSampler('tail', config, createRegistry(false), () => clock.now);
  }

  it('flushShard decides the pending traces of the tenure now (trigger handoff), and only those', async () => {
    const clock = { now: 0 };
    const s = sampler(clock);
    const a = tenure('p1.1');
    const b = new ShardTenure('s', 'shardId-000000000001', 'p1.2', new ManualClock());
    const acked: string[] = [];
    assert.deepEqual(
      s.process([
        spanEvent(span('t1', 'a1'), counted(a, acked, 'a1')),
        spanEvent(span('t2', 'b1'), counted(b, acked, 'b1'), 'shardId-000000000001'),
      ]),
      [],
    );
    const released = s.flushShard(a);
    assert.deepEqual(
      released.map((e) => e.value.spanId),
      ['a1'],
    );
    assert.equal(s.memory.traces, 1, "the other shard's trace still waits");
    const metrics = (
      s as unknown as {
        m: {
          triggers: { get(): Promise<{ values: Array<{ labels: Record<string, string>; value: number }> }> };
        };
      }
    ).m;
    const handoffs = (await metrics.triggers.get()).values.find((v) => v.labels.trigger === 'handoff');
    assert.equal(handoffs?.value, 1);
  });

  it("closeShard drops the tenure's spans unacked and keeps the rest of a trace, with its facts recomputed", () => {
    const clock = { now: 0 };
    const s = sampler(clock);
    const a = tenure('p1.1');
    const other = tenure('p2.1');
    const acked: string[] = [];
    s.process([
      // An error span from the ended tenure: once it is gone, the trace must not look like an error trace.
      spanEvent(span('t1', 'root'), counted(a, acked, 'root')),
      spanEvent(span('t1', 'err', 'root', { status: { code: 2 } }), counted(a, acked, 'err')),
      spanEvent(span('t1', 'late', 'root'), counted(other, acked, 'late')),
    ]);
    assert.equal(s.memory.spans, 3);
    a.end('lost');
    s.closeShard(a);
    assert.equal(s.memory.spans, 1);
    assert.equal(s.memory.traces, 1);
    const pending = (
      s as unknown as { pending: Map<string, { statusMask: number; spanCount: number; rootSeen: boolean }> }
    ).pending.get('t1')!;
    assert.equal(pending.spanCount, 1);
    assert.equal(pending.statusMask & 4, 0, 'the error span is gone with its tenure');
    assert.equal(pending.rootSeen, false);
    s.closeShard(other);
    assert.equal(s.memory.traces, 0);
    assert.equal(s.memory.bytes, 0, 'every buffered byte is accounted back');
    assert.deepEqual(acked, [], 'nothing of an ended tenure is acked');
  });
});

describe('RED windows and the shard lifecycle', () => {
  function red(clock: { now: number }) {
    const config = redMetricsConfigSchema.parse({ type: 'red_metrics', windowMs: 20_000, sinks: ['red'] });
    return new RedMetricsProcessor('red', config, createRegistry(false), () => clock.now);
  }

  it("flushShard emits the tenure's open window before the handoff checkpoint; closeShard drops it unwritten", () => {
    const clock = { now: Date.UTC(2026, 0, 1, 0, 0, 1) };
    const p = red(clock);
    const handed = tenure('p1.1');
    const lost = new ShardTenure('s', 'shardId-000000000001', 'p1.2', new ManualClock());
    const acked: string[] = [];
    p.process([spanEvent(span('t1', 'a'), counted(handed, acked, 'a'))]);
    p.process([spanEvent(span('t2', 'b'), counted(lost, acked, 'b'), 'shardId-000000000001')]);
    const out = p.flushShard(handed);
    const docs = out.map((e) => e.value as unknown as RedWindowDocument);
    assert.equal(docs.length, 1);
    assert.equal(docs[0]!.sourceShardId, SHARD);
    assert.equal(docs[0]!.requestCount, 1);
    assert.equal(out[0]!.ack.tenure, handed);
    lost.end('lost');
    p.closeShard(lost);
    clock.now += 60_000;
    assert.deepEqual(p.tick(), [], "the lost tenure's window is gone, not emitted later");
  });

  it('a later tenure of the same shard on this worker opens its own window, starting when it began', () => {
    const t0 = Date.UTC(2026, 0, 1, 0, 0, 1);
    const clock = { now: t0 };
    const p = red(clock);
    const first = tenure('p1.1');
    p.process([spanEvent(span('t1', 'a'), counted(first, [], 'a'))]);
    first.end('lost');
    p.closeShard(first);
    clock.now = t0 + 5_000;
    const second = tenure('p1.2');
    p.process([spanEvent(span('t1', 'a'), counted(second, [], 'a'))]);
    const docs = p.flushShard(second).map((e) => e.value as unknown as RedWindowDocument);
    assert.equal(docs.length, 1);
    assert.equal(docs[0]!.requestCount, 1, "only the second tenure's span");
    assert.equal(docs[0]!.windowStart, new Date(t0 + 5_000).toISOString());
    assert.equal(tenureKey({ stream: 's', shardId: SHARD }, second), `s\n${SHARD}\np1.2`);
  });
});

describe('pipeline: tenures through the chain', () => {
  function capture(name: string, opts: { failOnce?: boolean } = {}) {
    const written: PipelineEvent[] = [];
    let fail = opts.failOnce ?? false;
    const sink: Sink & { written: PipelineEvent[] } = {
      name,
      written,
      async write(events) {
        if (fail) {
          fail = false;
          throw new Error('sink write rejected');
        }
        written.push(...events);
        for (const e of events) e.ack.done();
      },
      async flush() {},
      async close() {},
    };
    return sink;
  }

  function records(t: ShardTenure, n: number, from = 1): SourceRecord[] {
    return Array.from({ length: n }, (_, i) => ({
      origin: origin(String(from + i)),
      data: Buffer.from(JSON.stringify({ i: from + i })),
      ack: new Ack(() => undefined, t),
    }));
  }

  it('a rejected sink write fails the tenure of every event of the batch and rejects the delivery', async () => {
    const dlq = new MemoryDeadLetterQueue();
    const decoder = new RecordDecoder(decodeConfigSchema.parse({}), dlq, createRegistry(false));
    const sink = capture('lake', { failOnce: true });
    const pipeline = new Pipeline(decoder, [], [sink]);
    const t = tenure('p1.1');
    const failed: string[] = [];
    t.whenFailed((stage) => failed.push(stage));
    await assert.rejects(pipeline.deliver(records(t, 3)), /sink write rejected/);
    assert.deepEqual(failed, ['deliver']);
  });

  it("a failure on a processor's own clock fails the tenures of the events it released (another shard's too)", async () => {
    const dlq = new MemoryDeadLetterQueue();
    const decoder = new RecordDecoder(decodeConfigSchema.parse({}), dlq, createRegistry(false));
    let downstream: ((events: PipelineEvent[]) => Promise<void>) | undefined;
    const holder: Processor = {
      name: 'holder',
      process: () => [],
      start: (d) => {
        downstream = d;
      },
    };
    const sink = capture('lake', { failOnce: true });
    new Pipeline(decoder, [holder], [sink]);
    const a = tenure('p1.1');
    const b = new ShardTenure('s', 'shardId-000000000001', 'p1.2', new ManualClock());
    const failed: string[] = [];
    a.whenFailed(() => failed.push('a'));
    b.whenFailed(() => failed.push('b'));
    const events = [
      spanEvent(span('t', '1'), new Ack(() => undefined, a)),
      spanEvent(span('t', '2'), new Ack(() => undefined, b), 'shardId-000000000001'),
    ];
    await assert.rejects(downstream!(events), /sink write rejected/);
    assert.deepEqual(failed.sort(), ['a', 'b']);
  });

  it('records and released events of an ended tenure are not written', async () => {
    const dlq = new MemoryDeadLetterQueue();
    const decoder = new RecordDecoder(decodeConfigSchema.parse({}), dlq, createRegistry(false));
    const sink = capture('lake');
    const pipeline = new Pipeline(decoder, [], [sink]);
    const t = tenure('p1.1');
    const batch = records(t, 2);
    t.end('fenced');
    await pipeline.deliver(batch);
    assert.equal(sink.written.length, 0);
  });

  it('flushShard takes what a processor releases through the later processors to the sinks, then flushes them', async () => {
    const dlq = new MemoryDeadLetterQueue();
    const decoder = new RecordDecoder(decodeConfigSchema.parse({}), dlq, createRegistry(false));
    const t = tenure('p1.1');
    const seen: string[] = [];
    const first: Processor = {
      name: 'first',
      process: (events) => events,
      flushShard: (x) => (x === t ? [spanEvent(span('t', 'held'), new Ack(() => undefined, t))] : []),
    };
    const second: Processor = {
      name: 'second',
      process: (events) => {
        for (const e of events) seen.push(String(e.value.spanId));
        return events;
      },
    };
    const sink = capture('lake');
    let sinkFlushed: unknown;
    sink.flushShard = async (x) => {
      sinkFlushed = x;
    };
    const closed: unknown[] = [];
    second.closeShard = (x) => {
      closed.push(x);
    };
    const pipeline = new Pipeline(decoder, [first, second], [sink], undefined, undefined, dlq);
    await pipeline.flushShard(t);
    assert.deepEqual(seen, ['held']);
    assert.equal(sink.written.length, 1);
    assert.equal(sinkFlushed, t);
    await pipeline.closeShard(t);
    assert.deepEqual(closed, [t]);
  });
  it("backpressure on one shard flushes only that shard's data, and only in the sinks that hold it", async () => {
    const dlq = new MemoryDeadLetterQueue();
    const decoder = new RecordDecoder(decodeConfigSchema.parse({}), dlq, createRegistry(false));
    const a = tenure('p1.1');
    const b = new ShardTenure('s', 'shardId-000000000001', 'p1.2', new ManualClock());
    const calls: string[] = [];
    const recording = (name: string, withFlushShard: boolean): Sink => ({
      name,
      async write() {},
      async flush() {
        calls.push(`${name}:flush`);
      },
      ...(withFlushShard
        ? {
            async flushShard(x: Tenure) {
              calls.push(`${name}:flushShard:${x === a ? 'a' : 'b'}`);
            },
          }
        : {}),
      async close() {},
    });
    // Shard a's events go to "lake" only, shard b's to "search" and "archive" (no flushShard).
    const router = {
      route(events: PipelineEvent[]) {
        for (const e of events) e.sinks = e.ack.tenure === a ? ['lake'] : ['search', 'archive'];
      },
    };
    const sinks = [recording('lake', true), recording('search', true), recording('archive', false)];
    const pipeline = new Pipeline(decoder, [], sinks, router);
    await pipeline.deliver(records(a, 2));
    await pipeline.deliver(records(b, 2, 10));
    pipeline.relievePressure(a);
    await Promise.resolve();
    assert.deepEqual(calls, ['lake:flushShard:a'], 'the other sinks keep their buffers');
    pipeline.relievePressure(a);
    assert.equal(calls.length, 1, 'at most once a second per tenure');
    calls.length = 0;
    pipeline.relievePressure(b);
    assert.deepEqual(
      calls.sort(),
      ['archive:flush', 'search:flushShard:b'],
      'a sink without flushShard flushes all',
    );
    calls.length = 0;
    a.end('lost');
    await pipeline.closeShard(a);
    const c = new ShardTenure('s', SHARD, 'p1.3', new ManualClock());
    pipeline.relievePressure(c);
    assert.deepEqual(calls, [], 'a tenure no sink holds anything of flushes nothing');
  });
});
