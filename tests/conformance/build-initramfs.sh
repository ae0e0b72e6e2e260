#!/usr/bin/env bash
# Builds (or finds in the cache) a busybox initramfs for a conformance test guest.
#
# Usage: tests/conformance/build-initramfs.sh --test SCRIPT [--file SRC:DEST]... [MODULE...]
#   --test SCRIPT     guest-side test (busybox sh), installed as /test.sh
#   --file SRC:DEST   extra file to copy into the image (DEST is an absolute path in the guest)
#   --bin PATH        a host program (or shared library), at the same path in the guest, with the shared libraries ldd finds
#                     for it (and the dynamic loader), for guests that have no host root to chroot into
#   --tree SRC:DEST   a folder copied whole (DEST absolute), e.g. /usr/share/alsa for aplay
#   MODULE            kernel modules to load, e.g. virtio-rng; dependencies are resolved with
#                     `modinfo -F depends` and loaded first; built-in modules are skipped
# Prints the path of the initramfs (gzip'ed newc cpio) on stdout; progress goes to stderr.
#
# The kernel comes from scripts/guest-kernel.sh unless CANOPY_KVER and CANOPY_GUEST_KERNEL_ROOT are
# already in the environment. Images are cached in
#   ${CANOPY_CACHE:-/var/cache/canopy}/initramfs/<KVER>/<hash>.cpio.gz
# where the hash covers this script (and so /init), the guest helpers, the test script, extra files,
# the module list and busybox. Entries unused for 30 days are pruned.
#
# The image: busybox-static (its applet links are made at boot by `busybox --install -s`), the modules decompressed (.ko.xz -> .ko) in
# /lib/modules/canopy/ with their load order in /etc/canopy-modules, /lib/canopy/guest.sh, /test.sh
# and an /init that mounts proc, sysfs, devtmpfs and a tmpfs /tmp, loads the modules, runs /test.sh
# (killed after canopy.timeout=SECONDS from the kernel command line, default 60), prints
#   CANOPY-TEST-RESULT: PASS      or      CANOPY-TEST-RESULT: FAIL <reason>
# and powers off with `poweroff -f` (boot QEMU with -no-reboot and panic=-1 so it always exits).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SELF="$HERE/$(basename "${BASH_SOURCE[0]}")"
REPO=$(cd "$HERE/../.." && pwd)
GUEST_LIB="$HERE/guest/canopy-guest.sh"
PATH="$PATH:/usr/sbin:/sbin"

die() { echo "build-initramfs: error: $*" >&2; exit 1; }
log() { echo "build-initramfs: $*" >&2; }

test_script=""
extra_files=()
bins=()
trees=()
modules=()
while [ $# -gt 0 ]; do
  case "$1" in
    --test) [ $# -ge 2 ] || die "--test needs a file"; test_script=$2; shift 2 ;;
    --file) [ $# -ge 2 ] || die "--file needs SRC:DEST"; extra_files+=("$2"); shift 2 ;;
    --bin) [ $# -ge 2 ] || die "--bin needs a program"; bins+=("$2"); shift 2 ;;
    --tree) [ $# -ge 2 ] || die "--tree needs SRC:DEST"; trees+=("$2"); shift 2 ;;
    -h | --help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$SELF"; exit 0 ;;
    -*) die "unknown option $1" ;;
    *) modules+=("$1"); shift ;;
  esac
done
[ -n "$test_script" ] || die "--test SCRIPT is required"
[ -f "$test_script" ] || die "no test script $test_script"
for f in "${extra_files[@]}"; do
  [ -f "${f%%:*}" ] || die "no file ${f%%:*}"
  case "${f#*:}" in /*) ;; *) die "--file $f: DEST must be absolute" ;; esac
done
for t in "${trees[@]}"; do
  [ -d "${t%%:*}" ] || die "no folder ${t%%:*}"
  case "${t#*:}" in /*) ;; *) die "--tree $t: DEST must be absolute" ;; esac
done
# Each --bin program with the libraries it loads (ldd's resolved paths, the loader included), as
# absolute host paths copied to the same paths in the guest.
bin_files=()
for b in "${bins[@]}"; do
  case "$b" in /*) ;; *) die "--bin $b: give an absolute path" ;; esac
  [ -f "$b" ] || die "no program or library $b"
  bin_files+=("$b")
  if ldd "$b" >/dev/null 2>&1; then
    while read -r lib; do
      [ -f "$lib" ] || die "$b needs $lib, which is missing"
      bin_files+=("$lib")
    done < <(ldd "$b" | awk '/=> \// { print $3 } /^[[:space:]]*\// { print $1 }')
  fi
done

BUSYBOX=$(command -v busybox || true)
[ -n "$BUSYBOX" ] || die "busybox not found (install busybox-static)"
file -L "$BUSYBOX" 2>/dev/null | grep -q 'dynamically linked' && die "$BUSYBOX is dynamically linked; install busybox-static"
for t in cpio gzip xz modinfo sha256sum; do
  command -v "$t" >/dev/null || die "$t not found"
done

if [ -z "${CANOPY_KVER:-}" ] || [ -z "${CANOPY_GUEST_KERNEL_ROOT:-}" ]; then
  eval "$("$REPO/scripts/guest-kernel.sh" --quiet)"
fi
KVER=$CANOPY_KVER
KROOT=$CANOPY_GUEST_KERNEL_ROOT
[ -d "$KROOT/lib/modules/$KVER" ] || die "no modules for $KVER under $KROOT"

# ---- Resolve module files in load order (dependencies first). ----
declare -A seen=()
ordered=()   # module file paths (.ko / .ko.xz / .ko.zst) in load order
resolve() {  # resolve NAME
  local name=${1//-/_}
  [ -z "${seen[$name]:-}" ] || return 0
  seen[$name]=1
  local file deps d
  file=$(modinfo -b "$KROOT" -k "$KVER" -F filename "$1" 2>/dev/null | head -n1) || true
  [ -n "$file" ] || die "module $1 not found in $KVER"
  if [ "$file" = "(builtin)" ]; then
    log "$1 is built into $KVER"
    return 0
  fi
  deps=$(modinfo -b "$KROOT" -k "$KVER" -F depends "$1" | head -n1)
  local IFS=,
  for d in $deps; do
    [ -n "$d" ] && resolve "$d"
  done
  ordered+=("$file")
}
for m in "${modules[@]}"; do resolve "$m"; done

# ---- The /init script. ----
read -r -d '' INIT <<'EOF' || true
#!/bin/sh
# Canopy conformance guest /init (generated by tests/conformance/build-initramfs.sh).
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
mount -t tmpfs tmpfs /tmp
mkdir -p /dev/pts /run
mount -t devpts devpts /dev/pts 2>/dev/null

result() {
  echo
  echo "CANOPY-TEST-RESULT: $*"
  sync
  poweroff -f
  sleep 5
  exit 1
}

echo "canopy-init: up at $(cut -d' ' -f1 /proc/uptime) s, kernel $(uname -r)"
timeout=60
for arg in $(cat /proc/cmdline); do
  case "$arg" in canopy.timeout=*) timeout=${arg#canopy.timeout=} ;; esac
done

while read -r m; do
  [ -n "$m" ] || continue
  # The module's parameters from the kernel command line (MODULE.PARAM=VALUE), as modprobe passes them.
  params=""
  for arg in $(cat /proc/cmdline); do
    case "$arg" in "$m".*=*) params="$params ${arg#"$m".}" ;; esac
  done
  # shellcheck disable=SC2086 # a list of PARAM=VALUE words
  insmod "/lib/modules/canopy/$m.ko" $params || result "FAIL insmod $m$params failed"
done </etc/canopy-modules
echo "canopy-init: modules loaded at $(cut -d' ' -f1 /proc/uptime) s"

timeout -s KILL "$timeout" sh /test.sh
rc=$?
echo "canopy-init: test finished at $(cut -d' ' -f1 /proc/uptime) s, status $rc"
if [ "$rc" -eq 0 ]; then
  result "PASS"
elif [ -s /tmp/canopy-fail-reason ]; then
  result "FAIL $(head -n1 /tmp/canopy-fail-reason)"
elif [ "$rc" -eq 137 ]; then
  result "FAIL test script killed after ${timeout} s"
else
  result "FAIL test script exited $rc"
fi
EOF

# ---- Cache key. ----
bb_sum=$(sha256sum "$BUSYBOX" | cut -d' ' -f1)
key_input() {
  echo "kver=$KVER busybox=$bb_sum"
  sha256sum "$SELF" "$GUEST_LIB" "$test_script" | cut -d' ' -f1
  printf '%s\n' "$INIT"
  local f
  for f in "${ordered[@]}"; do echo "module ${f#"$KROOT"}"; done
  for f in "${extra_files[@]}"; do echo "file ${f#*:} $(sha256sum "${f%%:*}" | cut -d' ' -f1)"; done
  for f in "${bin_files[@]}"; do echo "bin $f $(sha256sum "$f" | cut -d' ' -f1)"; done
  for t in "${trees[@]}"; do
    echo "tree ${t#*:}"
    (cd "${t%%:*}" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum)
  done
}
hash=$(key_input | sha256sum | cut -c1-16)
CACHE_DIR="${CANOPY_CACHE:-/var/cache/canopy}/initramfs/$KVER"
out="$CACHE_DIR/$hash.cpio.gz"
mkdir -p "$CACHE_DIR" || die "cannot create $CACHE_DIR (set CANOPY_CACHE to a writable folder)"
find "$CACHE_DIR" -maxdepth 1 -name '*.cpio.gz' -mtime +30 -delete 2>/dev/null || true
if [ -f "$out" ]; then
  touch "$out"
  echo "$out"
  exit 0
fi

# ---- Build. ----
start=$(date +%s%N)
stage=$(mktemp -d "$CACHE_DIR/.stage.XXXXXX")
trap 'rm -rf "$stage"' EXIT
root="$stage/root"
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,etc,lib/canopy,lib/modules/canopy,root}
cp "$BUSYBOX" "$root/bin/busybox"
# Only /bin/sh is linked here (a fork per link costs ~10 ms on these machines); /init runs
# `busybox --install -s`, which links every applet at its usual path in the guest.
ln -s busybox "$root/bin/sh"

: >"$root/etc/canopy-modules"
for f in "${ordered[@]}"; do
  base=$(basename "$f")
  name=${base%%.ko*}
  case "$f" in
    *.ko.xz) xz -dc "$f" >"$root/lib/modules/canopy/$name.ko" ;;
    *.ko.zst) zstd -qdc "$f" >"$root/lib/modules/canopy/$name.ko" ;;
    *.ko.gz) gzip -dc "$f" >"$root/lib/modules/canopy/$name.ko" ;;
    *.ko) cp "$f" "$root/lib/modules/canopy/$name.ko" ;;
    *) die "unexpected module file $f" ;;
  esac
  echo "$name" >>"$root/etc/canopy-modules"
done

printf '%s\n' "$INIT" >"$root/init"
chmod 0755 "$root/init"
install -m 0644 "$GUEST_LIB" "$root/lib/canopy/guest.sh"
install -m 0755 "$test_script" "$root/test.sh"
for f in "${extra_files[@]}"; do
  mkdir -p "$root/$(dirname "${f#*:}")"
  cp -L "${f%%:*}" "$root/${f#*:}"
done
for f in "${bin_files[@]}"; do
  mkdir -p "$root/$(dirname "$f")"
  cp -L "$f" "$root/$f"
done
for t in "${trees[@]}"; do
  mkdir -p "$root/${t#*:}"
  cp -RL "${t%%:*}/." "$root/${t#*:}/"
done

(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) | gzip -6 -n >"$stage/out.cpio.gz"
mv -f "$stage/out.cpio.gz" "$out"
log "built $out ($(du -k "$out" | cut -f1) KiB, modules: $(tr '\n' ' ' <"$root/etc/canopy-modules")) in $((($(date +%s%N) - start) / 1000000)) ms"
echo "$out"
