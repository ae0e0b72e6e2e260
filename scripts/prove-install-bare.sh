#!/usr/bin/env bash
# Proves the set-up on a bare Debian 12: a debootstrap (minbase) chroot gets the committed tree (HEAD),
# runs scripts/install-deps.sh twice (the second run must be quick: idempotent), scripts/guest-kernel.sh,
# then a Release build and the unit tier. Run it (as root) after every change to the install script.
# The bare system is cached as a tarball in $CANOPY_BARE (default /var/tmp/canopy-bare).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
B="${CANOPY_BARE:-/var/tmp/canopy-bare}"
R="$B/proof"
mkdir -p "$B"
if [ ! -f "$B/root.tar" ]; then
  command -v debootstrap >/dev/null || apt-get install -y -q debootstrap
  rm -rf "$B/root"
  debootstrap --variant=minbase bookworm "$B/root" http://deb.debian.org/debian
  tar -C "$B/root" -cf "$B/root.tar" . && rm -rf "$B/root"
fi
cleanup() { umount -R "$R/proc" "$R/dev" "$R/sys" "$R/tmp" 2>/dev/null || true; rm -rf "$R"; }
cleanup
trap cleanup EXIT
mkdir -p "$R/src" && tar -C "$R" -xf "$B/root.tar"
git -C "$ROOT" archive HEAD | tar -C "$R/src" -x
cp /etc/resolv.conf "$R/etc/resolv.conf"
mount -t proc proc "$R/proc"; mount --rbind /dev "$R/dev"; mount -t sysfs sys "$R/sys"
in_chroot() { chroot "$R" /bin/bash -c "cd /src && $1"; }
t0=$(date +%s); in_chroot 'bash scripts/install-deps.sh' >"$B/install1.log" 2>&1
t1=$(date +%s); in_chroot 'bash scripts/install-deps.sh' >"$B/install2.log" 2>&1
t2=$(date +%s)
echo "prove: first install $((t1 - t0)) s, second (idempotent) $((t2 - t1)) s"
in_chroot 'bash scripts/guest-kernel.sh' >"$B/kernel.log" 2>&1 && echo "prove: guest kernel ok"
in_chroot 'cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null && ninja -C build >/dev/null && ctest --test-dir build -L unit -j2 --output-on-failure' \
  >"$B/build.log" 2>&1
grep -E 'tests passed' "$B/build.log"
echo "prove: ok (logs in $B)"
