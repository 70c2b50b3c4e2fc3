/**
 * The columns of a sink's files and how an event becomes a row. Scalar columns are converted to typed
 * cells for DuckDB's appender. Nested columns (list/map/struct) are converted in JS too (every leaf is
 * checked, so a bad value is dead-lettered per event) and staged as canonical JSON text that the COPY
 * query casts to the nested type: measured on 100k spans with two string maps and a struct, that is
 * ~85k rows/s against ~5k rows/s through the appender's nested values (see README, Data lake).
 */
import type { PipelineEvent } from '../../core/records.js';
import {
  type FieldSpec,
  METADATA_COLUMNS,
  type ParquetColumnConfig,
  type ScalarColumnType,
  type TypeSpec,
} from './config.js';
import { type Cell, type Conversion, convertValue, floorDiv, lookupPath, stringifyJson } from './convert.js';

/** DuckDB type of a column as stored in the file, e.g. `BIGINT` or `MAP(VARCHAR, VARCHAR)`. */
export type SqlType = string;

/**
 * A column of the output file. `row` columns are cells of each row; `stream` and `shard` are the same for
 * every row of a file (one file = one shard), so they are written as constants instead of per row.
 * `staged` is how the cell reaches DuckDB: its own type, or VARCHAR JSON for nested types (cast in COPY).
 */
export interface TableColumn {
  readonly name: string;
  readonly sqlType: SqlType;
  readonly staged: StagedType;
  readonly source: 'row' | 'stream' | 'shard';
  /** The configured type, for DDL generation (metadata columns have a scalar spec too). */
  readonly spec: TypeSpec;
}

export type StagedType =
  | 'VARCHAR'
  | 'BIGINT'
  | 'INTEGER'
  | 'DOUBLE'
  | 'BOOLEAN'
  | 'TIMESTAMP_MS'
  | 'TIMESTAMP'
  | 'NESTED';

const SCALAR_SQL: Record<ScalarColumnType, Exclude<StagedType, 'NESTED'>> = {
  string: 'VARCHAR',
  text: 'VARCHAR',
  int32: 'INTEGER',
  int64: 'BIGINT',
  double: 'DOUBLE',
  boolean: 'BOOLEAN',
  timestamp_ms: 'TIMESTAMP_MS', // Parquet TIMESTAMP(MILLIS)
  timestamp_us: 'TIMESTAMP', // Parquet TIMESTAMP(MICROS)
  // Plain UTF8 text rather than DuckDB's JSON type, whose Parquet JSON annotation not every engine reads.
  json: 'VARCHAR',
};

const ATHENA_SCALAR: Record<ScalarColumnType, string> = {
  string: 'string',
  text: 'string',
  int32: 'int',
  int64: 'bigint',
  double: 'double',
  boolean: 'boolean',
  timestamp_ms: 'timestamp',
  timestamp_us: 'timestamp',
  json: 'string',
};

export const quoteIdentifier = (name: string) => `"${name.replaceAll('"', '""')}"`;

export function isScalar(spec: TypeSpec): spec is TypeSpec & { type: ScalarColumnType } {
  return spec.type !== 'list' && spec.type !== 'map' && spec.type !== 'struct';
}

/** The DuckDB type of a (possibly nested) spec. */
export function sqlTypeOf(spec: TypeSpec): SqlType {
  switch (spec.type) {
    case 'list':
      return `${sqlTypeOf(spec.items!)}[]`;
    case 'map':
      return `MAP(VARCHAR, ${sqlTypeOf(spec.values!)})`;
    case 'struct':
      return `STRUCT(${spec.fields!.map((f) => `${quoteIdentifier(f.name)} ${sqlTypeOf(f)}`).join(', ')})`;
    default:
      return SCALAR_SQL[spec.type];
  }
}

/** The Athena/Hive DDL type of a spec: string, bigint, array<...>, map<string,...>, struct<a:...>. */
export function athenaTypeOf(spec: TypeSpec): string {
  switch (spec.type) {
    case 'list':
      return `array<${athenaTypeOf(spec.items!)}>`;
    case 'map':
      return `map<string,${athenaTypeOf(spec.values!)}>`;
    case 'struct':
      return `struct<${spec.fields!.map((f) => `${f.name.toLowerCase()}:${athenaTypeOf(f)}`).join(',')}>`;
    default:
      return ATHENA_SCALAR[spec.type];
  }
}

/** A failed nested conversion, carrying the path to the offending value. */
class NestedError extends Error {}

type NestedWriter = (value: unknown) => string;

const pad = (n: number, width: number) => String(n).padStart(width, '0');

/** `YYYY-MM-DD HH:MM:SS.ffffff` for microseconds since the epoch (years 0001..9999, as convert checks). */
export function formatMicros(micros: bigint): string {
  const ms = floorDiv(micros, 1000n);
  const date = new Date(Number(ms));
  const fraction = Number(micros - ms * 1000n) + date.getUTCMilliseconds() * 1000;
  return (
    `${pad(date.getUTCFullYear(), 4)}-${pad(date.getUTCMonth() + 1, 2)}-${pad(date.getUTCDate(), 2)} ` +
    `${pad(date.getUTCHours(), 2)}:${pad(date.getUTCMinutes(), 2)}:${pad(date.getUTCSeconds(), 2)}.${pad(fraction, 6)}`
  );
}

/**
 * Compiles a spec into a function writing a value as the canonical JSON the COPY cast expects: every
 * struct field present (null when missing), int64 as exact digits, timestamps as text, nothing else.
 */
function nestedWriter(spec: TypeSpec, where: string): NestedWriter {
  switch (spec.type) {
    case 'list': {
      const item = nestedWriter(spec.items!, `${where}[]`);
      return (value) => {
        if (!Array.isArray(value))
          throw new NestedError(`${at(where)}expected a list, got ${describe(value)}`);
        let out = '[';
        for (let i = 0; i < value.length; i++) {
          if (i > 0) out += ',';
          out += value[i] === undefined || value[i] === null ? 'null' : item(value[i]);
        }
        return `${out}]`;
      };
    }
    case 'map': {
      if (spec.values!.type === 'text') {
        // Any value is valid text, so the object's own JSON is already canonical: the JSON cast to
        // MAP(VARCHAR, VARCHAR) keeps strings and writes other values as their JSON text, as `text` does.
        // One native JSON.stringify instead of a loop: attribute maps are most of a span.
        return (value) => {
          if (value === null || typeof value !== 'object' || Array.isArray(value)) {
            throw new NestedError(`${at(where)}expected a map (object), got ${describe(value)}`);
          }
          return stringifyJson(value);
        };
      }
      const item = nestedWriter(spec.values!, `${where}{}`);
      return (value) => {
        if (value === null || typeof value !== 'object' || Array.isArray(value)) {
          throw new NestedError(`${at(where)}expected a map (object), got ${describe(value)}`);
        }
        let out = '{';
        let first = true;
        for (const key of Object.keys(value)) {
          const v = (value as Record<string, unknown>)[key];
          if (v === undefined) continue;
          out += `${first ? '' : ','}${JSON.stringify(key)}:${v === null ? 'null' : item(v)}`;
          first = false;
        }
        return `${out}}`;
      };
    }
    case 'struct': {
      const fields = spec.fields!.map((f: FieldSpec) => ({
        key: JSON.stringify(f.name),
        path: (f.path ?? f.name).split('.'),
        write: nestedWriter(f, `${where}.${f.name}`),
      }));
      return (value) => {
        if (value === null || typeof value !== 'object' || Array.isArray(value)) {
          throw new NestedError(`${at(where)}expected a struct (object), got ${describe(value)}`);
        }
        let out = '{';
        for (let i = 0; i < fields.length; i++) {
          const f = fields[i]!;
          const v = lookupPath(value, f.path);
          out += `${i > 0 ? ',' : ''}${f.key}:${v === undefined || v === null ? 'null' : f.write(v)}`;
        }
        return `${out}}`;
      };
    }
    default: {
      const type = spec.type;
      const unit = spec.timeUnit ?? 'ms';
      return (value) => {
        const converted = convertValue(type, value, unit);
        if (!converted.ok) throw new NestedError(`${at(where)}${converted.reason}`);
        const cell = converted.value;
        if (cell === null) return 'null';
        switch (type) {
          case 'double':
            // JSON has no NaN/Infinity and DuckDB's JSON cast turns their text forms into NULL.
            if (!Number.isFinite(cell as number)) {
              throw new NestedError(`${at(where)}${String(cell)} cannot be stored inside a nested column`);
            }
            return String(cell);
          case 'timestamp_ms':
            return `"${formatMicros((cell as bigint) * 1000n)}"`;
          case 'timestamp_us':
            return `"${formatMicros(cell as bigint)}"`;
          case 'int32':
          case 'int64':
          case 'boolean':
            return String(cell);
          default:
            return JSON.stringify(cell);
        }
      };
    }
  }
}

/** "at .status.code: " for a value inside a nested column; nothing for the column's own value. */
function at(where: string): string {
  return where ? `at ${where}: ` : '';
}

function describe(value: unknown): string {
  if (Array.isArray(value)) return 'a list';
  if (typeof value === 'string') return JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}…` : value);
  return value === null ? 'null' : typeof value === 'object' ? 'an object' : String(value);
}

/** A column with its extraction path and converter, compiled once per sink. */
interface ColumnExtractor {
  readonly name: string;
  readonly path: readonly string[];
  readonly convert: (value: unknown) => Conversion;
}

function extractor(column: ParquetColumnConfig): ColumnExtractor {
  const path = (column.path ?? column.name).split('.');
  if (isScalar(column)) {
    const { type, timeUnit } = column;
    return { name: column.name, path, convert: (value) => convertValue(type, value, timeUnit) };
  }
  const write = nestedWriter(column, '');
  return {
    name: column.name,
    path,
    convert: (value) => {
      if (value === undefined || value === null) return { ok: true, value: null };
      try {
        return { ok: true, value: write(value) };
      } catch (err) {
        if (err instanceof NestedError) return { ok: false, reason: err.message };
        throw err;
      }
    },
  };
}

export type RowResult =
  | { readonly ok: true; readonly row: Cell[] }
  | { readonly ok: false; readonly reason: string };

const METADATA: Record<(typeof METADATA_COLUMNS)[number], Omit<TableColumn, 'name'>> = {
  _stream: { sqlType: 'VARCHAR', staged: 'VARCHAR', source: 'stream', spec: { type: 'string' } },
  _shard_id: { sqlType: 'VARCHAR', staged: 'VARCHAR', source: 'shard', spec: { type: 'string' } },
  _sequence_number: { sqlType: 'VARCHAR', staged: 'VARCHAR', source: 'row', spec: { type: 'string' } },
  _sub_sequence_number: { sqlType: 'BIGINT', staged: 'BIGINT', source: 'row', spec: { type: 'int64' } },
  _event_index: { sqlType: 'INTEGER', staged: 'INTEGER', source: 'row', spec: { type: 'int32' } },
  _partition_key: { sqlType: 'VARCHAR', staged: 'VARCHAR', source: 'row', spec: { type: 'string' } },
  _arrival_time: {
    sqlType: 'TIMESTAMP_MS',
    staged: 'TIMESTAMP_MS',
    source: 'row',
    spec: { type: 'timestamp_ms' },
  },
};

/** Row cells before the configured columns: sequence, sub-sequence, event index, partition key, arrival. */
export const ROW_METADATA_CELLS = 5;
/** Index in a row of the cells that make an event's position. */
export const SEQUENCE_CELL = 0;
export const SUB_SEQUENCE_CELL = 1;
export const INDEX_CELL = 2;

export function tableColumnOf(column: { name: string } & TypeSpec): TableColumn {
  return {
    name: column.name,
    sqlType: sqlTypeOf(column),
    staged: isScalar(column) ? SCALAR_SQL[column.type] : 'NESTED',
    source: 'row',
    spec: column,
  };
}

export interface RowBuilderOptions {
  readonly columns: readonly ParquetColumnConfig[];
  readonly recordColumn: string | false;
  /** all: the whole event in the record column; rest: what the columns did not take. */
  readonly recordContent?: 'all' | 'rest';
}

/**
 * Turns events into rows: metadata columns, configured columns, then the optional record column.
 * A row holds the cells of the `row` columns only (not _stream and _shard_id).
 */
export class RowBuilder {
  readonly columns: readonly TableColumn[];
  private readonly extractors: readonly ColumnExtractor[];
  private readonly recordColumn: boolean;
  private readonly restPaths: readonly (readonly string[])[] | undefined;

  constructor(
    columns: readonly ParquetColumnConfig[],
    recordColumn: string | false,
    recordContent: 'all' | 'rest' = 'all',
  ) {
    this.extractors = columns.map(extractor);
    this.recordColumn = recordColumn !== false;
    this.restPaths = recordContent === 'rest' ? columns.flatMap((c) => takenPaths(c, [])) : undefined;
    this.columns = [
      ...METADATA_COLUMNS.map((name) => ({ name, ...METADATA[name] })),
      ...columns.map(tableColumnOf),
      ...(recordColumn === false ? [] : [tableColumnOf({ name: recordColumn, type: 'json' })]),
    ];
  }

  build(event: PipelineEvent): RowResult {
    const { origin } = event;
    const arrival = origin.arrivalTime.getTime();
    const row: Cell[] = [
      origin.sequenceNumber,
      BigInt(origin.subSequenceNumber),
      event.index,
      origin.partitionKey,
      Number.isNaN(arrival) ? null : BigInt(arrival),
    ];
    const value = event.value;
    for (const column of this.extractors) {
      const converted = column.convert(lookupPath(value, column.path));
      if (!converted.ok) return { ok: false, reason: `column ${column.name}: ${converted.reason}` };
      row.push(converted.value);
    }
    if (this.recordColumn) {
      try {
        row.push(stringifyJson(this.restPaths ? withoutPaths(value, this.restPaths) : value));
      } catch (err) {
        return {
          ok: false,
          reason: `record column: cannot serialize the event as JSON: ${(err as Error).message}`,
        };
      }
    }
    return { ok: true, row };
  }
}

/** The paths a column stores: its own, or for a struct the paths of its fields (what it does not declare stays). */
function takenPaths(spec: TypeSpec & { name: string; path?: string }, prefix: readonly string[]): string[][] {
  const path = [...prefix, ...(spec.path ?? spec.name).split('.')];
  if (spec.type !== 'struct') return [path];
  return spec.fields!.flatMap((f) => takenPaths(f, path));
}

/**
 * `value` without the values at `paths` (and without objects emptied by removing them). Copies only the
 * objects along the removed paths; the event itself is not changed (other sinks may share it).
 */
export function withoutPaths(value: Record<string, unknown>, paths: readonly (readonly string[])[]): unknown {
  const root: Record<string, unknown> = { ...value };
  const copied = new Set<object>([root]);
  for (const path of paths) {
    const chain: Array<Record<string, unknown>> = [root];
    let current: Record<string, unknown> = root;
    let ok = true;
    for (let i = 0; i < path.length - 1; i++) {
      const next = current[path[i]!];
      if (
        next === null ||
        typeof next !== 'object' ||
        Array.isArray(next) ||
        !Object.hasOwn(current, path[i]!)
      ) {
        ok = false;
        break;
      }
      let copy = next as Record<string, unknown>;
      if (!copied.has(copy)) {
        copy = { ...copy };
        copied.add(copy);
        current[path[i]!] = copy;
      }
      chain.push(copy);
      current = copy;
    }
    if (!ok || !Object.hasOwn(current, path[path.length - 1]!)) continue;
    delete current[path[path.length - 1]!];
    // Remove the objects this left empty, innermost first.
    for (let i = chain.length - 1; i > 0; i--) {
      if (Object.keys(chain[i]!).length > 0) break;
      delete chain[i - 1]![path[i - 1]!];
    }
  }
  return root;
}
