/**
 * Semantic warnings: configs that validate but cannot do what the user meant (a setting that has no
 * effect, a sink nothing reaches, processors in an order that changes their meaning). `ksw validate`
 * prints them and still exits 0 (`--strict` turns them into errors); the worker logs them at start-up.
 *
 * Each check is a small function of the validated config; add new ones to `CHECKS` with a message that
 * says what will happen and how to fix it.
 */
import { routedSinkNames } from '../processors/router.js';
import type { WorkerConfig } from './schema.js';

export interface ConfigWarning {
  /** Dotted path of the field the warning is about, as errors name fields ("processors.2.allowedBuckets"). */
  readonly path: string;
  readonly message: string;
}

type Check = (config: WorkerConfig) => ConfigWarning[];

/** Sinks that no event can reach: there is a routing section, and neither a route nor a processor names them. */
const unreachableSinks: Check = (config) => {
  if (!config.routing) return []; // without routing every event goes to every sink
  const reached = new Set<string>(routedSinkNames(config.routing).map((r) => r.sink));
  for (const p of config.processors)
    for (const s of (p as { sinks?: readonly string[] }).sinks ?? []) reached.add(s);
  return Object.keys(config.sinks)
    .filter((name) => !reached.has(name))
    .map((name) => ({
      path: `sinks.${name}`,
      message: `no route and no processor sends events to sink "${name}", so it will write nothing: add it to a route's sinks (or routing.default.sinks) or remove it`,
    }));
};

const CHECKS: Check[] = [unreachableSinks];

export function semanticWarnings(config: WorkerConfig): ConfigWarning[] {
  return CHECKS.flatMap((check) => check(config));
}
