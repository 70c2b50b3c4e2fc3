/**
 * Tail sampling policies: their config schemas and the compiled form the tail sampler evaluates.
 *
 * Policies are evaluated in order and the FIRST policy whose condition matches the trace decides: it keeps
 * the trace with its `probability` (a hash of the traceId, so every replay decides the same) and within
 * its rate limit, else drops it. A trace no policy matches is dropped. The article's "100 % of errors,
 * 80 % of traces >= 1 s, 20 % of the rest" is three policies:
 *
 *   policies:
 *     - { name: errors, type: status_code }                               # status ERROR, probability 1
 *     - { name: slow, type: latency, thresholdMs: 1000, probability: 0.8 }
 *     - { name: rest, type: probabilistic, probability: 0.2 }
 *
 * Conditions are monotone (once a trace matches, more spans cannot unmatch it), so when the first policy
 * matches the decision is taken at once (an error span arrives: the trace is kept without waiting).
 */
import { z } from 'zod';
import { type Condition, compileCondition } from './conditions.js';
import { samplingMark } from './head-sampling.js';

const policyName = z
  .string()
  .regex(/^[a-zA-Z][a-zA-Z0-9_.-]{0,62}$/, 'letters, digits, _ . - (used as a metric label)')
  .describe('Policy name: the metric label and `sampling.policy` on the spans it keeps.');

const probability = z
  .number()
  .min(0)
  .max(1)
  .default(1)
  .describe(
    'Share of the matching traces kept, decided by a hash of the traceId (consistent across replays).',
  );

const statusCodePolicy = z
  .object({
    name: policyName,
    type: z.literal('status_code'),
    statusCodes: z
      .array(z.enum(['ERROR', 'OK', 'UNSET']))
      .min(1)
      .default(['ERROR'])
      .describe('Matches when any span of the trace has one of these status codes.'),
    probability,
  })
  .strict();

const latencyPolicy = z
  .object({
    name: policyName,
    type: z.literal('latency'),
    thresholdMs: z
      .number()
      .positive()
      .describe('Matches when the trace lasts at least this long (longest span, or last end - first start).'),
    probability,
  })
  .strict();

const attributePolicy = z
  .object({
    name: policyName,
    type: z.literal('attribute'),
    where: z
      .array(z.string().min(1))
      .min(1)
      .describe(
        'Matches when one span satisfies all these conditions, e.g. `attributes["http.route"] == "/api/pay"`, `serviceName == "checkout"`, `resource["deployment.environment"] != "demo"`.',
      ),
    probability,
  })
  .strict();

const probabilisticPolicy = z
  .object({
    name: policyName,
    type: z.literal('probabilistic'),
    probability: z.number().min(0).max(1).describe('Share of traces kept (hash of the traceId).'),
  })
  .strict();

const rateLimitPolicy = z
  .object({
    name: policyName,
    type: z.literal('rate_limit'),
    spansPerSecond: z
      .number()
      .int()
      .min(1)
      .describe(
        'Matches every trace; keeps traces while the spans it kept in the current second stay within this. Depends on timing, so not replay-deterministic.',
      ),
    probability,
  })
  .strict();

const leafPolicy = z.discriminatedUnion('type', [
  statusCodePolicy,
  latencyPolicy,
  attributePolicy,
  probabilisticPolicy,
  rateLimitPolicy,
]);

const share = z
  .number()
  .gt(0)
  .max(1)
  .optional()
  .describe(
    "Share of the composite's maxSpansPerSecond this member may use; members without one split what is left equally.",
  );

const compositeMember = z.discriminatedUnion('type', [
  statusCodePolicy.extend({ share }),
  latencyPolicy.extend({ share }),
  attributePolicy.extend({ share }),
  probabilisticPolicy.extend({ share }),
  rateLimitPolicy.extend({ share }),
]);

const compositePolicy = z
  .object({
    name: policyName,
    type: z.literal('composite'),
    maxSpansPerSecond: z
      .number()
      .int()
      .min(1)
      .describe('Spans per second the composite keeps at most, in total.'),
    policies: z
      .array(compositeMember)
      .min(1)
      .describe(
        'Members, evaluated in order: the first member that matches, samples the trace (its probability) and has room in its share of this second keeps it; a member out of room passes the trace to the next member.',
      ),
  })
  .strict();

export const tailPolicySchema = z.discriminatedUnion('type', [
  statusCodePolicy,
  latencyPolicy,
  attributePolicy,
  probabilisticPolicy,
  rateLimitPolicy,
  compositePolicy,
]);
export type TailPolicyConfig = z.infer<typeof tailPolicySchema>;
type LeafConfig = z.infer<typeof leafPolicy>;

/** What the sampler knows about a trace when it evaluates policies. */
export interface TraceFacts {
  readonly traceId: string;
  /** Bit (1 << status code) for every status code seen among the spans. */
  statusMask: number;
  /** Longest single span, ns (exact). */
  maxSpanNanos: number;
  /** Earliest start and latest end, ns since the epoch (double: within ~256 ns). */
  minStartNanos: number;
  maxEndNanos: number;
  /** Bit i set when attribute policy number i matched one span. */
  attributeMask: number;
  spanCount: number;
}

/** The outcome of one evaluation; objects are shared (one per policy), so caching them costs nothing. */
export interface Decision {
  readonly keep: boolean;
  /** The policy that decided (kept or dropped), or '' when no policy matched. */
  readonly policy: string;
  /** Probability with which such a trace is kept (for re-weighting); 0 for drops. */
  readonly probability: number;
  /** `sampling` for the spans this decision keeps, shared by all of them (frozen). */
  readonly mark: Readonly<{ policy: string; probability: number }>;
}

function decision(keep: boolean, policy: string, probability: number, seed = 0): Decision {
  return Object.freeze({ keep, policy, probability, mark: samplingMark(policy, probability, seed) });
}

export const NO_MATCH: Decision = decision(false, '', 0);

interface RateWindow {
  second: number;
  used: number;
}

export interface CompiledPolicy {
  readonly name: string;
  /**
   * True when a match may be acted on at once, as the first policy: not for rate-limited policies, which
   * must charge the whole trace's span count against their budget.
   */
  readonly early: boolean;
  /** True when the trace meets the policy's condition (before probability and rate). */
  matches(t: TraceFacts): boolean;
  /** Decision for a trace that matched: keep (probability, rate) or drop. */
  decide(t: TraceFacts, inSample: (probability: number) => boolean, nowMs: number): Decision;
  /** Attribute conditions, evaluated on every span (a policy may own one attribute bit). */
  readonly spanConditions?: readonly Condition[];
}

const STATUS_BITS = { UNSET: 1, OK: 2, ERROR: 4 } as const;

function takeRate(w: RateWindow, limit: number, spans: number, nowMs: number): boolean {
  const second = Math.floor(nowMs / 1000);
  if (w.second !== second) {
    w.second = second;
    w.used = 0;
  }
  if (w.used + spans > limit && w.used > 0) return false;
  w.used += spans;
  return true;
}

function compileLeaf(
  c: LeafConfig,
  attributeBit: () => number,
): Omit<CompiledPolicy, 'decide' | 'early'> & { probability: number; rate?: number } {
  switch (c.type) {
    case 'status_code': {
      let mask = 0;
      for (const s of c.statusCodes) mask |= STATUS_BITS[s];
      return { name: c.name, probability: c.probability, matches: (t) => (t.statusMask & mask) !== 0 };
    }
    case 'latency': {
      const ns = c.thresholdMs * 1e6;
      return {
        name: c.name,
        probability: c.probability,
        matches: (t) => t.maxSpanNanos >= ns || t.maxEndNanos - t.minStartNanos >= ns,
      };
    }
    case 'attribute': {
      const bit = attributeBit();
      const conditions = c.where.map((w, i) => {
        try {
          return compileCondition(w);
        } catch (err) {
          throw new Error(`policy ${c.name}: where[${i}]: ${(err as Error).message}`);
        }
      });
      return {
        name: c.name,
        probability: c.probability,
        matches: (t) => (t.attributeMask & bit) !== 0,
        spanConditions: conditions,
      };
    }
    case 'probabilistic':
      return { name: c.name, probability: c.probability, matches: () => true };
    case 'rate_limit':
      return { name: c.name, probability: c.probability, rate: c.spansPerSecond, matches: () => true };
  }
}

/**
 * Compiles the policy list. Attribute policies (also inside composites) get one bit each, in order of
 * appearance; `attributeConditions[i]` are the conditions for bit 1 << i.
 */
export function compilePolicies(
  configs: readonly TailPolicyConfig[],
  /** The traceId hash seed the sampler uses (recorded on the marks it sets). */
  seed = 0,
): {
  policies: CompiledPolicy[];
  attributeConditions: Condition[][];
} {
  const attributeConditions: Condition[][] = [];
  let nextBit = 0;
  const attributeBit = () => {
    if (nextBit >= 30) throw new Error('at most 30 attribute policies');
    return 1 << nextBit++;
  };
  const leaf = (c: LeafConfig): CompiledPolicy & { probability: number; rate?: number } => {
    const base = compileLeaf(c, attributeBit);
    if (base.spanConditions) attributeConditions.push([...base.spanConditions]);
    const kept = decision(true, c.name, base.probability, seed);
    const dropped = decision(false, c.name, 0, seed);
    const window: RateWindow = { second: 0, used: 0 };
    return {
      ...base,
      early: base.rate === undefined,
      decide(t, sample, nowMs) {
        if (!sample(base.probability)) return dropped;
        if (base.rate !== undefined && !takeRate(window, base.rate, t.spanCount, nowMs)) return dropped;
        return kept;
      },
    };
  };
  const policies = configs.map((c): CompiledPolicy => {
    if (c.type !== 'composite') return leaf(c);
    const declared = c.policies.reduce((sum, m) => sum + (m.share ?? 0), 0);
    if (declared > 1 + 1e-9) throw new Error(`policy ${c.name}: member shares add up to more than 1`);
    const undeclared = c.policies.filter((m) => m.share === undefined).length;
    const rest = undeclared > 0 ? (1 - declared) / undeclared : 0;
    const members = c.policies.map((m) => {
      const compiled = leaf(m as LeafConfig);
      const allocated = Math.max(1, Math.floor(c.maxSpansPerSecond * (m.share ?? rest)));
      const kept = decision(true, `${c.name}.${m.name}`, compiled.probability, seed);
      return { compiled, allocated, kept, window: { second: 0, used: 0 } as RateWindow };
    });
    const total: RateWindow = { second: 0, used: 0 };
    const dropped = decision(false, c.name, 0, seed);
    return {
      name: c.name,
      early: false,
      matches: (t) => members.some((m) => m.compiled.matches(t)),
      decide(t, sample, nowMs) {
        for (const m of members) {
          if (!m.compiled.matches(t)) continue;
          if (m.compiled.decide(t, sample, nowMs).keep === false) continue;
          const second = Math.floor(nowMs / 1000);
          if (total.second !== second) {
            total.second = second;
            total.used = 0;
          }
          if (total.used + t.spanCount > c.maxSpansPerSecond && total.used > 0) return dropped;
          if (!takeRate(m.window, m.allocated, t.spanCount, nowMs)) continue;
          total.used += t.spanCount;
          return m.kept;
        }
        return dropped;
      },
    };
  });
  const names = new Set<string>();
  for (const p of configs) {
    if (names.has(p.name)) throw new Error(`two policies are named "${p.name}"`);
    names.add(p.name);
  }
  return { policies, attributeConditions };
}
