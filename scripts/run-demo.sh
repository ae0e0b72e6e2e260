#!/usr/bin/env bash
# Canopy's main job. Installs what is missing, builds (Release) and runs the demo.
# Until the cockpit demo exists this is a smoke run of what is built: a Linux 6.12 guest under QEMU 10
# reads /dev/hwrng through its upstream virtio_rng driver, served by Canopy's canopy-vhost-rng back-end.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [ "$(id -u)" -eq 0 ]; then bash scripts/install-deps.sh; else sudo bash scripts/install-deps.sh; fi
bash scripts/guest-kernel.sh >/dev/null
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
ninja -C build canopy-vhost-rng
echo "demo: booting a Linux guest whose virtio-rng device is Canopy's vhost-user back-end"
CANOPY_VERBOSE=1 bash tests/conformance/rng_qemu.sh build/bin/canopy-vhost-rng
