import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';

/** One registry per worker process (tests create several workers in one process). */
export function createRegistry(defaultMetrics = true): Registry {
  const registry = new Registry();
  if (defaultMetrics) {
    collectDefaultMetrics({ register: registry, prefix: 'ksw_' });
    // prom-client names three gauges *_total, which `promtool check metrics` rejects (a _total suffix means a
    // counter). Their labelled twins without the suffix (ksw_nodejs_active_handles{type}, ...) carry the same
    // counts by type, so nothing is lost.
    for (const kind of ['handles', 'requests', 'resources'])
      registry.removeSingleMetric(`ksw_nodejs_active_${kind}_total`);
  }
  return registry;
}

type Named = { name: string; help: string; labelNames?: readonly string[] };

// Components of the same kind may be instantiated several times against one registry (two Parquet
// sinks, say); they share the metric and tell themselves apart by labels.
export function counter<L extends string>(registry: Registry, opts: Named & { labelNames?: readonly L[] }) {
  return (
    (registry.getSingleMetric(opts.name) as Counter<L> | undefined) ??
    new Counter<L>({ ...opts, registers: [registry] })
  );
}

/**
 * Creates the given series of a labelled counter at 0. A labelled series otherwise appears on its first
 * increment, and `rate()`/`increase()` need a sample before the burst to see it: the first burst of errors
 * after start would read as 0 and its alert would never fire.
 */
export function zeroSeries<L extends string>(
  c: Counter<L>,
  labelSets: ReadonlyArray<Partial<Record<L, string>>>,
): void {
  for (const labels of labelSets) c.inc(labels, 0);
}

export function gauge<L extends string>(registry: Registry, opts: Named & { labelNames?: readonly L[] }) {
  return (
    (registry.getSingleMetric(opts.name) as Gauge<L> | undefined) ??
    new Gauge<L>({ ...opts, registers: [registry] })
  );
}

export function histogram<L extends string>(
  registry: Registry,
  opts: Named & { labelNames?: readonly L[]; buckets?: number[] },
) {
  return (
    (registry.getSingleMetric(opts.name) as Histogram<L> | undefined) ??
    new Histogram<L>({ ...opts, registers: [registry] })
  );
}
