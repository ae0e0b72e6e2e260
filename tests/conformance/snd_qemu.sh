#!/usr/bin/env bash
# Conformance: the upstream Linux 6.12 snd_virtio driver against canopy-snd, behind QEMU 10's
# vhost-user-snd-pci with controls=on, on a private headless PipeWire (lib.sh canopy_pipewire_start).
# The guest (guest/snd.sh) checks the card, its substreams, controls and jack, plays a 1 kHz tone with
# aplay (20 ms periods) and records the host source's 440 Hz tone with arecord. Here we check what
# reached the PipeWire sink (recorded with pw-record from before the guest booted): the tone whole —
# its frequency, its length (no tail held back), its level, no gaps.
#
# Usage: snd_qemu.sh PATH/TO/canopy-snd PATH/TO/canopy-snd-wav
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"

BACKEND=${1:-}
WAVTOOL=${2:-}
canopy_begin snd_qemu
[ -n "$BACKEND" ] && [ -n "$WAVTOOL" ] || canopy_fail "usage: $0 PATH/TO/canopy-snd PATH/TO/canopy-snd-wav"
for b in "$BACKEND" "$WAVTOOL"; do [ -x "$b" ] || canopy_fail "$b missing or not executable"; done
WAVTOOL=$(cd "$(dirname "$WAVTOOL")" && pwd)/$(basename "$WAVTOOL")
canopy_require "${CANOPY_QEMU:-qemu-system-x86_64}" busybox cpio modinfo gzip pipewire wireplumber pw-cli pw-record \
  pw-play pw-link pw-metadata wpctl aplay arecord amixer

canopy_guest --test "$HERE/guest/snd.sh" virtio_snd netfs 9pnet 9p 9pnet_virtio
canopy_pipewire_start

# The tone aplay plays: 1 kHz, -6 dBFS, exactly 1 s (50 periods of 20 ms), S16 stereo 48 kHz.
"$WAVTOOL" tone "$CANOPY_WORK/tone.wav" --hz 1000 --ms 1000 --level-db -6
# The host source's tone for arecord: 440 Hz, -6 dBFS, long enough for the whole run.
"$WAVTOOL" tone "$CANOPY_WORK/source.wav" --hz 440 --ms 120000 --level-db -6
chmod -R a+rX "$CANOPY_WORK"
canopy_feed_source feed "$CANOPY_WORK/source.wav"
canopy_record_sink sink "$CANOPY_WORK/sink.wav"

SOCK="$CANOPY_WORK/snd.sock"
canopy_start backend "$BACKEND" --socket-path "$SOCK" --vm conformance \
  --stream "name=playback,dir=output,channels=2,rates=44100:48000" \
  --stream "name=capture,dir=input,channels=2,rates=48000" \
  --jack "name=speaker,dir=output,device=speaker" \
  --policy "$CANOPY_WORK/policy" --stats "$CANOPY_WORK/snd-stats.txt"
canopy_wait_socket "$SOCK" 10 backend

qemu_rc=0
CANOPY_QEMU_APPEND="canopy.tone=$CANOPY_WORK/tone.wav canopy.wavtool=$WAVTOOL" \
  canopy_qemu -chardev "socket,id=snd,path=$SOCK" -device vhost-user-snd-pci,chardev=snd,controls=on \
  -virtfs local,path=/,mount_tag=host,security_model=none,readonly=on || qemu_rc=$?
canopy_check_guest_run "$qemu_rc"
sleep 0.3  # let the sink's last quantum reach the recording
canopy_stop_recording sink
grep -a 'canopy-test:' "$CANOPY_WORK/console.log" | while read -r l; do canopy_log "guest: ${l#*canopy-test: }"; done
while read -r l; do canopy_log "canopy-snd: $l"; done <"$CANOPY_WORK/snd-stats.txt"

report=$("$WAVTOOL" analyze "$CANOPY_WORK/sink.wav" --channel 0)
canopy_log "at the sink: $report"
declare -A r=()
for kv in $report; do r[${kv%%=*}]=${kv#*=}; done
[ "${r[found]}" = 1 ] || canopy_fail "nothing reached the sink"
awk -v v="${r[hz]}" 'BEGIN { exit !(v >= 995 && v <= 1005) }' || canopy_fail "the sink heard ${r[hz]} Hz, want 1000"
awk -v v="${r[duration_ms]}" 'BEGIN { exit !(v >= 995 && v <= 1005) }' ||
  canopy_fail "the tone lasted ${r[duration_ms]} ms at the sink, want 1000 (tail held back or cut?)"
awk -v v="${r[level_db]}" 'BEGIN { exit !(v >= -6.5 && v <= -5.5) }' || canopy_fail "the tone arrived at ${r[level_db]} dB, want -6"
[ "${r[gaps]}" = 0 ] || canopy_fail "${r[gaps]} gap(s) in the tone at the sink (longest ${r[longest_gap_ms]} ms)"
canopy_pass
