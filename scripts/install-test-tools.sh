#!/usr/bin/env bash
# Installs the outside tools the test suite uses as referees (Debian packages). Idempotent:
# it calls apt-get only when a tool is missing. Needs root (or sudo) and Debian's package index.
set -euo pipefail
# command -> package
declare -A want=(
  [nbdinfo]=libnbd-bin
  [nbdcopy]=libnbd-bin
  [nbdfuse]=libnbd-bin
  [nbdsh]=python3-libnbd
  [nbdkit]=nbdkit
  [nbd-server]=nbd-server
  [qemu-io]=qemu-utils
  [qemu-img]=qemu-utils
  [fio]=fio
  [fusermount3]=fuse3
  [losetup]=mount
  [mkfs.ext4]=e2fsprogs
  [redis-server]=redis-server
  [openssl]=openssl
  [systemd-analyze]=systemd
)
missing=()
for cmd in "${!want[@]}"; do
  if ! PATH="/usr/sbin:/sbin:/usr/bin:$PATH" command -v "$cmd" >/dev/null 2>&1; then
    missing+=("${want[$cmd]}")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
pkgs=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
echo "install-test-tools: installing $pkgs" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# nbd-server's postinst asks no questions with noninteractive; do not start its daemon.
$SUDO apt-get install -y -qq --no-install-recommends $pkgs >/dev/null
