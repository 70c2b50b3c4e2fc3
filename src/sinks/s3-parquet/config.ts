import os from 'node:os';
import { z } from 'zod';

/** Columns every file carries, in this order, before the configured ones. */
export const METADATA_COLUMNS = [
  '_stream',
  '_shard_id',
  '_sequence_number',
  '_sub_sequence_number',
  '_event_index',
  '_partition_key',
  '_arrival_time',
] as const;

export const parquetColumnTypes = [
  'string',
  'int32',
  'int64',
  'double',
  'boolean',
  'timestamp_ms',
  'timestamp_us',
  'json',
] as const;

export type ParquetColumnType = (typeof parquetColumnTypes)[number];

// Athena/Glue lower-case column names and accept only letters, digits and underscores; DuckDB compares
// identifiers case-insensitively. Restricting names here keeps a file readable by every engine.
const columnName = z
  .string()
  .regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'letters, digits and underscores, not starting with a digit')
  .max(255);

export const parquetColumnSchema = z
  .object({
    name: columnName.describe('Column name in the Parquet file.'),
    type: z
      .enum(parquetColumnTypes)
      .describe(
        'Parquet type. string: UTF8 text (numbers and booleans are written as text; objects need json). ' +
          'int32/int64: exact integers from JS numbers, bigints or decimal strings ("1700000000123456789"; ' +
          'never rounded through a double); out of range or non-integer values are dead-lettered. ' +
          'double, boolean. timestamp_ms/timestamp_us: TIMESTAMP(MILLIS/MICROS) from a number or decimal ' +
          'string in `timeUnit`, or an ISO-8601 string (UTC unless it has an offset). ' +
          'json: the sub-value serialized as JSON text (big integers keep all digits).',
      ),
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
  })
  .describe('One configured column. A value missing, undefined or null becomes NULL.');

export type ParquetColumnConfig = z.infer<typeof parquetColumnSchema>;

const MiB = 1024 * 1024;

export const parquetSinkConfigSchema = z
  .object({
    type: z.literal('s3_parquet'),
    bucket: z.string().min(3).describe('Destination S3 bucket.'),
    prefix: z
      .string()
      .default('')
      .describe(
        'Key prefix; objects are written at `<prefix><stream>/<shardId>/<first>_<last>.parquet` where first/last are ' +
          'the positions (sequence number, or `sequence.sub` for KPL sub-records) of the first and last event of the ' +
          'file. The key is deterministic so a replay overwrites instead of duplicating. End it with "/" to get a folder.',
      ),
    compression: z.enum(['zstd', 'snappy']).default('zstd').describe('Parquet page compression codec.'),
    rowGroupRows: z
      .number()
      .int()
      .min(1)
      .default(122_880)
      .describe('Rows per Parquet row group (DuckDB default; a multiple of its 2048-row vectors).'),
    roll: z
      .object({
        maxFileBytes: z
          .number()
          .int()
          .min(1)
          .default(64 * MiB)
          .describe(
            'Roll a shard file once the raw bytes of the events buffered for it reach this (default 64 MiB).',
          ),
        maxFileRows: z
          .number()
          .int()
          .min(1)
          .default(1_000_000)
          .describe('Roll a shard file once it holds this many rows.'),
        maxFileAgeMs: z
          .number()
          .int()
          .min(1)
          .default(60_000)
          .describe('Roll a shard file this long after its first event was buffered, however small it is.'),
      })
      .prefault({})
      .describe(
        'When to close a file. Size limits are checked between Kinesis records: the events decoded from one record ' +
          'always land in the same file, so a file may exceed a limit by one record.',
      ),
    columns: z
      .array(parquetColumnSchema)
      .default([])
      .describe(
        'Typed columns extracted from each event, after the metadata columns ' +
          '(_stream, _shard_id, _sequence_number, _sub_sequence_number, _event_index, _partition_key, _arrival_time). ' +
          'An event with a value that cannot be converted to its column type goes to the dead-letter queue.',
      ),
    recordColumn: z
      .union([columnName, z.literal(false)])
      .default('_record')
      .describe('Name of a VARCHAR column holding the whole event value as JSON, or false for none.'),
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
    const seen = new Set<string>(METADATA_COLUMNS);
    const names = [
      ...config.columns.map((c) => c.name),
      ...(config.recordColumn ? [config.recordColumn] : []),
    ];
    for (const name of names) {
      const key = name.toLowerCase();
      if (seen.has(key))
        ctx.addIssue({ code: 'custom', message: `duplicate column name "${name}"`, path: ['columns'] });
      seen.add(key);
    }
    config.columns.forEach((column, i) => {
      if (column.timeUnit !== 'ms' && !column.type.startsWith('timestamp')) {
        ctx.addIssue({
          code: 'custom',
          message: 'timeUnit applies to timestamp columns only',
          path: ['columns', i],
        });
      }
    });
  })
  .describe(
    'Writes events as Parquet files to S3, one file series per shard; acks events once their file is uploaded.',
  );

export type ParquetSinkConfig = z.infer<typeof parquetSinkConfigSchema>;
