#!/usr/bin/env bash
# npm run bench: the benchmarks, pinned to one CPU when taskset exists (the throughput figures are one-core
# figures: DuckDB's and V8's helper threads share that core with the event loop). Arguments are passed to
# every part (--spans, --rounds, --cpu-prof, --traces, --partitions, --skip-latency, --skip-fleet).
set -euo pipefail
cd "$(dirname "$0")/.."
pin=()
if command -v taskset >/dev/null; then pin=(taskset -c 0); fi
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || uptime)"
"${pin[@]}" node --expose-gc --import tsx bench/chain.ts "$@"
"${pin[@]}" node --expose-gc --import tsx bench/parquet.ts "$@"
"${pin[@]}" node --expose-gc --import tsx bench/otlp.ts "$@"
node --import tsx bench/memory.ts "$@"
# The fleet simulator (lease-table cost and convergence; --skip-fleet leaves it out).
if [[ " $* " != *" --skip-fleet "* ]]; then node --expose-gc --import tsx bench/fleet-sim.ts --mode both; fi
# Latency needs a real OpenSearch node (fetched and started by the script); --skip-latency leaves it out.
if [[ " $* " != *" --skip-latency "* ]]; then bash scripts/bench-latency.sh "$@"; fi
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || uptime)"
