#!/usr/bin/env bash
# Conformance: the upstream Linux 6.12 snd_virtio driver against canopy-snd, behind QEMU 10's
# vhost-user-snd-pci, on a private headless PipeWire (lib.sh canopy_pipewire_start). Two devices, as two
# QEMU users would set them up: canopy-snd --controls behind controls=on, and canopy-snd with its defaults
# behind QEMU's defaults (controls=off: a config space without the controls field). The guest
# (guest/snd.sh) checks both cards; on the first its substreams, controls and jack, a 1 kHz tone played
# with aplay (20 ms periods) and the host source's 440 Hz tone recorded with arecord; on the second the
# same tone played. Here we check what
# canopy-snd took from the guest (its --wav-dir tap: content, not time): the tone whole and unbroken —
# its frequency, its exact length, its level, no gaps; and what reached the PipeWire sink (recorded with
# pw-record from before the guest booted): that frequency and level, and no tail held back (at least
# 990 ms from the tone's first to its last sample: silence a late guest caused can only lengthen that).
# Gaps at the sink (a TCG guest on a busy machine late) are a figure of bench/snd_bench.sh ("linux"),
# logged here, not a check.
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
mkdir -p "$CANOPY_WORK/tap"
canopy_start backend "$BACKEND" --socket-path "$SOCK" --vm conformance \
  --stream "name=playback,dir=output,channels=2,rates=44100:48000" \
  --stream "name=capture,dir=input,channels=2,rates=48000" \
  --jack "name=speaker,dir=output,device=speaker" \
  --policy "$CANOPY_WORK/policy" --stats "$CANOPY_WORK/snd-stats.txt" --wav-dir "$CANOPY_WORK/tap" --controls
canopy_wait_socket "$SOCK" 60 backend
# The second: canopy-snd's defaults (one stereo playback and one stereo capture stream, no controls), on
# the null host so that the sink hears one tone only (its tap records what the guest delivered all the same).
SOCK2="$CANOPY_WORK/snd-defaults.sock"
canopy_start backend-defaults "$BACKEND" --socket-path "$SOCK2" --vm defaults --host null \
  --policy "$CANOPY_WORK/policy" --stats "$CANOPY_WORK/snd-defaults-stats.txt" --wav-dir "$CANOPY_WORK/tap"
canopy_wait_socket "$SOCK2" 60 backend-defaults

qemu_rc=0
# virtio_snd's control requests wait 1000 ms by default (then EIO): a hang guard of 30 s instead, so a
# loaded machine's slow answer is not a failure (see guest/kvm_nested.sh).
CANOPY_QEMU_APPEND="canopy.tone=$CANOPY_WORK/tone.wav canopy.wavtool=$WAVTOOL virtio_snd.msg_timeout_ms=30000" \
  canopy_qemu -chardev "socket,id=snd,path=$SOCK" -device vhost-user-snd-pci,chardev=snd,controls=on \
  -chardev "socket,id=snd2,path=$SOCK2" -device vhost-user-snd-pci,chardev=snd2 \
  -virtfs local,path=/,mount_tag=host,security_model=none,readonly=on || qemu_rc=$?
canopy_check_guest_run "$qemu_rc"
# Half a second more of recording after canopy-snd is gone: the graph moves in order, so the tone's
# last quantum is in the file by then.
canopy_wait_recorded "$CANOPY_WORK/sink.wav" 0.5
canopy_stop_recording sink
grep -a 'canopy-test:' "$CANOPY_WORK/console.log" | while read -r l; do canopy_log "guest: ${l#*canopy-test: }"; done
while read -r l; do canopy_log "canopy-snd: $l"; done <"$CANOPY_WORK/snd-stats.txt"
while read -r l; do canopy_log "canopy-snd (defaults): $l"; done <"$CANOPY_WORK/snd-defaults-stats.txt"

in_range() { awk -v v="$1" -v lo="$2" -v hi="$3" 'BEGIN { exit !(v >= lo && v <= hi) }'; }
# What each canopy-snd took from the guest: exactly the 1 s tone aplay wrote (50 periods of 20 ms).
declare -A r=()
for tap in "$CANOPY_WORK/tap/conformance-playback.wav" "$CANOPY_WORK/tap/defaults-playback.wav"; do
  [ -s "$tap" ] || canopy_fail "canopy-snd recorded nothing of the guest's playback ($tap)"
  report=$("$WAVTOOL" analyze "$tap" --channel 0)
  canopy_log "taken from the guest ($(basename "$tap")): $report"
  r=()
  for kv in $report; do r[${kv%%=*}]=${kv#*=}; done
  [ "${r[found]}" = 1 ] || canopy_fail "$tap: canopy-snd took no tone from the guest"
  in_range "${r[hz]}" 995 1005 || canopy_fail "$tap: the guest delivered ${r[hz]} Hz, want 1000"
  in_range "${r[duration_ms]}" 999 1001 || canopy_fail "$tap: the guest delivered ${r[duration_ms]} ms of the tone, want 1000"
  in_range "${r[level_db]}" -6.1 -5.9 || canopy_fail "$tap: the guest delivered the tone at ${r[level_db]} dB, want -6"
  [ "${r[gaps]}" = 0 ] || canopy_fail "$tap: ${r[gaps]} gap(s) in what the guest delivered (longest ${r[longest_gap_ms]} ms)"
done

report=$("$WAVTOOL" analyze "$CANOPY_WORK/sink.wav" --channel 0)
canopy_log "at the sink: $report (gaps there: figures, see bench/snd_bench.sh)"
r=()
for kv in $report; do r[${kv%%=*}]=${kv#*=}; done
[ "${r[found]}" = 1 ] || canopy_fail "nothing reached the sink"
in_range "${r[hz]}" 995 1005 || canopy_fail "the sink heard ${r[hz]} Hz, want 1000"
in_range "${r[level_db]}" -6.5 -5.5 || canopy_fail "the tone arrived at ${r[level_db]} dB, want -6"
in_range "${r[duration_ms]}" 990 100000 || canopy_fail "the sink heard ${r[duration_ms]} ms of the tone (its tail held back?), want 1000"
canopy_pass
