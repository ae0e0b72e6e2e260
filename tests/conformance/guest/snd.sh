#!/bin/sh
# Guest side of the virtio-snd conformance test (runs as /test.sh under busybox): the upstream Linux
# snd_virtio driver against two canopy-snd devices behind QEMU's vhost-user-snd-pci, one with
# controls=on (canopy-snd --controls), one with QEMU's and canopy-snd's defaults (no controls field in
# the config space, no CTLS offered). ALSA's own tools come from the host's root (mounted read-only over 9p):
#   - both cards probe, each with a playback and a capture substream;
#   - the card with controls: /proc/asound shows one playback and one capture substream, the jack, the
#     controls; aplay plays the host's tone file with 20 ms periods (the host checks what reached its
#     sink); arecord records 4 s from the capture stream, which canopy-snd feeds from the host's source
#     (a 440 Hz tone), and canopy-snd-wav measures it here;
#   - the card on the defaults has no controls and plays the same tone (the host checks its tap).
# Kernel command line: canopy.tone=PATH canopy.wavtool=PATH (host paths)
# shellcheck disable=SC1091 # installed in the initramfs from guest/canopy-guest.sh
. /lib/canopy/guest.sh

tone=""
wavtool=""
# shellcheck disable=SC2013 # words, not lines
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    canopy.tone=*) tone=${arg#canopy.tone=} ;;
    canopy.wavtool=*) wavtool=${arg#canopy.wavtool=} ;;
  esac
done
[ -n "$tone" ] && [ -n "$wavtool" ] || fail "canopy.tone / canopy.wavtool missing"
# A device whose probe fails leaves no card: Linux logs why (snd_virtio's -12 when it was offered CTLS
# without the config field).
for c in 0 1; do
  wait_for "/proc/asound/card$c" 60 ||
    { dmesg | grep -i -E 'virtio|snd' | tail -n 10 | while read -r l; do note "dmesg: $l"; done; fail "no /proc/asound/card$c (two virtio sound devices, snd_virtio did not bind both)"; }
  wait_for "/dev/snd/pcmC${c}D0p" 60 || fail "no playback PCM device /dev/snd/pcmC${c}D0p"
  wait_for "/dev/snd/pcmC${c}D0c" 60 || fail "no capture PCM device /dev/snd/pcmC${c}D0c"
done

note "cards: $(tr -s ' \n' ' ' </proc/asound/cards)"
# Two lines per card: "N [id ]: virtio-snd - VirtIO SoundCard" and where it sits.
[ "$(grep -c -E '^ *[0-9]+ \[.*VirtIO SoundCard' /proc/asound/cards)" = 2 ] || fail "want two virtio sound cards"
note "pcm: $(cat /proc/asound/pcm)"
for c in 0 1; do
  grep -q "^0$c-00:.*playback 1" /proc/asound/pcm || fail "no playback substream on card $c in /proc/asound/pcm"
  grep -q "^0$c-00:.*capture 1" /proc/asound/pcm || fail "no capture substream on card $c in /proc/asound/pcm"
done

mkdir -p /host
mount -t 9p -o trans=virtio,version=9p2000.L,ro host /host || fail "cannot mount the host's root over 9p"
for m in dev proc sys; do mount --bind "/$m" "/host/$m" || fail "cannot bind /$m into /host"; done
mount -t tmpfs tmpfs /host/run || fail "cannot mount a tmpfs on /host/run"

# Which card is which: the one with canopy-snd's controls and the one on the defaults.
ctl="" plain=""
for c in 0 1; do
  chroot /host amixer -c "$c" controls >"/tmp/controls$c.txt" 2>&1 || { cat "/tmp/controls$c.txt"; fail "amixer -c $c controls failed"; }
  if grep -q "Playback Volume" "/tmp/controls$c.txt"; then ctl=$ctl$c; else plain=$plain$c; fi
done
[ ${#ctl} = 1 ] && [ ${#plain} = 1 ] || fail "want one card with controls and one without (with: '$ctl', without: '$plain')"
note "card $ctl: controls=on; card $plain: QEMU's defaults"
while read -r l; do note "control (card $plain): $l"; done <"/tmp/controls$plain.txt"

# Controls (VIRTIO_SND_F_CTLS): a volume and a switch per stream, and the jack.
cp "/tmp/controls$ctl.txt" /tmp/controls.txt
while read -r l; do note "control: $l"; done </tmp/controls.txt
grep -q "'playback Playback Volume'" /tmp/controls.txt || fail "no 'playback Playback Volume' control"
grep -q "'playback Playback Switch'" /tmp/controls.txt || fail "no 'playback Playback Switch' control"
grep -q "'capture Capture Volume'" /tmp/controls.txt || fail "no 'capture Capture Volume' control"
grep -q "Speaker Jack" /tmp/controls.txt || fail "no speaker jack control"
chroot /host amixer -c "$ctl" cget "name=playback Playback Volume" >/tmp/vol.txt 2>&1 || fail "cannot read the volume"
grep -q 'dBscale-min=-50.00dB' /tmp/vol.txt || { cat /tmp/vol.txt; fail "the volume has no dB scale"; }

note "snd_virtio msg_timeout_ms=$(cat /sys/module/virtio_snd/parameters/msg_timeout_ms 2>/dev/null || echo '?')"
note "aplay (20 ms periods)"
chroot /host aplay -D "hw:$ctl,0" --period-time=20000 --buffer-time=80000 "$tone" >/tmp/aplay.txt 2>&1 ||
  { cat /tmp/aplay.txt; dmesg | tail -n 15 | while read -r l; do note "dmesg: $l"; done; fail "aplay failed"; }
grep -i -E 'underrun|xrun' /tmp/aplay.txt && note "aplay reported an underrun"

# 4 s of frames, of which at least 1 s must be the tone: the host source's start-up under load (and
# frames this TCG guest had no buffer for) take some of it.
note "arecord 4 s (20 ms periods)"
chroot /host arecord -D "hw:$ctl,0" -f S16_LE -r 48000 -c 2 -d 4 --period-time=20000 --buffer-time=80000 /run/rec.wav \
  >/tmp/arecord.txt 2>&1 || { cat /tmp/arecord.txt; fail "arecord failed"; }
report=$(chroot /host "$wavtool" analyze /run/rec.wav --channel 0)
note "recorded: $report"
# shellcheck disable=SC2086 # key=value words
set -- $report
found=0 hz=0 duration_ms=0 level_db=0
for kv in "$@"; do
  case "$kv" in found=*) found=${kv#found=} ;; hz=*) hz=${kv#hz=} ;; duration_ms=*) duration_ms=${kv#duration_ms=} ;;
  level_db=*) level_db=${kv#level_db=} ;; esac
done
[ "$found" = 1 ] || fail "arecord heard nothing"
hz_i=${hz%.*}
[ "$hz_i" -ge 435 ] && [ "$hz_i" -le 445 ] || fail "arecord heard ${hz} Hz, want 440"
dur_i=${duration_ms%.*}
[ "$dur_i" -ge 1000 ] || fail "arecord heard the tone for only ${duration_ms} ms of 4000"
lvl_i=${level_db%.*}
[ "$lvl_i" -ge -9 ] && [ "$lvl_i" -le -3 ] || fail "arecord heard the tone at ${level_db} dB, want about -6"

note "aplay on card $plain (QEMU's defaults, 20 ms periods)"
chroot /host aplay -D "hw:$plain,0" --period-time=20000 --buffer-time=80000 "$tone" >/tmp/aplay2.txt 2>&1 ||
  { cat /tmp/aplay2.txt; dmesg | tail -n 15 | while read -r l; do note "dmesg: $l"; done; fail "aplay on card $plain failed"; }
umount /host/run
