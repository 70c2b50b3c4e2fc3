/**
 * OpenMetrics 1.0 exposition of a prom-client registry, for scrapers that ask for it (Prometheus does by
 * default). Exemplars (e.g. the trace_id on RED metrics) only exist in OpenMetrics, so this is what makes
 * them visible; the Prometheus text format stays the default for everyone else (see server.ts).
 *
 * Written here rather than by switching prom-client's registry to its OpenMetrics mode, because that mode
 * is per registry (not per request) and renames counters in place (it strips `_total` from the metric
 * objects), which would change the plain-text output served to the next scraper.
 */
import type { Registry } from 'prom-client';

export const OPENMETRICS_CONTENT_TYPE = 'application/openmetrics-text; version=1.0.0; charset=utf-8';

interface Sample {
  metricName?: string;
  labels?: Record<string, string | number>;
  value: number;
  exemplar?: { labelSet: Record<string, string | number>; value: number; timestamp?: number };
}

/**
 * True when the Accept header prefers OpenMetrics to the text format (Prometheus sends
 * `application/openmetrics-text;version=1.0.0,...;q=0.75,text/plain;version=0.0.4;q=0.5,*\/*;q=0.1`).
 */
export function wantsOpenMetrics(accept: string | undefined): boolean {
  if (!accept) return false;
  let om = -1;
  let text = -1;
  for (const part of accept.split(',')) {
    const [type, ...params] = part.split(';').map((s) => s.trim().toLowerCase());
    let q = 1;
    for (const p of params) if (p.startsWith('q=')) q = Number(p.slice(2)) || 0;
    if (type === 'application/openmetrics-text') om = Math.max(om, q);
    else if (type === 'text/plain') text = Math.max(text, q);
  }
  return om > 0 && om >= text;
}

function escapeLabel(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"');
}

function escapeHelp(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"');
}

function number(v: number): string {
  if (Number.isNaN(v)) return 'NaN';
  if (v === Number.POSITIVE_INFINITY) return '+Inf';
  if (v === Number.NEGATIVE_INFINITY) return '-Inf';
  return String(v);
}

function labelText(labels: Record<string, string | number> | undefined): string {
  if (!labels) return '';
  const parts: string[] = [];
  for (const k in labels) {
    const v = labels[k];
    if (v === undefined) continue;
    parts.push(`${k}="${escapeLabel(String(v))}"`);
  }
  return parts.length > 0 ? `{${parts.join(',')}}` : '';
}

/** The registry's metrics (with its default labels) as OpenMetrics text, ending in `# EOF`. */
export async function openMetricsText(registry: Registry): Promise<string> {
  const metrics = (await registry.getMetricsAsJSON()) as unknown as Array<{
    name: string;
    help: string;
    type: string;
    values: Sample[];
  }>;
  const lines: string[] = [];
  for (const m of metrics) {
    const isCounter = m.type === 'counter';
    const family = isCounter && m.name.endsWith('_total') ? m.name.slice(0, -'_total'.length) : m.name;
    const type =
      m.type === 'counter' || m.type === 'gauge' || m.type === 'histogram' || m.type === 'summary'
        ? m.type
        : 'unknown';
    lines.push(`# TYPE ${family} ${type}`);
    lines.push(`# HELP ${family} ${escapeHelp(m.help)}`);
    for (const s of m.values) {
      const name = isCounter ? `${family}_total` : (s.metricName ?? m.name);
      let line = `${name}${labelText(s.labels)} ${number(s.value)}`;
      const ex = s.exemplar;
      // OpenMetrics allows exemplars on counter totals and histogram buckets only.
      if (ex && (isCounter || name.endsWith('_bucket'))) {
        line += ` # ${labelText(ex.labelSet) || '{}'} ${number(ex.value)}`;
        if (ex.timestamp !== undefined) line += ` ${ex.timestamp}`;
      }
      lines.push(line);
    }
  }
  lines.push('# EOF');
  return `${lines.join('\n')}\n`;
}
