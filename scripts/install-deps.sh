#!/usr/bin/env bash
# Installs everything Canopy needs on Debian 12 (bookworm) + bookworm-backports.
# Idempotent: when every package is present it only checks and returns (about a second).
# Usage: scripts/install-deps.sh   (as root, or a user with sudo)
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install-deps: run as root or install sudo" >&2; exit 1; }
  SUDO="sudo"
fi

# Packages from bookworm-backports. QEMU 10 upgrades libdrm, Mesa and systemd libraries, so the
# matching -dev packages come from backports too. qemu-system-gui brings QEMU's reference
# vhost-user-gpu back-end, which bench/gpu_guest_bench.sh compares canopy-gpu against.
BACKPORTS=(
  qemu-system-x86 qemu-system-common qemu-utils qemu-system-gui
  pipewire pipewire-bin wireplumber libpipewire-0.3-dev libspa-0.2-dev
  mesa-vulkan-drivers libgbm-dev libdrm-dev libdrm-tests linux-libc-dev
  libegl-mesa0 libgl1-mesa-dri libegl-dev
)
# Packages from bookworm itself.
MAIN=(
  build-essential cmake ninja-build pkg-config git ca-certificates
  clang-19 libclang-rt-19-dev llvm-19
  libgtest-dev libgmock-dev libbenchmark-dev
  libvirglrenderer-dev libliftoff-dev libpixman-1-dev libpng-dev libvulkan-dev vulkan-tools glslc
  libsdl2-dev libtomlplusplus-dev libspdlog-dev libcli11-dev libseccomp-dev
  busybox-static cpio xz-utils gzip zstd kmod alsa-utils kmscube glmark2-es2-drm
  procps psmisc python3 clang-format-19 clang-tidy-19
)

missing=()
for p in "${MAIN[@]}" "${BACKPORTS[@]}"; do
  if ! dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -qx installed; then
    missing+=("$p")
  fi
done
# Backports packages must also be at their backports version (QEMU >= 10).
need_bpo=0
if ! dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null | grep -q '^1:1[0-9]'; then need_bpo=1; fi

if [ "${#missing[@]}" -eq 0 ] && [ "$need_bpo" -eq 0 ]; then
  echo "install-deps: all packages present"
  exit 0
fi
echo "install-deps: installing ${#missing[@]} missing package(s): ${missing[*]}"

# Add bookworm-backports with the same mirror as the main Debian source.
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  # deb822 sources first, then a classic sources.list (debootstrap writes that one).
  uri=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ && !/security/ {print $2; exit}' || true)
  if [ -z "$uri" ]; then
    uri=$(awk '/^deb / && !/security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  fi
  uri=${uri:-http://deb.debian.org/debian}
  printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    "$uri" | $SUDO tee /etc/apt/sources.list.d/bookworm-backports.sources >/dev/null
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
# One transaction, preferring backports: QEMU's backport upgrades Mesa, libudev and Wayland libraries,
# so the -dev packages that depend on them (SDL2's chain, libgbm-dev ...) must come from backports too;
# packages backports does not have come from bookworm.
$SUDO apt-get install -y -q --no-install-recommends -t bookworm-backports "${BACKPORTS[@]}" "${MAIN[@]}"
echo "install-deps: done"
