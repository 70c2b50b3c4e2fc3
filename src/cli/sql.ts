/**
 * `ksw sql "SELECT ..."`: runs SQL in the embedded DuckDB (the one the Parquet sink uses) and prints the
 * result as a table, so the output of a local run can be queried without installing the DuckDB CLI.
 * `read_parquet('...')` takes globs; the local stack keeps objects as files under `.local/stack/s3/`.
 */
import { parseCommandArgs, UsageError } from './args.js';

export const SQL_USAGE = `usage: ksw sql "SQL" [--json]

Runs SQL in an in-memory DuckDB and prints the rows as a table (or JSON lines with --json). Examples:
  ksw sql "SELECT count(*) FROM read_parquet('out/*.parquet')"
  ksw sql "SELECT serviceName, count(*) FROM read_parquet('.local/stack/s3/lake/spans/**/*.parquet*') GROUP BY 1"

  --json   one JSON object per row
`;

function cell(v: unknown): string {
  if (v === null || v === undefined) return 'NULL';
  if (typeof v === 'bigint') return v.toString();
  if (typeof v === 'object') return JSON.stringify(v, (_k, x) => (typeof x === 'bigint' ? x.toString() : x));
  return String(v);
}

export async function sqlCommand(args: string[]): Promise<number> {
  const parsed = parseCommandArgs(
    'sql',
    SQL_USAGE,
    args,
    { json: { type: 'boolean', default: false } },
    { positionals: 1 },
  );
  if (!parsed) return 0;
  const sql = parsed.positionals[0];
  if (!sql) throw new UsageError('sql', 'give the SQL as one argument, in quotes');
  const { DuckDBInstance } = await import('@duckdb/node-api');
  const instance = await DuckDBInstance.create(':memory:');
  const conn = await instance.connect();
  try {
    let reader: Awaited<ReturnType<typeof conn.runAndReadAll>>;
    try {
      reader = await conn.runAndReadAll(sql);
    } catch (err) {
      process.stderr.write(`sql: ${(err as Error).message.split('\n')[0]}\n`);
      return 1;
    }
    const columns = reader.columnNames();
    const rows = reader.getRowObjectsJS() as Record<string, unknown>[];
    if (parsed.values.json) {
      for (const row of rows)
        process.stdout.write(
          `${JSON.stringify(row, (_k, x) => (typeof x === 'bigint' ? x.toString() : x))}\n`,
        );
      return 0;
    }
    const table = [columns, ...rows.map((r) => columns.map((c) => cell(r[c])))];
    const widths = columns.map((_, i) => Math.max(...table.map((r) => r[i]!.length)));
    for (const r of table)
      process.stdout.write(
        `${r
          .map((c, i) => c.padEnd(widths[i]!))
          .join('  ')
          .trimEnd()}\n`,
      );
    return 0;
  } finally {
    conn.closeSync();
    instance.closeSync();
  }
}
