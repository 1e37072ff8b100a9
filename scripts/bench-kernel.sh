#!/usr/bin/env bash
# The device benchmark through the kernel NBD client: `r3map-bench device --transport nbd`
# (r3map-mount with a memory backend on /dev/nbdN against a raw loop device on a tmpfs file of
# the same size, fio libaio direct=1, 1M sequential and 4k random, read and write). Runs
# directly where /dev/nbd0 exists, otherwise inside the kernel test VM (scripts/vm/run-in-vm.sh).
# Under emulation only the ratio column means anything.
#
#   scripts/bench-kernel.sh [r3map-bench device options...]   # e.g. --json, --runtime 10s
#
# Defaults: --size 128MiB --runtime 5s (later options win). Settings: R3MAP_VM_MEM (2G),
# R3MAP_VM_CPUS (2), R3MAP_VM_TIMEOUT (seconds, 900). Needs root and fio, losetup on this machine;
# without root it skips with a message (fails under R3MAP_STRICT=1 or CI=true). About 2 minutes in the VM.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f dist/src/cli/bench.js ]; then
  echo "bench-kernel: dist/ is missing; run 'make build' first" >&2
  exit 1
fi
node_bin=$(node -p process.execPath)
export R3MAP_LOG_LEVEL=${R3MAP_LOG_LEVEL:-warn}
args=(bin/r3map-bench.js device --transport nbd --size 128MiB --runtime 5s "$@")
unavailable() {
  if [ "${R3MAP_STRICT:-}" = 1 ] || [ "${CI:-}" = true ]; then echo "bench-kernel: FAILED: $*" >&2; exit 1; fi
  echo "bench-kernel: skipped: $*" >&2
  exit 0
}
[ "$(id -u)" = 0 ] || unavailable "needs root (NBD devices, loop devices, or the test VM)"
if [ -e /dev/nbd0 ]; then
  exec "$node_bin" "${args[@]}"
fi
echo "bench-kernel: no /dev/nbd0 here: running in a VM (TCG emulation: absolute numbers are meaningless, read the ratios)" >&2
exec scripts/vm/run-in-vm.sh --mem "${R3MAP_VM_MEM:-2G}" --cpus "${R3MAP_VM_CPUS:-2}" --timeout "${R3MAP_VM_TIMEOUT:-900}" \
  -- "$node_bin" "$(pwd -P)/${args[0]}" "${args[@]:1}"
