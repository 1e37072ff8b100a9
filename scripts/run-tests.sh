#!/usr/bin/env bash
# Runs the built tests with node's test runner. Groups:
#   unit         test/{pipeline,backends,nbd,cli,...} (no outside tools)
#   conformance  test/conformance (real NBD clients and servers)
#   all          every group this machine can run
# Set R3MAP_STRICT=1 (CI sets CI=true) to turn a skipped prerequisite into a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
group=${1:-all}
case "$group" in
  unit) files=$(find dist/test -name '*.test.js' -not -path '*/conformance/*' -not -path '*/kernel/*' | sort) ;;
  conformance) files=$(find dist/test/conformance -name '*.test.js' | sort) ;;
  all) files=$(find dist/test -name '*.test.js' -not -path '*/kernel/*' | sort) ;;
  *) echo "run-tests: unknown group '$group' (unit, conformance, all)" >&2; exit 2 ;;
esac
if [ -z "$files" ]; then
  echo "run-tests: no tests found in dist/test (did the build run?)" >&2
  exit 1
fi
export R3MAP_LOG_LEVEL=${R3MAP_LOG_LEVEL:-silent}
# shellcheck disable=SC2086
exec node --test --test-concurrency=2 --test-timeout=300000 $files
