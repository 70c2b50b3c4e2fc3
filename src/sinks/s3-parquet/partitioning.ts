/**
 * Hive-style partition paths from a template (`dt={yyyy}-{MM}-{dd}/hour={HH}/service={field:serviceName}`)
 * over the record's time and fields. Values are escaped as Hive and Spark do, so the engines that read the
 * table unescape them to the original value; the same event always yields the same path.
 */
import { createHash } from 'node:crypto';
import type { PipelineEvent } from '../../core/records.js';
import { COLUMN_NAME, type PartitioningConfig, type TimeUnit } from './config.js';
import { lookupPath, stringifyJson, timestampFrom } from './convert.js';

export const HIVE_DEFAULT_PARTITION = '__HIVE_DEFAULT_PARTITION__';
/** Longer values are cut and suffixed with a hash: S3 keys are limited to 1,024 bytes. */
export const MAX_VALUE_BYTES = 100;

const TIME_TOKENS = ['yyyy', 'MM', 'dd', 'HH', 'mm'] as const;
type TimeToken = (typeof TIME_TOKENS)[number];

type Part =
  | { readonly kind: 'literal'; readonly text: string }
  | { readonly kind: 'time'; readonly token: TimeToken }
  | { readonly kind: 'field'; readonly path: readonly string[]; readonly source: string };

export interface Segment {
  readonly name: string;
  readonly parts: readonly Part[];
}

// Characters Hive's FileUtils.escapePathName escapes (Spark's ExternalCatalogUtils uses the same set).
const HIVE_ESCAPED = new Set([
  '"',
  '#',
  '%',
  "'",
  '*',
  '/',
  ':',
  '=',
  '?',
  '\\',
  '\u007f',
  '{',
  '[',
  ']',
  '^',
]);

/** Escapes a partition value like Hive: %XX for path and control characters; empty becomes the default partition. */
export function escapePartitionValue(value: string): string {
  if (value === '') return HIVE_DEFAULT_PARTITION;
  let out = '';
  for (const ch of value) {
    const code = ch.codePointAt(0)!;
    if (code < 0x20 || HIVE_ESCAPED.has(ch)) out += `%${code.toString(16).toUpperCase().padStart(2, '0')}`;
    else out += ch;
  }
  if (Buffer.byteLength(out) > MAX_VALUE_BYTES) {
    const hash = createHash('sha256').update(value).digest('hex').slice(0, 12);
    // Cut on a character boundary, and never inside a %XX escape.
    let cut = '';
    for (const ch of out) {
      if (Buffer.byteLength(cut + ch) > MAX_VALUE_BYTES - 13) break;
      cut += ch;
    }
    cut = cut.replace(/%[0-9A-F]?$/, '');
    out = `${cut}~${hash}`;
  }
  return out;
}

/** Parses and checks a template; throws with a message naming the problem. */
export function parseTemplate(template: string): Segment[] {
  const segments: Segment[] = [];
  const names = new Set<string>();
  for (const raw of template.split('/')) {
    const eq = raw.indexOf('=');
    if (eq <= 0) throw new Error(`segment "${raw}" is not name=value (Hive style), e.g. dt={yyyy}-{MM}-{dd}`);
    const name = raw.slice(0, eq);
    if (!COLUMN_NAME.test(name))
      throw new Error(`partition name "${name}": letters, digits and underscores only`);
    if (names.has(name.toLowerCase())) throw new Error(`partition name "${name}" appears twice`);
    names.add(name.toLowerCase());
    const parts: Part[] = [];
    const value = raw.slice(eq + 1);
    const token = /\{([^}]*)\}/g;
    let last = 0;
    for (let m = token.exec(value); m; m = token.exec(value)) {
      if (m.index > last) parts.push(literal(value.slice(last, m.index), name));
      const inner = m[1]!;
      if ((TIME_TOKENS as readonly string[]).includes(inner))
        parts.push({ kind: 'time', token: inner as TimeToken });
      else if (inner.startsWith('field:') && inner.length > 6) {
        parts.push({ kind: 'field', path: inner.slice(6).split('.'), source: inner.slice(6) });
      } else {
        throw new Error(
          `unknown token {${inner}} in "${raw}"; use {yyyy} {MM} {dd} {HH} {mm} or {field:path}`,
        );
      }
      last = m.index + m[0].length;
    }
    if (last < value.length) parts.push(literal(value.slice(last), name));
    if (parts.length === 0) throw new Error(`partition "${name}" has an empty value`);
    segments.push({ name, parts });
  }
  return segments;
}

function literal(text: string, name: string): Part {
  if (!/^[A-Za-z0-9_.-]*$/.test(text) || text.includes('{') || text.includes('}')) {
    throw new Error(
      `partition "${name}": literal text "${text}" may hold letters, digits, "_", "." and "-" only`,
    );
  }
  return { kind: 'literal', text };
}

export type PartitionResult = { ok: true; path: string; timeMs: number } | { ok: false; reason: string };

export interface PartitionerOptions {
  readonly config: PartitioningConfig;
  /** Event-time field and unit when the source is event (resolved against the schema's defaults). */
  readonly eventTime: { field: string; unit: TimeUnit } | undefined;
}

const pad2 = (n: number) => (n < 10 ? `0${n}` : String(n));

/** Computes an event's partition path and its time (ms since the epoch, UTC). */
export class Partitioner {
  readonly segments: readonly Segment[];
  private readonly timePath: readonly string[] | undefined;
  private readonly timeUnit: TimeUnit;
  private readonly usesTime: boolean;
  // The time parts of the last minute seen: consecutive events mostly share it.
  private cachedMinute = Number.NaN;
  private cachedParts: Record<TimeToken, string> = { yyyy: '', MM: '', dd: '', HH: '', mm: '' };

  constructor(options: PartitionerOptions) {
    this.segments = parseTemplate(options.config.template);
    this.timePath = options.eventTime?.field.split('.');
    this.timeUnit = options.eventTime?.unit ?? 'ms';
    this.usesTime = this.segments.some((s) => s.parts.some((p) => p.kind === 'time'));
  }

  /** Event time in ms: the configured field, or the record's arrival time. */
  timeOf(event: PipelineEvent): { ok: true; ms: number } | { ok: false; reason: string } {
    if (!this.timePath) {
      const ms = event.origin.arrivalTime.getTime();
      return Number.isNaN(ms)
        ? { ok: false, reason: 'partition time: the record has no arrival time' }
        : { ok: true, ms };
    }
    const raw = lookupPath(event.value, this.timePath);
    if (raw === undefined || raw === null) {
      return { ok: false, reason: `partition time: field ${this.timePath.join('.')} is missing` };
    }
    const converted = timestampFrom(raw, 'timestamp_ms', this.timeUnit);
    if (!converted.ok) return { ok: false, reason: `partition time: ${converted.reason}` };
    return { ok: true, ms: Number(converted.value) };
  }

  partitionOf(event: PipelineEvent): PartitionResult {
    const time = this.timeOf(event);
    if (!time.ok) return time;
    if (this.usesTime) this.timeParts(time.ms);
    let path = '';
    for (const segment of this.segments) {
      let value = '';
      for (const part of segment.parts) {
        if (part.kind === 'literal') value += part.text;
        else if (part.kind === 'time') value += this.cachedParts[part.token];
        else value += fieldText(lookupPath(event.value, part.path));
      }
      path += `${path ? '/' : ''}${segment.name}=${escapePartitionValue(value)}`;
    }
    return { ok: true, path, timeMs: time.ms };
  }

  private timeParts(ms: number): void {
    const minute = Math.floor(ms / 60_000);
    if (minute === this.cachedMinute) return;
    const d = new Date(minute * 60_000);
    this.cachedMinute = minute;
    this.cachedParts = {
      yyyy: String(d.getUTCFullYear()).padStart(4, '0'),
      MM: pad2(d.getUTCMonth() + 1),
      dd: pad2(d.getUTCDate()),
      HH: pad2(d.getUTCHours()),
      mm: pad2(d.getUTCMinutes()),
    };
  }
}

function fieldText(value: unknown): string {
  if (value === undefined || value === null) return '';
  if (typeof value === 'string') return value;
  if (typeof value === 'object') return stringifyJson(value);
  return String(value);
}

/** Hive's unescaping, for tests and catalog registration: %XX back to the character. */
export function unescapePartitionValue(text: string): string {
  return text.replace(/%([0-9A-F]{2})/g, (_, hex: string) => String.fromCharCode(Number.parseInt(hex, 16)));
}

/** `dt=2024-01-02/hour=03` -> [['dt', '2024-01-02'], ['hour', '03']] (values unescaped). */
export function partitionValues(path: string): Array<[string, string]> {
  return path.split('/').map((segment) => {
    const eq = segment.indexOf('=');
    return [segment.slice(0, eq), unescapePartitionValue(segment.slice(eq + 1))];
  });
}
