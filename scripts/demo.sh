#!/usr/bin/env bash
# The main job on an embedded default: a 256 MiB memory-backed r3map export becomes a local block
# device, gets an ext4 filesystem, and a file goes through it and back.
# Until r3map-mount lands (kernel issue), the device is made from outside tools: r3map-serve on a
# Unix socket -> nbdfuse (libnbd) exposes it as a file -> losetup turns that into /dev/loopN.
# Everything is torn down at exit, also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${R3MAP_DEMO_SIZE:-256MiB}
work=$(mktemp -d /tmp/r3map-demo.XXXXXX)
serve_pid="" fuse_pid="" loopdev=""
cleanup() {
  set +e
  mountpoint -q "$work/mnt" && umount "$work/mnt"
  [ -n "$loopdev" ] && losetup -d "$loopdev"
  if [ -n "$fuse_pid" ]; then fusermount3 -u "$work/fuse" 2>/dev/null; wait "$fuse_pid" 2>/dev/null; fi
  if [ -n "$serve_pid" ]; then kill -TERM "$serve_pid" 2>/dev/null; wait "$serve_pid" 2>/dev/null; fi
  rm -rf "$work"
}
trap cleanup EXIT
step() { printf '\n== %s\n' "$*"; }

step "r3map-serve: memory backend ($SIZE) on unix:$work/nbd.sock"
mkfifo "$work/ready"
node bin/r3map-serve.js --backend memory --size "$SIZE" --nbd-listen "unix:$work/nbd.sock" >"$work/ready" &
serve_pid=$!
read -r uri <"$work/ready"
echo "serving $uri"

step "nbdfuse + losetup: the export becomes a block device"
mkdir -p "$work/fuse" "$work/mnt"
nbdfuse "$work/fuse" "$uri" &
fuse_pid=$!
for _ in $(seq 100); do [ -e "$work/fuse/nbd" ] && break; sleep 0.1; done
loopdev=$(losetup -f --show --direct-io=on "$work/fuse/nbd" 2>/dev/null || losetup -f --show "$work/fuse/nbd")
echo "device: $loopdev ($(blockdev --getsize64 "$loopdev") bytes)"

step "mkfs.ext4, mount, write, read back"
mkfs.ext4 -q -F "$loopdev"
mount "$loopdev" "$work/mnt"
head -c 8M /dev/urandom >"$work/payload"
cp "$work/payload" "$work/mnt/payload"
sync
umount "$work/mnt"
mount "$loopdev" "$work/mnt"
cmp "$work/payload" "$work/mnt/payload" && echo "8 MiB file read back through r3map: identical"
df -h "$work/mnt" | tail -1
step "teardown"
