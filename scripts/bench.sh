#!/usr/bin/env bash
# Runs the r3map-bench scenarios (make bench): `nbd`, `backends`, then `device` through the kernel
# NBD client (scripts/bench-kernel.sh: in the test VM where this kernel has no nbd; about 2
# minutes; KERNEL_BENCH_ARGS goes to it, KERNEL_BENCH=0 leaves it out). Benchmarks are never part
# of `make test`. Extra arguments go to `r3map-bench nbd`, e.g. `scripts/bench.sh --size 256MiB
# --runtime 5s --json`; BACKENDS_ARGS goes to `r3map-bench backends`, e.g.
# BACKENDS_ARGS='--size 64MiB --only nbd,redis' scripts/bench.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f dist/src/cli/bench.js ]; then
  echo "bench: dist/ is missing; run 'make build' first" >&2
  exit 1
fi
export R3MAP_LOG_LEVEL=${R3MAP_LOG_LEVEL:-warn}
status=0
node bin/r3map-bench.js nbd "$@" || status=1
# shellcheck disable=SC2086 # BACKENDS_ARGS is a list of flags
node bin/r3map-bench.js backends ${BACKENDS_ARGS:-} || status=1
if [ "${KERNEL_BENCH:-1}" != 0 ]; then
  # shellcheck disable=SC2086 # KERNEL_BENCH_ARGS is a list of flags
  bash scripts/bench-kernel.sh ${KERNEL_BENCH_ARGS:-} || status=1
fi
exit $status
