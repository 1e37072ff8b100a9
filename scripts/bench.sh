#!/usr/bin/env bash
# Runs the r3map-bench scenarios (make bench). Benchmarks are never part of `make test`.
# Extra arguments go to `r3map-bench nbd`, e.g. `scripts/bench.sh --size 256MiB --runtime 5s --json`.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f dist/src/cli/bench.js ]; then
  echo "bench: dist/ is missing; run 'make build' first" >&2
  exit 1
fi
export R3MAP_LOG_LEVEL=${R3MAP_LOG_LEVEL:-warn}
node bin/r3map-bench.js nbd "$@"
