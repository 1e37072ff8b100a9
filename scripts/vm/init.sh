#!/bin/sh
# Stage 1 of the r3map test VM: /init of the initramfs, run by busybox.
#
# It builds the whole system with busybox (fast: the host's binaries would be loaded over 9p
# under emulation): modules, the host's / over 9p (read-only) under a tmpfs overlay, the
# read-write shares, run-time mounts and device links. Then it hands over to stage 2
# (guest.sh, copied into the job directory by run-in-vm.sh), which runs the command.
# Kernel command line: r3map.job=<job directory> r3map.nbds_max=<n>. Job file used here:
# shares, one "<tag> <path>" line per read-write share.
# A failure powers the VM off without an exit status: the host then reports 125 and prints
# the console, where these messages go.
export PATH=/bin

halt() {
  echo "r3map-vm init: $*"
  echo o >/proc/sysrq-trigger
  sleep 30
}
param() {
  for word in $(cat /proc/cmdline); do
    case $word in "r3map.$1="*) echo "${word#*=}" ;; esac
  done
}

mount -t proc proc /proc || halt "cannot mount /proc"
mount -t sysfs sysfs /sys || halt "cannot mount /sys"
mount -t devtmpfs devtmpfs /dev || halt "cannot mount /dev"

# The modules, in dependency order (written by run-in-vm.sh).
nbds_max=$(param nbds_max)
while read -r ko; do
  case $ko in
    nbd.ko) insmod "/modules/$ko" nbds_max="${nbds_max:-16}" ;;
    *) insmod "/modules/$ko" ;;
  esac || halt "insmod $ko failed"
done </modules/load-order
ip link set lo up || halt "cannot bring up the loopback interface"
hostname r3map-vm

job=$(param job)
[ -n "$job" ] || halt "no r3map.job= on the kernel command line"

# ---------------------------------------------------------------- the root
ninep="trans=virtio,version=9p2000.L,msize=512000"
mkdir -p /lower /scratch /root
mount -t 9p -o "$ninep,cache=loose,ro" hostroot /lower || halt "cannot mount the host root over 9p"
mount -t tmpfs -o mode=755 scratch /scratch || halt "cannot mount the overlay's tmpfs"
mkdir -p /scratch/upper /scratch/work
mount -t overlay -o lowerdir=/lower,upperdir=/scratch/upper,workdir=/scratch/work root /root ||
  halt "cannot mount the overlay root"
r=/root
[ -r "$r$job/guest.sh" ] || halt "job directory $job is not visible in the guest"

# modprobe in the guest finds the cached module tree at the usual place.
kver=$(uname -r)
mkdir -p "$r/lib/modules/$kver" && mount --bind "$r$(cat "$r$job/moddir")" "$r/lib/modules/$kver" ||
  halt "cannot bind the cached modules to /lib/modules/$kver"

while IFS= read -r line; do
  tag=${line%% *} dir=${line#* }
  mkdir -p "$r$dir" && mount -t 9p -o "$ninep,cache=mmap" "$tag" "$r$dir" ||
    halt "cannot mount share $tag at $dir"
done <"$r$job/shares"

mount -t tmpfs -o mode=755 run "$r/run" || halt "cannot mount /run"

# ---------------------------------------------------------------- /dev (no udev here)
mkdir -p /dev/pts /dev/shm /dev/virtio-ports
for port in /sys/class/virtio-ports/*; do
  ln -s "../${port##*/}" "/dev/virtio-ports/$(cat "$port/name")"
done
ln -s /proc/self/fd /dev/fd
ln -s fd/0 /dev/stdin && ln -s fd/1 /dev/stdout && ln -s fd/2 /dev/stderr
for fs in dev proc sys; do
  mount --move "/$fs" "$r/$fs" || halt "cannot move /$fs into the new root"
done
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts "$r/dev/pts" || halt "cannot mount /dev/pts"
mount -t tmpfs -o mode=1777 shm "$r/dev/shm" || halt "cannot mount /dev/shm"
mount -t cgroup2 cgroup2 "$r/sys/fs/cgroup" 2>/dev/null

exec switch_root "$r" /bin/bash "$job/guest.sh" "$job"
halt "switch_root failed"
