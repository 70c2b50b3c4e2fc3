/**
 * Pure naming logic of the OpenSearch sink: document ids, document times and index names. Everything
 * here is a function of the event alone (never of the clock), so a replayed record gets the same id in
 * the same index.
 */
import { createHash } from 'node:crypto';
import type { PipelineEvent } from '../../core/records.js';
import type { DocumentIdConfig } from './config.js';

/** OpenSearch rejects ids longer than 512 bytes. */
export const MAX_ID_BYTES = 512;

export class DocumentError extends Error {}

/** Follows a dotted path; own properties only, numeric segments index arrays. */
export function lookup(value: unknown, path: string): unknown {
  let current = value;
  for (const segment of path.split('.')) {
    if (current === null || typeof current !== 'object') return undefined;
    if (Array.isArray(current)) {
      if (!/^\d+$/.test(segment)) return undefined;
      current = current[Number(segment)];
    } else {
      const obj = current as Record<string, unknown>;
      current = Object.hasOwn(obj, segment) ? obj[segment] : undefined;
    }
  }
  return current;
}

/** JSON with object keys sorted at every level, so equal objects always render alike (bigints exact). */
export function canonicalJson(value: unknown): string {
  if (value === null || value === undefined) return 'null';
  if (typeof value === 'bigint') return value.toString();
  if (typeof value !== 'object') return JSON.stringify(value) ?? 'null';
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  const obj = value as Record<string, unknown>;
  return `{${Object.keys(obj)
    .filter((k) => obj[k] !== undefined)
    .sort()
    .map((k) => `${JSON.stringify(k)}:${canonicalJson(obj[k])}`)
    .join(',')}}`;
}

function hashId(text: string): string {
  return createHash('sha256').update(text).digest('base64url');
}

function renderPart(value: unknown, what: string): string {
  if (value === undefined || value === null) throw new DocumentError(`id: ${what} is missing`);
  if (typeof value === 'string') {
    if (value === '') throw new DocumentError(`id: ${what} is empty`);
    return value;
  }
  if (typeof value === 'number' || typeof value === 'bigint' || typeof value === 'boolean')
    return String(value);
  return canonicalJson(value);
}

const PLACEHOLDER = /\{([^{}]+)\}/g;

/** Builds the id function once per sink; it throws DocumentError for a document it cannot name. */
export function compileDocumentId(config: DocumentIdConfig): (event: PipelineEvent) => string {
  const finish = (id: string, hash: boolean) =>
    hash || Buffer.byteLength(id) > MAX_ID_BYTES ? hashId(id) : id;
  if (config === 'origin') {
    return (e) =>
      // A derived event (a RED window) only borrows the position of the last record it counted: named by
      // its origin it would share the id of that record's own event, or of another processor's window,
      // and `create` would drop the later one as a 409. Its content names it instead.
      e.derived
        ? `derived-${hashId(canonicalJson(e.value))}`
        : finish(
            `${e.origin.stream}/${e.origin.shardId}/${e.origin.sequenceNumber}/${e.origin.subSequenceNumber}/${e.index}`,
            false,
          );
  }
  if ('field' in config) {
    return (e) => finish(renderPart(lookup(e.value, config.field), `field "${config.field}"`), config.hash);
  }
  const parts: Array<string | ((e: PipelineEvent) => string)> = [];
  let last = 0;
  for (const match of config.template.matchAll(PLACEHOLDER)) {
    parts.push(config.template.slice(last, match.index));
    parts.push(placeholder(match[1]!.trim()));
    last = match.index + match[0].length;
  }
  parts.push(config.template.slice(last));
  return (e) => finish(parts.map((p) => (typeof p === 'string' ? p : p(e))).join(''), config.hash);
}

function placeholder(name: string): (e: PipelineEvent) => string {
  switch (name) {
    case '$stream':
      return (e) => e.origin.stream;
    case '$shard':
      return (e) => e.origin.shardId;
    case '$sequence':
      return (e) => e.origin.sequenceNumber;
    case '$sub':
      return (e) => String(e.origin.subSequenceNumber);
    case '$index':
      return (e) => String(e.index);
    default:
      if (name.startsWith('$')) {
        throw new Error(`unknown id placeholder {${name}}: use $stream, $shard, $sequence, $sub or $index`);
      }
      return (e) => renderPart(lookup(e.value, name), `field "${name}"`);
  }
}

export type TimeUnit = 'ns' | 'us' | 'ms' | 's';

export interface DocumentTime {
  /** Milliseconds since the epoch (for index date patterns). */
  readonly ms: number;
  /** ISO-8601 UTC with every sub-millisecond digit the source had (for a `date_nanos` @timestamp). */
  readonly iso: string;
}

const NANOS_PER: Record<TimeUnit, bigint> = { ns: 1n, us: 1_000n, ms: 1_000_000n, s: 1_000_000_000n };
/** Years 1970..9999 in ms: anything outside is almost certainly the wrong unit. */
const MAX_MS = 253_402_300_799_999;

/** The time of a numeric, decimal-string or ISO-8601 value; DocumentError when it is none. */
export function parseTime(value: unknown, unit: TimeUnit, what: string): DocumentTime {
  if (typeof value === 'string' && !/^-?\d+$/.test(value.trim())) {
    const ms = Date.parse(value);
    if (Number.isNaN(ms)) throw new DocumentError(`${what} "${value.slice(0, 40)}" is not a time`);
    checkRange(ms, value, what);
    return { ms, iso: value };
  }
  let n: bigint;
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) throw new DocumentError(`${what} is not a finite number`);
    n = BigInt(Math.trunc(value));
  } else if (typeof value === 'bigint' || typeof value === 'string') {
    n = BigInt(typeof value === 'string' ? value.trim() : value);
  } else {
    throw new DocumentError(
      `${what} is ${value === undefined ? 'missing' : `a ${typeof value}, not a time`}`,
    );
  }
  const nanos = n * NANOS_PER[unit];
  const ms = Number(nanos / 1_000_000n);
  checkRange(ms, value, what);
  const sub = nanos % 1_000_000n;
  const base = new Date(ms).toISOString(); // ...ss.mmmZ
  const iso =
    sub === 0n ? base : `${base.slice(0, -1)}${sub.toString().padStart(6, '0').replace(/0+$/, '')}Z`;
  return { ms, iso };
}

function checkRange(ms: number, value: unknown, what: string): void {
  if (ms < 0 || ms > MAX_MS) {
    throw new DocumentError(
      `${what} ${String(value).slice(0, 40)} is outside years 1970..9999 (wrong unit?)`,
    );
  }
}

const DATE_PATTERN = /%\{([^}]+)\}/g;
const TOKEN = /yyyy|xxxx|MM|dd|HH|ww/g;

function pad(n: number, width = 2): string {
  return String(n).padStart(width, '0');
}

/** ISO-8601 week-numbering year and week of a UTC date. */
function isoWeek(date: Date): { year: number; week: number } {
  const d = new Date(Date.UTC(date.getUTCFullYear(), date.getUTCMonth(), date.getUTCDate()));
  const day = d.getUTCDay() || 7;
  d.setUTCDate(d.getUTCDate() + 4 - day);
  const yearStart = Date.UTC(d.getUTCFullYear(), 0, 1);
  return { year: d.getUTCFullYear(), week: Math.ceil(((d.getTime() - yearStart) / 86_400_000 + 1) / 7) };
}

/** Checks a date pattern's tokens at start-up. */
export function checkIndexPattern(index: string): void {
  for (const match of index.matchAll(DATE_PATTERN)) {
    const rest = match[1]!.replace(TOKEN, '');
    if (/[A-Za-z]/.test(rest)) {
      throw new Error(
        `index "${index}": unsupported date pattern %{${match[1]}} (use yyyy, MM, dd, HH, xxxx, ww)`,
      );
    }
  }
}

/** True when the index name has date patterns (one index per period). */
export function hasDatePattern(index: string): boolean {
  return /%\{[^}]+\}/.test(index);
}

/** The concrete index for a document time (UTC). */
export function indexName(pattern: string, timeMs: number): string {
  if (!hasDatePattern(pattern)) return pattern;
  const date = new Date(timeMs);
  return pattern.replace(DATE_PATTERN, (_, format: string) =>
    format.replace(TOKEN, (token) => {
      switch (token) {
        case 'yyyy':
          return String(date.getUTCFullYear());
        case 'MM':
          return pad(date.getUTCMonth() + 1);
        case 'dd':
          return pad(date.getUTCDate());
        case 'HH':
          return pad(date.getUTCHours());
        case 'xxxx':
          return String(isoWeek(date).year);
        default:
          return pad(isoWeek(date).week);
      }
    }),
  );
}

/** The template's index pattern for an index name: each date pattern becomes `*`. */
export function templatePattern(index: string): string {
  return index.replace(DATE_PATTERN, '*');
}
