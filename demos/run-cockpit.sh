#!/usr/bin/env bash
# Runs the cockpit demo from a build: canopy-vmm with demos/cockpit.toml (the cluster and IVI partitions,
# each with its canopy-gpu and canopy-snd) and canopy-display (the compositor), which canopy-vmm starts
# and connects the VMs' GPU back-ends to through its broker, for a fixed time or, in the test mode, until
# what the checks need has happened. canopy-vmm ends when canopy-display does.
#   demos/run-cockpit.sh [BUILD_DIR] [OUT_DIR]
# Environment: CANOPY_DEMO_SECONDS (default 10; 0 = until Ctrl-C or the windows are closed),
#              CANOPY_DEMO_UNTIL time | events (default time: run CANOPY_DEMO_SECONDS). events, the test
#                mode (demo_test): run until these events, in this order, then quit canopy-display:
#                the IVI's music is playing; 0.5 s more of it reached the recording; the cluster's first
#                chime (started only now, through --chime-after-file) is done; 1 s more of the recording
#                after it; the IVI 100 periods in; both VMs' frames >= 30 at the compositor. No step waits
#                for a time; CANOPY_DEMO_SECONDS (default 300 here) is only the hang guard, and reaching it
#                fails the run.
#              CANOPY_DEMO_OUTPUT auto | headless | window (default auto: windows when a display is there),
#              CANOPY_DEMO_RENDERER auto | pixman | vulkan (default auto: Vulkan on a GPU, else pixman),
#              CANOPY_DEMO_MANIFEST (default demos/cockpit.toml),
#              CANOPY_DEMO_UNCONFINED=1: canopy-vmm run --no-confine (nothing confined: a benchmark's
#                reference, bench/cockpit_bench.sh).
# Writes OUT_DIR/cluster.png, OUT_DIR/center.png, OUT_DIR/summary.txt, OUT_DIR/trace.json (open it in
# ui.perfetto.dev), OUT_DIR/vmm.log, OUT_DIR/sink.wav (what reached the audio sink). Every process it
# starts is stopped by PID when it ends.
# Sound: canopy-snd plays into the session's PipeWire when one answers (you hear the music and the
# chimes); otherwise into a private headless PipeWire with a null sink started here; without PipeWire
# installed, into canopy-snd's null host (silence). The summary gets the audio latency and the ducking measured
# on what reached the sink.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="$(cd "${1:-$ROOT/build}" && pwd)"
OUT="${2:-$BUILD/demo}"
UNTIL="${CANOPY_DEMO_UNTIL:-time}"
case "$UNTIL" in
  time) SECONDS_TO_RUN="${CANOPY_DEMO_SECONDS:-10}" ;;
  events) SECONDS_TO_RUN="${CANOPY_DEMO_SECONDS:-300}" ;;
  *) echo "demo: CANOPY_DEMO_UNTIL is time or events, not '$UNTIL'" >&2; exit 2 ;;
esac
MODE="${CANOPY_DEMO_OUTPUT:-auto}"
RENDERER="${CANOPY_DEMO_RENDERER:-auto}"
MANIFEST="${CANOPY_DEMO_MANIFEST:-$ROOT/demos/cockpit.toml}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
RUN="$(mktemp -d /tmp/canopy-demo.XXXXXX)"
VMM_PID=""
PW_PIDS=""
REC_PID=""

cleanup() {
  for pid in $REC_PID $VMM_PID $PW_PIDS; do
    if kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid" 2>/dev/null || true; fi
  done
  for pid in $REC_PID $VMM_PID $PW_PIDS; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  rm -rf "$RUN"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# Readiness waits below end on an event (a socket, an answer, a line); 60 s is their hang guard.
# wait_ready SECONDS CMD...: until CMD succeeds; false when the guard ran out.
wait_ready() {
  local end=$((SECONDS + $1))
  shift
  until "$@"; do
    [ "$SECONDS" -lt "$end" ] || return 1
    sleep 0.05
  done
}
pw_up() { pw-cli info 0 >/dev/null 2>&1; }
sink_up() { wpctl inspect @DEFAULT_AUDIO_SINK@ 2>/dev/null | grep -q canopy-test-sink; }

rm -f "$OUT"/cluster.png "$OUT"/center.png "$OUT"/summary.txt "$OUT"/trace.json "$OUT"/sink.wav

# --- sound ---
SINK_TARGET=()
if command -v pw-cli >/dev/null && pw-cli info 0 >/dev/null 2>&1; then
  AUDIO="the session's PipeWire"
elif command -v pipewire >/dev/null && command -v wireplumber >/dev/null; then
  export XDG_RUNTIME_DIR="$RUN/xdg-run" XDG_CONFIG_HOME="$RUN/xdg-config"
  unset DBUS_SESSION_BUS_ADDRESS PIPEWIRE_REMOTE
  mkdir -p "$XDG_RUNTIME_DIR" "$XDG_CONFIG_HOME/pipewire/pipewire.conf.d"
  chmod 700 "$XDG_RUNTIME_DIR"
  cp "$ROOT/scripts/pipewire/canopy-headless.conf" "$XDG_CONFIG_HOME/pipewire/pipewire.conf.d/"
  pipewire >"$RUN/pipewire.log" 2>&1 &
  PW_PIDS="$!"
  wait_ready 60 pw_up || echo "demo: the private PipeWire does not answer" >&2
  wireplumber >"$RUN/wireplumber.log" 2>&1 &
  PW_PIDS="$PW_PIDS $!"
  wait_ready 60 sink_up || echo "demo: WirePlumber made no default sink" >&2
  pw-metadata -n default 0 default.configured.audio.sink '{ "name": "canopy-test-sink" }' Spa:String:JSON >/dev/null 2>&1 || true
  SINK_TARGET=(--target canopy-test-sink)
  AUDIO="a private headless PipeWire (null sink)"
else
  export CANOPY_SND_HOST=null
  AUDIO="no PipeWire: canopy-snd's null host"
  # The policy board lives in $XDG_RUNTIME_DIR: a private one when there is none, so the chime still
  # ducks the music (silently).
  if [ -z "${XDG_RUNTIME_DIR:-}" ]; then
    export XDG_RUNTIME_DIR="$RUN/xdg-run"
    mkdir -p "$XDG_RUNTIME_DIR"
    chmod 700 "$XDG_RUNTIME_DIR"
  fi
fi
# Each VM's back-ends get a scratch folder of their own, $RUN/scratch/VM (canopy-vmm --scratch-dir: mode
# 0700, as root owned by the VM's back-end uid, docs/security.md); its canopy-snd writes its summary there.
SCRATCH="$RUN/scratch"
chmod 711 "$RUN"
if [ "${CANOPY_SND_HOST:-}" != null ] && command -v pw-record >/dev/null; then
  pw-record -P '{ stream.capture.sink = true }' "${SINK_TARGET[@]}" --rate 48000 --channels 2 --format f32 \
    "$OUT/sink.wav" >"$RUN/pw-record.log" 2>&1 &
  REC_PID=$!
fi
echo "demo: sound through $AUDIO" >&2
if [ "$UNTIL" = events ]; then
  # The cluster's first chime waits for a file the steps below create (partitions run under uids of
  # their own: the folder is theirs to read).
  TRIGGER="$RUN/trigger"
  mkdir -p "$TRIGGER"
  chmod 755 "$TRIGGER"
  sed "s|^app = \"canopy-cluster-app\"\(.*\)\$|app = \"canopy-cluster-app\"\1\nargs = [\"--chime-after-file\", \"$TRIGGER/chime\"]|" \
    "$MANIFEST" >"$RUN/cockpit.toml"
  grep -q -- '--chime-after-file' "$RUN/cockpit.toml" ||
    { echo "demo: no 'app = \"canopy-cluster-app\"' line in $MANIFEST for the chime trigger" >&2; exit 1; }
  MANIFEST="$RUN/cockpit.toml"
fi
RUN_FOR=()
[ "$SECONDS_TO_RUN" != 0 ] && RUN_FOR=(--run-for-s "$SECONDS_TO_RUN")
VMM_EXTRA=()
[ "${CANOPY_DEMO_UNCONFINED:-0}" = 1 ] && VMM_EXTRA=(--no-confine)
"$BUILD/bin/canopy-vmm" run "$MANIFEST" --control "$RUN/vmm.ctl" --scratch-dir "$SCRATCH" "${VMM_EXTRA[@]}" \
  --compositor --control "$RUN/display.ctl" --output "$MODE" --renderer "$RENDERER" "${RUN_FOR[@]}" \
  --snapshot-dir "$OUT" --summary "$OUT/summary.txt" --trace "$OUT/trace.json" >"$OUT/vmm.log" 2>&1 &
VMM_PID=$!
if [ "$UNTIL" = events ]; then
  echo "demo: cluster and IVI partitions started (canopy-vmm pid $VMM_PID, log $OUT/vmm.log); composing" \
       "until the events (hang guard ${SECONDS_TO_RUN} s)" >&2
  GUARD_END=$((SECONDS + SECONDS_TO_RUN))
  # wait_event WHAT CMD...: until CMD succeeds; the run fails when canopy-display or the recorder is gone
  # or the hang guard ran out.
  wait_event() {
    local what=$1
    shift
    until "$@"; do
      local why=""
      kill -0 "$VMM_PID" 2>/dev/null || why="canopy-vmm exited"
      [ -z "$REC_PID" ] || kill -0 "$REC_PID" 2>/dev/null || why="pw-record exited"
      [ "$SECONDS" -lt "$GUARD_END" ] || why="the hang guard (${SECONDS_TO_RUN} s) ran out"
      if [ -n "$why" ]; then
        echo "demo: $why while waiting for $what; canopy-vmm's log:" >&2
        tail -n 30 "$OUT/vmm.log" >&2
        exit 1
      fi
      sleep 0.1
    done
  }
  log_has() { grep -q -F -- "$1" "$OUT/vmm.log"; }
  wav_bytes() { stat -c %s "$OUT/sink.wav" 2>/dev/null || echo 0; }
  wav_reached() { [ "$(wav_bytes)" -ge "$1" ]; }
  frames_of() {
    "$BUILD/bin/canopyctl" --socket "$RUN/display.ctl" stats 2>/dev/null |
      sed -n "s/^vm $1 .* frames=\([0-9]*\) .*/\1/p" | head -n1
  }
  both_frames() {
    local c i
    c=$(frames_of cluster) i=$(frames_of ivi)
    [ "${c:-0}" -ge "$1" ] && [ "${i:-0}" -ge "$1" ]
  }
  wait_event "the IVI's music" log_has "canopy-ivi-app: audio: playing"
  # The recording: f32 stereo at 48 kHz, 384000 bytes a second. Data behind a point proves what was
  # played before it reached the sink (the graph moves in order), whatever the machine's speed.
  if [ -n "$REC_PID" ]; then
    at=$(wav_bytes)
    wait_event "0.5 s of the music in the recording" wav_reached $((at + 192000))
  fi
  : >"$TRIGGER/chime"
  chmod 644 "$TRIGGER/chime"
  wait_event "the cluster's chime" log_has "canopy-cluster-app: audio: chime 1 done"
  if [ -n "$REC_PID" ]; then
    at=$(wav_bytes)
    wait_event "1 s of the recording after the chime" wav_reached $((at + 384000))
  fi
  wait_event "100 periods of the IVI's music" log_has "canopy-ivi-app: audio: 100 periods"
  wait_event "30 frames of each VM at the compositor" both_frames 30
  "$BUILD/bin/canopyctl" --socket "$RUN/display.ctl" quit >/dev/null ||
    { echo "demo: canopy-display did not take 'quit'" >&2; exit 1; }
else
  echo "demo: cluster and IVI partitions started (canopy-vmm pid $VMM_PID, log $OUT/vmm.log); composing for" \
       "${SECONDS_TO_RUN:-?} s" >&2
fi

# canopy-vmm stops the VMs and ends once canopy-display has ended (its run time, `quit`, its windows
# closed); its status is canopy-display's.
rc=0
wait "$VMM_PID" || rc=$?
VMM_PID=""
if [ -n "$REC_PID" ]; then
  kill -INT "$REC_PID" 2>/dev/null || true
  wait "$REC_PID" 2>/dev/null || true
  REC_PID=""
fi
if [ $rc -ne 0 ]; then
  echo "demo: canopy-vmm (and canopy-display) exited with $rc; their log:" >&2
  tail -n 30 "$OUT/vmm.log" >&2
  exit $rc
fi

# --- the audio part of the summary ---
{
  echo "audio: through $AUDIO"
  for f in "$SCRATCH"/*/*-snd.txt; do
    [ -s "$f" ] && grep '^stream ' "$f" | sed 's/^/audio: /'
  done
  # An app prints its audio line as it exits: one stopped the hard way (a loaded machine, the IVI
  # flooding) has none, which must not end the demo under pipefail.
  { grep -h -E 'canopy-(cluster|ivi)-app: audio: [0-9]+ periods,' "$OUT/vmm.log" || true; } |
    sed 's/^.*canopy-\(cluster\|ivi\)-app: audio: /audio: \1 guest: /'
  if [ -s "$OUT/sink.wav" ]; then
    duck=$("$BUILD/bin/canopy-snd-wav" duck "$OUT/sink.wav" --music-hz 220 --chime-hz 880 --expect-db -20 --settle-ms 80 || true)
    echo "audio: ducking at the sink (music 220 Hz under the 880 Hz chime, expect -20 dB within 40 ms): $duck"
  fi
} >>"$OUT/summary.txt"
cat "$OUT/summary.txt" >&2
echo "demo: outputs: $OUT/cluster.png $OUT/center.png; summary: $OUT/summary.txt; trace: $OUT/trace.json"
