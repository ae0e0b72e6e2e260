#!/bin/sh
# Inner (L2) guest of the nested KVM test with a virtio-snd device: canopy-vmm describes it as a
# virtio-mmio device in ACPI and bridges it to canopy-snd. Checks that the upstream snd_virtio driver
# makes its card with a playback and a capture substream, then plays /tone.wav with aplay (copied into
# the initramfs with its libraries and ALSA's configuration) through hw:0,0 in 20 ms periods. The outer
# guest checks what reached its PipeWire sink.
# shellcheck disable=SC1091 # installed in the initramfs
. /lib/canopy/guest.sh
dev=$(virtio_device 25 virtio_snd) || exit 1
note "virtio-snd $(basename "$dev") on $(basename "$(readlink -f "$dev/..")")"
wait_for /proc/asound/card0 60 || fail "no /proc/asound/card0 (snd_virtio did not bind)"
wait_for /dev/snd/pcmC0D0p 60 || fail "no playback PCM device /dev/snd/pcmC0D0p"
note "cards: $(tr -s ' \n' ' ' </proc/asound/cards)"
grep -q 'VirtIO SoundCard' /proc/asound/cards || fail "card 0 is not the virtio sound card"
note "pcm: $(tr '\n' ' ' </proc/asound/pcm)"
grep -q 'playback 1' /proc/asound/pcm || fail "no playback substream in /proc/asound/pcm"
[ -s /tone.wav ] || fail "no /tone.wav in the initramfs"
note "snd_virtio msg_timeout_ms=$(cat /sys/module/virtio_snd/parameters/msg_timeout_ms 2>/dev/null || echo '?')"
note "aplay (20 ms periods)"
t0=$(cut -d' ' -f1 /proc/uptime)
aplay -D hw:0,0 --period-time=20000 --buffer-time=80000 /tone.wav >/tmp/aplay.txt 2>&1 ||
  { cat /tmp/aplay.txt; dmesg | tail -n 15 | while read -r l; do note "dmesg: $l"; done; fail "aplay failed: $(tail -n1 /tmp/aplay.txt)"; }
t1=$(cut -d' ' -f1 /proc/uptime)
while read -r l; do note "aplay: $l"; done </tmp/aplay.txt
note "aplay done in $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }') s"
