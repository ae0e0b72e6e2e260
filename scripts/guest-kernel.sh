#!/usr/bin/env bash
# Fetches and unpacks Debian's Linux 6.12 amd64 guest kernel for the conformance tests.
#
# Picks the newest plain linux-image-6.12.N+deb12-amd64 package apt knows (bookworm-backports, and
# bookworm-security where it carries 6.12; never cloud/rt/-dbg/-unsigned), downloads it with
# `apt-get download` and unpacks it with `dpkg -x` into a cache folder outside the repo, keyed by the
# exact package version:
#   ${CANOPY_CACHE:-/var/cache/canopy}/guest-kernel/<KVER>_<package version>/
# The kernel is never installed as a package. When the cache is warm this takes well under a second.
#
# Output (stdout): shell assignments, for `eval "$(scripts/guest-kernel.sh)"`:
#   CANOPY_KVER=6.12.N+deb12-amd64
#   CANOPY_GUEST_KERNEL_ROOT=<cache>/guest-kernel/<key>/root     (the dpkg -x tree; depmod was run in it)
#   CANOPY_VMLINUZ=<root>/boot/vmlinuz-<KVER>
#   CANOPY_MODULES_DIR=<root>/lib/modules/<KVER>
# Progress messages go to stderr.
#
# Environment:
#   CANOPY_CACHE          cache root (default /var/cache/canopy)
#   CANOPY_GUEST_KERNEL   pin a package, e.g. linux-image-6.12.38+deb12-amd64 or a KVER 6.12.38+deb12-amd64
#   CANOPY_OFFLINE=1      do not ask apt at all: use the newest kernel already in the cache
# Usage: scripts/guest-kernel.sh [--quiet]
set -euo pipefail

quiet=0
for a in "$@"; do
  case "$a" in
    --quiet | -q) quiet=1 ;;
    -h | --help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
    *) echo "guest-kernel: unknown argument: $a" >&2; exit 2 ;;
  esac
done

log() { [ "$quiet" -eq 1 ] || echo "guest-kernel: $*" >&2; }
die() { echo "guest-kernel: error: $*" >&2; exit 1; }

CACHE_ROOT=${CANOPY_CACHE:-/var/cache/canopy}
KCACHE="$CACHE_ROOT/guest-kernel"
mkdir -p "$KCACHE" || die "cannot create $KCACHE (set CANOPY_CACHE to a writable folder)"

SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then SUDO="sudo"; fi

emit() { # emit DIR KVER
  local root="$1/root" kver=$2
  printf 'CANOPY_KVER=%q\n' "$kver"
  printf 'CANOPY_GUEST_KERNEL_ROOT=%q\n' "$root"
  printf 'CANOPY_VMLINUZ=%q\n' "$root/boot/vmlinuz-$kver"
  printf 'CANOPY_MODULES_DIR=%q\n' "$root/lib/modules/$kver"
}

# Newest complete cache entry (for CANOPY_OFFLINE=1 and as a fallback when apt is unreachable).
newest_cached() {
  local d best="" bestkver=""
  for d in "$KCACHE"/*/; do
    [ -f "$d.complete" ] || continue
    d=${d%/}
    local kver
    kver=$(cat "$d/.kver")
    if [ -z "$bestkver" ] || [ "$(printf '%s\n%s\n' "$bestkver" "$kver" | sort -V | tail -n1)" = "$kver" ]; then
      best=$d; bestkver=$kver
    fi
  done
  [ -n "$best" ] || return 1
  printf '%s %s\n' "$best" "$bestkver"
}

if [ "${CANOPY_OFFLINE:-0}" = 1 ]; then
  read -r dir kver < <(newest_cached) || die "CANOPY_OFFLINE=1 but no kernel in $KCACHE"
  log "offline: using cached $kver"
  emit "$dir" "$kver"
  exit 0
fi

# Plain linux-image-6.12.N+deb12-amd64 package names apt knows, newest first.
list_packages() {
  apt-cache pkgnames linux-image-6.12. 2>/dev/null |
    grep -E '^linux-image-6\.12\.[0-9]+\+deb12-amd64$' | sort -V -r || true
}

pkg=""
if [ -n "${CANOPY_GUEST_KERNEL:-}" ]; then
  pkg=${CANOPY_GUEST_KERNEL#linux-image-}
  pkg="linux-image-$pkg"
fi

# Each apt-cache call costs ~1 s where apt keeps no binary cache (Debian container images), so the
# choice is remembered until apt's lists change (apt-get update replaces files in that folder).
lists_stamp=$(stat -c %Y /var/lib/apt/lists 2>/dev/null || echo 0)
memo="$KCACHE/.resolved"
memo_want="lists=$lists_stamp pin=${pkg:-newest}"
if [ -f "$memo" ] && [ "$(sed -n 1p "$memo")" = "$memo_want" ]; then
  read -r pkg pkgver < <(sed -n 2p "$memo")
  kver=${pkg#linux-image-}
  dir="$KCACHE/${kver}_${pkgver}"
  if [ -f "$dir/.complete" ]; then
    log "cached: $pkg $pkgver"
    emit "$dir" "$kver"
    exit 0
  fi
fi

candidates=$(list_packages)
if [ -z "$candidates" ]; then
  log "apt knows no linux-image-6.12.*+deb12-amd64; running apt-get update once"
  if ! $SUDO apt-get update -q >&2; then
    if read -r dir kver < <(newest_cached); then
      log "apt-get update failed; using cached $kver"
      emit "$dir" "$kver"
      exit 0
    fi
    die "apt-get update failed (needs root and network)"
  fi
  candidates=$(list_packages)
  [ -n "$candidates" ] || die "no linux-image-6.12.*+deb12-amd64 in apt's lists; is bookworm-backports enabled? (scripts/install-deps.sh adds it)"
fi
[ -n "$pkg" ] || pkg=$(printf '%s\n' "$candidates" | head -n1)

kver=${pkg#linux-image-}
pkgver=$(apt-cache show --no-all-versions "$pkg" 2>/dev/null | sed -n 's/^Version: //p' | head -n1) || true
[ -n "$pkgver" ] || die "apt has no version for $pkg"
key="${kver}_${pkgver}"
dir="$KCACHE/$key"

remember() { printf '%s\n%s %s\n' "$memo_want" "$pkg" "$pkgver" >"$memo.$$" && mv -f "$memo.$$" "$memo"; }
if [ -f "$dir/.complete" ]; then
  log "cached: $pkg $pkgver"
  remember
  emit "$dir" "$kver"
  exit 0
fi

# Not cached: download and unpack under a lock, so parallel test runs do it once.
exec 9>"$KCACHE/.lock"
flock 9
if [ ! -f "$dir/.complete" ]; then
  start=$(date +%s)
  tmp=$(mktemp -d "$KCACHE/.tmp.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  # The _apt sandbox user must be able to write the download folder.
  chmod 0777 "$tmp"
  log "downloading $pkg=$pkgver"
  if ! (cd "$tmp" && apt-get download -q "$pkg=$pkgver" >&2); then
    log "download failed; refreshing apt's lists once and retrying"
    $SUDO apt-get update -q >&2 || die "apt-get update failed"
    (cd "$tmp" && apt-get download -q "$pkg=$pkgver" >&2) || die "apt-get download $pkg=$pkgver failed"
  fi
  deb=$(find "$tmp" -maxdepth 1 -name '*.deb' | head -n1)
  [ -n "$deb" ] || die "apt-get download produced no .deb"
  log "unpacking $(basename "$deb")"
  dpkg -x "$deb" "$tmp/root"
  rm -f "$deb"
  [ -f "$tmp/root/boot/vmlinuz-$kver" ] || die "package has no boot/vmlinuz-$kver"
  [ -d "$tmp/root/lib/modules/$kver" ] || die "package has no lib/modules/$kver"
  # The package leaves modules.dep to its postinst; generate it in the cache tree instead.
  PATH="$PATH:/usr/sbin:/sbin" depmod -b "$tmp/root" "$kver"
  printf '%s\n' "$kver" >"$tmp/.kver"
  printf '%s\n' "$pkgver" >"$tmp/.pkgver"
  chmod 0755 "$tmp"
  touch "$tmp/.complete"
  rm -rf "$dir"
  mv "$tmp" "$dir"
  trap - EXIT
  log "ready in $(($(date +%s) - start)) s: $dir ($(du -sh "$dir" | cut -f1))"
fi
flock -u 9
remember
emit "$dir" "$kver"
