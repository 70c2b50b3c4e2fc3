/**
 * Partition-key routing: the last stage before the sinks. Named routes match on the record's partition
 * key (exact, prefix, regex, Kinesis hash-key range) and on decoded fields (`status >= 500`); each
 * route names its sinks. An event that matches no route goes to the default route's sinks, or, without
 * one, is acked and counted as unmatched: deliberately written nowhere, never silently lost.
 */
import { createHash } from 'node:crypto';
import type { Logger } from 'pino';
import type { Counter, Registry } from 'prom-client';
import { z } from 'zod';
import type { PipelineEvent } from '../core/records.js';
import { counter } from '../metrics/registry.js';
import type { EventRouter } from '../runtime/pipeline.js';
import { type Condition, compileCondition } from './conditions.js';

const MAX_HASH_KEY = (1n << 128n) - 1n;

const hashKey = z
  .union([z.string().regex(/^\d{1,39}$/, 'a decimal integer'), z.number().int().min(0)])
  .transform((v) => BigInt(v))
  .refine((v) => v <= MAX_HASH_KEY, 'hash keys are 0 .. 2^128-1');

const partitionKeyMatchSchema = z
  .object({
    exact: z
      .union([z.string(), z.array(z.string()).min(1)])
      .optional()
      .describe('The key equals this string (or one of these strings).'),
    prefix: z.string().min(1).optional().describe('The key starts with this string.'),
    regex: z
      .string()
      .min(1)
      .optional()
      .describe('The key matches this JavaScript regular expression (unanchored; add ^ and $ to anchor).'),
    hashRange: z
      .object({
        from: hashKey.describe('First hash key of the range (decimal, inclusive).'),
        to: hashKey.describe('Last hash key of the range (decimal, inclusive).'),
      })
      .strict()
      .optional()
      .describe(
        "The key's Kinesis hash key, MD5(partition key) as a 128-bit integer (or the record's explicit hash key when the producer set one), is in this range: the same ranges `list-shards` prints, so a route can follow a shard's key space.",
      ),
  })
  .strict()
  .refine((m) => Object.keys(m).length > 0, 'give at least one of exact, prefix, regex, hashRange')
  .describe('Conditions on the record partition key; all given ones must hold.');

const routeSchema = z
  .object({
    name: z
      .string()
      .regex(/^[a-z][a-z0-9_-]{0,62}$/, 'route names are lowercase letters, digits, _ and -')
      .describe('Route name, used in metrics (ksw_route_events_total{route}).'),
    partitionKey: partitionKeyMatchSchema.optional(),
    where: z
      .array(z.string().min(1))
      .default([])
      .describe(
        'Conditions on decoded fields, all of which must hold: `status >= 500`, `service == "checkout"`, `attributes["http.route"] != "/health"`, `error exists`. Values in JSON syntax.',
      ),
    sinks: z.array(z.string().min(1)).min(1).describe('Sinks that receive the events this route matches.'),
  })
  .strict();

export const routingConfigSchema = z
  .object({
    mode: z
      .enum(['all_matches', 'first_match'])
      .default('all_matches')
      .describe(
        'all_matches: an event goes to the sinks of every route it matches (each sink once). first_match: only the first matching route, in order.',
      ),
    routes: z.array(routeSchema).default([]).describe('Named routes, evaluated in order.'),
    default: z
      .object({
        sinks: z
          .array(z.string().min(1))
          .describe('Sinks for events that match no route; [] acks them without writing (counted).'),
      })
      .strict()
      .optional()
      .describe('Where events that match no route go. Without it they are acked and counted as unmatched.'),
  })
  .strict()
  .describe('Routing of events to sinks. Without this section every event goes to every sink.');

export type RoutingConfig = z.infer<typeof routingConfigSchema>;

/** Every sink name a routing config refers to, with its config path, for start-up validation. */
export function routedSinkNames(config: RoutingConfig): Array<{ sink: string; path: (string | number)[] }> {
  const out: Array<{ sink: string; path: (string | number)[] }> = [];
  config.routes.forEach((r, i) => {
    r.sinks.forEach((s, j) => {
      out.push({ sink: s, path: ['routes', i, 'sinks', j] });
    });
  });
  config.default?.sinks.forEach((s, j) => {
    out.push({ sink: s, path: ['default', 'sinks', j] });
  });
  return out;
}

/** MD5 of the partition key as an unsigned 128-bit integer: how Kinesis maps a key to a shard. */
export function kinesisHashKey(partitionKey: string): bigint {
  return BigInt(`0x${createHash('md5').update(partitionKey, 'utf8').digest('hex')}`);
}

interface CompiledRoute {
  readonly name: string;
  readonly sinks: readonly string[];
  matchKey(key: string, hash: () => bigint): boolean;
  readonly where: readonly Condition[];
}

function compileRoute(route: RoutingConfig['routes'][number], index: number): CompiledRoute {
  const where = route.where.map((text, j) => {
    try {
      return compileCondition(text);
    } catch (err) {
      throw new Error(`routing.routes[${index}].where[${j}]: ${(err as Error).message}`);
    }
  });
  const pk = route.partitionKey;
  const tests: Array<(key: string, hash: () => bigint) => boolean> = [];
  if (pk?.exact !== undefined) {
    const set = new Set(typeof pk.exact === 'string' ? [pk.exact] : pk.exact);
    tests.push((k) => set.has(k));
  }
  if (pk?.prefix !== undefined) {
    const prefix = pk.prefix;
    tests.push((k) => k.startsWith(prefix));
  }
  if (pk?.regex !== undefined) {
    let re: RegExp;
    try {
      re = new RegExp(pk.regex);
    } catch (err) {
      throw new Error(`routing.routes[${index}].partitionKey.regex: ${(err as Error).message}`);
    }
    tests.push((k) => re.test(k));
  }
  if (pk?.hashRange !== undefined) {
    const { from, to } = pk.hashRange;
    if (from > to)
      throw new Error(`routing.routes[${index}].partitionKey.hashRange: from is greater than to`);
    tests.push((_k, hash) => {
      const h = hash();
      return h >= from && h <= to;
    });
  }
  return {
    name: route.name,
    sinks: Object.freeze([...new Set(route.sinks)]),
    where,
    matchKey:
      tests.length === 0
        ? () => true
        : tests.length === 1
          ? tests[0]!
          : (key, hash) => tests.every((t) => t(key, hash)),
  };
}

/** Validates a routing config beyond its schema (conditions, regexes); throws naming the field. */
export function checkRouting(config: RoutingConfig): void {
  config.routes.forEach(compileRoute);
}

const NO_SINKS: readonly string[] = Object.freeze([]);
const DEFAULT_LABELS = { route: 'default' };

/**
 * The hash key of the event being routed, computed only if a route asks for it (hashRange) and once per
 * run of events with the same partition key: MD5 of the key, or the producer's explicit hash key.
 */
class HashKeyOfEvent {
  private key = '';
  private explicit: string | undefined;
  private cachedKey: string | undefined;
  private cachedHash = 0n;
  reset(key: string, explicit: string | undefined): void {
    this.key = key;
    this.explicit = explicit;
  }
  readonly get = (): bigint => {
    const explicit = this.explicit;
    // A producer's explicit hash key (plain or KPL user record) decides the shard instead of MD5(key).
    if (explicit !== undefined && /^\d{1,39}$/.test(explicit)) return BigInt(explicit);
    if (this.cachedKey !== this.key) {
      this.cachedKey = this.key;
      this.cachedHash = kinesisHashKey(this.key);
    }
    return this.cachedHash;
  };
}

export class PartitionKeyRouter implements EventRouter {
  private readonly routes: CompiledRoute[];
  private readonly routed: Counter<'route'>;
  private readonly unmatched: Counter;
  private lastUnmatchedLog = 0;
  /** Matches per route in the current batch: counters are incremented once per batch, not per event. */
  private readonly counts: number[];
  private readonly routeLabels: Array<{ route: string }>;
  private readonly defaultSinks: readonly string[] | undefined;
  /** `all` mode: the union of the sinks of each combination of matched routes, made once. */
  private readonly combined = new Map<string, readonly string[]>();
  private readonly hash = new HashKeyOfEvent();

  constructor(
    private readonly config: RoutingConfig,
    metrics: Registry,
    private readonly logger?: Logger,
  ) {
    this.routes = config.routes.map(compileRoute);
    this.counts = this.routes.map(() => 0);
    this.routeLabels = this.routes.map((r) => ({ route: r.name }));
    this.defaultSinks = config.default ? Object.freeze([...new Set(config.default.sinks)]) : undefined;
    this.routed = counter(metrics, {
      name: 'ksw_route_events_total',
      help: 'Events by the route that matched them ("default" for the default route)',
      labelNames: ['route'],
    });
    this.unmatched = counter(metrics, {
      name: 'ksw_route_unmatched_total',
      help: 'Events that matched no route and were written nowhere (no default route, or one with sinks: []): acked without being written',
    });
  }

  /** Sets `event.sinks` on every event that does not name its sinks yet. */
  route(events: PipelineEvent[]): void {
    const routes = this.routes;
    const counts = this.counts;
    const firstMatch = this.config.mode === 'first_match';
    const defaultSinks = this.defaultSinks;
    const hash = this.hash;
    let unmatched = 0;
    let defaulted = 0;
    for (const event of events) {
      if (event.sinks !== undefined) continue;
      const key = event.origin.partitionKey;
      hash.reset(key, event.origin.explicitHashKey);
      // The first route that matched, and in `all` mode the others as a key ("0,2") when there are any.
      let first = -1;
      let others: string | undefined;
      for (let r = 0; r < routes.length; r++) {
        const route = routes[r]!;
        if (!route.matchKey(key, hash.get)) continue;
        if (!route.where.every((c) => c.test(event.value))) continue;
        counts[r]! += 1;
        if (first < 0) {
          first = r;
          if (firstMatch) break;
        } else {
          others = `${others ?? first},${r}`;
        }
      }
      if (first < 0) {
        if (defaultSinks !== undefined) {
          defaulted += 1;
          if (defaultSinks.length === 0) unmatched += 1;
          event.sinks = defaultSinks;
        } else {
          unmatched += 1;
          event.sinks = NO_SINKS;
        }
      } else {
        // Shared, frozen lists: one per route (or per combination of routes), not one per event.
        event.sinks = others === undefined ? routes[first]!.sinks : this.sinksOf(others);
      }
    }
    for (let r = 0; r < routes.length; r++) {
      if (counts[r]! > 0) {
        this.routed.inc(this.routeLabels[r]!, counts[r]!);
        counts[r] = 0;
      }
    }
    if (defaulted > 0) this.routed.inc(DEFAULT_LABELS, defaulted);
    if (unmatched > 0) {
      this.unmatched.inc(unmatched);
      const now = Date.now();
      if (now - this.lastUnmatchedLog > 60_000) {
        this.lastUnmatchedLog = now;
        this.logger?.warn(
          { unmatched },
          'events matched no route and the default route writes nowhere: acked without being written',
        );
      }
    }
  }

  private sinksOf(matched: string): readonly string[] {
    let sinks = this.combined.get(matched);
    if (sinks === undefined) {
      const union: string[] = [];
      for (const r of matched.split(',')) {
        for (const s of this.routes[Number(r)]!.sinks) if (!union.includes(s)) union.push(s);
      }
      sinks = Object.freeze(union);
      // Bounded by the number of route combinations that actually occur.
      this.combined.set(matched, sinks);
    }
    return sinks;
  }
}
