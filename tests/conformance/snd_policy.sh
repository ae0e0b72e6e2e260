#!/usr/bin/env bash
# The cross-VM audio policy end to end: canopy-vmm runs two guest partitions, each playing a tone through
# its own canopy-snd into a private headless PipeWire (lib.sh canopy_pipewire_start). The IVI's music
# (400 Hz, -12 dBFS, 3 s, priority 10) is ducked by the cluster's chime (1 kHz, 0.6 s from ~1.2 s,
# priority 100, duck_others, duck_db -20, ramp_ms 40). What reached the sink is recorded and measured on
# sample positions (canopy-snd-wav duck): the music before the chime, its level while the chime plays
# (20 dB lower), how long after the chime's onset it got there and how long after its end it came back.
#
# Usage: snd_policy.sh PATH/TO/canopy-vmm (canopy-snd, canopy-partition-tone and canopy-snd-wav beside it)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"

VMM=${1:-}
canopy_begin snd_policy
[ -n "$VMM" ] || canopy_fail "usage: $0 PATH/TO/canopy-vmm"
BIN=$(cd "$(dirname "$VMM")" && pwd)
for b in canopy-vmm canopy-snd canopy-partition-tone canopy-snd-wav; do
  [ -x "$BIN/$b" ] || canopy_fail "$BIN/$b missing or not executable"
done
canopy_require pipewire wireplumber pw-cli pw-record pw-metadata wpctl
canopy_pipewire_start

RAMP_MS=40
DUCK_DB=-20
cat >"$CANOPY_WORK/policy.toml" <<TOML
version = 1

[[vm]]
name = "cluster"
backend = "partition"
memory = "32M"
restart = "never"
app = "canopy-partition-tone"
args = ["--hz", "1000", "--ms", "600", "--delay-ms", "1200", "--level-db", "-6"]
[vm.snd]
streams = [{ name = "chime", direction = "output", channels = 2, rates = [48000], role = "chime" }]
args = ["--stats=$CANOPY_WORK/cluster-snd.txt"]

[[vm]]
name = "ivi"
backend = "partition"
memory = "32M"
restart = "never"
app = "canopy-partition-tone"
args = ["--hz", "400", "--ms", "3000", "--level-db", "-12"]
[vm.snd]
streams = [{ name = "music", direction = "output", channels = 2, rates = [48000], role = "media" }]
args = ["--stats=$CANOPY_WORK/ivi-snd.txt"]

[[audio.route]]
vm = "cluster"
stream = "chime"
sink = "default"
priority = 100
duck_others = true
duck_db = $DUCK_DB
ramp_ms = $RAMP_MS

[[audio.route]]
vm = "ivi"
stream = "music"
sink = "default"
priority = 10
TOML

canopy_record_sink sink "$CANOPY_WORK/sink.wav"
canopy_start vmm "$BIN/canopy-vmm" run "$CANOPY_WORK/policy.toml"
deadline=$(($(date +%s) + 40))
until [ "$(grep -c 'tone: done' "$CANOPY_WORK/vmm.log" 2>/dev/null)" -ge 2 ]; do
  canopy_alive vmm || canopy_fail "canopy-vmm exited early"
  grep -q 'tone: FAIL' "$CANOPY_WORK/vmm.log" && canopy_fail "$(grep 'tone: FAIL' "$CANOPY_WORK/vmm.log" | head -n1)"
  [ "$(date +%s)" -lt "$deadline" ] || canopy_fail "the partitions did not finish their tones within 40 s"
  sleep 0.1
done
sleep 0.3
canopy_stop_recording sink
kill -TERM "${CANOPY_PIDS[vmm]}"
canopy_wait_exit vmm 10 || canopy_fail "canopy-vmm did not stop on SIGTERM"
grep -a 'tone: ' "$CANOPY_WORK/vmm.log" | while read -r l; do canopy_log "${l#*info: }"; done
for f in cluster ivi; do while read -r l; do canopy_log "$f canopy-snd: $l"; done <"$CANOPY_WORK/$f-snd.txt"; done

report=$("$BIN/canopy-snd-wav" duck "$CANOPY_WORK/sink.wav" --music-hz 400 --chime-hz 1000 --expect-db "$DUCK_DB" \
  --settle-ms $((RAMP_MS + 40)))
canopy_log "at the sink: $report"
declare -A r=()
for kv in $report; do r[${kv%%=*}]=${kv#*=}; done
check() { awk "BEGIN { exit !($1) }" || canopy_fail "$2"; }
[ "${r[chime]}" = 1 ] || canopy_fail "no chime at the sink"
check "${r[before_db]} > -13 && ${r[before_db]} < -11" "the music arrived at ${r[before_db]} dB before the chime, want -12"
check "${r[ducked_by_db]} > $DUCK_DB - 1 && ${r[ducked_by_db]} < $DUCK_DB + 1" \
  "the chime ducked the music by ${r[ducked_by_db]} dB, want $DUCK_DB"
# Within the ramp: measured on the signal with 20 ms analysis windows (which smear an edge by up to
# 10 ms) and one 10 ms guest period of scheduling between the chime's START and its first samples.
check "${r[reached_ms]} >= 0 && ${r[reached_ms]} <= $RAMP_MS + 20" \
  "the music reached $DUCK_DB dB ${r[reached_ms]} ms after the chime's onset, want within the ${RAMP_MS} ms ramp"
check "${r[restored_ms]} >= 0 && ${r[restored_ms]} <= $RAMP_MS + 20" \
  "the music came back ${r[restored_ms]} ms after the chime ended, want within the ${RAMP_MS} ms ramp"
check "${r[after_db]} > ${r[before_db]} - 1" "the music stayed at ${r[after_db]} dB after the chime"
canopy_pass
