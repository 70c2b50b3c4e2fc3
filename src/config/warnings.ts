/**
 * Semantic warnings: configs that validate but cannot do what the user meant (a setting that has no
 * effect, a sink nothing reaches, processors in an order that changes their meaning). `ksw validate`
 * prints them and still exits 0 (`--strict` turns them into errors); the worker logs them at start-up.
 *
 * Each check is a small function of the validated config; add new ones to `CHECKS` with a message that
 * says what will happen and how to fix it.
 */
import { existsSync } from 'node:fs';
import { routedSinkNames } from '../processors/router.js';
import { suggest } from './errors.js';
import type { WorkerConfig } from './schema.js';

export interface ConfigWarning {
  /** Dotted path of the field the warning is about, as errors name fields ("processors.2.allowedBuckets"). */
  readonly path: string;
  readonly message: string;
}

type Check = (config: WorkerConfig) => ConfigWarning[];

/** Sinks that no event can reach: there is a routing section, and neither a route nor a processor names them. */
const unreachableSinks: Check = (config) => {
  if (!config.routing) return []; // without routing every event goes to every sink
  const reached = new Set<string>(routedSinkNames(config.routing).map((r) => r.sink));
  for (const p of config.processors)
    for (const s of (p as { sinks?: readonly string[] }).sinks ?? []) reached.add(s);
  return Object.keys(config.sinks)
    .filter((name) => !reached.has(name))
    .map((name) => ({
      path: `sinks.${name}`,
      message: `no route and no processor sends events to sink "${name}", so it will write nothing: add it to a route's sinks (or routing.default.sinks) or remove it`,
    }));
};

const SAMPLERS = new Set(['tail_sampling', 'head_sampling']);
const SPAN_PROCESSORS = new Set(['red_metrics', 'tail_sampling', 'head_sampling']);

/** RED metrics after a sampler count only the spans the sampler kept. */
const redAfterSampling: Check = (config) => {
  const types = config.processors.map((p) => p.type as string);
  const firstSampler = types.findIndex((t) => SAMPLERS.has(t));
  if (firstSampler === -1) return [];
  return types.flatMap((t, i) =>
    t === 'red_metrics' && i > firstSampler
      ? [
          {
            path: `processors.${i}`,
            message: `red_metrics comes after ${types[firstSampler]} (processors.${firstSampler}), so requests, errors and durations count only the sampled spans: move red_metrics before the sampler to count 100 % of spans`,
          },
        ]
      : [],
  );
};

/** Span processors see span documents only when otel_spans runs before them. */
const spanProcessorsWithoutSpans: Check = (config) => {
  const types = config.processors.map((p) => p.type as string);
  const spans = types.indexOf('otel_spans');
  return types.flatMap((t, i) =>
    SPAN_PROCESSORS.has(t) && (spans === -1 || spans > i)
      ? [
          {
            path: `processors.${i}`,
            message: `${t} works on span events, which otel_spans makes (from OTLP/JSON or flat span records)${spans === -1 ? '; there is no otel_spans processor' : ` and it comes later (processors.${spans})`}: put { type: otel_spans } before it`,
          },
        ]
      : [],
  );
};

/** Top-level fields of the span documents otel_spans makes (src/core/documents.ts SpanDocument). */
const SPAN_FIELDS = [
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

/** With otel_spans in the chain, a route condition on a field no span has never matches. */
const routesOnMissingSpanFields: Check = (config) => {
  if (!config.routing || !config.processors.some((p) => p.type === 'otel_spans')) return [];
  const out: ConfigWarning[] = [];
  config.routing.routes.forEach((route, i) => {
    route.where.forEach((condition, j) => {
      const field = /^\s*([A-Za-z_$][\w$]*)/.exec(condition)?.[1];
      if (!field || SPAN_FIELDS.includes(field)) return;
      const near = suggest(field, SPAN_FIELDS);
      out.push({
        path: `routing.routes.${i}.where.${j}`,
        message: `span events have no field "${field}", so route "${route.name}" never matches${near ? ` (did you mean "${near}"?)` : ''}; span fields: ${SPAN_FIELDS.join(', ')}; span attributes are under attributes["key"]`,
      });
    });
  });
  return out;
};

/** S3 bucket names: 3-63 characters, lowercase letters, digits, dots and hyphens, not like an IP address. */
export function bucketNameProblem(name: string): string | undefined {
  if (name.includes('${')) return undefined; // an unresolved reference is reported by validation
  if (name.length < 3 || name.length > 63) return 'is not 3 to 63 characters long';
  if (!/^[a-z0-9][a-z0-9.-]*[a-z0-9]$/.test(name))
    return 'may hold only lowercase letters, digits, dots and hyphens, and must start and end with a letter or digit';
  if (name.includes('..')) return 'has two dots in a row';
  if (/^\d+\.\d+\.\d+\.\d+$/.test(name)) return 'looks like an IP address';
  if (name.startsWith('xn--') || name.endsWith('-s3alias')) return 'uses a prefix or suffix S3 reserves';
  return undefined;
}

const invalidBuckets: Check = (config) => {
  const out: ConfigWarning[] = [];
  const check = (path: string, bucket: unknown) => {
    if (typeof bucket !== 'string') return;
    const problem = bucketNameProblem(bucket);
    if (problem)
      out.push({
        path,
        message: `bucket name "${bucket}" ${problem}, so S3 will refuse every request to it`,
      });
  };
  for (const [name, sink] of Object.entries(config.sinks))
    check(`sinks.${name}.bucket`, (sink as { bucket?: unknown }).bucket);
  check('dlq.bucket', (config.dlq as { bucket?: unknown }).bucket);
  return out;
};

/** A file consumer whose file is not there (checked where `ksw validate` runs). */
const missingInputFiles: Check = (config) =>
  config.consumers.flatMap((c, i) =>
    c.type === 'file' && c.path !== '-' && !existsSync(c.path)
      ? [
          {
            path: `consumers.${i}.path`,
            message: `no file ${c.path} here (relative paths are from the working directory)`,
          },
        ]
      : [],
  );

const CHECKS: Check[] = [
  unreachableSinks,
  redAfterSampling,
  spanProcessorsWithoutSpans,
  routesOnMissingSpanFields,
  invalidBuckets,
  missingInputFiles,
];

export function semanticWarnings(config: WorkerConfig): ConfigWarning[] {
  return CHECKS.flatMap((check) => check(config));
}
