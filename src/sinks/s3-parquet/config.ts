import os from 'node:os';
import { z } from 'zod';
import { parseTemplate } from './partitioning.js';
import { columnNameProblems, resolveSchema } from './schemas.js';

/** Columns every file carries, in this order, before the schema's columns. */
export const METADATA_COLUMNS = [
  '_stream',
  '_shard_id',
  '_sequence_number',
  '_sub_sequence_number',
  '_event_index',
  '_partition_key',
  '_arrival_time',
] as const;

/** The extra column of quarantine files: the partition each row would have gone to. */
export const QUARANTINE_PARTITION_COLUMN = '_partition';

export const scalarColumnTypes = [
  'string',
  'text',
  'int32',
  'int64',
  'double',
  'boolean',
  'timestamp_ms',
  'timestamp_us',
  'json',
] as const;
export const nestedColumnTypes = ['list', 'map', 'struct'] as const;
export const parquetColumnTypes = [...scalarColumnTypes, ...nestedColumnTypes] as const;

export type ScalarColumnType = (typeof scalarColumnTypes)[number];
export type ParquetColumnType = (typeof parquetColumnTypes)[number];
export type TimeUnit = 'ns' | 'us' | 'ms' | 's';

/**
 * A column's type, possibly nested: `items` for a list, `values` for a map (keys are strings), `fields` for
 * a struct. Written as a plain string for scalars inside `items`/`values` (`items: string`).
 */
export interface TypeSpec {
  readonly type: ParquetColumnType;
  readonly timeUnit?: TimeUnit;
  readonly items?: TypeSpec;
  readonly values?: TypeSpec;
  readonly fields?: readonly FieldSpec[];
}

/** A named, typed value taken from `path` (default: the name) of the enclosing object. */
export interface FieldSpec extends TypeSpec {
  readonly name: string;
  readonly path?: string;
}

// Athena/Glue lower-case column names and accept only letters, digits and underscores; DuckDB compares
// identifiers case-insensitively. Restricting names here keeps a file readable by every engine.
export const COLUMN_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
const columnName = z
  .string()
  .regex(COLUMN_NAME, 'letters, digits and underscores, not starting with a digit')
  .max(255);

const TYPE_DESCRIPTION =
  'Parquet type. string: UTF8 text (numbers and booleans are written as text; objects are rejected). ' +
  'text: any value as text (strings as they are, numbers/booleans as their digits, arrays/objects as JSON). ' +
  'int32/int64: exact integers from JS numbers, bigints or decimal strings ("1700000000123456789"; never rounded ' +
  'through a double); out of range or non-integer values are dead-lettered. double, boolean. ' +
  'timestamp_ms/timestamp_us: TIMESTAMP(MILLIS/MICROS), readable by Athena, Spark, Trino, from a number or ' +
  'decimal string in `timeUnit`, or an ISO-8601 string (UTC unless it has an offset). ' +
  'json: the sub-value serialized as JSON text (big integers keep all digits). ' +
  'list (with `items`), map (string keys, with `values`), struct (with `fields`): nested Parquet types.';

const timeUnitSchema = z
  .enum(['ns', 'us', 'ms', 's'])
  .optional()
  .describe(
    'For timestamp types whose source value is a number or a decimal string: its unit since the Unix epoch (default ms).',
  );

function checkNested(spec: TypeSpec, ctx: z.RefinementCtx, path: (string | number)[]): void {
  const need = (key: 'items' | 'values' | 'fields', when: boolean) => {
    const present = spec[key] !== undefined;
    if (when && !present)
      ctx.addIssue({ code: 'custom', path, message: `type ${spec.type} needs \`${key}\`` });
    if (!when && present)
      ctx.addIssue({
        code: 'custom',
        path,
        message: `\`${key}\` is only allowed for type ${spec.type === 'list' ? 'list' : spec.type === 'map' ? 'map' : 'struct'}s`,
      });
  };
  need('items', spec.type === 'list');
  need('values', spec.type === 'map');
  need('fields', spec.type === 'struct');
  if (spec.timeUnit !== undefined && !spec.type.startsWith('timestamp')) {
    ctx.addIssue({ code: 'custom', path, message: 'timeUnit applies to timestamp types only' });
  }
  if (spec.fields) {
    const seen = new Set<string>();
    spec.fields.forEach((field, i) => {
      const key = field.name.toLowerCase();
      if (seen.has(key))
        ctx.addIssue({
          code: 'custom',
          path: [...path, 'fields', i],
          message: `duplicate field "${field.name}"`,
        });
      seen.add(key);
    });
  }
}

/** A nested type: a scalar type name, or an object with `type` and its own `items`/`values`/`fields`. */
export const typeSpecSchema: z.ZodType<TypeSpec> = z.lazy(() =>
  z.union([
    z.enum(scalarColumnTypes).transform((type) => ({ type })),
    z
      .object({
        type: z.enum(parquetColumnTypes),
        timeUnit: timeUnitSchema,
        items: typeSpecSchema.optional(),
        values: typeSpecSchema.optional(),
        fields: z.array(fieldSpecSchema).min(1).optional(),
      })
      .strict()
      .superRefine((spec, ctx) => checkNested(spec, ctx, [])),
  ]),
) as unknown as z.ZodType<TypeSpec>;

export const fieldSpecSchema: z.ZodType<FieldSpec> = z.lazy(() =>
  z
    .object({
      name: columnName.describe('Field name.'),
      path: z.string().min(1).optional().describe('Dotted path inside the struct value. Default: the name.'),
      type: z.enum(parquetColumnTypes),
      timeUnit: timeUnitSchema,
      items: typeSpecSchema.optional(),
      values: typeSpecSchema.optional(),
      fields: z.array(fieldSpecSchema).min(1).optional(),
    })
    .strict()
    .superRefine((spec, ctx) => checkNested(spec, ctx, [])),
) as unknown as z.ZodType<FieldSpec>;

export const parquetColumnSchema = z
  .object({
    name: columnName.describe('Column name in the Parquet file.'),
    type: z.enum(parquetColumnTypes).describe(TYPE_DESCRIPTION),
    path: z
      .string()
      .min(1)
      .optional()
      .describe(
        'Dotted path into the event value, e.g. "resource.service.name"; a numeric segment indexes an array. ' +
          'Default: the column name.',
      ),
    timeUnit: z
      .enum(['ns', 'us', 'ms', 's'])
      .default('ms')
      .describe(
        'For timestamp columns whose source value is a number or a decimal string: its unit since the Unix epoch.',
      ),
    items: typeSpecSchema
      .optional()
      .describe('list: the element type, e.g. `string` or `{ type: struct, fields: [...] }`.'),
    values: typeSpecSchema.optional().describe('map: the value type (keys are strings).'),
    fields: z
      .array(fieldSpecSchema)
      .min(1)
      .optional()
      .describe('struct: its fields, each `{ name, type, path?, items?, values?, fields?, timeUnit? }`.'),
  })
  .strict()
  .superRefine((spec, ctx) =>
    checkNested(
      { ...spec, timeUnit: spec.type.startsWith('timestamp') ? spec.timeUnit : undefined },
      ctx,
      [],
    ),
  )
  .describe('One configured column. A value missing, undefined or null becomes NULL.');

export type ParquetColumnConfig = z.infer<typeof parquetColumnSchema>;

const MiB = 1024 * 1024;

export const builtInSchemas = ['generic', 'spans', 'red_metrics'] as const;
export type BuiltInSchema = (typeof builtInSchemas)[number];

export const partitioningSchema = z
  .object({
    template: z
      .string()
      .min(1)
      .describe(
        'Hive-style partition path, segments `name=value` separated by "/". Value tokens: {yyyy} {MM} {dd} {HH} {mm} ' +
          '(UTC, from `time`) and {field:dotted.path} (a value of the event). Example: ' +
          '`dt={yyyy}-{MM}-{dd}/hour={HH}/service={field:serviceName}`. Field values are escaped like Hive does ' +
          '(%XX for / = : % # ? * \\ " \' [ ] { } ^ and control characters); a missing, null or empty value becomes ' +
          '__HIVE_DEFAULT_PARTITION__; values longer than 100 bytes are cut and suffixed with a hash.',
      ),
    time: z
      .object({
        source: z
          .enum(['event', 'arrival'])
          .optional()
          .describe(
            "event: a field of the event (`field`); arrival: the record's Kinesis ApproximateArrivalTimestamp. Both are " +
              'deterministic (a replay puts a record in the same partition); processing time is not offered because ' +
              'it is not. Default: event for the spans and red_metrics schemas, arrival otherwise.',
          ),
        field: z
          .string()
          .min(1)
          .optional()
          .describe(
            'Dotted path of the event time (source event). Default: startTimeUnixNano for spans, windowStart for red_metrics.',
          ),
        unit: z
          .enum(['ns', 'us', 'ms', 's'])
          .optional()
          .describe(
            'Unit of a numeric event time (ISO-8601 strings are parsed). Default: ns for spans, ms otherwise.',
          ),
      })
      .strict()
      .prefault({})
      .describe(
        'Where the time of {yyyy}..{mm} comes from (also the min/max event time of each file). An event whose time ' +
          'is missing or invalid goes to the dead-letter queue with the reason.',
      ),
    maxOpenPartitions: z
      .number()
      .int()
      .min(1)
      .default(500)
      .describe(
        'Partitions with an open (buffering) file at once, across shards. An event for a new partition beyond this ' +
          "goes to the quarantine prefix instead (like Firehose's active-partition limit), with its partition in a " +
          '`_partition` column, so nothing is lost and no flood of tiny files is written.',
      ),
    quarantinePrefix: z
      .string()
      .min(1)
      .regex(/\/$/, 'end it with "/"')
      .default('_quarantine/')
      .describe(
        'Key prefix (after `prefix`) of quarantine files. Starting with "_" keeps Hive, Spark and Athena from reading it as data.',
      ),
  })
  .strict()
  .describe('Hive-style partitioning of the object keys. Without it, files go directly under `prefix`.');

export type PartitioningConfig = z.infer<typeof partitioningSchema>;

export const registrationSchema = z
  .object({
    type: z.literal('glue').describe('Register partitions in the AWS Glue Data Catalog.'),
    database: z.string().min(1).describe('Glue database.'),
    table: z.string().min(1).describe('Glue table (create it with `ksw ddl`).'),
    catalogId: z.string().optional().describe("Catalog (account) id; default the caller's."),
    endpoint: z.url().optional().describe('Glue endpoint override (tests, VPC endpoints).'),
  })
  .strict()
  .describe(
    'Optional: when a partition gets its first file (in this process), add it to the catalog with ' +
      'BatchCreatePartition (already existing partitions are fine). Not needed with the partition projection ' +
      'that `ksw ddl` prints; failures are logged, counted and retried with the next file, never block acks.',
  );

export type RegistrationConfig = z.infer<typeof registrationSchema>;

export const icebergSchema = z
  .object({
    catalog: z
      .object({
        type: z
          .literal('glue')
          .describe(
            "glue: the AWS Glue Data Catalog (Iceberg table type), as Iceberg's GlueCatalog keeps it. REST catalogs " +
              "(S3 Tables' endpoint with SigV4) are not implemented yet.",
          ),
        database: z.string().min(1).describe('Glue database (it must exist).'),
        table: z
          .string()
          .min(1)
          .describe(
            'Glue table; created as an Iceberg table at `s3://<bucket>/<prefix>` on the first commit if missing.',
          ),
        catalogId: z.string().optional().describe("Catalog (account) id; default the caller's."),
        endpoint: z.url().optional().describe('Glue endpoint override (tests, VPC endpoints).'),
      })
      .strict(),
    commitIntervalMs: z
      .number()
      .int()
      .min(10)
      .default(10_000)
      .describe(
        'Uploaded files wait at most this long for the next table commit (one snapshot carries every file ' +
          'uploaded meanwhile). Events are acked, and the checkpoint moves, only once their file is committed.',
      ),
    maxFilesPerCommit: z
      .number()
      .int()
      .min(1)
      .default(1_000)
      .describe('Commit as soon as this many files wait.'),
  })
  .strict()
  .describe(
    'Optional: commit the data files to an Apache Iceberg v2 table (schema with field ids from the columns, ' +
      'partition spec from `partitioning`: one time transform, the finest of {yyyy} {MM} {dd} {HH}, and identity for ' +
      '{field:...}). Each snapshot summary lists the committed files per shard (`ksw.files`): after a crash a ' +
      'file is never committed twice and no acked event is missing. Quarantine files stay outside the table.',
  );

export type IcebergConfig = z.infer<typeof icebergSchema>;

export const parquetSinkConfigSchema = z
  .object({
    type: z.literal('s3_parquet'),
    bucket: z.string().min(3).describe('Destination S3 bucket.'),
    prefix: z
      .string()
      .default('')
      .describe(
        'Key prefix; objects are written at `<prefix>[<partition>/]<stream>_<shardId>_<first>_<last>.parquet` where ' +
          'first/last are the positions of the first and last event of the file (`sequence`, `.sub` for KPL ' +
          'sub-records, `-index` for the n-th event of a record). The key is deterministic so a replay overwrites ' +
          'instead of duplicating. End it with "/" to get a folder.',
      ),
    schema: z
      .enum(builtInSchemas)
      .default('generic')
      .describe(
        'Built-in column set. generic: the metadata columns, `columns`, then the whole event (or what `columns` ' +
          'did not take, see `recordContent`) as JSON in `recordColumn`. spans: the flat span document ' +
          '(core/documents.ts SpanDocument) with int64 nanoseconds plus TIMESTAMP(MICROS) startTime/endTime, ' +
          'attribute maps, status/scope/sampling structs, events and links lists. red_metrics: the RED window ' +
          'document (RedWindowDocument). `columns` are appended to the built-in ones.',
      ),
    compression: z.enum(['zstd', 'snappy']).default('zstd').describe('Parquet page compression codec.'),
    rowGroupRows: z
      .number()
      .int()
      .min(1)
      .default(122_880)
      .describe('Rows per Parquet row group (DuckDB default; a multiple of its 2048-row vectors).'),
    partitioning: partitioningSchema.optional(),
    roll: z
      .object({
        maxFileBytes: z
          .number()
          .int()
          .min(1)
          .default(128 * MiB)
          .describe(
            'Roll a file once its buffered rows take this many bytes of memory (estimated from the rows: text ' +
              'length plus a per-value overhead; the same estimate the memory cap uses). Default 128 MiB; the ' +
              'Parquet file is several times smaller.',
          ),
        maxFileRows: z
          .number()
          .int()
          .min(1)
          .default(1_000_000)
          .describe('Roll a file once it holds this many rows.'),
        maxFileAgeMs: z
          .number()
          .int()
          .min(1)
          .default(300_000)
          .describe('Roll a file this long after its first event was buffered, however small it is.'),
        partitions: z
          .array(
            z
              .object({
                match: z
                  .string()
                  .min(1)
                  .refine(isRegExp, 'not a valid regular expression')
                  .describe(
                    'Regular expression tested against the partition path (e.g. `service=(batch|audit)(/|$)` for ' +
                      '`day=2026-01-02/hour=03/service=batch`); the first entry that matches applies.',
                  ),
                maxFileBytes: z.number().int().min(1).optional().describe('Overrides roll.maxFileBytes.'),
                maxFileRows: z.number().int().min(1).optional().describe('Overrides roll.maxFileRows.'),
                maxFileAgeMs: z.number().int().min(1).optional().describe('Overrides roll.maxFileAgeMs.'),
              })
              .strict(),
          )
          .default([])
          .describe(
            'Roll limits per partition (needs `partitioning`): quiet partitions can stay open longer (fewer, larger ' +
              'files, acked later), busy ones roll on size. Quarantine files use the defaults. A longer age holds ' +
              'acks (and the checkpoint) back that long, and open files count against `memory.maxBufferedBytes`.',
          ),
      })
      .prefault({})
      .describe(
        'When to close a file; each (partition, shard) has its own file. Rows and bytes are checked between records ' +
          '(the events of one record stay in one file, so a file may exceed a limit by the events of one record). ' +
          'Rows and bytes are deterministic (a replay ' +
          'rolls at the same events, so it writes the same keys); age and the memory cap depend on timing, so after ' +
          'a crash they may cut files elsewhere: keys differ, but every record is still in exactly one file.',
      ),
    memory: z
      .object({
        maxBufferedBytes: z
          .number()
          .int()
          .min(1024)
          .default(256 * MiB)
          .describe(
            'Cap on the bytes of rows held in memory across all open files of this sink (plus files rolled but not ' +
              'yet encoded). Past three quarters of it the largest open file is rolled first; writers wait while ' +
              'rolled files awaiting encoding exceed a quarter of it.',
          ),
      })
      .prefault({})
      .describe('Global memory cap across partitions and shards.'),
    upload: z
      .object({
        multipartThresholdBytes: z
          .number()
          .int()
          .min(5 * MiB)
          .default(64 * MiB)
          .describe(
            'Files at least this large are uploaded in parts (multipart upload), others with one PUT.',
          ),
        partSizeBytes: z
          .number()
          .int()
          .min(5 * MiB)
          .default(16 * MiB)
          .describe('Part size of multipart uploads (S3 minimum 5 MiB; at most 10,000 parts).'),
      })
      .prefault({})
      .describe(
        'Large files are streamed from disk in parts; a failed part is retried alone. Add an S3 lifecycle rule ' +
          '(AbortIncompleteMultipartUpload) for parts left behind by a crash.',
      ),
    manifestPrefix: z
      .string()
      .optional()
      .describe(
        'Where per-file manifests go (default `<prefix>_ksw/manifests/`): `<stream>/<shardId>/<last position>_<hash>.json` ' +
          "with the data key, partition, rows, min/max event time and the exact positions of the file's events. " +
          "Written before the data object; a file is committed when its data object exists with the manifest's " +
          'file id. On shard open they tell which replayed events are already in a committed file.',
      ),
    columns: z
      .array(parquetColumnSchema)
      .default([])
      .describe(
        'Typed columns extracted from each event, after the metadata columns ' +
          '(_stream, _shard_id, _sequence_number, _sub_sequence_number, _event_index, _partition_key, _arrival_time) ' +
          "and the built-in schema's columns. An event with a value that cannot be converted goes to the dead-letter queue.",
      ),
    recordColumn: z
      .union([columnName, z.literal(false)])
      .optional()
      .describe(
        'Name of a VARCHAR column holding the event as JSON, or false for none. Default: `_record` for the generic ' +
          'schema, none for spans and red_metrics.',
      ),
    recordContent: z
      .enum(['all', 'rest'])
      .default('all')
      .describe(
        'What `recordColumn` holds: all = the whole event; rest = the event without the values taken by `columns` ' +
          '(a struct column takes only its declared fields; objects left empty are dropped), so nothing is stored twice.',
      ),
    registration: registrationSchema.optional(),
    iceberg: icebergSchema.optional(),
    uploadConcurrency: z
      .number()
      .int()
      .min(1)
      .default(4)
      .describe(
        'Uploads in flight at most. Writers wait (backpressure) while more than twice this many files are rolled but ' +
          'not yet uploaded.',
      ),
    tmpDir: z
      .string()
      .min(1)
      .default(() => os.tmpdir())
      .describe('Directory for Parquet files between encoding and upload (default: os.tmpdir()).'),
    closeTimeoutMs: z
      .number()
      .int()
      .min(0)
      .default(30_000)
      .describe(
        'On close, how long to keep retrying failed uploads before giving up. Events of files given up are not acked, ' +
          'so they are read again after restart.',
      ),
  })
  .superRefine((config, ctx) => {
    let partitionNames: string[] = [];
    if (config.partitioning) {
      try {
        partitionNames = parseTemplate(config.partitioning.template).map((s) => s.name);
      } catch (err) {
        ctx.addIssue({ code: 'custom', path: ['partitioning', 'template'], message: (err as Error).message });
      }
    }
    for (const problem of columnNameProblems(resolveSchema(config), partitionNames)) {
      ctx.addIssue({ code: 'custom', ...problem });
    }
    if (config.iceberg && config.registration) {
      ctx.addIssue({
        code: 'custom',
        path: ['registration'],
        message: 'not with iceberg: the Iceberg table lists its files itself; remove registration',
      });
    }
    if (config.roll.partitions.length > 0 && !config.partitioning) {
      ctx.addIssue({
        code: 'custom',
        path: ['roll', 'partitions'],
        message:
          'needs `partitioning` (without it there is only one partition: set the roll limits themselves)',
      });
    }
    const largest = Math.max(
      config.roll.maxFileBytes,
      ...config.roll.partitions.map((p) => p.maxFileBytes ?? 0),
    );
    if (config.upload.partSizeBytes * 10_000 < largest) {
      ctx.addIssue({
        code: 'custom',
        path: ['upload', 'partSizeBytes'],
        message: 'too small for roll.maxFileBytes (S3 allows 10,000 parts)',
      });
    }
    if (config.schema !== 'generic' && config.recordContent === 'rest') {
      ctx.addIssue({
        code: 'custom',
        path: ['recordContent'],
        message: 'rest applies to the generic schema only',
      });
    }
    if (
      config.partitioning?.time.source === 'event' &&
      !config.partitioning.time.field &&
      config.schema === 'generic'
    ) {
      ctx.addIssue({
        code: 'custom',
        path: ['partitioning', 'time', 'field'],
        message: 'required with source event and the generic schema, e.g. field: timestamp',
      });
    }
  })
  .describe(
    'Writes events as Parquet files to S3, one file series per (partition, shard); acks events once their file is uploaded.',
  );

export type ParquetSinkConfig = z.infer<typeof parquetSinkConfigSchema>;

function isRegExp(source: string): boolean {
  try {
    new RegExp(source);
    return true;
  } catch {
    return false;
  }
}

/** The roll limits of a file. */
export interface RollLimits {
  readonly maxFileBytes: number;
  readonly maxFileRows: number;
  readonly maxFileAgeMs: number;
}

/**
 * The roll limits per partition path: `roll` with the first matching `roll.partitions` entry applied.
 * Remembered per path (bounded: cleared when it grows past 10,000 paths).
 */
export function rollLimitsOf(roll: ParquetSinkConfig['roll']): (partition: string | null) => RollLimits {
  const defaults: RollLimits = {
    maxFileBytes: roll.maxFileBytes,
    maxFileRows: roll.maxFileRows,
    maxFileAgeMs: roll.maxFileAgeMs,
  };
  if (roll.partitions.length === 0) return () => defaults;
  const rules = roll.partitions.map((p) => ({ re: new RegExp(p.match), p }));
  const cache = new Map<string, RollLimits>();
  return (partition) => {
    if (partition === null) return defaults;
    let limits = cache.get(partition);
    if (limits) return limits;
    const rule = rules.find((r) => r.re.test(partition))?.p;
    limits = rule
      ? {
          maxFileBytes: rule.maxFileBytes ?? defaults.maxFileBytes,
          maxFileRows: rule.maxFileRows ?? defaults.maxFileRows,
          maxFileAgeMs: rule.maxFileAgeMs ?? defaults.maxFileAgeMs,
        }
      : defaults;
    if (cache.size >= 10_000) cache.clear();
    cache.set(partition, limits);
    return limits;
  };
}
