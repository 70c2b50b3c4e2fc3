#!/usr/bin/env bash
# Operations checks that need no Docker engine (npm run test:ops):
#   ShellCheck over every shell script, promtool check/test on the alert rules, the compose file through
#   compose-go (what `docker compose` uses), then test/ops: Kubernetes manifests rendered by kustomize and
#   validated against the Kubernetes schemas, ECS/IAM documents, and a real Prometheus scraping a worker.
# Tools are fetched on first run into .local/ops: prometheus + promtool and shellcheck from Debian's
# packages (apt-get download, extracted, not installed), kustomize and the compose validator built with Go.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OPS=$ROOT/.local/ops
BIN=$OPS/bin
mkdir -p "$BIN" "$OPS/debs"

fetch_deb() { # package, binary...
  local pkg=$1
  shift
  for b in "$@"; do [[ -x $BIN/$b ]] || { missing=1; break; }; done
  if [[ ${missing:-0} == 1 ]]; then
    echo "ops: fetching Debian package $pkg"
    (cd "$OPS/debs" && rm -f "${pkg}"_*.deb && apt-get download "$pkg" >/dev/null 2>&1)
    rm -rf "$OPS/debs/x" && dpkg -x "$OPS/debs/${pkg}"_*.deb "$OPS/debs/x"
    for b in "$@"; do cp "$OPS/debs/x/usr/bin/$b" "$BIN/$b"; done
  fi
  missing=0
}
fetch_deb prometheus prometheus promtool
fetch_deb shellcheck shellcheck

if [[ ! -x $BIN/kustomize ]]; then
  echo "ops: building kustomize (Go module proxy)"
  GOBIN=$BIN GOFLAGS=-mod=mod go install sigs.k8s.io/kustomize/kustomize/v5@v5.7.1
fi
if [[ ! -x $BIN/compose-validate || tools/compose-validate/main.go -nt $BIN/compose-validate ]]; then
  echo "ops: building compose-validate (compose-go)"
  (cd tools/compose-validate && go build -o "$BIN/compose-validate" .)
fi

echo "== shellcheck"
mapfile -t scripts < <(git ls-files '*.sh' .ci/run)
"$BIN/shellcheck" --severity=style "${scripts[@]}"
echo "ok: ${#scripts[@]} scripts"

echo "== promtool check rules / test rules"
"$BIN/promtool" check rules deploy/prometheus/alerts.yaml
"$BIN/promtool" test rules deploy/prometheus/alerts.test.yaml

echo "== compose file"
"$BIN/compose-validate" docker-compose.yml

echo "== test/ops"
KSW_OPS_BIN=$BIN node_modules/.bin/vitest run --project ops test/ops/*.test.ts
