#!/usr/bin/env bash
# Runs one command as root under Debian's stock kernel (which has nbd) in a throwaway QEMU VM.
#
#   scripts/vm/run-in-vm.sh [--mem 2G] [--cpus 2] [--timeout 900] [--nbds-max 16]
#                           [--share DIR]... [--accel auto|kvm|tcg] [--verbose] -- CMD [ARG...]
#   scripts/vm/run-in-vm.sh --prepare     # install the host tools and fill the cache, then exit
#
# The guest runs this machine's own programs: the host's / is visible read-only with a tmpfs
# overlay on top (writes work but vanish at exit), the project directory (and each --share DIR)
# is mounted read-write at its own path, the working directory is the caller's. nbd is loaded
# (/dev/nbd0..), and loop, ext4, fuse, swap and userfaultfd work. Networking: loopback only.
# stdin is /dev/null; stdout and stderr come back as separate streams.
# Exit status: CMD's; 124 on timeout (--timeout 0 = none); 125 when this script or the VM failed
# (the console tail is printed). Needs root and, on first use, apt access to a Debian mirror.
# Environment: R3MAP_VM_CACHE (default /var/cache/r3map-vm), R3MAP_VM_KERNEL_PKG (pin a
# linux-image-* package), R3MAP_VM_ACCEL, R3MAP_VM_VERBOSE=1 (console on stderr),
# R3MAP_VM_KERNEL_ARGS (appended to the kernel command line, e.g. loglevel=7).
# Inside, R3MAP_IN_VM=1 is set. See scripts/vm/README.md for the pitfalls.
set -euo pipefail

vm_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
project_dir=$(cd "$vm_dir/../.." && pwd -P)
cache_dir=${R3MAP_VM_CACHE:-/var/cache/r3map-vm}
mem=2G
cpus=2
timeout_s=900
nbds_max=16
accel=${R3MAP_VM_ACCEL:-auto}
verbose=${R3MAP_VM_VERBOSE:-0}
prepare_only=0
shares=("$project_dir")
# Modules the initramfs loads (busybox insmod is much faster than the host's modprobe over 9p);
# modprobe in the guest loads any other module of the cached subset.
stage1_modules="virtio_pci virtio_console 9pnet_virtio 9p overlay nbd loop ext4 fuse"
# The part of the kernel package worth unpacking (the whole tree is ~440 MB).
module_subtrees="fs crypto lib arch mm block virt drivers/block drivers/virtio drivers/char drivers/md net/9p"

log() { printf 'run-in-vm: %s\n' "$*" >&2; }
fail() { log "error: $*"; exit 125; }
usage() { sed -n '2,19s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2; exit "${1:-125}"; }

while [ $# -gt 0 ]; do
  case $1 in
    --mem | --cpus | --timeout | --nbds-max | --share | --accel)
      [ $# -ge 2 ] || fail "$1 needs a value"
      case $1 in
        --mem) mem=$2 ;;
        --cpus) cpus=$2 ;;
        --timeout) timeout_s=$2 ;;
        --nbds-max) nbds_max=$2 ;;
        --share) shares+=("$(cd "$2" && pwd -P)") || fail "--share $2: not a directory" ;;
        --accel) accel=$2 ;;
      esac
      shift 2 ;;
    -v | --verbose) verbose=1; shift ;;
    --prepare) prepare_only=1; shift ;;
    -h | --help) usage 0 ;;
    --) shift; break ;;
    -*) log "unknown option $1"; usage ;;
    *) break ;;
  esac
done
[ "$prepare_only" = 1 ] || [ $# -gt 0 ] || usage
[[ $timeout_s =~ ^[0-9]+$ ]] || fail "--timeout takes whole seconds"
[[ $nbds_max =~ ^[1-9][0-9]*$ ]] || fail "--nbds-max takes a positive number"
[ "$(id -u)" = 0 ] || fail "needs root (apt-get, the cache in $cache_dir, 9p passthrough)"
[[ $cache_dir != *[[:space:],]* ]] || fail "R3MAP_VM_CACHE must not contain whitespace or commas"

# ---------------------------------------------------------------- host tools
setup_log=$cache_dir/setup.log

apt_install() {
  log "installing $* (log: $setup_log)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends "$@" >>"$setup_log" 2>&1 && return
  apt-get update >>"$setup_log" 2>&1 || true
  apt-get install -y --no-install-recommends "$@" >>"$setup_log" 2>&1 ||
    fail "apt-get install $* failed; see $setup_log"
}

install_host_tools() {
  local missing=()
  command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
  # The initramfs has no libc: busybox must be the static build ("ldd" fails on it).
  if [ ! -x /bin/busybox ] || ldd /bin/busybox >/dev/null 2>&1; then missing+=(busybox-static); fi
  command -v cpio >/dev/null || missing+=(cpio)
  { command -v depmod && command -v modprobe; } >/dev/null || missing+=(kmod)
  command -v xz >/dev/null || missing+=(xz-utils)
  [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
}

# ---------------------------------------------------------------- kernel cache
# $cache_dir/kernels/<package>/ holds vmlinux, kver, the module subset under
# lib/modules/<kver>, initramfs images, and "ready" once complete; "current" links to the one
# in use, so later runs never ask apt anything.
newest_kernel_package() {
  apt-cache depends linux-image-amd64 2>/dev/null |
    sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*\)$/\1/p' | head -n 1
}

choose_kernel_package() {
  if [ -n "${R3MAP_VM_KERNEL_PKG:-}" ]; then echo "$R3MAP_VM_KERNEL_PKG"; return; fi
  local pkg; pkg=$(newest_kernel_package)
  if [ -z "$pkg" ]; then
    apt-get update >>"$setup_log" 2>&1 || true
    pkg=$(newest_kernel_package)
  fi
  [ -n "$pkg" ] || fail "apt knows no linux-image-amd64 (is this Debian with a working sources.list?)"
  echo "$pkg"
}

# Decompresses the kernel proper out of a bzImage, using the offsets its setup header gives
# (boot protocol 2.08+). QEMU boots the ELF through its PVH entry point, which skips the
# in-guest decompression (about 8 s under TCG).
extract_vmlinux() {
  local bz=$1 out=$2 setup_sects payload_offset payload_length start
  setup_sects=$(od -An -tu1 -j $((0x1f1)) -N 1 "$bz" | tr -d ' ')
  [ "$setup_sects" != 0 ] || setup_sects=4
  payload_offset=$(od -An -tu4 -j $((0x248)) -N 4 "$bz" | tr -d ' ')
  payload_length=$(od -An -tu4 -j $((0x24c)) -N 4 "$bz" | tr -d ' ')
  start=$(((setup_sects + 1) * 512 + payload_offset))
  dd if="$bz" iflag=skip_bytes,count_bytes skip="$start" count="$payload_length" bs=1M status=none |
    xz -dc --single-stream >"$out" 2>/dev/null &&
    [ "$(head -c 4 "$out")" = $'\x7fELF' ]
}

unpack_kernel() {
  local pkg=$1 staging=$2 deb kver patterns=() sub
  (cd "$staging" && apt-get download "$pkg" >>"$setup_log" 2>&1) || return 1
  deb=$(echo "$staging"/*.deb)
  log "unpacking the kernel and the modules the tests need from ${deb##*/}"
  patterns=('./boot/vmlinuz-*' './lib/modules/*/modules.order' './lib/modules/*/modules.builtin'
    './lib/modules/*/modules.builtin.modinfo')
  for sub in $module_subtrees; do patterns+=("./lib/modules/*/kernel/$sub/*"); done
  mkdir -p "$staging/pkg"
  dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$staging/pkg" --wildcards "${patterns[@]}" ||
    fail "unpacking $deb failed"
  rm -f "$deb"
  kver=$(ls "$staging/pkg/lib/modules")
  mkdir -p "$staging/lib/modules"
  mv "$staging/pkg/lib/modules/$kver" "$staging/lib/modules/"
  depmod -b "$staging" "$kver" || fail "depmod failed for $kver"
  echo "$kver" >"$staging/kver"
  if extract_vmlinux "$staging/pkg/boot/vmlinuz-$kver" "$staging/vmlinux"; then
    rm -rf "$staging/pkg"
  else
    log "cannot decompress vmlinuz-$kver; booting the compressed image (slower)"
    rm -f "$staging/vmlinux" && mv "$staging/pkg/boot/vmlinuz-$kver" "$staging/vmlinux" && rm -rf "$staging/pkg"
  fi
}

prepare_kernel() {
  if [ -z "${R3MAP_VM_KERNEL_PKG:-}" ] && [ -f "$cache_dir/current/ready" ]; then
    kernel_dir=$(readlink -f "$cache_dir/current")
    return
  fi
  local pkg staging; pkg=$(choose_kernel_package)
  kernel_dir=$cache_dir/kernels/$pkg
  if [ ! -f "$kernel_dir/ready" ]; then
    log "downloading $pkg (once, about 70 MB; log: $setup_log)"
    staging=$(mktemp -d "$cache_dir/staging.XXXXXX")
    if ! unpack_kernel "$pkg" "$staging"; then
      # Stale package lists can name a build the mirror has dropped.
      apt-get update >>"$setup_log" 2>&1 || true
      pkg=$(choose_kernel_package)
      kernel_dir=$cache_dir/kernels/$pkg
      rm -rf "$staging" && staging=$(mktemp -d "$cache_dir/staging.XXXXXX")
      unpack_kernel "$pkg" "$staging" || fail "apt-get download $pkg failed; see $setup_log"
    fi
    touch "$staging/ready"
    mkdir -p "$cache_dir/kernels" && rm -rf "$kernel_dir" && mv "$staging" "$kernel_dir"
  fi
  if [ -z "${R3MAP_VM_KERNEL_PKG:-}" ]; then
    ln -sfn "kernels/$pkg" "$cache_dir/current.new" && mv -T "$cache_dir/current.new" "$cache_dir/current"
  fi
}

# The initramfs: static busybox, init.sh, and the modules stage 1 needs. Its name carries a
# hash of what went in, so editing init.sh builds a new one.
prepare_initramfs() {
  local kver key staging ko
  kver=$(<"$kernel_dir/kver")
  key=$({ cat "$vm_dir/init.sh"; echo "$stage1_modules"; sha256sum </bin/busybox; } | sha256sum | cut -c1-16)
  initramfs=$kernel_dir/initramfs-$key.cpio.gz
  [ -f "$initramfs" ] && return
  log "building ${initramfs##*/}"
  rm -f "$kernel_dir"/initramfs-*.cpio.gz # older versions of init.sh
  staging=$(mktemp -d "$cache_dir/staging.XXXXXX")
  mkdir -p "$staging"/{bin,dev,proc,sys,modules}
  mknod "$staging/dev/console" c 5 1 # the kernel opens it for init's stdio
  cp /bin/busybox "$staging/bin/busybox"
  for ko in $(/bin/busybox --list); do [ "$ko" = busybox ] || ln -s busybox "$staging/bin/$ko"; done
  # shellcheck disable=SC2086
  for ko in $stage1_modules; do modprobe -d "$kernel_dir" -S "$kver" --show-depends "$ko"; done |
    awk '$1 == "insmod" && !seen[$2]++ { print $2 }' | while read -r ko; do
      cp "$ko" "$staging/modules/" && echo "${ko##*/}" >>"$staging/modules/load-order"
    done
  [ -s "$staging/modules/load-order" ] || fail "no modules found for the initramfs"
  install -m 755 "$vm_dir/init.sh" "$staging/init"
  (cd "$staging" && find . | cpio -o -H newc --quiet | gzip -1) >"$initramfs.tmp"
  mv "$initramfs.tmp" "$initramfs"
  rm -rf "$staging"
}

mkdir -p "$cache_dir"
exec 8>"$cache_dir/.lock"
flock 8
rm -rf "$cache_dir"/staging.* # left by an interrupted setup; only the lock holder makes them
install_host_tools
prepare_kernel
prepare_initramfs
flock -u 8
exec 8>&-
if [ "$prepare_only" = 1 ]; then
  log "ready: $kernel_dir/vmlinux $(<"$kernel_dir/kver") (${initramfs##*/})"
  exit 0
fi

# ---------------------------------------------------------------- one run
if [ "$accel" = auto ]; then
  # This platform's /dev/kvm is kvm_pvm, which hangs silently on a stock kernel: KVM only
  # where a hardware KVM module is loaded.
  accel=tcg
  if [ -w /dev/kvm ] && { [ -d /sys/module/kvm_intel ] || [ -d /sys/module/kvm_amd ]; }; then accel=kvm; fi
fi
case $accel in
  kvm) accel_args=(-accel kvm -cpu host) ;;
  tcg) accel_args=(-accel tcg,thread=multi -cpu max) ;;
  *) fail "--accel takes auto, kvm or tcg" ;;
esac

# qboot (part of qemu-system-data) reaches the kernel's PVH entry ~0.5 s sooner than SeaBIOS.
firmware_args=()
if [ -f /usr/share/qemu/qboot.rom ]; then firmware_args=(-bios qboot.rom); fi

job=$(mktemp -d /tmp/r3map-vm.XXXXXX)
vm_pid=
pump_pids=()
cleanup() {
  [ -z "$vm_pid" ] || kill "$vm_pid" 2>/dev/null || true
  [ ${#pump_pids[@]} -eq 0 ] || kill "${pump_pids[@]}" 2>/dev/null || true
  rm -rf "$job"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

cp "$vm_dir/guest.sh" "$job/guest.sh"
printf '%s' "$kernel_dir/lib/modules/$(<"$kernel_dir/kver")" >"$job/moddir"
# The command for guest.sh to source: one read over 9p instead of a parse loop in the guest.
{
  while IFS= read -r -d '' kv; do
    name=${kv%%=*}
    case $name in
      PWD | OLDPWD | SHLVL | _ | HOSTNAME | NOTIFY_SOCKET | LISTEN_*) continue ;; # this host's
      BASH* | SHELLOPTS | UID | EUID | PPID) continue ;;                           # bash's own
    esac
    [[ $name =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] && printf 'export %s=%q\n' "$name" "${kv#*=}"
  done < <(env -0)
  printf 'argv=(' && printf ' %q' "$@" && printf ' )\n'
  printf 'cwd=%q\n' "$PWD"
} >"$job/command.sh"
: >"$job/shares"
share_args=()
for i in "${!shares[@]}"; do
  dir=${shares[i]}
  [[ $dir != *$'\n'* ]] || fail "a shared path contains a newline: $dir"
  [ "$dir" != / ] || fail "cannot share / read-write"
  printf 'share%d %s\n' "$i" "$dir" >>"$job/shares"
  share_args+=(-virtfs "local,path=${dir//,/,,},mount_tag=share$i,security_model=passthrough,multidevs=remap")
done
: >"$job/stdout"; : >"$job/stderr"; : >"$job/status"; : >"$job/console"

qemu=(qemu-system-x86_64 -M q35 "${accel_args[@]}" -smp "$cpus" -m "$mem"
  -nodefaults -no-user-config -display none -no-reboot -nic none "${firmware_args[@]}"
  -kernel "$kernel_dir/vmlinux" -initrd "$initramfs"
  -append "console=ttyS0 quiet panic=-1 mitigations=off i8042.noaux i8042.nokbd i8042.nopnp r3map.job=$job r3map.nbds_max=$nbds_max ${R3MAP_VM_KERNEL_ARGS:-}"
  -serial "file:$job/console"
  -virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap"
  "${share_args[@]}"
  -device virtio-serial-pci,id=ports)
for name in stdout stderr status; do
  qemu+=(-chardev "file,id=$name,path=$job/$name" -device "virtserialport,bus=ports.0,chardev=$name,name=r3map.$name")
done

started_ns=$(date +%s%N)
[ "$verbose" != 1 ] || log "booting $(<"$kernel_dir/kver") ($accel, $cpus cpus, $mem)"
timeout --kill-after=10 "$timeout_s" "${qemu[@]}" </dev/null >"$job/qemu.log" 2>&1 &
vm_pid=$!
# QEMU appends the guest's output to plain files; tail streams them until QEMU is gone.
tail -q -s 0.1 -c +1 -f --pid="$vm_pid" "$job/stdout" & pump_pids+=($!)
tail -q -s 0.1 -c +1 -f --pid="$vm_pid" "$job/stderr" >&2 & pump_pids+=($!)
if [ "$verbose" = 1 ]; then tail -q -s 0.1 -c +1 -f --pid="$vm_pid" "$job/console" >&2 & pump_pids+=($!); fi
vm_status=0
wait "$vm_pid" || vm_status=$?
vm_pid=
wait "${pump_pids[@]}" 2>/dev/null || true
pump_pids=()
[ "$verbose" != 1 ] || log "the VM ran $((($(date +%s%N) - started_ns) / 1000000)) ms (qemu status $vm_status)"

status=$(tr -d '[:space:]' <"$job/status")
if [[ $status =~ ^[0-9]+$ ]]; then exit "$status"; fi
if [ "$vm_status" = 124 ] || [ "$vm_status" = 137 ]; then
  log "timed out after ${timeout_s}s; the console ends with:"
  tail -n 20 "$job/console" >&2
  exit 124
fi
log "the VM stopped without an exit status (qemu status $vm_status); console and qemu output:"
tail -n 40 "$job/console" "$job/qemu.log" >&2
exit 125
