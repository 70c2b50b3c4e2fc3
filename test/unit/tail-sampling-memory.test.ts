/**
 * One million spans through a tail sampler whose decision wait is far longer than the run, so only its
 * memory budget decides traces: the sampler's accounted bytes must never pass the budget, and the live
 * process memory (heap + Buffers, after a forced GC) must stay near it, i.e. the estimate is honest.
 */
import assert from 'node:assert/strict';
import v8 from 'node:v8';
import vm from 'node:vm';
import { describe, it } from 'vitest';
import { Ack } from '../../src/core/ack.js';
import type { PipelineEvent } from '../../src/core/records.js';
import { createRegistry } from '../../src/metrics/registry.js';
import { TailSampler, tailSamplingConfigSchema } from '../../src/processors/tail-sampling.js';
import { generateSpans } from '../../src/producer/synthetic-spans.js';

const SPANS = 1_000_000;
const BUDGET = 48 * 1024 * 1024;
/** The decision cache (100,000 trace ids) and the Map of pending traces live beside the spans. */
const ALLOWANCE = 24 * 1024 * 1024;

describe('tail sampling memory', () => {
  it(`stays under its budget with ${SPANS.toLocaleString('en-US')} spans (accounted bytes and process heap)`, async () => {
    v8.setFlagsFromString('--expose-gc');
    const gc = vm.runInNewContext('gc') as () => void;
    const clock = { now: 0 };
    const sampler = new TailSampler(
      'tail',
      tailSamplingConfigSchema.parse({
        type: 'tail_sampling',
        decisionWaitMs: 3_600_000,
        quietPeriodMs: 3_600_000,
        maxBufferedBytes: BUDGET,
        policies: [
          { name: 'errors', type: 'status_code' },
          { name: 'slow', type: 'latency', thresholdMs: 1000, probability: 0.8 },
          { name: 'rest', type: 'probabilistic', probability: 0.2 },
        ],
      }),
      createRegistry(false),
      () => clock.now,
    );
    gc();
    const base = process.memoryUsage();
    let peakLive = 0;
    let acked = 0;
    let created = 0;
    let kept = 0;
    let batch: PipelineEvent[] = [];
    let seq = 49_000_000_000_000_000_000n;
    const started = Date.now();
    const measure = async () => {
      // Buffers' backing stores are freed after the GC that finds them dead: let that happen, then look.
      gc();
      await new Promise((r) => setTimeout(r, 10));
      gc();
      const m = process.memoryUsage();
      peakLive = Math.max(peakLive, m.heapUsed + m.external - base.heapUsed - base.external);
    };
    for (const span of generateSpans(SPANS, { seed: 1234 })) {
      seq += 1n;
      created += 1;
      batch.push({
        origin: {
          stream: 'spans',
          shardId: 'shardId-000000000000',
          sequenceNumber: seq.toString(),
          subSequenceNumber: 0,
          partitionKey: span.traceId,
          arrivalTime: new Date(0),
        },
        index: 0,
        value: span as unknown as Record<string, unknown>,
        raw: Buffer.from(JSON.stringify(span), 'utf8'),
        ack: new Ack(() => {
          acked += 1;
        }),
      });
      if (batch.length === 500) {
        clock.now += 5;
        // The sink: kept spans are written (acked) at once.
        for (const e of sampler.process(batch)) {
          kept += 1;
          e.ack.done();
        }
        batch = [];
        assert.ok(sampler.memory.bytes <= BUDGET, `accounted ${sampler.memory.bytes} > budget`);
      }
      if (created % 125_000 === 0) await measure();
    }
    await measure();
    for (const e of await sampler.flush()) {
      kept += 1;
      e.ack.done();
    }
    const seconds = (Date.now() - started) / 1000;
    const mib = (n: number) => `${(n / 1048576).toFixed(1)} MiB`;
    process.stdout.write(
      `# 1M spans in ${seconds.toFixed(1)} s: peak accounted ${mib(sampler.memory.peak)}, peak live heap+buffers ${mib(peakLive)} (budget ${mib(BUDGET)}), ${kept} spans kept\n`,
    );
    assert.equal(acked, SPANS, 'every span was kept (and written) or dropped (acked)');
    assert.ok(sampler.memory.peak > BUDGET * 0.8, 'the budget was what decided');
    // The accounted peak exceeds the budget by at most the batch's last trace before relief.
    assert.ok(sampler.memory.peak <= BUDGET + 64 * 1024, `peak accounted ${mib(sampler.memory.peak)}`);
    assert.ok(peakLive <= BUDGET + ALLOWANCE, `live memory ${mib(peakLive)} over budget + allowance`);
    assert.equal(sampler.memory.bytes, 0);
  });
});
