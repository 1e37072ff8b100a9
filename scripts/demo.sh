#!/usr/bin/env bash
# The main job on an embedded default: a 256 MiB memory-backed r3map mount becomes a local block
# device (the kernel's NBD client where this kernel has nbd, otherwise nbdfuse + a loop device),
# gets an ext4 filesystem, and a file goes through it and back. Everything is torn down at exit,
# also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${R3MAP_DEMO_SIZE:-256MiB}
export R3MAP_LOG_LEVEL=${R3MAP_LOG_LEVEL:-warn} # info shows every step r3map takes
work=$(mktemp -d /tmp/r3map-demo.XXXXXX)
mount_pid=""
cleanup() {
  set +e
  mountpoint -q "$work/mnt" && umount "$work/mnt"
  if [ -n "$mount_pid" ]; then kill -TERM "$mount_pid" 2>/dev/null; wait "$mount_pid" 2>/dev/null; fi
  rm -rf "$work"
}
trap cleanup EXIT
step() { printf '\n== %s\n' "$*"; }

step "r3map-mount: a memory backend ($SIZE) as a block device"
mkdir -p "$work/mnt"
node bin/r3map-mount.js --backend memory --size "$SIZE" --ready-file "$work/device" &
mount_pid=$!
for _ in $(seq 600); do [ -s "$work/device" ] && break; kill -0 "$mount_pid" 2>/dev/null || exit 1; sleep 0.1; done
dev=$(cat "$work/device")
echo "device: $dev ($(blockdev --getsize64 "$dev") bytes)"

step "mkfs.ext4, mount, write, unmount, mount again, read back"
mkfs.ext4 -q -F "$dev"
mount "$dev" "$work/mnt"
head -c 8M /dev/urandom >"$work/payload"
cp "$work/payload" "$work/mnt/payload"
umount "$work/mnt"
mount "$dev" "$work/mnt"
cmp "$work/payload" "$work/mnt/payload" && echo "8 MiB file read back through r3map: identical"
df -h "$work/mnt" | tail -1
umount "$work/mnt"

step "SIGTERM: r3map-mount flushes, detaches and exits"
kill -TERM "$mount_pid"
wait "$mount_pid" && echo "r3map-mount exited 0; $dev is detached"
mount_pid=""
