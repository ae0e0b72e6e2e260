#!/bin/sh
# Guest side of the virtio-gpu conformance test (runs as /test.sh under busybox).
# The upstream virtio_gpu driver against canopy-gpu through QEMU's vhost-user-gpu-pci, judged with
# libdrm's modetest (run from the host's root, mounted read-only over 9p):
#   1. the driver binds, VIRTIO_GPU_F_EDID is negotiated, /dev/dri/card0 appears;
#   2. every scanout is a connected connector whose modes are the EDID's (canopy.gpu_modes lists the
#      expected preferred mode per connector, e.g. 1024x768,800x600);
#   3. modetest sets those modes with the "plain" pattern (every byte 0x77) on all connectors at once,
#      moves the hardware cursor and page-flips until the events the checks need have happened: it
#      reported its flip rate (after 60 flips), and canopy-gpu's frame log (the host's, read over 9p)
#      holds 10 frames of the pattern on every scanout, a cursor image and cursor moves. No count in a
#      fixed time: the only clock is the hang guard, below the guest's own limit (canopy.timeout).
# Kernel command line: canopy.gpu_modes=WxH,... canopy.frames_log=PATH canopy.crcs=CRC,... (the CRC-32
# of a whole frame of the pattern per scanout) canopy.timeout=S.
# The host checks what reached canopy-gpu's scanout output again (checksums, cursor events).
# shellcheck disable=SC1091 # installed in the initramfs from guest/canopy-guest.sh
. /lib/canopy/guest.sh

modes=1024x768
frames_log=""
crcs=""
limit=60
# shellcheck disable=SC2013 # words, not lines
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    canopy.gpu_modes=*) modes=${arg#canopy.gpu_modes=} ;;
    canopy.frames_log=*) frames_log=${arg#canopy.frames_log=} ;;
    canopy.crcs=*) crcs=${arg#canopy.crcs=} ;;
    canopy.timeout=*) limit=${arg#canopy.timeout=} ;;
  esac
done
[ -n "$frames_log" ] && [ -n "$crcs" ] || fail "canopy.frames_log / canopy.crcs missing"
guard=$((limit - 20))  # leaves time to report before /init's own limit
[ "$guard" -ge 30 ] || fail "canopy.timeout=$limit is too short for the hang guard"

# 1. The virtio device with ID 16 (GPU), bound to virtio_gpu, EDID negotiated.
dev=$(virtio_device 16 virtio_gpu) || exit 1
features=$(cat "$dev/features")
[ "$(echo "$features" | cut -c2)" = "1" ] || fail "VIRTIO_GPU_F_EDID not negotiated (features $features)"
[ "$(echo "$features" | cut -c33)" = "1" ] || fail "VIRTIO_F_VERSION_1 not negotiated"
note "features $features"
wait_for /dev/dri/card0 60 || fail "no /dev/dri/card0"
note "/dev/dri/card0 present"

# 2. Host tools: the host's root over 9p, read-only.
mkdir -p /host
mount -t 9p -o trans=virtio,version=9p2000.L,ro host /host || fail "cannot mount the host's root over 9p"
# The host's /tmp stays visible (canopy-gpu's frame log is there); modetest needs no /tmp of its own.
for m in dev proc sys; do mount --bind "/$m" "/host/$m" || fail "cannot bind /$m into /host"; done
[ -x /host/usr/bin/modetest ] || fail "modetest missing on the host (libdrm-tests)"
mt() { chroot /host /usr/bin/modetest -M virtio_gpu "$@"; }

mt -c >/tmp/connectors.txt 2>&1 || fail "modetest -c failed: $(tail -n 3 /tmp/connectors.txt)"
# Connector lines: "id<TAB>encoder<TAB>status<TAB>name<TAB>size<TAB>count modes<TAB>encoders".
conns=$(awk -F'\t' '$3 == "connected" { print $1 }' /tmp/connectors.txt)
want=$(echo "$modes" | tr ',' ' ' | wc -w)
have=$(echo "$conns" | wc -w)
[ "$have" -eq "$want" ] || { cat /tmp/connectors.txt; fail "$have connected connector(s), wanted $want"; }
note "connectors: $(echo "$conns" | tr '\n' ' ')"

# Each connector's mode list (the lines after its header, up to the next connector) must start with
# its configured mode as the preferred one, list the established modes that fit, and nothing larger.
i=1
set_args=""
for c in $conns; do
  mode=$(echo "$modes" | cut -d, -f"$i")
  awk -F'\t' -v id="$c" '$1 == id && $3 != "" { on = 1; next } on && $3 != "" && $1 ~ /^[0-9]+$/ { on = 0 } on' \
    /tmp/connectors.txt >"/tmp/modes.$c"
  first=$(grep -m1 '#0 ' "/tmp/modes.$c" || true)
  case "$first" in *"#0 $mode "*preferred*) ;; *) cat "/tmp/modes.$c"; fail "connector $c: first mode '$first', wanted $mode preferred" ;; esac
  w=${mode%x*}
  for m in 640x480 800x600 1024x768; do
    if [ "${m%x*}" -le "$w" ]; then
      grep -q " $m " "/tmp/modes.$c" || fail "connector $c: EDID mode $m missing"
    elif grep -q " $m " "/tmp/modes.$c"; then
      fail "connector $c: mode $m larger than the EDID's"
    fi
  done
  note "connector $c: $(grep -c '#[0-9]' "/tmp/modes.$c") modes, preferred $mode"
  set_args="$set_args -s $c:$mode"
  i=$((i + 1))
done

# 3. Set the modes with the plain pattern on every connector, test the cursor, page-flip until the
# events below. modetest -v flips until a line on its stdin: a fifo this script holds open.
log=/host$frames_log
# good SCANOUT WxH CRC: frames of that scanout in canopy-gpu's log whose every pixel is the pattern.
good() { grep -c "^frame $1 .* $2 XR24 .* crc $3\$" "$log" 2>/dev/null || true; }
enough() {
  grep -q 'freq:' /tmp/flip.txt || return 1
  _i=1
  for _m in $(echo "$modes" | tr ',' ' '); do
    [ "$(good $((_i - 1)) "$_m" "$(echo "$crcs" | cut -d, -f"$_i")")" -ge 10 ] || return 1
    _i=$((_i + 1))
  done
  _images=$(grep -c '^cursor [01] show .* image' "$log" 2>/dev/null || true)
  _moves=$(grep -c '^cursor [01] show ' "$log" 2>/dev/null || true)
  [ "${_images:-0}" -ge 1 ] && [ "${_moves:-0}" -gt "${_images:-0}" ]
}
note "modetest$set_args -F plain,plain -C -v until the host has the frames (hang guard ${guard}s)"
mkfifo /tmp/mt.in
start=$(cut -d. -f1 /proc/uptime)
# shellcheck disable=SC2086 # set_args is a list of options
mt $set_args -F plain,plain -C -v </tmp/mt.in >/tmp/flip.txt 2>&1 &
mt_pid=$!
exec 3>/tmp/mt.in
until enough; do
  kill -0 "$mt_pid" 2>/dev/null || { tail -n 20 /tmp/flip.txt; fail "modetest exited before the host had the frames"; }
  [ $(($(cut -d. -f1 /proc/uptime) - start)) -lt "$guard" ] || {
    tail -n 20 /tmp/flip.txt
    fail "after ${guard}s: flip rate $(grep -c 'freq:' /tmp/flip.txt) line(s); host frames of the pattern per scanout:" \
      "$(_i=1; for _m in $(echo "$modes" | tr ',' ' '); do printf '%s ' "$(good $((_i - 1)) "$_m" "$(echo "$crcs" | cut -d, -f"$_i")")"; _i=$((_i + 1)); done)(want 10 each)"
  }
  usleep 200000
done
# modetest may have exited just now: a write into a fifo with no reader must not kill this script
# (its status is checked below).
trap '' PIPE
echo >&3 2>/dev/null
exec 3>&-
rc=0
wait "$mt_pid" || rc=$?
grep -a -E 'setting mode|freq' /tmp/flip.txt | head -n 20 | while read -r l; do note "$l"; done
[ "$rc" -eq 0 ] || { tail -n 20 /tmp/flip.txt; fail "modetest exited with $rc"; }
for m in dev proc sys; do umount "/host/$m"; done
umount /host
exit 0
