import type { z } from 'zod';

/** A config problem: where (a path such as `sinks.lake.compression`) and what to do about it. */
export interface ConfigProblem {
  readonly path: string;
  readonly message: string;
  /** `file:line:column` of the field in the YAML source, when the config came from a file. */
  readonly at?: string;
}

export class ConfigError extends Error {
  constructor(
    readonly file: string,
    readonly problems: readonly ConfigProblem[],
  ) {
    super(
      `${file}: invalid configuration\n${problems.map((p) => `  - ${p.at ? `${p.at} ` : ''}${p.path || '(root)'}: ${p.message}`).join('\n')}`,
    );
    this.name = 'ConfigError';
  }
}

export function formatPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const part of path) {
    if (typeof part === 'number') out += `[${part}]`;
    else out += out ? `.${String(part)}` : String(part);
  }
  return out;
}

function distance(a: string, b: string): number {
  const dp = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    let prev = dp[0]!;
    dp[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const tmp = dp[j]!;
      dp[j] = Math.min(
        dp[j]! + 1,
        dp[j - 1]! + 1,
        prev + (a[i - 1]!.toLowerCase() === b[j - 1]!.toLowerCase() ? 0 : 1),
      );
      prev = tmp;
    }
  }
  return dp[b.length]!;
}

/** The closest known name, when one is close enough to be a typo. */
export function suggest(name: string, known: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestScore = Number.POSITIVE_INFINITY;
  for (const k of known) {
    const d = distance(name, k);
    if (d < bestScore) {
      best = k;
      bestScore = d;
    }
  }
  return best !== undefined && bestScore <= Math.max(2, Math.floor(name.length / 3)) ? best : undefined;
}

/** Turns a zod issue into a message with a hint on how to fix it. */
export function describeIssue(issue: z.core.$ZodIssue, knownKeys?: readonly string[]): string {
  switch (issue.code) {
    case 'unrecognized_keys': {
      return issue.keys
        .map((k) => {
          const s = knownKeys ? suggest(k, knownKeys) : undefined;
          return `unknown field "${k}"${s ? ` (did you mean "${s}"?)` : ''}; remove it or check the spelling`;
        })
        .join('; ');
    }
    case 'invalid_value': {
      const got = issue.input === undefined ? 'nothing' : JSON.stringify(issue.input);
      return `got ${got}; allowed values: ${issue.values.map((v) => JSON.stringify(v)).join(', ')}`;
    }
    case 'invalid_type': {
      if (issue.input === undefined) return `required field is missing (expected ${issue.expected})`;
      return `expected ${issue.expected}, got ${JSON.stringify(issue.input)}`;
    }
    case 'too_small':
      return `${issue.message} (minimum ${String(issue.minimum)})`;
    case 'too_big':
      return `${issue.message} (maximum ${String(issue.maximum)})`;
    default:
      return issue.message;
  }
}

/** Field names expected at a path of the schema, for "did you mean" hints. */
export function keysAt(schema: z.ZodType, path: readonly PropertyKey[]): string[] {
  let current: unknown = schema;
  const unwrap = (s: unknown): unknown => {
    let x = s as {
      def?: { type?: string; innerType?: unknown; in?: unknown; element?: unknown; valueType?: unknown };
    };
    for (let i = 0; i < 10 && x?.def; i++) {
      const t = x.def.type;
      if (t === 'default' || t === 'optional' || t === 'nullable' || t === 'prefault')
        x = x.def.innerType as typeof x;
      else if (t === 'pipe') x = x.def.in as typeof x;
      else break;
    }
    return x;
  };
  for (const part of path) {
    const s = unwrap(current) as {
      def?: { type?: string; element?: unknown; valueType?: unknown };
      shape?: Record<string, unknown>;
    };
    if (s?.def?.type === 'array') current = s.def.element;
    else if (s?.def?.type === 'record') current = s.def.valueType;
    else if (s?.shape) current = s.shape[String(part)];
    else return [];
  }
  const s = unwrap(current) as { shape?: Record<string, unknown> };
  return s?.shape ? Object.keys(s.shape) : [];
}
