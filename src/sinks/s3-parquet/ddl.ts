/**
 * `ksw ddl`: the Athena/Glue `CREATE EXTERNAL TABLE` for a Parquet sink's schema and partitioning, with
 * partition projection (TBLPROPERTIES) so Athena computes partitions from the template and no crawler or
 * MSCK REPAIR is needed. Time segments become date or integer projections, field segments `injected`
 * (queries then name the value: `WHERE service = 'cart'`).
 */
import { athenaTypeOf, RowBuilder } from './columns.js';
import type { ParquetSinkConfig } from './config.js';
import { parseTemplate, type Segment } from './partitioning.js';
import { resolveSchema } from './schemas.js';

export interface DdlOptions {
  readonly table: string;
  readonly database?: string;
  /** First date of date projections (ISO date, UTC); default 2024-01-01. */
  readonly projectionStart?: string;
}

const UNIT: Record<string, string> = { yyyy: 'YEARS', MM: 'MONTHS', dd: 'DAYS', HH: 'HOURS', mm: 'MINUTES' };
const INTEGER_RANGE: Record<string, [number, number]> = {
  MM: [1, 12],
  dd: [1, 31],
  HH: [0, 23],
  mm: [0, 59],
};

const ident = (name: string) => `\`${name.replaceAll('`', '``')}\``;
const literal = (text: string) => `'${text.replaceAll("'", "''")}'`;

function projection(segment: Segment, start: Date): Array<[string, string]> {
  const key = (k: string) => `projection.${segment.name.toLowerCase()}.${k}`;
  const parts = segment.parts;
  if (parts.some((p) => p.kind === 'field')) return [[key('type'), 'injected']];
  const tokens = parts.filter((p) => p.kind === 'time').map((p) => p.token);
  if (tokens.length === 1 && parts.length === 1 && tokens[0] !== 'yyyy') {
    const [lo, hi] = INTEGER_RANGE[tokens[0]!]!;
    return [
      [key('type'), 'integer'],
      [key('range'), `${lo},${hi}`],
      [key('digits'), '2'],
    ];
  }
  // A date projection: the segment's text as a Java DateTimeFormatter pattern (literals quoted).
  const format = parts
    .map((p) =>
      p.kind === 'time'
        ? p.token
        : p.kind === 'literal'
          ? /[A-Za-z]/.test(p.text)
            ? `'${p.text}'`
            : p.text
          : '',
    )
    .join('');
  const finest = ['mm', 'HH', 'dd', 'MM', 'yyyy'].find((t) => tokens.includes(t as never))!;
  const pad = (n: number) => String(n).padStart(2, '0');
  const first = parts
    .map((p) => {
      if (p.kind === 'literal') return p.text;
      if (p.kind !== 'time') return '';
      const values: Record<string, string> = {
        yyyy: String(start.getUTCFullYear()),
        MM: pad(start.getUTCMonth() + 1),
        dd: pad(start.getUTCDate()),
        HH: pad(start.getUTCHours()),
        mm: pad(start.getUTCMinutes()),
      };
      return values[p.token]!;
    })
    .join('');
  return [
    [key('type'), 'date'],
    [key('format'), format],
    [key('range'), `${first},NOW`],
    [key('interval'), '1'],
    [key('interval.unit'), UNIT[finest]!],
  ];
}

export function createTableDdl(config: ParquetSinkConfig, options: DdlOptions): string {
  const schema = resolveSchema(config);
  const columns = new RowBuilder(schema.columns, schema.recordColumn, schema.recordContent).columns;
  const location = `s3://${config.bucket}/${config.prefix}`;
  const name = options.database ? `${ident(options.database)}.${ident(options.table)}` : ident(options.table);
  const lines = [`CREATE EXTERNAL TABLE IF NOT EXISTS ${name} (`];
  lines.push(columns.map((c) => `  ${ident(c.name.toLowerCase())} ${athenaTypeOf(c.spec)}`).join(',\n'));
  lines.push(')');
  const properties: Array<[string, string]> = [['parquet.compression', config.compression.toUpperCase()]];
  if (config.partitioning) {
    const segments = parseTemplate(config.partitioning.template);
    lines.push(`PARTITIONED BY (${segments.map((s) => `${ident(s.name.toLowerCase())} string`).join(', ')})`);
    const start = new Date(`${options.projectionStart ?? '2024-01-01'}T00:00:00Z`);
    if (Number.isNaN(start.getTime()))
      throw new Error(`projection start "${options.projectionStart}" is not a date (YYYY-MM-DD)`);
    properties.push(['projection.enabled', 'true']);
    for (const segment of segments) properties.push(...projection(segment, start));
    properties.push([
      'storage.location.template',
      `${location}${segments.map((s) => `${s.name}=\${${s.name.toLowerCase()}}`).join('/')}/`,
    ]);
  }
  lines.push('STORED AS PARQUET');
  lines.push(`LOCATION ${literal(location)}`);
  lines.push(
    `TBLPROPERTIES (\n${properties.map(([k, v]) => `  ${literal(k)} = ${literal(v)}`).join(',\n')}\n);`,
  );
  return `${lines.join('\n')}\n`;
}
