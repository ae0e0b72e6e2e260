#!/usr/bin/env bash
# canopy-snd's latency and robustness, measured on a private headless PipeWire (tests/conformance/lib.sh
# canopy_pipewire_start), in one run:
#
#   latency     a guest partition (canopy-partition-tone under canopy-vmm) plays through canopy-snd with
#               2.5, 5 and 10 ms periods, two periods buffered, canopy-snd --force-quantum. Reported:
#               write -> heard per period as the partition measures it (write to completion + the host
#               delay from latency_bytes) and as canopy-snd measures it (kick to taken + PipeWire's
#               delay), p50 / p99 / max, and underruns. Target: at most 10 ms at 48 kHz (docs/sound.md).
#   soak        5 ms periods for CANOPY_BENCH_SOAK_S (60; smoke 3) seconds: underruns over the run.
#   linux       the same Linux 6.12 guest plays a 1 s tone with aplay (20 ms periods) against canopy-snd
#               (vhost-user-snd-pci) and against QEMU's built-in virtio-sound-pci with its PipeWire
#               audiodev: aplay's run time and what reached the sink (length, gaps, level).
#
# Usage: bench/snd_bench.sh [--smoke] [BUILD_DIR]   writes BUILD_DIR/bench-snd.md
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
SMOKE=0
if [ "${1:-}" = "--smoke" ]; then SMOKE=1; shift; fi
BUILD=$(cd "${1:-build}" && pwd)
BIN="$BUILD/bin"
# shellcheck source=../tests/conformance/lib.sh
. "$HERE/../tests/conformance/lib.sh"
if [ $SMOKE -eq 1 ]; then TONE_MS=1000 SOAK_S=3; else TONE_MS=5000 SOAK_S=${CANOPY_BENCH_SOAK_S:-60}; fi
REPORT="$BUILD/bench-snd.md"

canopy_begin snd_bench
for b in canopy-vmm canopy-snd canopy-partition-tone canopy-snd-wav; do
  [ -x "$BIN/$b" ] || canopy_fail "$BIN/$b missing (build first)"
done
canopy_require pipewire wireplumber pw-cli pw-record pw-metadata wpctl
canopy_pipewire_start

# run_partition NAME PERIOD_MS MS: one partition playing a 1 kHz tone; prints its "tone: done" line and
# canopy-snd's stream line.
run_partition() {
  local name=$1 period=$2 ms=$3 dir="$CANOPY_WORK/$1"
  mkdir -p "$dir"
  cat >"$dir/vm.toml" <<TOML
[[vm]]
name = "bench"
backend = "partition"
memory = "32M"
restart = "never"
app = "canopy-partition-tone"
args = ["--hz", "1000", "--ms", "$ms", "--period-ms", "$period", "--periods", "2", "--level-db", "-12"]
[vm.snd]
streams = [{ name = "out", direction = "output", channels = 2, rates = [48000] }]
args = ["--force-quantum", "--stats=$dir/snd.txt"]
TOML
  canopy_start "vmm-$name" "$BIN/canopy-vmm" run "$dir/vm.toml"
  local deadline=$(($(date +%s) + ms / 1000 + 30))
  until grep -q 'tone: \(done\|FAIL\)' "$CANOPY_WORK/vmm-$name.log" 2>/dev/null; do
    canopy_alive "vmm-$name" || canopy_fail "$name: canopy-vmm exited early"
    [ "$(date +%s)" -lt "$deadline" ] || canopy_fail "$name: the partition did not finish"
    sleep 0.1
  done
  kill -TERM "${CANOPY_PIDS[vmm-$name]}"
  canopy_wait_exit "vmm-$name" 10 || true
  grep -a -o 'tone: \(done\|FAIL\).*' "$CANOPY_WORK/vmm-$name.log" | head -n1
  grep '^stream ' "$dir/snd.txt" || echo "stream (no summary)"
}
# field LINE KEY: the value of KEY=VALUE in LINE ("-" when absent).
field() { local v; v=$(grep -o -E "(^| )$2=[^ ]+" <<<"$1" | head -n1); v=${v#* }; echo "${v#*=}"; }

{
  echo "## canopy-snd (bench/snd_bench.sh)"
  echo
  echo "- PipeWire $(pipewire --version 2>/dev/null | grep -o -m1 '[0-9][0-9.]*' | tail -n1), headless null sink at 48 kHz; $(nproc) cores; mode $([ $SMOKE -eq 1 ] && echo smoke || echo full)"
  echo
  echo "### Guest write -> heard, 48 kHz stereo S16, two periods buffered (target: at most 10 ms)"
  echo
  echo "| period | partition p50 | p99 | max | canopy-snd p50 | p99 | max | underruns | periods |"
  echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
} >"$REPORT"
for period in 2.5 5 10; do
  out=$(run_partition "p$period" "$period" "$TONE_MS")
  tone=$(sed -n 1p <<<"$out")
  snd=$(sed -n 2p <<<"$out")
  canopy_log "period $period ms: $tone"
  canopy_log "period $period ms: $snd"
  echo "| $period ms | $(field "$tone" p50) | $(field "$tone" p99) | $(field "$tone" max) | $(grep -o 'latency_ms p50=[^ ]*' <<<"$snd" | cut -d= -f2) | $(field "$snd" p99) | $(field "$snd" max) | $(field "$snd" underruns) | $(field "$tone" periods) |" >>"$REPORT"
done

out=$(run_partition soak 5 $((SOAK_S * 1000)))
snd=$(sed -n 2p <<<"$out")
canopy_log "soak: $snd"
{
  echo
  echo "### Soak: 5 ms periods for $SOAK_S s"
  echo
  echo "underruns=$(field "$snd" underruns) (one is the end of the stream: the drain), frames=$(field "$snd" frames)"
} >>"$REPORT"

# --- the Linux guest: canopy-snd against QEMU's built-in virtio-sound ---
if ! command -v "${CANOPY_QEMU:-qemu-system-x86_64}" >/dev/null || ! command -v busybox >/dev/null; then
  echo -e "\n(Linux guest comparison skipped: QEMU or busybox missing)" >>"$REPORT"
  canopy_pass
  exit 0
fi
canopy_guest --test "$HERE/guest/snd.sh" virtio_snd netfs 9pnet 9p 9pnet_virtio
"$BIN/canopy-snd-wav" tone "$CANOPY_WORK/tone.wav" --hz 1000 --ms 1000 --level-db -6
chmod -R a+rX "$CANOPY_WORK"
{
  echo
  echo "### Linux 6.12 guest, aplay of a 1 s 1 kHz tone (20 ms periods), what reached the sink"
  echo
  echo "| device | aplay ms | tone at the sink ms | gaps | level dB |"
  echo "| --- | --- | --- | --- | --- |"
} >>"$REPORT"
for dev in canopy qemu-builtin; do
  canopy_record_sink "rec-$dev" "$CANOPY_WORK/sink-$dev.wav"
  qemu_rc=0
  if [ "$dev" = canopy ]; then
    canopy_start backend "$BIN/canopy-snd" --socket-path "$CANOPY_WORK/snd.sock" --vm bench \
      --stream "name=out,dir=output,channels=2,rates=48000" --no-policy
    canopy_wait_socket "$CANOPY_WORK/snd.sock" 10 backend
    CANOPY_QEMU_APPEND="canopy.tone=$CANOPY_WORK/tone.wav" canopy_qemu \
      -chardev "socket,id=snd,path=$CANOPY_WORK/snd.sock" -device vhost-user-snd-pci,chardev=snd,controls=on \
      -virtfs local,path=/,mount_tag=host,security_model=none,readonly=on || qemu_rc=$?
    canopy_wait_exit backend 10 || true
  else
    CANOPY_QEMU_APPEND="canopy.tone=$CANOPY_WORK/tone.wav" canopy_qemu \
      -audiodev pipewire,id=a -device virtio-sound-pci,audiodev=a \
      -virtfs local,path=/,mount_tag=host,security_model=none,readonly=on || qemu_rc=$?
  fi
  cp "$CANOPY_WORK/console.log" "$CANOPY_WORK/console-$dev.log"
  sleep 0.5
  canopy_stop_recording "rec-$dev"
  aplay_ms=$(grep -a -o 'aplay_ms=[0-9]*' "$CANOPY_WORK/console-$dev.log" | cut -d= -f2 || true)
  report=$("$BIN/canopy-snd-wav" analyze "$CANOPY_WORK/sink-$dev.wav" --channel 0 || true)
  canopy_log "$dev: qemu $qemu_rc, aplay ${aplay_ms:-?} ms, sink: $report"
  echo "| $dev | ${aplay_ms:-failed} | $(field "$report" duration_ms) | $(field "$report" gaps) | $(field "$report" level_db) |" >>"$REPORT"
done
canopy_pass
