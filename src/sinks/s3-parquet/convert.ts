/**
 * Value conversion: one event value to one typed cell, exactly (int64 never rounded through a double,
 * timestamps scaled with integer arithmetic). A value that does not fit gives a reason for the
 * dead-letter queue instead of a wrong cell.
 */
import { isLosslessNumber } from 'lossless-json';
import type { ScalarColumnType, TimeUnit } from './config.js';

export type { TimeUnit } from './config.js';

/** A converted value, ready for the appender: timestamps are bigints in the column's unit. */
export type Cell = string | number | bigint | boolean | null;

export type Conversion =
  | { readonly ok: true; readonly value: Cell }
  | { readonly ok: false; readonly reason: string };

const INT32_MIN = -(2n ** 31n);
const INT32_MAX = 2n ** 31n - 1n;
const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;
// Timestamps are limited to years 0001..9999: every engine and ISO-8601 can represent those.
const MIN_TIMESTAMP_MS = -62_135_596_800_000n;
const MAX_TIMESTAMP_MS = 253_402_300_799_999n;
const INTEGER_TEXT = /^-?\d+$/;
const DECIMAL_TEXT = /^(-?)(\d+)(?:\.(\d*))?(?:[eE]([+-]?\d+))?$/;
const FLOAT_TEXT = /^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$|^[+-]?Infinity$|^NaN$/;
const ISO_TIMESTAMP =
  /^(\d{4})-(\d{2})-(\d{2})(?:[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?)?(Z|z|[+-]\d{2}(?::?\d{2})?)?$/;
const UNIT_EXPONENT: Record<TimeUnit, number> = { s: 0, ms: 3, us: 6, ns: 9 };

/** A short, bounded description of a rejected value for the dead-letter reason. */
export function describeValue(value: unknown): string {
  if (typeof value === 'string') {
    const text = JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}…` : value);
    return text;
  }
  if (typeof value === 'bigint') return value.toString();
  if (typeof value === 'number' || typeof value === 'boolean') return String(value);
  if (Array.isArray(value)) return 'an array';
  if (value instanceof Date) return 'a Date';
  return value === null ? 'null' : `a ${typeof value}`;
}

const fail = (type: string, value: unknown, why = ''): Conversion => ({
  ok: false,
  reason: `expected ${type}, got ${describeValue(value)}${why}`,
});

function integerFrom(value: unknown, type: 'int32' | 'int64', min: bigint, max: bigint): Conversion {
  let n: bigint;
  if (typeof value === 'number') {
    if (!Number.isInteger(value)) return fail(type, value);
    // A number beyond 2^53 was already rounded when the JSON was parsed: refuse rather than store a wrong value.
    if (!Number.isSafeInteger(value)) {
      return fail(type, value, ' (beyond 2^53 a JS number has already lost precision; send it as a string)');
    }
    n = BigInt(value);
  } else if (typeof value === 'bigint') {
    n = value;
  } else if (typeof value === 'string' || isLosslessNumber(value)) {
    const text = typeof value === 'string' ? value : value.value;
    if (!INTEGER_TEXT.test(text)) return fail(type, value);
    n = BigInt(text);
  } else {
    return fail(type, value);
  }
  if (n < min || n > max) return fail(type, value, ' (out of range)');
  return { ok: true, value: type === 'int32' ? Number(n) : n };
}

function doubleFrom(value: unknown): Conversion {
  if (typeof value === 'number') return { ok: true, value };
  if (typeof value === 'bigint') return { ok: true, value: Number(value) };
  if (isLosslessNumber(value)) return { ok: true, value: Number(value.value) };
  // Protobuf JSON writes NaN and infinities as strings.
  if (typeof value === 'string' && FLOAT_TEXT.test(value)) return { ok: true, value: Number(value) };
  return fail('double', value);
}

function booleanFrom(value: unknown): Conversion {
  if (typeof value === 'boolean') return { ok: true, value };
  if (value === 'true' || value === 'false') return { ok: true, value: value === 'true' };
  return fail('boolean', value);
}

function stringFrom(value: unknown): Conversion {
  if (typeof value === 'string') return { ok: true, value };
  if (typeof value === 'number' || typeof value === 'bigint' || typeof value === 'boolean') {
    return { ok: true, value: String(value) };
  }
  if (isLosslessNumber(value)) return { ok: true, value: value.value };
  return fail('string', value);
}

/** Any value as text: strings as they are, scalars as their digits, arrays and objects as JSON. */
function textFrom(value: unknown): Conversion {
  if (typeof value === 'string') return { ok: true, value };
  if (typeof value === 'object' && !isLosslessNumber(value)) {
    try {
      return { ok: true, value: stringifyJson(value) };
    } catch (err) {
      return {
        ok: false,
        reason: `expected text, got a value that cannot be serialized: ${(err as Error).message}`,
      };
    }
  }
  return stringFrom(value);
}

export function floorDiv(a: bigint, b: bigint): bigint {
  const q = a / b;
  return a % b !== 0n && a < 0n !== b < 0n ? q - 1n : q;
}

/**
 * `text` (a decimal, possibly with fraction and exponent) times 10^exponent, rounded down, computed
 * exactly. Undefined when the text is not a decimal or absurdly scaled.
 */
export function scaleDecimal(text: string, exponent: number): bigint | undefined {
  const match = DECIMAL_TEXT.exec(text);
  if (!match) return undefined;
  const [, sign, whole, fraction = '', exp = '0'] = match;
  const shift = Number(exp) - fraction.length + exponent;
  if (!Number.isFinite(shift) || Math.abs(shift) > 40) return undefined;
  const digits = BigInt(`${sign}${whole}${fraction}`);
  return shift >= 0 ? digits * 10n ** BigInt(shift) : floorDiv(digits, 10n ** BigInt(-shift));
}

/** Microseconds since the epoch of an ISO-8601 date or date-time (UTC when it has no offset). */
export function parseIsoMicros(text: string): bigint | undefined {
  const m = ISO_TIMESTAMP.exec(text);
  if (!m) return undefined;
  const [, y, mo, d, h = '0', mi = '0', s = '0', fraction = '', zone] = m;
  const date = new Date(0);
  // setUTCFullYear instead of Date.UTC: the latter maps years 0..99 to 1900..1999.
  date.setUTCFullYear(Number(y), Number(mo) - 1, Number(d));
  date.setUTCHours(Number(h), Number(mi), Number(s), 0);
  if (
    date.getUTCFullYear() !== Number(y) ||
    date.getUTCMonth() !== Number(mo) - 1 ||
    date.getUTCDate() !== Number(d) ||
    date.getUTCHours() !== Number(h) ||
    date.getUTCMinutes() !== Number(mi) ||
    date.getUTCSeconds() !== Number(s)
  ) {
    return undefined; // 2023-02-30, 25:00 and the like
  }
  let offsetMinutes = 0;
  if (zone && zone !== 'Z' && zone !== 'z') {
    const digits = zone.slice(1).replace(':', '');
    const hours = Number(digits.slice(0, 2));
    const minutes = Number(digits.slice(2) || '0');
    if (hours > 23 || minutes > 59) return undefined;
    offsetMinutes = (zone[0] === '-' ? -1 : 1) * (hours * 60 + minutes);
  }
  const micros = BigInt(date.getTime() - offsetMinutes * 60_000) * 1000n;
  return micros + BigInt(fraction.padEnd(6, '0').slice(0, 6));
}

export function timestampFrom(
  value: unknown,
  type: 'timestamp_ms' | 'timestamp_us',
  unit: TimeUnit,
): Conversion {
  const targetExponent = type === 'timestamp_ms' ? 3 : 6;
  let result: bigint | undefined;
  if (typeof value === 'bigint') {
    result = scaleDecimal(value.toString(), targetExponent - UNIT_EXPONENT[unit]);
  } else if (typeof value === 'number') {
    // String(n) is the shortest text that round-trips, so 1700000000.123 s scales to exactly ...123000 us.
    if (Number.isFinite(value)) result = scaleDecimal(String(value), targetExponent - UNIT_EXPONENT[unit]);
  } else if (typeof value === 'string' || isLosslessNumber(value)) {
    const text = typeof value === 'string' ? value : value.value;
    result = scaleDecimal(text, targetExponent - UNIT_EXPONENT[unit]);
    if (result === undefined) {
      const micros = parseIsoMicros(text);
      if (micros !== undefined) result = type === 'timestamp_ms' ? floorDiv(micros, 1000n) : micros;
    }
  } else if (value instanceof Date) {
    const ms = value.getTime();
    if (!Number.isNaN(ms)) result = BigInt(ms) * (type === 'timestamp_ms' ? 1n : 1000n);
  }
  if (result === undefined) return fail(type, value);
  const scale = type === 'timestamp_ms' ? 1n : 1000n;
  if (result < MIN_TIMESTAMP_MS * scale || result > MAX_TIMESTAMP_MS * scale + (scale - 1n)) {
    return fail(type, value, ` (outside years 0001..9999 for unit ${unit})`);
  }
  return { ok: true, value: result };
}

/** Converts one value to its column type; undefined and null become NULL. */
export function convertValue(type: ScalarColumnType, value: unknown, timeUnit: TimeUnit = 'ms'): Conversion {
  if (value === undefined || value === null) return { ok: true, value: null };
  switch (type) {
    case 'string':
      return stringFrom(value);
    case 'text':
      return textFrom(value);
    case 'int32':
      return integerFrom(value, 'int32', INT32_MIN, INT32_MAX);
    case 'int64':
      return integerFrom(value, 'int64', INT64_MIN, INT64_MAX);
    case 'double':
      return doubleFrom(value);
    case 'boolean':
      return booleanFrom(value);
    case 'timestamp_ms':
    case 'timestamp_us':
      return timestampFrom(value, type, timeUnit);
    case 'json':
      try {
        return { ok: true, value: stringifyJson(value) };
      } catch (err) {
        return {
          ok: false,
          reason: `expected json, got a value that cannot be serialized: ${(err as Error).message}`,
        };
      }
  }
}

/**
 * JSON.stringify that writes bigints (and lossless-json numbers) as their digits instead of throwing,
 * so a 64-bit integer parsed losslessly stays exact in the JSON text.
 */
export function stringifyJson(value: unknown): string {
  // Native JSON.stringify is several times faster; it throws on bigints (and on cycles), and only then is
  // the exact serializer below needed. (lossless-json's LosslessNumber objects have no toJSON and would
  // come out as objects on this path; the decoder produces bigints, not LosslessNumbers.)
  try {
    return JSON.stringify(value) ?? 'null';
  } catch {
    return stringifyExact(value);
  }
}

function stringifyExact(value: unknown): string {
  const ancestors = new Set<object>();
  const write = (v: unknown): string | undefined => {
    if (v === null) return 'null';
    switch (typeof v) {
      case 'string':
        return JSON.stringify(v);
      case 'number':
        return Number.isFinite(v) ? String(v) : 'null';
      case 'bigint':
        return v.toString();
      case 'boolean':
        return v ? 'true' : 'false';
      case 'object':
        break;
      default:
        return undefined; // undefined, functions and symbols are skipped, as by JSON.stringify
    }
    if (isLosslessNumber(v)) return v.value;
    const object = v as Record<string, unknown> & { toJSON?: () => unknown };
    if (typeof object.toJSON === 'function') return write(object.toJSON());
    if (ancestors.has(object)) throw new TypeError('circular structure');
    ancestors.add(object);
    let text: string;
    if (Array.isArray(object)) {
      text = `[${object.map((item) => write(item) ?? 'null').join(',')}]`;
    } else {
      const parts: string[] = [];
      for (const key of Object.keys(object)) {
        const item = write(object[key]);
        if (item !== undefined) parts.push(`${JSON.stringify(key)}:${item}`);
      }
      text = `{${parts.join(',')}}`;
    }
    ancestors.delete(object);
    return text;
  };
  return write(value) ?? 'null';
}

/** Follows a pre-split dotted path; own properties only, numeric segments index arrays. */
export function lookupPath(value: unknown, path: readonly string[]): unknown {
  let current = value;
  for (const segment of path) {
    if (current === null || typeof current !== 'object') return undefined;
    if (Array.isArray(current)) {
      if (!/^\d+$/.test(segment)) return undefined;
      current = current[Number(segment)];
    } else {
      current = Object.hasOwn(current, segment) ? (current as Record<string, unknown>)[segment] : undefined;
    }
  }
  return current;
}
