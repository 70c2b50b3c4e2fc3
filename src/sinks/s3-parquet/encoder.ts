/**
 * Rows -> Parquet file. Event values are converted to the JSON text of their cells in JS (so a bad value can
 * be dead-lettered per event; see columns.ts) and buffered by the sink as one NDJSON line per row. To encode a
 * file, the lines are written to a staging file next to it and an in-memory DuckDB runs
 * `COPY (SELECT ... FROM read_json(<staging>, columns = {...})) TO <file> (FORMAT parquet)`: the column spec
 * is explicit (no type detection), nested values are parsed straight into their LIST/MAP/STRUCT types, and
 * the parsing and encoding run on DuckDB's threads, off the event loop. DuckDB writes exact INT64s,
 * full-length min/max statistics and zstd/snappy pages (see FIELD-NOTES: parquetjs-lite corrupts INT64).
 */
import { open, rm, stat } from 'node:fs/promises';
import { type DuckDBConnection, DuckDBInstance } from '@duckdb/node-api';
import { quoteIdentifier, type StagedRow, type StagedType, type TableColumn } from './columns.js';
import { QUARANTINE_PARTITION_COLUMN } from './config.js';

export {
  RowBuilder,
  type RowResult,
  StagedRow,
  stagedCell,
  type TableColumn,
} from './columns.js';
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

/**
 * How each staged type is read (`read_json` column type) and turned into the file's type. Timestamps are
 * staged as integers (exact; no text parsing) and converted in the query.
 */
const READ_TYPE: Record<Exclude<StagedType, 'NESTED'>, string> = {
  VARCHAR: 'VARCHAR',
  BIGINT: 'BIGINT',
  INTEGER: 'INTEGER',
  DOUBLE: 'DOUBLE',
  BOOLEAN: 'BOOLEAN',
  TIMESTAMP_MS: 'BIGINT', // milliseconds since the epoch
  TIMESTAMP: 'BIGINT', // microseconds since the epoch
};

/** How a table of rows is staged and copied; compiled once per column list. */
interface Layout {
  readonly columns: readonly TableColumn[];
  /** The `columns` argument of read_json. */
  readonly spec: string;
  /** The SELECT list, with `{stream}` and `{shard}` placeholders for the per-file constants. */
  readonly select: string;
  /** Index (key `c<i>`) of the quarantine partition cell, when the layout has one. */
  readonly partitionCell: number | undefined;
}

const quoteLiteral = (text: string) => `'${text.replaceAll("'", "''")}'`;
/** Lines joined and written per write call: a few MiB, so the event loop is never held for long. */
const WRITE_SLICE_ROWS = 4096;
/** read_json's default object size limit; raised per file when a line is longer. */
const DEFAULT_MAX_OBJECT_BYTES = 16 * 1024 * 1024;

/**
 * JSON.stringify writes a lone surrogate (a broken UTF-16 string) as a `\udXXX` escape, which DuckDB refuses
 * ("no low surrogate"); the appender this replaced stored U+FFFD for it, and so does this. A `\u` is an escape
 * when an odd number of backslashes precedes the `u`.
 */
const LONE_SURROGATE_ESCAPE = /(?<!\\)((?:\\\\)*)\\ud[89a-f][0-9a-f]{2}/g;
export function replaceLoneSurrogateEscapes(text: string): string {
  return text.includes('\\ud') ? text.replace(LONE_SURROGATE_ESCAPE, '$1\\ufffd') : text;
}

/**
 * Owns one in-memory DuckDB. Files are encoded one at a time (a connection runs one statement at a
 * time, and COPY already uses DuckDB's worker threads).
 */
export class ParquetEncoder {
  private instance: Promise<{ instance: DuckDBInstance; connection: DuckDBConnection }> | undefined;
  private queue: Promise<unknown> = Promise.resolve();
  private readonly layouts = new WeakMap<readonly TableColumn[], Layout>();

  constructor(private readonly options: EncoderOptions) {}

  /**
   * Writes `rows` (staged by RowBuilder for the `row` columns of `columns`) to a Parquet file at `path` and
   * returns its size in bytes. The staging file `<path>.ndjson` is removed before this resolves.
   */
  encode(
    columns: readonly TableColumn[],
    rows: readonly StagedRow[],
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
      const spec: string[] = [];
      const select: string[] = [];
      let cell = 0;
      let partitionCell: number | undefined;
      for (const c of columns) {
        const name = quoteIdentifier(c.name);
        if (c.source === 'stream') {
          select.push(`{stream}::VARCHAR AS ${name}`);
          continue;
        }
        if (c.source === 'shard') {
          select.push(`{shard}::VARCHAR AS ${name}`);
          continue;
        }
        const key = `c${cell}`;
        if (c.name === QUARANTINE_PARTITION_COLUMN) partitionCell = cell;
        cell += 1;
        spec.push(`${key}: ${quoteLiteral(c.staged === 'NESTED' ? c.sqlType : READ_TYPE[c.staged])}`);
        if (c.staged === 'TIMESTAMP') select.push(`make_timestamp(${key}) AS ${name}`);
        else if (c.staged === 'TIMESTAMP_MS') select.push(`epoch_ms(${key})::TIMESTAMP_MS AS ${name}`);
        else select.push(`${key} AS ${name}`);
      }
      layout = { columns, spec: `{${spec.join(', ')}}`, select: select.join(', '), partitionCell };
      this.layouts.set(columns, layout);
    }
    return layout;
  }

  /** Writes the rows as NDJSON; returns the longest line in bytes (an upper bound). */
  private async stage(layout: Layout, rows: readonly StagedRow[], file: string): Promise<number> {
    const handle = await open(file, 'w');
    let longest = 0;
    try {
      const partitionKey = layout.partitionCell === undefined ? '' : `,"c${layout.partitionCell}":`;
      for (let start = 0; start < rows.length; start += WRITE_SLICE_ROWS) {
        const end = Math.min(rows.length, start + WRITE_SLICE_ROWS);
        const lines: string[] = new Array(end - start);
        for (let r = start; r < end; r++) {
          const row = rows[r]!;
          const line =
            layout.partitionCell === undefined
              ? row.text
              : `${row.text.slice(0, -1)}${partitionKey}${JSON.stringify(row.partition ?? null)}}`;
          // UTF-8 takes at most 3 bytes per UTF-16 code unit.
          if (line.length * 3 > longest) longest = line.length * 3;
          lines[r - start] = line;
        }
        await handle.write(`${replaceLoneSurrogateEscapes(lines.join('\n'))}\n`);
      }
    } finally {
      await handle.close();
    }
    return longest;
  }

  private async encodeNow(
    layout: Layout,
    rows: readonly StagedRow[],
    path: string,
    constants: FileConstants,
  ): Promise<number> {
    const { connection } = await this.open();
    const staging = `${path}.ndjson`;
    try {
      const longest = await this.stage(layout, rows, staging);
      const select = layout.select
        .replaceAll('{stream}', quoteLiteral(constants.stream))
        .replaceAll('{shard}', quoteLiteral(constants.shardId));
      await connection.run(
        `COPY (SELECT ${select} FROM read_json(${quoteLiteral(staging)}, format = 'newline_delimited', ` +
          `records = true, columns = ${layout.spec}, ` +
          `maximum_object_size = ${Math.max(DEFAULT_MAX_OBJECT_BYTES, longest + 1024)})) ` +
          `TO ${quoteLiteral(path)} ` +
          `(FORMAT parquet, COMPRESSION ${this.options.compression}, ROW_GROUP_SIZE ${this.options.rowGroupRows})`,
      );
    } finally {
      await rm(staging, { force: true });
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
