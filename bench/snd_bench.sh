#!/usr/bin/env bash
# canopy-snd's latency and robustness, measured on a private headless PipeWire (tests/conformance/lib.sh
# canopy_pipewire_start), in one run:
#
#   latency     a guest partition (canopy-partition-tone under canopy-vmm) plays through canopy-snd with
#               2.5, 5 and 10 ms periods, two periods buffered, canopy-snd --force-quantum. Reported:
#               write -> heard per period as the partition measures it (write to completion + the host
#               delay from latency_bytes) and as canopy-snd measures it (kick to taken + PipeWire's
#               delay), p50 / p99 / max, and underruns. Target: at most 10 ms at 48 kHz (docs/sound.md).
#   reference   after each period's case, in the same PipeWire: canopy-pw-reference, a plain PipeWire
#               playback client (pw_stream, no VM) with canopy-snd's stream setup and the same forced
#               quantum, writing the same periods with the same two periods queued, into the same sink
#               for as long; write -> heard measured as canopy-snd measures it (from the write of a
#               period until its last byte is copied into PipeWire's buffer, + PipeWire's delay at that
#               moment). It must have run at the period's quantum. Reported:
#                 ratio canopy-snd write->heard p50 / plain PipeWire client p50 (P ms period) = X
#               and the same for the partition's own figure (the guest's view of write -> heard), and
#               canopy-snd's p99 against the reference's p99.
#               The null sink reports no delay of its own (pw_delay_ms_p50 in the log), so on this
#               sink both figures are the time written audio waits for PipeWire; the ratio is what
#               the virtio path adds to it.
#   confinement 5 ms periods, canopy-snd confined (its Landlock view and seccomp allowlist) and with
#               --no-sandbox, alternating, CANOPY_BENCH_ROUNDS (3; smoke 1) rounds each. Reported:
#                 ratio partition write->heard p50 confined / unconfined = X (per round LO..HI)
#   soak        5 ms periods for CANOPY_BENCH_SOAK_S (60; smoke 3) seconds: underruns over the run.
#   linux       the same Linux 6.12 guest plays a 1 s tone with aplay (20 ms periods) against canopy-snd
#               (vhost-user-snd-pci) and against QEMU's built-in virtio-sound-pci with its PipeWire
#               audiodev: aplay's run time and what reached the sink (length, gaps, level).
#
# Usage: bench/snd_bench.sh [--smoke] [BUILD_DIR]   writes BUILD_DIR/bench-snd.md
#
# Fails (never a silent gap in the report): a partition that says "tone: FAIL" or a figure it did not
# report; canopy-vmm not stopping cleanly; QEMU missing (the Linux guest comparison is the reference);
# QEMU or its guest failing for either device (exit status, guest verdict, canopy-snd's own exit); aplay's
# time or the sink analysis missing, or no tone found at the sink; the plain PipeWire reference failing,
# reporting no figure, or running at another quantum than the case it stands beside.
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
for b in canopy-vmm canopy-snd canopy-partition-tone canopy-snd-wav canopy-pw-reference; do
  [ -x "$BIN/$b" ] || canopy_fail "$BIN/$b missing (build first)"
done
canopy_require pipewire wireplumber pw-cli pw-record pw-metadata wpctl
# The Linux guest comparison (canopy-snd against QEMU's virtio-sound) is part of this benchmark: without
# QEMU it cannot run, and that is no pass (exit 77 here: bench/report.sh records a skip, which fails it).
canopy_require "${CANOPY_QEMU:-qemu-system-x86_64}" busybox cpio modinfo gzip
canopy_pipewire_start

# run_partition NAME PERIOD_MS MS [SND-ARG]: one partition playing a 1 kHz tone; writes its "tone: done" line and
# canopy-snd's stream line to $CANOPY_WORK/NAME/result.txt. Runs in this shell (not in a command
# substitution), so its processes are this script's to clean up and canopy_fail ends the benchmark.
run_partition() {
  local name=$1 period=$2 ms=$3 extra=${4:+, \"$4\"} dir="$CANOPY_WORK/$1"
  mkdir -p "$dir"
  chmod 1777 "$dir"  # canopy-snd writes its stats here, under its VM's uid when canopy-vmm is root
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
args = ["--force-quantum", "--stats=$dir/snd.txt"$extra]
TOML
  canopy_start "vmm-$name" "$BIN/canopy-vmm" run "$dir/vm.toml"
  local deadline=$(($(date +%s) + ms / 1000 + 30))
  until grep -q 'tone: \(done\|FAIL\)' "$CANOPY_WORK/vmm-$name.log" 2>/dev/null; do
    canopy_alive "vmm-$name" || canopy_fail "$name: canopy-vmm exited early"
    [ "$(date +%s)" -lt "$deadline" ] || canopy_fail "$name: the partition did not finish"
    sleep 0.1
  done
  kill -TERM "${CANOPY_PIDS[vmm-$name]}"
  local vmm_rc=0
  canopy_wait_exit "vmm-$name" 10 || vmm_rc=$?
  [ "$vmm_rc" -ne 124 ] || canopy_fail "$name: canopy-vmm still running 10 s after SIGTERM"
  [ "$vmm_rc" -eq 0 ] || canopy_fail "$name: canopy-vmm exited with status $vmm_rc after SIGTERM"
  local tone snd
  tone=$(grep -a -o 'tone: \(done\|FAIL\).*' "$CANOPY_WORK/vmm-$name.log" | head -n1) || true
  case "$tone" in
    "tone: done"*) ;;
    *) canopy_fail "$name: the partition did not play its tone: ${tone:-no tone line}" ;;
  esac
  [ -s "$dir/snd.txt" ] || canopy_fail "$name: canopy-snd wrote no stats ($dir/snd.txt)"
  snd=$(grep -m1 '^stream ' "$dir/snd.txt") || canopy_fail "$name: no stream line in canopy-snd's stats"
  printf '%s\n%s\n' "$tone" "$snd" >"$dir/result.txt"
}
# field LINE KEY: the value of KEY=VALUE in LINE ("-" when absent).
field() { local v; v=$(grep -o -E "(^| )$2=[^ ]+" <<<"$1" | head -n1); v=${v#* }; echo "${v#*=}"; }
# need WHAT VALUE...: fail unless every VALUE is a number (a figure that was not measured is no result).
need() {
  local what=$1 v
  shift
  for v in "$@"; do [[ "$v" =~ ^[0-9]+(\.[0-9]+)?$ ]] || canopy_fail "$what: a figure was not measured ('$v' in: $*)"; done
}

# ratio NAME A B: "ratio NAME = A/B" (two decimals), or "ratio NAME: not measured" when B is not > 0.
ratio() {
  awk -v n="$1" -v a="$2" -v b="$3" 'BEGIN {
    if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && b + 0 > 0) printf "ratio %s = %.2f", n, a / b
    else printf "ratio %s: not measured (%s / %s)", n, a, b }'
}

{
  echo "## canopy-snd (bench/snd_bench.sh)"
  echo
  echo "- PipeWire $(pipewire --version 2>/dev/null | grep -o -m1 '[0-9][0-9.]*' | tail -n1), headless null sink at 48 kHz; $(nproc) cores; mode $([ $SMOKE -eq 1 ] && echo smoke || echo full)"
  echo "- reference, same run: canopy-pw-reference, a plain PipeWire client (pw_stream playback, no VM) set up"
  echo "  as canopy-snd sets up a stream, at the same forced quantum and with the same two periods queued,"
  echo "  into the same sink, after each case; write -> heard as canopy-snd measures it (a period's wait"
  echo "  until PipeWire has copied it + PipeWire's delay; the null sink reports no delay of its own)"
  echo "- canopy-snd's stats give its latencies to 0.1 ms, the partition's and the reference's to 0.01 ms"
  if [ $SMOKE -eq 1 ]; then
    echo "- smoke: ${TONE_MS} ms tones, a ${SOAK_S} s soak: these figures say that each part ran, they are not a measurement"
  fi
  echo
  echo "### Guest write -> heard, 48 kHz stereo S16, two periods buffered (target: at most 10 ms)"
  echo
  echo "| period | partition p50 | p99 | max | canopy-snd p50 | p99 | max | underruns | periods | plain PipeWire p50 | p99 | max | underruns |"
  echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
} >"$REPORT"
RATIOS=()
for period in 2.5 5 10; do
  run_partition "p$period" "$period" "$TONE_MS"
  tone=$(sed -n 1p "$CANOPY_WORK/p$period/result.txt")
  snd=$(sed -n 2p "$CANOPY_WORK/p$period/result.txt")
  canopy_log "period $period ms: $tone"
  canopy_log "period $period ms: $snd"
  t50=$(field "$tone" p50) t99=$(field "$tone" p99) tmax=$(field "$tone" max) periods=$(field "$tone" periods)
  s50=$(grep -o 'latency_ms p50=[^ ]*' <<<"$snd" | cut -d= -f2) || true
  s99=$(field "$snd" p99) smax=$(field "$snd" max) under=$(field "$snd" underruns)
  need "period $period ms" "$t50" "$t99" "$tmax" "$periods" "$s50" "$s99" "$smax" "$under"
  # The reference: a plain PipeWire client at the same quantum into the same sink, for as long.
  frames=$(awk -v p="$period" 'BEGIN { printf "%d", p * 48 + 0.5 }')
  ref=$(timeout 60 "$BIN/canopy-pw-reference" --period-ms "$period" --periods 2 --ms "$TONE_MS" --hz 1000 --level-db -12 \
    --target canopy-test-sink --timeout-s 30 2>>"$CANOPY_WORK/pw-reference.log") ||
    canopy_fail "period $period ms: the plain PipeWire reference failed: ${ref:-$(tail -n1 "$CANOPY_WORK/pw-reference.log")}"
  canopy_log "period $period ms: $ref"
  r50=$(field "$ref" p50) r99=$(field "$ref" p99) rmax=$(field "$ref" max) rq=$(field "$ref" requested_frames)
  runder=$(field "$ref" underruns)
  need "period $period ms reference" "$r50" "$r99" "$rmax" "$rq" "$runder"
  awk -v v="$r50" 'BEGIN { exit !(v > 0) }' || canopy_fail "period $period ms: the reference measured no latency ($ref)"
  [ "$rq" = "$frames" ] || canopy_fail "period $period ms: the reference ran at a quantum of $rq frames, not $frames"
  echo "| $period ms | $t50 | $t99 | $tmax | $s50 | $s99 | $smax | $under | $periods | $r50 | $r99 | $rmax | $runder |" >>"$REPORT"
  RATIOS+=("$(ratio "canopy-snd write->heard p50 / plain PipeWire client p50 ($period ms period)" "$s50" "$r50")")
  RATIOS+=("$(ratio "partition write->heard p50 / plain PipeWire client p50 ($period ms period)" "$t50" "$r50")")
  RATIOS+=("$(ratio "canopy-snd write->heard p99 / plain PipeWire client p99 ($period ms period)" "$s99" "$r99")")
done
{
  echo
  printf '%s\n' "${RATIOS[@]}"
} >>"$REPORT"
for r in "${RATIOS[@]}"; do
  case "$r" in *"not measured"*) canopy_fail "$r" ;; esac
done

# The cost of canopy-snd's confinement, same run: rounds alternate confined and unconfined.
rounds=${CANOPY_BENCH_ROUNDS:-3}
[ $SMOKE -eq 0 ] || rounds=1
per_round=()
for r in $(seq 1 "$rounds"); do
  run_partition "confined-$r" 5 "$TONE_MS"
  run_partition "unconfined-$r" 5 "$TONE_MS" --no-sandbox
  grep -q 'confined: a system call allowlist' "$CANOPY_WORK/vmm-confined-$r.log" ||
    canopy_fail "round $r: canopy-snd did not say it was confined"
  ! grep -q 'confined: a system call allowlist' "$CANOPY_WORK/vmm-unconfined-$r.log" ||
    canopy_fail "round $r: canopy-snd --no-sandbox said it was confined"
  c50=$(field "$(sed -n 1p "$CANOPY_WORK/confined-$r/result.txt")" p50)
  u50=$(field "$(sed -n 1p "$CANOPY_WORK/unconfined-$r/result.txt")" p50)
  need "confinement round $r" "$c50" "$u50"
  canopy_log "confinement round $r: partition write->heard p50 confined $c50 ms, unconfined $u50 ms"
  per_round+=("$c50 $u50")
done
conf=$(printf '%s\n' "${per_round[@]}" | awk '$2 > 0 { r[n++] = $1 / $2 }
  END { if (n == 0) exit 1
    for (i = 0; i < n; i++) for (j = i + 1; j < n; j++) if (r[j] < r[i]) { t = r[i]; r[i] = r[j]; r[j] = t }
    m = (n % 2) ? r[int(n / 2)] : (r[n / 2 - 1] + r[n / 2]) / 2
    printf "%.2f (per round %.2f..%.2f over %d round(s))", m, r[0], r[n - 1], n }') ||
  canopy_fail "confinement: no ratio could be computed"
{
  echo
  echo "### The cost of canopy-snd's confinement, 5 ms periods (same run, rounds alternating)"
  echo
  echo '```'
  if [ $SMOKE -eq 1 ]; then
    echo "ratio partition write->heard p50 confined / unconfined: smoke: not a measurement"
  else
    echo "ratio partition write->heard p50 confined / unconfined = $conf  (1.00 is free; lower is better)"
  fi
  echo '```'
} >>"$REPORT"

run_partition soak 5 $((SOAK_S * 1000))
snd=$(sed -n 2p "$CANOPY_WORK/soak/result.txt")
canopy_log "soak: $snd"
under=$(field "$snd" underruns) frames=$(field "$snd" frames)
need soak "$under" "$frames"
{
  echo
  echo "### Soak: 5 ms periods for $SOAK_S s"
  echo
  echo "underruns=$under (one is the end of the stream: the drain), frames=$frames"
} >>"$REPORT"

# --- the Linux guest: canopy-snd against QEMU's built-in virtio-sound (QEMU checked at the start) ---
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
    cp "$CANOPY_WORK/console.log" "$CANOPY_WORK/console-$dev.log"
    # QEMU finished in time and exited 0, the guest said PASS, canopy-snd exited 0 by itself.
    canopy_check_guest_run "$qemu_rc" backend
  else
    CANOPY_QEMU_APPEND="canopy.tone=$CANOPY_WORK/tone.wav" canopy_qemu \
      -audiodev pipewire,id=a -device virtio-sound-pci,audiodev=a \
      -virtfs local,path=/,mount_tag=host,security_model=none,readonly=on || qemu_rc=$?
    cp "$CANOPY_WORK/console.log" "$CANOPY_WORK/console-$dev.log"
    # The reference run counts only when it ran whole: QEMU's exit status and the guest's verdict.
    [ "$qemu_rc" -ne 124 ] || canopy_fail "$dev: QEMU did not finish within ${CANOPY_QEMU_TIMEOUT:-120}s"
    canopy_guest_result || canopy_fail "$dev: guest: $CANOPY_GUEST_VERDICT"
    [ "$qemu_rc" -eq 0 ] || canopy_fail "$dev: QEMU exited with status $qemu_rc"
  fi
  sleep 0.5
  canopy_stop_recording "rec-$dev"
  aplay_ms=$(grep -a -o 'aplay_ms=[0-9]*' "$CANOPY_WORK/console-$dev.log" | cut -d= -f2) ||
    canopy_fail "$dev: the guest reported no aplay time"
  report=$("$BIN/canopy-snd-wav" analyze "$CANOPY_WORK/sink-$dev.wav" --channel 0) ||
    canopy_fail "$dev: cannot analyze what reached the sink ($CANOPY_WORK/sink-$dev.wav)"
  canopy_log "$dev: qemu $qemu_rc, aplay $aplay_ms ms, sink: $report"
  [ "$(field "$report" found)" = 1 ] || canopy_fail "$dev: no tone reached the sink ($report)"
  dur=$(field "$report" duration_ms) gaps=$(field "$report" gaps) level=$(field "$report" level_db)
  need "$dev" "$aplay_ms" "$dur" "$gaps" "${level#-}"
  echo "| $dev | $aplay_ms | $dur | $gaps | $level |" >>"$REPORT"
done
canopy_pass
