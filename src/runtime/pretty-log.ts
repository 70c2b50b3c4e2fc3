/**
 * A readable rendering of pino's JSON lines for a terminal (`--log-format pretty`, the default when stdout
 * is a TTY): `12:00:01.234 INFO  message  key=value ...`. Small on purpose, so the worker needs no
 * pino-pretty (and its dependencies) in production; JSON stays the format for machines.
 */
import type { DestinationStream } from 'pino';

const LEVEL_COLOR: Record<string, string> = {
  fatal: '\x1b[41m',
  error: '\x1b[31m',
  warn: '\x1b[33m',
  info: '\x1b[32m',
  debug: '\x1b[36m',
  trace: '\x1b[90m',
};
const NUMERIC_LEVEL: Record<number, string> = {
  10: 'trace',
  20: 'debug',
  30: 'info',
  40: 'warn',
  50: 'error',
  60: 'fatal',
};
/** Fields every line has, or that the line already shows. */
const HIDDEN = new Set(['level', 'time', 'msg', 'pid', 'host', 'name']);

function value(v: unknown): string {
  if (typeof v === 'string') return /[\s"=]/.test(v) || v === '' ? JSON.stringify(v) : v;
  if (v && typeof v === 'object') {
    const err = v as { type?: string; message?: string; stack?: string };
    if (typeof err.message === 'string' && typeof err.stack === 'string')
      return JSON.stringify(`${err.type ?? 'Error'}: ${err.message}`);
    return JSON.stringify(v);
  }
  return String(v);
}

/** One JSON log line as one readable line (lines that are not JSON pass through unchanged). */
export function prettyLine(line: string, color: boolean): string {
  let entry: Record<string, unknown>;
  try {
    entry = JSON.parse(line) as Record<string, unknown>;
  } catch {
    return line;
  }
  const level =
    typeof entry.level === 'number'
      ? (NUMERIC_LEVEL[entry.level] ?? String(entry.level))
      : String(entry.level ?? 'info');
  const time = typeof entry.time === 'string' ? entry.time.slice(11, 23) : '';
  const label = level.toUpperCase().padEnd(5);
  const fields = Object.entries(entry)
    .filter(([k]) => !HIDDEN.has(k))
    .map(([k, v]) => `${k}=${value(v)}`)
    .join(' ');
  const shown = color ? `${LEVEL_COLOR[level] ?? ''}${label}\x1b[0m` : label;
  return `${time} ${shown} ${String(entry.msg ?? '')}${fields ? `  ${color ? '\x1b[90m' : ''}${fields}${color ? '\x1b[0m' : ''}` : ''}`;
}

/** A pino destination that writes pretty lines to `out` (stdout by default). */
export function prettyDestination(
  out: NodeJS.WritableStream & { isTTY?: boolean } = process.stdout,
): DestinationStream {
  const color = out.isTTY === true && !process.env.NO_COLOR;
  return {
    write(chunk: string) {
      for (const line of chunk.split('\n')) if (line) out.write(`${prettyLine(line, color)}\n`);
    },
  };
}
