#!/usr/bin/env bash
# The cross-VM audio policy end to end: canopy-vmm runs two guest partitions, each playing a tone through
# its own canopy-snd into a private headless PipeWire (lib.sh canopy_pipewire_start). The IVI's music
# (400 Hz, -12 dBFS, priority 10) is ducked by the cluster's chime (1 kHz, 0.6 s, priority 100,
# duck_others, duck_db -20, ramp_ms 40). Ordered by events, never by time: the chime starts once the
# music has started and the recording grew by 0.5 s more, the music ends once the chime is done and the
# recording grew by 1 s more (files the partitions wait for). What reached the sink is measured on sample
# positions (canopy-snd-wav duck): the music before the chime, its level while the chime plays (20 dB
# lower) and after it; and the IVI's canopy-snd applied exactly the manifest's depth over the ramp,
# counted in frames (its stats). How long after the chime's onset the sink heard the duck, and after
# its end the music back, depend on both partitions being scheduled in real time: figures logged here
# and reported by bench/cockpit_bench.sh (the demo's ducking), not checks.
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
# The partitions run under uids of their own: the trigger folder is theirs to look into ($CANOPY_WORK
# is open to every uid: the back-ends write their stats there).
TRIGGER="$CANOPY_WORK/trigger"
mkdir -p "$TRIGGER"
chmod 755 "$TRIGGER"
cat >"$CANOPY_WORK/policy.toml" <<TOML
version = 1

[[vm]]
name = "cluster"
backend = "partition"
memory = "32M"
restart = "never"
app = "canopy-partition-tone"
args = ["--hz", "1000", "--ms", "600", "--start-after-file", "$TRIGGER/chime", "--level-db", "-6"]
[vm.snd]
streams = [{ name = "chime", direction = "output", channels = 2, rates = [48000], role = "chime" }]
args = ["--stats=$CANOPY_WORK/cluster-snd.txt"]

[[vm]]
name = "ivi"
backend = "partition"
memory = "32M"
restart = "never"
app = "canopy-partition-tone"
args = ["--hz", "400", "--until-file", "$TRIGGER/music-end", "--level-db", "-12"]
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
# tones_done N: N partitions said "tone: done"; a failure or canopy-vmm's exit ends the test.
tones_done() {
  canopy_alive vmm || canopy_fail "canopy-vmm exited early"
  ! grep -q 'tone: FAIL' "$CANOPY_WORK/vmm.log" || canopy_fail "$(grep 'tone: FAIL' "$CANOPY_WORK/vmm.log" | head -n1)"
  [ "$(grep -c 'tone: done' "$CANOPY_WORK/vmm.log" 2>/dev/null)" -ge "$1" ]
}
music_started() { tones_done 0 && grep -q 'tone: started at [0-9]* ms (400 Hz' "$CANOPY_WORK/vmm.log"; }
canopy_until 120 "the IVI's music starting" music_started
canopy_wait_recorded "$CANOPY_WORK/sink.wav" 0.5
: >"$TRIGGER/chime"
canopy_until 120 "the cluster's chime" tones_done 1
canopy_wait_recorded "$CANOPY_WORK/sink.wav" 1
: >"$TRIGGER/music-end"
canopy_until 120 "the IVI's music ending" tones_done 2
canopy_wait_recorded "$CANOPY_WORK/sink.wav" 0.5
canopy_stop_recording sink
kill -TERM "${CANOPY_PIDS[vmm]}"
canopy_wait_exit vmm 60 || canopy_fail "canopy-vmm did not stop on SIGTERM"
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
canopy_log "figures, not checks: the sink heard the duck ${r[reached_ms]} ms after the chime's onset and the music" \
  "back ${r[restored_ms]} ms after its end (the ramp: ${RAMP_MS} ms; see bench/cockpit_bench.sh)"
# Where the duck is decided and applied, in frames (no load can stretch them): the IVI's canopy-snd took
# the chime's duck from the policy board and brought the music to the manifest's depth over its ramp.
stats=$(grep 'stream ivi/music' "$CANOPY_WORK/ivi-snd.txt" || true)
[[ "$stats" =~ ducks=([0-9]+)\ deepest_db=(-?[0-9.]+)\ duck_reached_ms=(-?[0-9.]+) ]] ||
  canopy_fail "no ducking figures in the IVI's canopy-snd stats: $stats"
check "${BASH_REMATCH[1]} >= 1" "the IVI's canopy-snd never ducked the music"
check "${BASH_REMATCH[2]} > $DUCK_DB - 0.05 && ${BASH_REMATCH[2]} < $DUCK_DB + 0.05" \
  "the IVI's canopy-snd ducked the music to ${BASH_REMATCH[2]} dB, want $DUCK_DB"
check "${BASH_REMATCH[3]} > $RAMP_MS - 0.5 && ${BASH_REMATCH[3]} < $RAMP_MS + 0.5" \
  "the IVI's canopy-snd reached the duck after ${BASH_REMATCH[3]} ms of music, want the ${RAMP_MS} ms ramp"
check "${r[after_db]} > ${r[before_db]} - 1" "the music stayed at ${r[after_db]} dB after the chime"
canopy_pass
