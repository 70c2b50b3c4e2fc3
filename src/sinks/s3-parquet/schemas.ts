/**
 * Built-in column sets. `spans` stores the flat span (core/documents.ts SpanDocument) and `red_metrics` the
 * RED window (RedWindowDocument) field for field, under the documents' own field names, with typed nested
 * values; a TIMESTAMP(MICROS) column sits beside each int64 nanosecond time for Athena and Spark.
 */
import type { RedWindowDocument, SpanDocument } from '../../core/documents.js';
import {
  type BuiltInSchema,
  METADATA_COLUMNS,
  type ParquetColumnConfig,
  type ParquetSinkConfig,
  QUARANTINE_PARTITION_COLUMN,
  type TimeUnit,
  type TypeSpec,
} from './config.js';

type Column = ParquetColumnConfig;
const col = (name: string, spec: TypeSpec, path?: string): Column =>
  ({ name, timeUnit: 'ms', ...spec, ...(path ? { path } : {}) }) as Column;

/** Attribute maps: every value as text (strings as they are, other values as JSON), so Athena reads map<string,string>. */
const ATTRIBUTES: TypeSpec = { type: 'map', values: { type: 'text' } };

// Every field of the shared document types, checked by the compiler: adding or renaming one fails here.
const SPAN_FIELDS: Record<keyof SpanDocument, true> = {
  traceId: true,
  spanId: true,
  parentSpanId: true,
  traceState: true,
  name: true,
  kind: true,
  serviceName: true,
  startTimeUnixNano: true,
  endTimeUnixNano: true,
  durationNano: true,
  status: true,
  attributes: true,
  resource: true,
  scope: true,
  events: true,
  links: true,
  sampling: true,
};

const SPAN_COLUMNS: Column[] = [
  col('traceId', { type: 'string' }),
  col('spanId', { type: 'string' }),
  col('parentSpanId', { type: 'string' }),
  col('traceState', { type: 'string' }),
  col('name', { type: 'string' }),
  col('kind', { type: 'string' }),
  col('serviceName', { type: 'string' }),
  col('startTimeUnixNano', { type: 'int64' }),
  col('endTimeUnixNano', { type: 'int64' }),
  col('durationNano', { type: 'int64' }),
  col('startTime', { type: 'timestamp_us', timeUnit: 'ns' }, 'startTimeUnixNano'),
  col('endTime', { type: 'timestamp_us', timeUnit: 'ns' }, 'endTimeUnixNano'),
  col('status', {
    type: 'struct',
    fields: [
      { name: 'code', type: 'int32' },
      { name: 'message', type: 'string' },
    ],
  }),
  col('attributes', ATTRIBUTES),
  col('resource', ATTRIBUTES),
  col('scope', {
    type: 'struct',
    fields: [
      { name: 'name', type: 'string' },
      { name: 'version', type: 'string' },
    ],
  }),
  col('events', {
    type: 'list',
    items: {
      type: 'struct',
      fields: [
        { name: 'timeUnixNano', type: 'int64' },
        { name: 'time', type: 'timestamp_us', timeUnit: 'ns', path: 'timeUnixNano' },
        { name: 'name', type: 'string' },
        { name: 'attributes', ...ATTRIBUTES },
      ],
    },
  }),
  col('links', {
    type: 'list',
    items: {
      type: 'struct',
      fields: [
        { name: 'traceId', type: 'string' },
        { name: 'spanId', type: 'string' },
        { name: 'attributes', ...ATTRIBUTES },
      ],
    },
  }),
  col('sampling', {
    type: 'struct',
    fields: [
      { name: 'policy', type: 'string' },
      { name: 'probability', type: 'double' },
    ],
  }),
];

const RED_FIELDS: Record<keyof RedWindowDocument, true> = {
  windowStart: true,
  windowEnd: true,
  service: true,
  operation: true,
  spanKind: true,
  statusCode: true,
  dimensions: true,
  overflow: true,
  requestCount: true,
  errorCount: true,
  durationSumMs: true,
  durationMinMs: true,
  durationMaxMs: true,
  durationBucketBoundsMs: true,
  durationBucketCounts: true,
  sourceStream: true,
  sourceShardId: true,
};

const RED_COLUMNS: Column[] = [
  col('windowStart', { type: 'timestamp_us' }),
  col('windowEnd', { type: 'timestamp_us' }),
  col('service', { type: 'string' }),
  col('operation', { type: 'string' }),
  col('spanKind', { type: 'string' }),
  col('statusCode', { type: 'string' }),
  col('dimensions', { type: 'map', values: { type: 'string' } }),
  col('overflow', { type: 'boolean' }),
  col('requestCount', { type: 'int64' }),
  col('errorCount', { type: 'int64' }),
  col('durationSumMs', { type: 'double' }),
  col('durationMinMs', { type: 'double' }),
  col('durationMaxMs', { type: 'double' }),
  col('durationBucketBoundsMs', { type: 'list', items: { type: 'double' } }),
  col('durationBucketCounts', { type: 'list', items: { type: 'int64' } }),
  col('sourceStream', { type: 'string' }),
  col('sourceShardId', { type: 'string' }),
];

// Every document field has a column (and a column of the same name reads that field).
for (const [fields, columns] of [
  [SPAN_FIELDS, SPAN_COLUMNS],
  [RED_FIELDS, RED_COLUMNS],
] as const) {
  for (const field of Object.keys(fields)) {
    if (!columns.some((c) => c.name === field && (c.path ?? c.name) === field)) {
      throw new Error(`built-in schema lacks a column for document field ${field}`);
    }
  }
}

export const BUILT_IN_COLUMNS: Record<BuiltInSchema, readonly Column[]> = {
  generic: [],
  spans: SPAN_COLUMNS,
  red_metrics: RED_COLUMNS,
};

/** The default event time of a schema, for partitioning. */
export const DEFAULT_EVENT_TIME: Record<BuiltInSchema, { field: string; unit: TimeUnit } | undefined> = {
  generic: undefined,
  spans: { field: 'startTimeUnixNano', unit: 'ns' },
  red_metrics: { field: 'windowStart', unit: 'ms' },
};

export interface ResolvedSchema {
  /** Built-in columns then the configured ones. */
  readonly columns: readonly Column[];
  readonly recordColumn: string | false;
  readonly recordContent: 'all' | 'rest';
}

export function resolveSchema(
  config: Pick<ParquetSinkConfig, 'schema' | 'columns' | 'recordColumn' | 'recordContent'>,
): ResolvedSchema {
  const recordColumn = config.recordColumn ?? (config.schema === 'generic' ? '_record' : false);
  return {
    columns: [...BUILT_IN_COLUMNS[config.schema], ...config.columns],
    recordColumn,
    recordContent: config.recordContent,
  };
}

/** Problems with the column names of a config: duplicates (case-insensitive), reserved names. */
export function columnNameProblems(
  resolved: ResolvedSchema,
  partitionNames: readonly string[],
): Array<{ path: (string | number)[]; message: string }> {
  const problems: Array<{ path: (string | number)[]; message: string }> = [];
  const seen = new Set<string>([...METADATA_COLUMNS, QUARANTINE_PARTITION_COLUMN]);
  const names = [
    ...resolved.columns.map((c) => c.name),
    ...(resolved.recordColumn ? [resolved.recordColumn] : []),
  ];
  for (const name of names) {
    const key = name.toLowerCase();
    if (seen.has(key))
      problems.push({ path: ['columns'], message: `duplicate or reserved column name "${name}"` });
    seen.add(key);
  }
  for (const name of partitionNames) {
    // Athena and Glue refuse a partition column with the name of a data column.
    if (seen.has(name.toLowerCase())) {
      problems.push({
        path: ['partitioning', 'template'],
        message: `partition name "${name}" is also a column name; rename one of them`,
      });
    }
  }
  return problems;
}
