/**
 * Loads the YAML config: parse, interpolate `${VAR}` / `${VAR:-default}` from the environment, validate
 * with zod. Every problem is reported at once with its field path and a hint; nothing starts on a bad config.
 */
import { readFileSync } from 'node:fs';
import { type Document, LineCounter, parseDocument } from 'yaml';
import { ConfigError, type ConfigProblem, describeIssue, formatPath, keysAt } from './errors.js';
import { type WorkerConfig, workerConfigSchema } from './schema.js';

const REF = /\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}/g;
const WHOLE_REF = /^\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}$/;

/** Replaces ${VAR} references in every string of the tree; a value that is exactly one reference is typed. */
export function interpolate(
  node: unknown,
  env: NodeJS.ProcessEnv,
  problems: ConfigProblem[],
  path: PropertyKey[] = [],
): unknown {
  if (typeof node === 'string') {
    const whole = WHOLE_REF.exec(node);
    if (whole) {
      const value = env[whole[1]!] ?? whole[2];
      if (value === undefined) {
        problems.push({ path: formatPath(path), message: missingVar(whole[1]!) });
        return node;
      }
      // `port: ${PORT}` should be a number, `enabled: ${FLAG}` a boolean.
      if (/^-?\d+(\.\d+)?$/.test(value)) return Number(value);
      if (value === 'true' || value === 'false') return value === 'true';
      return value;
    }
    return node.replace(REF, (ref, name: string, fallback: string | undefined) => {
      const value = env[name] ?? fallback;
      if (value === undefined) {
        problems.push({ path: formatPath(path), message: missingVar(name) });
        return ref;
      }
      return value;
    });
  }
  if (Array.isArray(node)) return node.map((v, i) => interpolate(v, env, problems, [...path, i]));
  if (node && typeof node === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(node)) out[k] = interpolate(v, env, problems, [...path, k]);
    return out;
  }
  return node;
}

function missingVar(name: string): string {
  return `environment variable ${name} is not set; export it, or give a default with \${${name}:-value}`;
}

/** Validates an already parsed config object. Throws ConfigError listing every problem. */
export function validateConfig(
  raw: unknown,
  file = '<config>',
  env: NodeJS.ProcessEnv = process.env,
): WorkerConfig {
  const problems: ConfigProblem[] = [];
  const interpolated = interpolate(raw ?? {}, env, problems);
  const parsed = workerConfigSchema.safeParse(interpolated, { reportInput: true });
  if (!parsed.success) {
    for (const issue of parsed.error.issues) {
      problems.push({
        path: formatPath(issue.path),
        message: describeIssue(issue, keysAt(workerConfigSchema, issue.path)),
      });
    }
  }
  if (problems.length > 0 || !parsed.success) throw new ConfigError(file, problems);
  return parsed.data;
}

/** Splits `a.b[2].c` (or `a.b.2.c`) into its parts. */
export function pathParts(path: string): Array<string | number> {
  return path
    .split(/\.|\[(\d+)\]/)
    .filter((p) => p !== undefined && p !== '')
    .map((p) => (/^\d+$/.test(p) ? Number(p) : p));
}

/** `file:line:column` of the deepest node of `path` present in the document (or undefined). */
export function locate(doc: Document, lines: LineCounter, file: string, path: string): string | undefined {
  const parts = pathParts(path);
  for (let n = parts.length; n >= 0; n--) {
    const node = (n === 0 ? doc.contents : doc.getIn(parts.slice(0, n), true)) as
      | { range?: [number, number, number] }
      | undefined;
    if (node?.range) {
      const { line, col } = lines.linePos(node.range[0]);
      return `${file}:${line}:${col}`;
    }
  }
  return undefined;
}

export interface LoadedConfig {
  readonly config: WorkerConfig;
  /** `file:line:column` of a field path (for warnings). */
  locate(path: string): string | undefined;
}

/** Reads, interpolates and validates a YAML config file, and keeps where each field is in it. */
export function loadConfigSource(file: string, env: NodeJS.ProcessEnv = process.env): LoadedConfig {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    const why = e.code === 'ENOENT' ? 'no such file; check the path' : e.message;
    throw new ConfigError(file, [{ path: '', message: `cannot read the config file: ${why}` }]);
  }
  const lines = new LineCounter();
  const doc = parseDocument(text, { prettyErrors: true, lineCounter: lines });
  if (doc.errors.length > 0) {
    // The first syntax error is the cause; the ones after it are usually its consequences.
    const e = doc.errors[0]!;
    const at = e.linePos?.[0] ? `${file}:${e.linePos[0].line}:${e.linePos[0].col}` : undefined;
    const more = doc.errors.length > 1 ? ' (later syntax errors are usually caused by this one)' : '';
    throw new ConfigError(file, [
      {
        path: '',
        message: `YAML syntax error: ${e.message.split('\n')[0]!.replace(/ at line \d+, column \d+:?$/, '')}; check the indentation and quoting here and just above${more}`,
        ...(at ? { at } : {}),
      },
    ]);
  }
  const where = (path: string) => locate(doc, lines, file, path);
  try {
    return { config: validateConfig(doc.toJS(), file, env), locate: where };
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    throw new ConfigError(
      file,
      err.problems.map((p) => {
        // An unknown field is at its own key, not at the object that has it.
        const key = /^unknown field "([^"]+)"/.exec(p.message)?.[1];
        const at = where(key ? (p.path ? `${p.path}.${key}` : key) : p.path);
        return at ? { ...p, at } : p;
      }),
    );
  }
}

/** Reads, interpolates and validates a YAML config file. */
export function loadConfig(file: string, env: NodeJS.ProcessEnv = process.env): WorkerConfig {
  return loadConfigSource(file, env).config;
}
