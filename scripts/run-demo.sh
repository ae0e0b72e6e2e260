#!/usr/bin/env bash
# Canopy's main job: the cockpit demo. Installs what is missing, builds (Release) and runs
# demos/run-cockpit.sh: an instrument cluster (safety) and an infotainment VM as guest partitions,
# each drawing through its own canopy-gpu (virtio-gpu, zero copy blob scanouts), composed by
# canopy-display onto a 1920x720 cluster display and a 1920x1080 center display.
# With a display ($DISPLAY / $WAYLAND_DISPLAY) it opens a window per output; without one it runs
# headless. It ends after CANOPY_DEMO_SECONDS (default 10; 0 = until Ctrl-C or a window is closed) and
# writes build/demo/{cluster,center}.png, the summary and a Perfetto trace.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [ "$(id -u)" -eq 0 ]; then bash scripts/install-deps.sh; else sudo bash scripts/install-deps.sh; fi
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
ninja -C build canopy-display canopy-vmm canopyctl canopy-gpu canopy-snd canopy-snd-wav canopy-cluster-app canopy-ivi-app
exec bash demos/run-cockpit.sh build build/demo
