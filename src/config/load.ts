/**
 * Loads the YAML config: parse, interpolate `${VAR}` / `${VAR:-default}` from the environment, validate
 * with zod. Every problem is reported at once with its field path and a hint; nothing starts on a bad config.
 */
import { readFileSync } from 'node:fs';
import { parseDocument } from 'yaml';
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

/** Reads, interpolates and validates a YAML config file. */
export function loadConfig(file: string, env: NodeJS.ProcessEnv = process.env): WorkerConfig {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    const why = e.code === 'ENOENT' ? 'no such file; check the path' : e.message;
    throw new ConfigError(file, [{ path: '', message: `cannot read the config file: ${why}` }]);
  }
  const doc = parseDocument(text, { prettyErrors: true });
  if (doc.errors.length > 0) {
    throw new ConfigError(
      file,
      doc.errors.map((e) => ({ path: '', message: `YAML syntax error: ${e.message.split('\n')[0]}` })),
    );
  }
  return validateConfig(doc.toJS(), file, env);
}
