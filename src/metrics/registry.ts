import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';

/** One registry per worker process (tests create several workers in one process). */
export function createRegistry(defaultMetrics = true): Registry {
  const registry = new Registry();
  if (defaultMetrics) collectDefaultMetrics({ register: registry, prefix: 'ksw_' });
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
