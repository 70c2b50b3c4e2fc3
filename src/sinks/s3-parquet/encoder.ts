/**
 * Rows -> Parquet file. Event values are converted to typed cells in JS (so a bad value can be
 * dead-lettered per event; see columns.ts), buffered by the sink, then appended to a table of an in-memory
 * DuckDB with the Appender API and written with `COPY ... (FORMAT parquet)`: DuckDB writes exact INT64s,
 * full-length min/max statistics and zstd/snappy pages (see FIELD-NOTES: parquetjs-lite corrupts INT64).
 */
import { stat } from 'node:fs/promises';
import { setImmediate as yieldToEventLoop } from 'node:timers/promises';
import {
  type DuckDBAppender,
  type DuckDBConnection,
  DuckDBInstance,
  DuckDBTimestampValue,
} from '@duckdb/node-api';
import { quoteIdentifier, type StagedType, type TableColumn } from './columns.js';
import type { Cell } from './convert.js';

export { RowBuilder, type RowResult, type TableColumn } from './columns.js';
export {
  type Cell,
  type Conversion,
  convertValue,
  describeValue,
  lookupPath,
  parseIsoMicros,
  scaleDecimal,
  stringifyJson,
} from './convert.js';

export interface EncoderOptions {
  readonly compression: 'zstd' | 'snappy';
  readonly rowGroupRows: number;
}

/** Values shared by every row of one file. */
export interface FileConstants {
  readonly stream: string;
  readonly shardId: string;
}

type Append = (appender: DuckDBAppender, cell: Exclude<Cell, null>) => void;

// TIMESTAMP_MS cells are staged as TIMESTAMP (micros) and cast back in the COPY query: the appender's
// millisecond method goes through its generic, several times slower value path. Nested cells are JSON text.
const APPEND: Record<StagedType, Append> = {
  VARCHAR: (a, c) => a.appendVarchar(c as string),
  NESTED: (a, c) => a.appendVarchar(c as string),
  BIGINT: (a, c) => a.appendBigInt(c as bigint),
  INTEGER: (a, c) => a.appendInteger(c as number),
  DOUBLE: (a, c) => a.appendDouble(c as number),
  BOOLEAN: (a, c) => a.appendBoolean(c as boolean),
  TIMESTAMP_MS: (a, c) => a.appendTimestamp(new DuckDBTimestampValue((c as bigint) * 1000n)),
  TIMESTAMP: (a, c) => a.appendTimestamp(new DuckDBTimestampValue(c as bigint)),
};

const STAGING_TYPE: Record<StagedType, string> = {
  VARCHAR: 'VARCHAR',
  NESTED: 'VARCHAR',
  BIGINT: 'BIGINT',
  INTEGER: 'INTEGER',
  DOUBLE: 'DOUBLE',
  BOOLEAN: 'BOOLEAN',
  TIMESTAMP_MS: 'TIMESTAMP',
  TIMESTAMP: 'TIMESTAMP',
};

/** How a table of rows is staged and copied; compiled once per column list. */
interface Layout {
  readonly columns: readonly TableColumn[];
  readonly append: readonly Append[];
  readonly ddl: string;
}

const quoteLiteral = (text: string) => `'${text.replaceAll("'", "''")}'`;
/** Rows appended between yields: appending is synchronous native work and must not starve the event loop. */
const APPEND_SLICE_ROWS = 8192;

/**
 * Owns one in-memory DuckDB. Files are encoded one at a time (a connection runs one statement at a
 * time, and COPY already uses DuckDB's worker threads).
 */
export class ParquetEncoder {
  private instance: Promise<{ instance: DuckDBInstance; connection: DuckDBConnection }> | undefined;
  private queue: Promise<unknown> = Promise.resolve();
  private tables = 0;
  private readonly layouts = new WeakMap<readonly TableColumn[], Layout>();

  constructor(private readonly options: EncoderOptions) {}

  /**
   * Writes `rows` (cells of the `row` columns of `columns`, as built by RowBuilder) to a Parquet file at
   * `path` and returns its size in bytes.
   */
  encode(
    columns: readonly TableColumn[],
    rows: readonly Cell[][],
    path: string,
    constants: FileConstants,
  ): Promise<number> {
    const run = this.queue.then(() => this.encodeNow(this.layout(columns), rows, path, constants));
    this.queue = run.catch(() => undefined);
    return run;
  }

  private layout(columns: readonly TableColumn[]): Layout {
    let layout = this.layouts.get(columns);
    if (!layout) {
      const stored = columns.filter((c) => c.source === 'row');
      layout = {
        columns,
        append: stored.map((c) => APPEND[c.staged]),
        ddl: stored.map((c) => `${quoteIdentifier(c.name)} ${STAGING_TYPE[c.staged]}`).join(', '),
      };
      this.layouts.set(columns, layout);
    }
    return layout;
  }

  private selectList(layout: Layout, constants: FileConstants): string {
    return layout.columns
      .map((c) => {
        const name = quoteIdentifier(c.name);
        if (c.source === 'stream') return `${quoteLiteral(constants.stream)}::VARCHAR AS ${name}`;
        if (c.source === 'shard') return `${quoteLiteral(constants.shardId)}::VARCHAR AS ${name}`;
        if (c.staged === 'TIMESTAMP_MS') return `${name}::TIMESTAMP_MS AS ${name}`;
        // Canonical JSON written by columns.ts, cast to the nested type (exact: int64 digits, timestamp text).
        if (c.staged === 'NESTED') return `${name}::JSON::${c.sqlType} AS ${name}`;
        return name;
      })
      .join(', ');
  }

  private async encodeNow(
    layout: Layout,
    rows: readonly Cell[][],
    path: string,
    constants: FileConstants,
  ): Promise<number> {
    const { connection } = await this.open();
    this.tables += 1;
    const table = `roll_${this.tables}`;
    await connection.run(`CREATE TABLE ${table} (${layout.ddl})`);
    try {
      const appender = await connection.createAppender(table);
      const append = layout.append;
      try {
        for (let start = 0; start < rows.length; start += APPEND_SLICE_ROWS) {
          if (start > 0) await yieldToEventLoop();
          const end = Math.min(rows.length, start + APPEND_SLICE_ROWS);
          for (let r = start; r < end; r++) {
            const row = rows[r]!;
            for (let c = 0; c < row.length; c++) {
              const cell = row[c]!;
              if (cell === null) appender.appendNull();
              else append[c]!(appender, cell);
            }
            appender.endRow();
          }
        }
      } catch (err) {
        // closeSync flushes and may throw too after a failed append; the first error is the one to report.
        try {
          appender.closeSync();
        } catch {}
        throw err;
      }
      appender.closeSync();
      await connection.run(
        `COPY (SELECT ${this.selectList(layout, constants)} FROM ${table}) TO ${quoteLiteral(path)} ` +
          `(FORMAT parquet, COMPRESSION ${this.options.compression}, ROW_GROUP_SIZE ${this.options.rowGroupRows})`,
      );
    } finally {
      await connection.run(`DROP TABLE IF EXISTS ${table}`);
    }
    return (await stat(path)).size;
  }

  private open() {
    this.instance ??= (async () => {
      const instance = await DuckDBInstance.create(':memory:');
      return { instance, connection: await instance.connect() };
    })();
    return this.instance;
  }

  /** Waits for the encoding in progress, then releases DuckDB. */
  async close(): Promise<void> {
    await this.queue;
    const opened = this.instance;
    this.instance = undefined;
    if (!opened) return;
    const { instance, connection } = await opened;
    connection.closeSync();
    instance.closeSync();
  }
}
