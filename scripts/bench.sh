#!/usr/bin/env bash
# npm run bench: the benchmarks, pinned to one CPU when taskset exists (the figures are one-core figures).
set -euo pipefail
cd "$(dirname "$0")/.."
pin=()
if command -v taskset >/dev/null; then pin=(taskset -c 0); fi
"${pin[@]}" node --expose-gc --import tsx bench/chain.ts "$@"
"${pin[@]}" node --import tsx bench/parquet.ts "$@"
