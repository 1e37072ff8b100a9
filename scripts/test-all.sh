#!/usr/bin/env bash
# `make test`: the host suites (unit + conformance), then the kernel suite (here, or in a VM when
# this kernel has no nbd). The kernel suite runs even when the host suites failed, so one run
# reports both. Ends with one line that sums both runners' summaries:
#   tests: N passed, N failed, N skipped
set -uo pipefail
cd "$(dirname "$0")/.."
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
status=0
bash scripts/run-tests.sh all 2>&1 | tee "$logs/host.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
bash scripts/run-kernel-tests.sh 2>&1 | tee "$logs/kernel.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
# node's test runner ends with "# pass N" (tap) or "ℹ pass N" (spec); take the last of each per run.
sum() {
  local key=$1 total=0 n
  for f in "$logs"/*.log; do
    n=$(grep -E "^(# |ℹ )$key [0-9]+$" "$f" | tail -1 | grep -oE '[0-9]+$')
    total=$((total + ${n:-0}))
  done
  echo "$total"
}
passed=$(sum pass) failed=$(sum fail) skipped=$(sum skipped)
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi # a runner that died without a summary
echo
echo "tests: $passed passed, $failed failed, $skipped skipped"
exit $status
