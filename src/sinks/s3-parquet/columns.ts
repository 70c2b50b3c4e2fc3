/**
 * The columns of a sink's files and how an event becomes a row. Every value is converted and checked in JS
 * (so a bad value is dead-lettered per event, never fails a file) and staged as the JSON text of its cell:
 * a row is one line of NDJSON that DuckDB's `read_json` reads with an explicit column spec (encoder.ts).
 * Against the appender (one native call per cell, nested values cast from staged JSON text) it replaced, on
 * the span data set (bench/parquet.ts, same run, one core): 9 flat columns 102k -> 116k rows/s, the spans
 * schema 42k -> 49k, partitioned 35k -> 43k. int64 digits are copied, never rounded through a double.
 */
import type { PipelineEvent } from '../../core/records.js';
import {
  type FieldSpec,
  METADATA_COLUMNS,
  type ParquetColumnConfig,
  type ScalarColumnType,
  type TypeSpec,
} from './config.js';
import { type Cell, convertValue, floorDiv, lookupPath, stringifyJson, type TimeUnit } from './convert.js';

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

/** A value that does not fit its column, and why. */
class Rejected {
  constructor(readonly reason: string) {}
}

/**
 * Turns a value into its staged form: a JSON-ready JS value whose `JSON.stringify` text is what DuckDB's
 * `read_json` reads into the column's type (see encoder.ts), or a Rejected.
 */
type Stager = (value: unknown) => unknown;

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
 * An int64 as a JSON value: a safe integer as a number, anything larger as its exact digits in a string
 * (DuckDB casts the string to BIGINT exactly, and refuses rather than rounds what does not fit).
 */
function int64Value(cell: bigint): number | string {
  const n = Number(cell);
  return Number.isSafeInteger(n) ? n : cell.toString();
}

/**
 * Compiles a nested spec into a function returning the value in canonical form: every struct field present
 * (null when missing) and nothing else, int64s exact, timestamps as text. Throws NestedError with the path.
 */
function nestedStager(spec: TypeSpec, where: string): (value: unknown) => unknown {
  switch (spec.type) {
    case 'list': {
      const item = nestedStager(spec.items!, `${where}[]`);
      return (value) => {
        if (!Array.isArray(value))
          throw new NestedError(`${at(where)}expected a list, got ${describe(value)}`);
        const out: unknown[] = new Array(value.length);
        for (let i = 0; i < value.length; i++) {
          out[i] = value[i] === undefined || value[i] === null ? null : item(value[i]);
        }
        return out;
      };
    }
    case 'map': {
      if (spec.values!.type === 'text') {
        // Any value is valid text, so the object is staged as it is: reading a JSON object into
        // MAP(VARCHAR, VARCHAR) keeps strings and gives other values as their JSON text, as `text` does.
        // No copy and no loop: attribute maps are most of a span.
        return (value) => {
          if (value === null || typeof value !== 'object' || Array.isArray(value)) {
            throw new NestedError(`${at(where)}expected a map (object), got ${describe(value)}`);
          }
          return value;
        };
      }
      const item = nestedStager(spec.values!, `${where}{}`);
      return (value) => {
        if (value === null || typeof value !== 'object' || Array.isArray(value)) {
          throw new NestedError(`${at(where)}expected a map (object), got ${describe(value)}`);
        }
        const out: Record<string, unknown> = {};
        for (const key of Object.keys(value)) {
          const v = (value as Record<string, unknown>)[key];
          if (v === undefined) continue;
          out[key] = v === null ? null : item(v);
        }
        return out;
      };
    }
    case 'struct': {
      const fields = spec.fields!.map((f: FieldSpec) => ({
        name: f.name,
        path: (f.path ?? f.name).split('.'),
        stage: nestedStager(f, `${where}.${f.name}`),
      }));
      return (value) => {
        if (value === null || typeof value !== 'object' || Array.isArray(value)) {
          throw new NestedError(`${at(where)}expected a struct (object), got ${describe(value)}`);
        }
        const out: Record<string, unknown> = {};
        for (let i = 0; i < fields.length; i++) {
          const f = fields[i]!;
          const v = lookupPath(value, f.path);
          out[f.name] = v === undefined || v === null ? null : f.stage(v);
        }
        return out;
      };
    }
    default: {
      const type = spec.type;
      const unit = spec.timeUnit ?? 'ms';
      if (
        type === 'string' ||
        type === 'text' ||
        type === 'int32' ||
        type === 'int64' ||
        type === 'boolean'
      ) {
        // Staged inside a nested value exactly as in a column of their own.
        const leaf = scalarStager(type, unit);
        return (value) => {
          const staged = leaf(value);
          if (staged instanceof Rejected) throw new NestedError(`${at(where)}${staged.reason}`);
          return staged;
        };
      }
      return (value) => {
        const converted = convertValue(type, value, unit);
        if (!converted.ok) throw new NestedError(`${at(where)}${converted.reason}`);
        const cell = converted.value;
        if (cell === null) return null;
        switch (type) {
          case 'double':
            // Inside a nested value NaN and the infinities have no JSON form DuckDB reads back.
            if (!Number.isFinite(cell as number)) {
              throw new NestedError(`${at(where)}${String(cell)} cannot be stored inside a nested column`);
            }
            return cell;
          case 'timestamp_ms':
            return formatMicros((cell as bigint) * 1000n);
          case 'timestamp_us':
            return formatMicros(cell as bigint);
          default:
            return cell;
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

/** A column with its extraction path and stager, compiled once per sink. */
interface ColumnStager {
  readonly name: string;
  readonly path: readonly string[];
  readonly stage: Stager;
}

/**
 * The staged value of a converted cell of a scalar column. Timestamps are staged as integer strings in the
 * column's unit (milliseconds or microseconds) and converted in the COPY query; a double that JSON cannot
 * write as a number (NaN, the infinities, -0) as the text DuckDB casts back to it.
 */
export function stagedCell(type: ScalarColumnType, cell: Cell): unknown {
  if (cell === null) return null;
  switch (type) {
    case 'int64':
      return int64Value(cell as bigint);
    case 'timestamp_ms':
    case 'timestamp_us':
      return String(cell);
    case 'double':
      return doubleValue(cell as number);
    default:
      return cell;
  }
}

function doubleValue(v: number): number | string {
  if (Number.isFinite(v)) return v === 0 && 1 / v < 0 ? '-0.0' : v;
  return String(v);
}

/**
 * `s` is a canonical non-negative decimal (digits, no leading zero) of at most `maxDigits` digits: then it is
 * already its staged form, without a BigInt round trip. Anything else takes the general path.
 */
function isShortCanonical(s: string, maxDigits: number): boolean {
  const n = s.length;
  if (n === 0 || n > maxDigits || (n > 1 && s.charCodeAt(0) === 48)) return false;
  for (let i = 0; i < n; i++) {
    const c = s.charCodeAt(i);
    if (c < 48 || c > 57) return false;
  }
  return true;
}

const UNIT_DIGITS: Record<TimeUnit, number> = { s: 0, ms: 3, us: 6, ns: 9 };

/**
 * Compiles the stager of a scalar column: fast paths for the usual shapes (strings, safe integers, canonical
 * decimal strings), everything else through `convertValue`, which defines the semantics (and the reasons).
 * Each fast path stages a value DuckDB reads as exactly the cell the general path gives.
 */
function scalarStager(type: ScalarColumnType, unit: TimeUnit): Stager {
  const general = (value: unknown): unknown => {
    const converted = convertValue(type, value, unit);
    return converted.ok ? stagedCell(type, converted.value) : new Rejected(converted.reason);
  };
  switch (type) {
    case 'string':
    case 'text':
      return (v) => (typeof v === 'string' ? v : general(v));
    case 'int64':
      // 18 digits are below 2^63 whatever they are; longer strings are range-checked by the general path.
      return (v) =>
        (typeof v === 'string' && isShortCanonical(v, 18)) ||
        (typeof v === 'number' && Number.isSafeInteger(v))
          ? v
          : general(v);
    case 'int32':
      return (v) =>
        typeof v === 'number' && Number.isInteger(v) && v >= -2147483648 && v <= 2147483647 ? v : general(v);
    case 'double':
      return (v) => (typeof v === 'number' ? doubleValue(v) : general(v));
    case 'boolean':
      return (v) => (typeof v === 'boolean' ? v : general(v));
    case 'timestamp_ms':
    case 'timestamp_us': {
      // A non-negative canonical decimal in `unit` scales by moving the decimal point: dropping digits (the
      // floor, for non-negative values) or appending zeros. A result with fewer digits than the largest
      // valid value (9999-12-31: 15 digits in ms, 18 in us) is in range.
      const shift = (type === 'timestamp_ms' ? 3 : 6) - UNIT_DIGITS[unit];
      const maxDigits = type === 'timestamp_ms' ? 14 : 17;
      const zeros = shift > 0 ? '0'.repeat(shift) : '';
      return (v) => {
        let digits: string | undefined;
        if (typeof v === 'string' && isShortCanonical(v, 21)) digits = v;
        else if (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0) digits = String(v);
        if (digits !== undefined) {
          const scaled =
            shift < 0
              ? digits.length <= -shift
                ? '0'
                : digits.slice(0, shift)
              : digits === '0'
                ? digits
                : digits + zeros;
          if (scaled.length <= maxDigits) return scaled;
        }
        return general(v);
      };
    }
    default:
      return general;
  }
}

function stager(column: ParquetColumnConfig): ColumnStager {
  const path = (column.path ?? column.name).split('.');
  if (isScalar(column)) {
    const stage = scalarStager(column.type, column.timeUnit ?? 'ms');
    return { name: column.name, path, stage: (v) => (v === undefined || v === null ? null : stage(v)) };
  }
  const stage = nestedStager(column, '');
  return {
    name: column.name,
    path,
    stage: (value) => {
      if (value === undefined || value === null) return null;
      try {
        return stage(value);
      } catch (err) {
        if (err instanceof NestedError) return new Rejected(err.message);
        throw err;
      }
    },
  };
}

/**
 * One row, staged: its event's position (files are sorted by it, manifests list it) and its cells as the
 * text of one JSON object keyed `c0`, `c1`, ... in column order: a line of the NDJSON that the encoder hands
 * to DuckDB's `read_json`. Serialised when the event is written, so later changes to the event (other sinks
 * share it) cannot reach the file.
 */
export class StagedRow {
  /** Quarantine files only: the partition the row would have gone to (the encoder adds it as a cell). */
  partition: string | undefined = undefined;
  constructor(
    readonly sequenceNumber: string,
    readonly subSequenceNumber: number,
    readonly index: number,
    readonly text: string,
  ) {}
}

export type RowResult =
  | { readonly ok: true; readonly row: StagedRow }
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

/** Cells of a row before the configured columns: sequence, sub-sequence, event index, partition key, arrival. */
export const ROW_METADATA_CELLS = 5;

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
 * A function making the row object `{c0: cells[0], c1: cells[1], ...}` from an object literal, so every row
 * of a sink has the same shape (one hidden class: fast to build, fast for JSON.stringify). The generated
 * code holds only the column count, never a configured name.
 */
function rowObjectFactory(cells: number): (values: readonly unknown[]) => Record<string, unknown> {
  const fields = Array.from({ length: cells }, (_, i) => `c${i}: v[${i}]`).join(', ');
  return new Function('v', `return { ${fields} };`) as (
    values: readonly unknown[],
  ) => Record<string, unknown>;
}

/**
 * Turns events into staged rows: metadata columns, configured columns, then the optional record column.
 * A row holds the cells of the `row` columns only (not _stream and _shard_id). Every value is converted
 * (and so checked) here, so a bad one dead-letters its event instead of failing the file.
 */
export class RowBuilder {
  readonly columns: readonly TableColumn[];
  private readonly stagers: readonly ColumnStager[];
  private readonly recordColumn: boolean;
  private readonly restPaths: readonly (readonly string[])[] | undefined;
  private readonly makeRow: (values: readonly unknown[]) => Record<string, unknown>;
  private readonly cells: unknown[];

  constructor(
    columns: readonly ParquetColumnConfig[],
    recordColumn: string | false,
    recordContent: 'all' | 'rest' = 'all',
  ) {
    this.stagers = columns.map(stager);
    this.recordColumn = recordColumn !== false;
    this.restPaths = recordContent === 'rest' ? columns.flatMap((c) => takenPaths(c, [])) : undefined;
    this.columns = [
      ...METADATA_COLUMNS.map((name) => ({ name, ...METADATA[name] })),
      ...columns.map(tableColumnOf),
      ...(recordColumn === false ? [] : [tableColumnOf({ name: recordColumn, type: 'json' })]),
    ];
    const cellCount = ROW_METADATA_CELLS + columns.length + (this.recordColumn ? 1 : 0);
    this.makeRow = rowObjectFactory(cellCount);
    this.cells = new Array(cellCount).fill(null);
  }

  build(event: PipelineEvent): RowResult {
    const { origin } = event;
    const arrival = origin.arrivalTime.getTime();
    const cells = this.cells;
    cells[0] = origin.sequenceNumber;
    cells[1] = origin.subSequenceNumber;
    cells[2] = event.index;
    cells[3] = origin.partitionKey;
    cells[4] = Number.isNaN(arrival) ? null : arrival;
    const value = event.value;
    const stagers = this.stagers;
    let c = ROW_METADATA_CELLS;
    for (let i = 0; i < stagers.length; i++) {
      const column = stagers[i]!;
      const staged = column.stage(lookupPath(value, column.path));
      if (staged instanceof Rejected) {
        cells.fill(null);
        return { ok: false, reason: `column ${column.name}: ${staged.reason}` };
      }
      cells[c++] = staged;
    }
    if (this.recordColumn) {
      try {
        cells[c] = stringifyJson(this.restPaths ? withoutPaths(value, this.restPaths) : value);
      } catch (err) {
        cells.fill(null);
        return {
          ok: false,
          reason: `record column: cannot serialize the event as JSON: ${(err as Error).message}`,
        };
      }
    }
    let text: string;
    try {
      // Native JSON.stringify, or the exact writer when a map holds a bigint.
      text = stringifyJson(this.makeRow(cells));
    } catch (err) {
      return { ok: false, reason: `cannot serialize the row as JSON: ${(err as Error).message}` };
    } finally {
      // The cells array is reused: it must not keep the event's values alive.
      cells.fill(null);
    }
    return {
      ok: true,
      row: new StagedRow(origin.sequenceNumber, origin.subSequenceNumber, event.index, text),
    };
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
