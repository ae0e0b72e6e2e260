#!/usr/bin/env bash
# Runs the cockpit demo from a build: canopy-display (the compositor) and canopy-vmm with
# demos/cockpit.toml (the cluster and IVI partitions, each with its canopy-gpu), for a fixed time.
#   demos/run-cockpit.sh [BUILD_DIR] [OUT_DIR]
# Environment: CANOPY_DEMO_SECONDS (default 10; 0 = until Ctrl-C or the windows are closed),
#              CANOPY_DEMO_OUTPUT auto | headless | window (default auto: windows when a display is there),
#              CANOPY_DEMO_RENDERER auto | pixman | vulkan (default auto: Vulkan on a GPU, else pixman),
#              CANOPY_DEMO_MANIFEST (default demos/cockpit.toml).
# Writes OUT_DIR/cluster.png, OUT_DIR/center.png, OUT_DIR/summary.txt, OUT_DIR/trace.json (open it in
# ui.perfetto.dev), OUT_DIR/vmm.log. Every process it starts is stopped by PID when it ends.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="$(cd "${1:-$ROOT/build}" && pwd)"
OUT="${2:-$BUILD/demo}"
SECONDS_TO_RUN="${CANOPY_DEMO_SECONDS:-10}"
MODE="${CANOPY_DEMO_OUTPUT:-auto}"
RENDERER="${CANOPY_DEMO_RENDERER:-auto}"
MANIFEST="${CANOPY_DEMO_MANIFEST:-$ROOT/demos/cockpit.toml}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
RUN="$(mktemp -d /tmp/canopy-demo.XXXXXX)"
DISPLAY_PID=""
VMM_PID=""

cleanup() {
  for pid in $VMM_PID $DISPLAY_PID; do
    if kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid" 2>/dev/null || true; fi
  done
  for pid in $VMM_PID $DISPLAY_PID; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  rm -rf "$RUN"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

rm -f "$OUT"/cluster.png "$OUT"/center.png "$OUT"/summary.txt "$OUT"/trace.json
RUN_FOR=()
[ "$SECONDS_TO_RUN" != 0 ] && RUN_FOR=(--run-for-s "$SECONDS_TO_RUN")
"$BUILD/bin/canopy-display" "$MANIFEST" --listen "$RUN/display.sock" --control "$RUN/display.ctl" \
  --output "$MODE" --renderer "$RENDERER" "${RUN_FOR[@]}" --snapshot-dir "$OUT" --summary "$OUT/summary.txt" --trace "$OUT/trace.json" &
DISPLAY_PID=$!
for _ in $(seq 100); do [ -S "$RUN/display.sock" ] && break; sleep 0.05; done
[ -S "$RUN/display.sock" ] || { echo "demo: canopy-display did not start" >&2; exit 1; }

"$BUILD/bin/canopy-vmm" run "$MANIFEST" --display "$RUN/display.sock" --control "$RUN/vmm.ctl" \
  >"$OUT/vmm.log" 2>&1 &
VMM_PID=$!
echo "demo: cluster and IVI partitions started (canopy-vmm pid $VMM_PID, log $OUT/vmm.log); composing for" \
     "${SECONDS_TO_RUN:-?} s" >&2

rc=0
wait "$DISPLAY_PID" || rc=$?
DISPLAY_PID=""
"$BUILD/bin/canopyctl" --socket "$RUN/vmm.ctl" shutdown >/dev/null 2>&1 || true
wait "$VMM_PID" 2>/dev/null || true
VMM_PID=""
if [ $rc -ne 0 ]; then
  echo "demo: canopy-display exited with $rc; canopy-vmm's log:" >&2
  tail -n 30 "$OUT/vmm.log" >&2
  exit $rc
fi
echo "demo: outputs: $OUT/cluster.png $OUT/center.png; summary: $OUT/summary.txt; trace: $OUT/trace.json"
