/**
 * The span processors' metrics as Prometheus sees them: the plain-text exposition (RED series, overflow
 * series, tail-sampling gauges) passes `promtool check metrics`; a real Prometheus with exemplar storage
 * scrapes the OpenMetrics exposition, answers RED queries with the exact counts, and returns exemplars
 * whose trace_id is one of the spans' trace ids.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, it } from 'vitest';
import { Ack } from '../../src/core/ack.js';
import { createRegistry } from '../../src/metrics/registry.js';
import { type OpsServer, startOpsServer } from '../../src/metrics/server.js';
import { RedMetricsProcessor, redMetricsConfigSchema } from '../../src/processors/red-metrics.js';
import { TailSampler, tailSamplingConfigSchema } from '../../src/processors/tail-sampling.js';
import { generateSpans } from '../../src/producer/synthetic-spans.js';
import { type PrometheusServer, promtoolProblems, startPrometheus } from '../helpers/prometheus.js';
import { waitFor } from '../helpers/stack.js';
import { spanEvent } from '../helpers/traces.js';

const ROOT = path.resolve(import.meta.dirname, '../..');
const BIN = process.env.KSW_OPS_BIN ?? path.join(ROOT, '.local/ops/bin');

describe('RED metrics in a real Prometheus (OpenMetrics, exemplars)', () => {
  const spans = [...generateSpans(3_000, { seed: 5, errorRate: 0.1 })];
  const traceIds = new Set(spans.map((s) => s.traceId));
  const dir = mkdtempSync(path.join(tmpdir(), 'ksw-red-ops-'));
  let server: OpsServer;
  let prometheus: PrometheusServer | undefined;

  beforeAll(async () => {
    const metrics = createRegistry(true);
    metrics.setDefaultLabels({ app: 'red-ops' });
    const red = new RedMetricsProcessor(
      'red_metrics',
      redMetricsConfigSchema.parse({ type: 'red_metrics', dimensions: ['http.route'], maxSeries: 30 }),
      metrics,
    );
    const tail = new TailSampler(
      'tail_sampling',
      tailSamplingConfigSchema.parse({
        type: 'tail_sampling',
        policies: [{ name: 'errors', type: 'status_code' }],
      }),
      metrics,
    );
    const out = tail.process(red.process(spans.map((s) => spanEvent(s, new Ack(() => undefined)))));
    for (const e of out) e.ack.done();
    server = await startOpsServer({ host: '127.0.0.1', port: 0, registry: metrics, ready: () => true });
    prometheus = await startPrometheus({
      bin: BIN,
      dir,
      job: 'red',
      target: `127.0.0.1:${server.address.port}`,
      exemplars: true,
    });
  });

  afterAll(async () => {
    await prometheus?.stop();
    await server?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('the plain-text exposition passes promtool check metrics', async () => {
    const text = await (await fetch(`http://127.0.0.1:${server.address.port}/metrics`)).text();
    assert.match(text, /otel_metric_overflow="true"/);
    assert.match(text, /^ksw_tail_sampling_budget_bytes\{/m);
    assert.deepEqual(promtoolProblems(BIN, text), []);
  });

  it('Prometheus scrapes OpenMetrics: exact RED counts and trace_id exemplars', async () => {
    const q = (expr: string) => prometheus!.query(expr);
    await waitFor(
      async () => (await q('sum(ksw_red_requests_total)')).data.result[0]?.value[1] === String(spans.length),
      30_000,
      'RED requests in Prometheus',
    );
    const errors = spans.filter((s) => s.status.code === 2).length;
    assert.equal((await q('sum(ksw_red_errors_total)')).data.result[0]?.value[1], String(errors));
    assert.equal(
      (await q('sum(ksw_red_duration_seconds_count)')).data.result[0]?.value[1],
      String(spans.length),
    );
    const headers = await fetch(`http://127.0.0.1:${server.address.port}/metrics`, {
      headers: { accept: 'application/openmetrics-text; version=1.0.0' },
    });
    assert.match(headers.headers.get('content-type') ?? '', /openmetrics/);
    let exemplars: Array<{
      seriesLabels: Record<string, string>;
      exemplars: Array<{ labels: { trace_id: string } }>;
    }> = [];
    await waitFor(
      async () => {
        const now = Date.now() / 1000;
        const res = (await (
          await fetch(
            `${prometheus!.url}/api/v1/query_exemplars?query=${encodeURIComponent('ksw_red_duration_seconds_bucket')}&start=${now - 600}&end=${now + 60}`,
          )
        ).json()) as { data: typeof exemplars };
        exemplars = res.data ?? [];
        return exemplars.length > 0;
      },
      30_000,
      'exemplars in Prometheus',
    );
    const ids = exemplars.flatMap((e) => e.exemplars.map((x) => x.labels.trace_id));
    assert.ok(ids.length > 0);
    for (const id of ids) assert.ok(traceIds.has(id), `exemplar trace_id ${id} is a produced trace`);
  });
});
