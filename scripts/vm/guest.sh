#!/bin/bash
# Stage 2 of the r3map test VM: PID 1 in the assembled root (host userland, guest kernel).
# run-in-vm.sh copies this file into the job directory; init.sh starts it as
#   /bin/bash <job>/guest.sh <job>
# It sources <job>/command.sh (the caller's environment as exports, plus argv and cwd, quoted
# with printf %q), runs the command with stdout/stderr on two virtio ports, reports the exit
# status on a third one and powers the VM off. A failure here powers off without a status:
# the host then reports 125 and prints the console.
set -u
job=$1

power_off() {
  sync
  echo o >/proc/sysrq-trigger
  sleep 60
}

argv=() cwd=/
# shellcheck source=/dev/null
source "$job/command.sh"
export R3MAP_IN_VM=1
# Root's tools (mkfs.ext4, losetup, modprobe...) must be found whatever PATH the caller had.
case ":${PATH:-}:" in *:/usr/sbin:*) ;; *) PATH=${PATH:+$PATH:}/usr/local/sbin:/usr/sbin:/sbin ;; esac
case ":$PATH:" in *:/usr/bin:*) ;; *) PATH=$PATH:/usr/local/bin:/usr/bin:/bin ;; esac
export PATH
if ! cd -- "$cwd"; then
  echo "r3map-vm guest: cannot enter the working directory $cwd" >&2
  power_off
fi
[ -z "${TMPDIR:-}" ] || mkdir -p "$TMPDIR"

read -r uptime_s _ </proc/uptime
echo "r3map-vm guest: starting the command at ${uptime_s}s" >&2
"${argv[@]}" </dev/null >/dev/virtio-ports/r3map.stdout 2>/dev/virtio-ports/r3map.stderr
status=$?
# A virtio port write returns once QEMU has taken the bytes: the host file has them now.
echo "$status" >/dev/virtio-ports/r3map.status
power_off
