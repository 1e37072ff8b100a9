#!/usr/bin/env bash
# Runs the kernel suite (the built dist/test/kernel/**/*.test.js, or the test files given as
# arguments) with node's test runner:
# directly where /dev/nbd0 exists, otherwise inside a VM whose kernel has nbd
# (scripts/vm/run-in-vm.sh; the first run installs qemu and caches a Debian kernel).
# The tests get R3MAP_KERNEL_TESTS=1, so a missing /dev/nbd0 fails them instead of skipping.
# A missing prerequisite (root, qemu) skips with a message, and fails under R3MAP_STRICT=1 or
# CI=true. Settings: R3MAP_VM_MEM (2G), R3MAP_VM_CPUS (2), R3MAP_VM_TIMEOUT (seconds, 900).
set -euo pipefail
files=()
for f in "$@"; do files+=("$(realpath -e -- "$f")") || exit 2; done
cd "$(dirname "$0")/.."
root=$(pwd -P)

say() { echo "run-kernel-tests: $*" >&2; }
strict=0
if [ "${R3MAP_STRICT:-}" = 1 ] || [ "${CI:-}" = true ]; then strict=1; fi
unavailable() {
  if [ "$strict" = 1 ]; then
    say "FAILED: $* (a skip is a failure under R3MAP_STRICT=1 / CI=true)"
    exit 1
  fi
  say "skipped: $*"
  exit 0
}

if [ ${#files[@]} -eq 0 ] && [ -d dist/test/kernel ]; then
  mapfile -t files < <(find "$root/dist/test/kernel" -name '*.test.js' | sort)
fi
if [ ${#files[@]} -eq 0 ]; then
  if [ -n "$(find test/kernel -name '*.test.ts' 2>/dev/null)" ]; then
    say "test/kernel has tests but dist/test/kernel has none (did the build run?)"
    exit 1
  fi
  say "no kernel tests yet (dist/test/kernel/*.test.js); nothing to run"
  exit 0
fi

command -v node >/dev/null || unavailable "node is not on PATH"
# The guest runs the host's node: give it the real binary's absolute path (no shims).
node_bin=$(node -p process.execPath)
export R3MAP_KERNEL_TESTS=1
export R3MAP_LOG_LEVEL=${R3MAP_LOG_LEVEL:-silent}
# Emulation makes everything slow: one file at a time, generous per-test bound.
node_args=(--test --test-concurrency=1 --test-timeout=600000)
if [ -t 1 ]; then node_args+=(--test-reporter=spec); fi

if [ -e /dev/nbd0 ]; then
  [ "$(id -u)" = 0 ] || unavailable "/dev/nbd0 exists but the kernel suite needs root"
  say "running ${#files[@]} file(s) on this kernel ($(uname -r))"
  exec "$node_bin" "${node_args[@]}" "${files[@]}"
fi

[ "$(id -u)" = 0 ] || unavailable "no /dev/nbd0 here, and booting the test VM needs root"
vm=$root/scripts/vm/run-in-vm.sh
if ! "$vm" --prepare; then
  unavailable "no /dev/nbd0 here, and the test VM cannot be set up (see the messages above)"
fi
say "no /dev/nbd0 here: running ${#files[@]} file(s) in a VM (TCG emulation is slow; boot ~10 s)"
started=$SECONDS
status=0
"$vm" --mem "${R3MAP_VM_MEM:-2G}" --cpus "${R3MAP_VM_CPUS:-2}" --timeout "${R3MAP_VM_TIMEOUT:-900}" \
  -- "$node_bin" "${node_args[@]}" "${files[@]}" || status=$?
case $status in
  0) say "kernel suite passed in the VM ($((SECONDS - started)) s)" ;;
  124) say "the VM timed out after ${R3MAP_VM_TIMEOUT:-900} s" ;;
  125) say "the VM failed (not the tests); see the console above" ;;
  *) say "kernel suite failed in the VM (status $status, $((SECONDS - started)) s)" ;;
esac
exit "$status"
