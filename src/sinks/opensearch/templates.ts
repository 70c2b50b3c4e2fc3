/**
 * Index templates shipped with the project, for the shared document shapes of src/core/documents.ts
 * (`SpanDocument`, `RedWindowDocument`), and the optional ISM policy.
 *
 * Choices (see README "OpenSearch sink"):
 * - int64 nanosecond times stay `long` (exact; OpenSearch parses decimal strings and numbers beyond 2^53
 *   exactly); the sink adds `@timestamp` from the document time as an ISO date with every digit, mapped
 *   `date_nanos`, for time filters and Dashboards. RED windows have ISO times: `date`.
 * - Span `attributes`, `resource` and event/link attributes are `flat_object`: OTel attribute keys are
 *   unbounded and dotted (`http.method` next to `http`), so a dynamic object mapping would explode the
 *   field count and conflict on types (a key that is a number in one service and a string in another);
 *   flat_object stores the whole object as one field, searchable with `attributes.http.method: GET`
 *   (values as keywords; no numeric ranges or aggregations on attributes).
 * - Spans: `dynamic: false`: fields outside the contract stay in `_source` but are not indexed, so a
 *   producer adding a field never makes documents fail.
 * - RED windows: `dynamic: strict`: their shape is a processor contract; a field the template does not
 *   know is a deployment mistake that must be loud (the window is dead-lettered with the server's
 *   reason, the mapping is fixed, `ksw redrive` re-indexes it). `dimensions` (configured, bounded keys)
 *   map dynamically to keywords so they can be aggregated.
 * - `offloaded` (field offload pointers) is stored but not indexed.
 */
import type { IsmPolicyConfig } from './config.js';

/** Bumped whenever a mapping changes; stored in the template's _meta. */
export const TEMPLATE_VERSION = 1;

const keyword = { type: 'keyword', ignore_above: 1024 } as const;
const offloaded = { type: 'object', enabled: false } as const;

export const SPAN_MAPPINGS = {
  dynamic: false,
  properties: {
    '@timestamp': { type: 'date_nanos' },
    traceId: { type: 'keyword' },
    spanId: { type: 'keyword' },
    parentSpanId: { type: 'keyword' },
    traceState: { type: 'keyword', index: false },
    name: keyword,
    kind: { type: 'keyword' },
    serviceName: { type: 'keyword' },
    startTimeUnixNano: { type: 'long' },
    endTimeUnixNano: { type: 'long' },
    durationNano: { type: 'long' },
    status: {
      properties: {
        code: { type: 'byte' },
        message: { type: 'text', fields: { keyword } },
      },
    },
    attributes: { type: 'flat_object' },
    resource: { type: 'flat_object' },
    scope: { properties: { name: keyword, version: keyword } },
    events: {
      properties: {
        timeUnixNano: { type: 'long' },
        name: keyword,
        attributes: { type: 'flat_object' },
      },
    },
    links: {
      properties: {
        traceId: { type: 'keyword' },
        spanId: { type: 'keyword' },
        attributes: { type: 'flat_object' },
      },
    },
    sampling: { properties: { policy: { type: 'keyword' }, probability: { type: 'double' } } },
    offloaded,
  },
} as const;

export const RED_WINDOW_MAPPINGS = {
  dynamic: 'strict',
  properties: {
    '@timestamp': { type: 'date' },
    windowStart: { type: 'date' },
    windowEnd: { type: 'date' },
    service: { type: 'keyword' },
    operation: keyword,
    spanKind: { type: 'keyword' },
    statusCode: { type: 'keyword' },
    dimensions: {
      type: 'object',
      dynamic: true,
      properties: {},
    },
    overflow: { type: 'boolean' },
    requestCount: { type: 'long' },
    errorCount: { type: 'long' },
    durationSumMs: { type: 'double' },
    durationMinMs: { type: 'double' },
    durationMaxMs: { type: 'double' },
    durationBucketBoundsMs: { type: 'double' },
    durationBucketCounts: { type: 'long' },
    sourceStream: { type: 'keyword' },
    sourceShardId: { type: 'keyword' },
    offloaded,
  },
  dynamic_templates: [
    {
      dimensions_as_keywords: {
        path_match: 'dimensions.*',
        // Strings only: a dotted key such as "http.route" makes an intermediate object `dimensions.http`.
        match_mapping_type: 'string',
        mapping: { type: 'keyword', ignore_above: 1024 },
      },
    },
  ],
} as const;

export type TemplateKind = 'spans' | 'red_windows';

export interface TemplateOptions {
  readonly kind: TemplateKind;
  readonly indexPatterns: readonly string[];
  readonly shards: number;
  readonly replicas: number;
  readonly refreshInterval: string;
  readonly dataStream: boolean;
  /** Serverless rejects most index settings; only mappings are sent there. */
  readonly serverless: boolean;
}

/** The composable index template body (PUT _index_template/<name>). */
export function indexTemplateBody(opts: TemplateOptions): Record<string, unknown> {
  const mappings = opts.kind === 'spans' ? SPAN_MAPPINGS : RED_WINDOW_MAPPINGS;
  const settings = opts.serverless
    ? {}
    : {
        number_of_shards: opts.shards,
        number_of_replicas: opts.replicas,
        refresh_interval: opts.refreshInterval,
        // A sane cap: spans are dynamic:false and RED dimensions are configured, so this is never reached
        // unless something is wrong.
        'mapping.total_fields.limit': 1000,
      };
  return {
    index_patterns: [...opts.indexPatterns],
    priority: 100,
    ...(opts.dataStream ? { data_stream: {} } : {}),
    template: { settings: { index: settings }, mappings },
    _meta: { managed_by: 'ksw', kind: opts.kind, version: TEMPLATE_VERSION },
  };
}

/** The ISM policy body (PUT _plugins/_ism/policies/<name>), attached to new indices by its ism_template. */
export function ismPolicyBody(
  policy: IsmPolicyConfig,
  indexPatterns: readonly string[],
): Record<string, unknown> {
  const states: Array<Record<string, unknown>> = [];
  const deleteTransition = { state_name: 'delete', conditions: { min_index_age: policy.deleteAfter } };
  if (policy.warmAfter) {
    states.push({
      name: 'hot',
      actions: [],
      transitions: [{ state_name: 'warm', conditions: { min_index_age: policy.warmAfter } }],
    });
    states.push({
      name: 'warm',
      actions: [{ read_only: {} }, { force_merge: { max_num_segments: 1 } }],
      transitions: [deleteTransition],
    });
  } else {
    states.push({ name: 'hot', actions: [], transitions: [deleteTransition] });
  }
  states.push({ name: 'delete', actions: [{ delete: {} }], transitions: [] });
  return {
    policy: {
      description: `ksw: delete after ${policy.deleteAfter}${policy.warmAfter ? `, read-only after ${policy.warmAfter}` : ''}`,
      default_state: 'hot',
      states,
      ism_template: [{ index_patterns: [...indexPatterns], priority: 100 }],
    },
  };
}
