/**
 * Field conditions over decoded events, as written in config: `status >= 500`,
 * `service == "checkout"`, `attributes["http.route"] != "/health"`, `error exists`.
 *
 * Deliberately tiny: one comparison per condition (a route's `where` list is a conjunction), literals
 * in JSON syntax, paths as dotted names or `["quoted key"]` segments for keys that contain dots (as
 * OpenTelemetry attribute names do). Compiled once at start-up, so a typo fails there, not per record.
 */

export type FieldPath = readonly string[];

export interface Condition {
  readonly text: string;
  test(value: Record<string, unknown>): boolean;
}

const OPERATORS = ['==', '!=', '>=', '<=', '>', '<'] as const;
type Operator = (typeof OPERATORS)[number];

/** Parses `a.b["c.d"].e` into ['a', 'b', 'c.d', 'e']. Throws with the position of the problem. */
export function parseFieldPath(text: string): FieldPath {
  const path: string[] = [];
  let i = 0;
  const s = text.trim();
  if (s === '') throw new Error('empty field path');
  while (i < s.length) {
    if (s[i] === '[') {
      const end = findClosingQuote(s, i + 1);
      if (s[i + 1] !== '"' || end < 0 || s[end + 1] !== ']') {
        throw new Error(`bad path "${text}": use ["key"] for keys with dots or spaces`);
      }
      path.push(JSON.parse(s.slice(i + 1, end + 1)) as string);
      i = end + 2;
    } else {
      const m = /^[A-Za-z_$@][\w$@-]*/.exec(s.slice(i));
      if (!m) throw new Error(`bad path "${text}" at position ${i}: expected a field name`);
      path.push(m[0]);
      i += m[0].length;
    }
    if (i < s.length) {
      if (s[i] === '.') i += 1;
      else if (s[i] !== '[') throw new Error(`bad path "${text}" at position ${i}: expected . or [`);
    }
  }
  return path;
}

function findClosingQuote(s: string, openQuote: number): number {
  for (let j = openQuote + 1; j < s.length; j++) {
    if (s[j] === '\\') j += 1;
    else if (s[j] === '"') return j;
  }
  return -1;
}

export function getPath(value: unknown, path: FieldPath): unknown {
  let cur: unknown = value;
  for (const key of path) {
    if (cur === null || typeof cur !== 'object') return undefined;
    cur = (cur as Record<string, unknown>)[key];
  }
  return cur;
}

/** Compiles one condition; throws an Error whose message says what is wrong and how to write it. */
export function compileCondition(text: string): Condition {
  const trimmed = text.trim();
  const exists = /^(.*?)\s+(exists|missing)$/.exec(trimmed);
  if (exists) {
    const path = parseFieldPath(exists[1]!);
    const want = exists[2] === 'exists';
    return { text, test: (v) => (getPath(v, path) !== undefined) === want };
  }
  const op = findOperator(trimmed);
  if (!op) {
    throw new Error(
      `cannot read condition "${text}": write <field> <op> <value> with op one of ${OPERATORS.join(' ')}, or <field> exists`,
    );
  }
  const path = parseFieldPath(trimmed.slice(0, op.at));
  const literalText = trimmed.slice(op.at + op.op.length).trim();
  let literal: unknown;
  try {
    literal = JSON.parse(literalText);
  } catch {
    throw new Error(
      `cannot read the value in "${text}": write it as JSON (numbers bare, strings in double quotes, true/false/null)`,
    );
  }
  if (literal !== null && typeof literal === 'object') {
    throw new Error(
      `condition "${text}": compare with a number, string, boolean or null, not an object or array`,
    );
  }
  const compare = comparator(op.op, literal as string | number | boolean | null);
  return { text, test: (v) => compare(getPath(v, path)) };
}

function findOperator(s: string): { op: Operator; at: number } | undefined {
  // The first operator outside a ["quoted"] path segment; two-character operators win over one.
  let inQuote = false;
  for (let i = 0; i < s.length; i++) {
    const c = s[i];
    if (c === '"' && s[i - 1] !== '\\') inQuote = !inQuote;
    if (inQuote) continue;
    for (const op of OPERATORS) if (s.startsWith(op, i)) return { op, at: i };
  }
  return undefined;
}

function comparator(op: Operator, literal: string | number | boolean | null): (actual: unknown) => boolean {
  if (op === '==') return (a) => looseEqual(a, literal);
  if (op === '!=') return (a) => !looseEqual(a, literal);
  if (typeof literal !== 'number' && typeof literal !== 'string') {
    throw new Error(`${op} needs a number or a string to compare with, got ${JSON.stringify(literal)}`);
  }
  const cmp =
    op === '>='
      ? (d: number) => d >= 0
      : op === '<='
        ? (d: number) => d <= 0
        : op === '>'
          ? (d: number) => d > 0
          : (d: number) => d < 0;
  if (typeof literal === 'number') {
    return (a) => {
      const n = toNumber(a);
      return n !== undefined && cmp(n - literal);
    };
  }
  return (a) => typeof a === 'string' && cmp(a < literal ? -1 : a > literal ? 1 : 0);
}

/** Numbers also arrive as bigint (exact int64) or as strings (OTLP/JSON int64); compare them as numbers. */
function toNumber(a: unknown): number | undefined {
  if (typeof a === 'number') return a;
  if (typeof a === 'bigint') return Number(a);
  if (typeof a === 'string' && a.trim() !== '' && Number.isFinite(Number(a))) return Number(a);
  return undefined;
}

function looseEqual(a: unknown, literal: string | number | boolean | null): boolean {
  if (literal === null) return a === null || a === undefined;
  if (typeof literal === 'number') return toNumber(a) === literal;
  return a === literal;
}
