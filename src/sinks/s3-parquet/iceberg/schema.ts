/**
 * The Iceberg view of a Parquet sink's files: the table schema (with field ids) from the sink's columns, the
 * partition spec from its Hive partition template, and the name mapping that lets Iceberg readers resolve
 * the columns of files written without Parquet field ids (Iceberg spec: "Column Projection", name mapping).
 *
 * Field ids: top-level columns get 1..n in column order, then nested fields (list elements, map keys and
 * values, struct fields) get the next ids depth-first, as Iceberg's own `assignFreshIds` does; partition
 * fields start at 1000. Every field is optional: a missing value is a null, never a rejected row.
 */

import type { TableColumn } from '../columns.js';
import type { FieldSpec, TypeSpec } from '../config.js';
import type { Segment } from '../partitioning.js';

export type IcebergPrimitive = 'string' | 'int' | 'long' | 'double' | 'boolean' | 'timestamp';

export type IcebergType =
  | IcebergPrimitive
  | IcebergStruct
  | {
      readonly type: 'list';
      readonly 'element-id': number;
      readonly element: IcebergType;
      readonly 'element-required': boolean;
    }
  | {
      readonly type: 'map';
      readonly 'key-id': number;
      readonly key: IcebergType;
      readonly 'value-id': number;
      readonly value: IcebergType;
      readonly 'value-required': boolean;
    };

export interface IcebergField {
  readonly id: number;
  readonly name: string;
  readonly required: boolean;
  readonly type: IcebergType;
}

export interface IcebergStruct {
  readonly type: 'struct';
  readonly fields: readonly IcebergField[];
}

export interface IcebergSchema extends IcebergStruct {
  readonly 'schema-id': number;
}

export interface PartitionField {
  readonly 'source-id': number;
  readonly 'field-id': number;
  readonly name: string;
  readonly transform: 'identity' | 'year' | 'month' | 'day' | 'hour';
}

export interface PartitionSpec {
  readonly 'spec-id': number;
  readonly fields: readonly PartitionField[];
}

/** Name mapping (table property `schema.name-mapping.default`): field id -> the names it has in files. */
export interface MappedField {
  readonly 'field-id': number;
  readonly names: readonly string[];
  readonly fields?: readonly MappedField[];
}

const PRIMITIVE: Record<string, IcebergPrimitive> = {
  string: 'string',
  text: 'string',
  json: 'string',
  int32: 'int',
  int64: 'long',
  double: 'double',
  boolean: 'boolean',
  // DuckDB writes TIMESTAMP columns with isAdjustedToUTC = false: Iceberg's `timestamp` (without zone).
  timestamp_ms: 'timestamp',
  timestamp_us: 'timestamp',
};

/** The schema of a sink's files (metadata columns, schema columns, record column), ids assigned fresh. */
export function icebergSchemaOf(columns: readonly TableColumn[], schemaId = 0): IcebergSchema {
  let next = columns.length + 1;
  const take = () => next++;
  // Top-level ids first (1..n), nested ids after them, depth-first per column.
  const fields = columns.map((c, i) => ({
    id: i + 1,
    name: c.name,
    required: false,
    type: typeOf(c.spec, take),
  }));
  return { type: 'struct', 'schema-id': schemaId, fields };
}

function typeOf(spec: TypeSpec, take: () => number): IcebergType {
  switch (spec.type) {
    case 'list': {
      const elementId = take();
      return {
        type: 'list',
        'element-id': elementId,
        element: typeOf(spec.items!, take),
        'element-required': false,
      };
    }
    case 'map': {
      const keyId = take();
      const valueId = take();
      return {
        type: 'map',
        'key-id': keyId,
        key: 'string',
        'value-id': valueId,
        value: typeOf(spec.values!, take),
        'value-required': false,
      };
    }
    case 'struct': {
      const fields = spec.fields!;
      const ids = fields.map(() => take());
      return {
        type: 'struct',
        fields: fields.map((f: FieldSpec, i) => ({
          id: ids[i]!,
          name: f.name,
          required: false,
          type: typeOf(f, take),
        })),
      };
    }
    default:
      return PRIMITIVE[spec.type]!;
  }
}

/** The highest field id of a schema (Iceberg's `last-column-id`). */
export function lastColumnId(schema: IcebergStruct): number {
  let max = 0;
  const visit = (type: IcebergType) => {
    if (typeof type === 'string') return;
    if (type.type === 'struct') {
      for (const f of type.fields) {
        max = Math.max(max, f.id);
        visit(f.type);
      }
    } else if (type.type === 'list') {
      max = Math.max(max, type['element-id']);
      visit(type.element);
    } else {
      max = Math.max(max, type['key-id'], type['value-id']);
      visit(type.value);
    }
  };
  visit(schema);
  return max;
}

/** The name mapping of a schema: files written by the sink carry no field ids, their names are the fields'. */
export function nameMappingOf(schema: IcebergStruct): MappedField[] {
  const ofType = (type: IcebergType): MappedField[] | undefined => {
    if (typeof type === 'string') return undefined;
    if (type.type === 'struct') return nameMappingOf(type);
    if (type.type === 'list') {
      const inner = ofType(type.element);
      return [{ 'field-id': type['element-id'], names: ['element'], ...(inner ? { fields: inner } : {}) }];
    }
    const inner = ofType(type.value);
    return [
      { 'field-id': type['key-id'], names: ['key'] },
      { 'field-id': type['value-id'], names: ['value'], ...(inner ? { fields: inner } : {}) },
    ];
  };
  return schema.fields.map((f) => {
    const inner = ofType(f.type);
    return { 'field-id': f.id, names: [f.name], ...(inner ? { fields: inner } : {}) };
  });
}

/** Where the partition time comes from: the column holding it, as the sink's partitioning reads it. */
export interface PartitionTimeSource {
  readonly source: 'event' | 'arrival';
  /** Dotted path of the event time (source event). */
  readonly field?: string;
}

const TIME_ORDER = ['yyyy', 'MM', 'dd', 'HH'] as const;
const TRANSFORM_OF = { yyyy: 'year', MM: 'month', dd: 'day', HH: 'hour' } as const;

/**
 * The partition spec of a Hive template: one time transform, the finest of the template's time tokens
 * ({HH} -> hour, {dd} -> day, {MM} -> month, {yyyy} -> year; hour implies the day, so `dt=.../hour=...` is a
 * single hour field), on the timestamp column that holds the partition time; and one identity field per
 * `{field:path}` segment, on the column taken from that path. Throws with the fix when the template cannot
 * be expressed (minutes, a field mixed with text, no timestamp column for the time).
 */
export function partitionSpecOf(
  segments: readonly Segment[] | undefined,
  time: PartitionTimeSource,
  schema: IcebergSchema,
  columns: readonly TableColumn[],
  specId = 0,
): PartitionSpec {
  if (!segments) return { 'spec-id': specId, fields: [] };
  const fields: PartitionField[] = [];
  let fieldId = 1000;
  let finest = -1;
  for (const segment of segments) {
    const kinds = segment.parts.filter((p) => p.kind !== 'literal');
    for (const part of segment.parts) {
      if (part.kind !== 'time') continue;
      if (part.token === 'mm')
        throw new Error(
          `partition "${segment.name}": Iceberg has no minute transform; partition by {HH} at most`,
        );
      finest = Math.max(finest, TIME_ORDER.indexOf(part.token));
    }
    const field = segment.parts.find((p) => p.kind === 'field');
    if (field && field.kind === 'field') {
      if (segment.parts.length !== 1 || kinds.length !== 1)
        throw new Error(
          `partition "${segment.name}": an Iceberg identity partition takes the whole value; write ${segment.name}={field:${field.source}}`,
        );
      const column = columnOfPath(columns, field.source);
      if (!column)
        throw new Error(
          `partition "${segment.name}": no column holds ${field.source}; add { name: ..., type: string, path: ${field.source} } to columns`,
        );
      fields.push({
        'source-id': idOf(schema, column.name),
        'field-id': fieldId++,
        name: segment.name,
        transform: 'identity',
      });
    }
  }
  if (finest >= 0) {
    const column = timeColumn(columns, time);
    if (!column)
      throw new Error(
        `no timestamp column holds the partition time ${time.field ?? '(arrival)'}; add { name: ..., type: timestamp_us, path: ${time.field} } to columns`,
      );
    const transform = TRANSFORM_OF[TIME_ORDER[finest]!];
    fields.unshift({
      'source-id': idOf(schema, column.name),
      'field-id': 0,
      name: `${column.name}_${transform}`,
      transform,
    });
    // Time first, then the identity fields, ids in that order.
    fields.forEach((f, i) => {
      (f as { 'field-id': number })['field-id'] = 1000 + i;
    });
  }
  return { 'spec-id': specId, fields };
}

function columnOfPath(columns: readonly TableColumn[], dotted: string): TableColumn | undefined {
  return columns.find(
    (c) =>
      c.source === 'row' && ((c.spec as FieldSpec).path ?? c.name) === dotted && c.spec.type !== 'struct',
  );
}

function timeColumn(columns: readonly TableColumn[], time: PartitionTimeSource): TableColumn | undefined {
  if (time.source === 'arrival') return columns.find((c) => c.name === '_arrival_time');
  return columns.find(
    (c) =>
      c.source === 'row' &&
      c.spec.type.startsWith('timestamp') &&
      ((c.spec as FieldSpec).path ?? c.name) === time.field,
  );
}

function idOf(schema: IcebergSchema, name: string): number {
  return schema.fields.find((f) => f.name === name)!.id;
}

/** The partition value of a row for one partition field (Iceberg's transforms of a timestamp in micros). */
export function transformValue(
  transform: PartitionField['transform'],
  value: unknown,
): number | string | null {
  if (value === null || value === undefined) return null;
  if (transform === 'identity') return typeof value === 'string' ? value : String(value);
  const micros = typeof value === 'bigint' ? value : BigInt(value as number);
  // Floor division: a time before the epoch belongs to the hour (day...) that starts before it.
  const ms = Number(micros >= 0n ? micros / 1000n : -((-micros + 999n) / 1000n));
  const date = new Date(ms);
  const years = date.getUTCFullYear() - 1970;
  switch (transform) {
    case 'year':
      return years;
    case 'month':
      return years * 12 + date.getUTCMonth();
    case 'day':
      return Math.floor(ms / 86_400_000);
    case 'hour':
      return Math.floor(ms / 3_600_000);
  }
}
