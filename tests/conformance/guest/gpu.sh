#!/bin/sh
# Guest side of the virtio-gpu conformance test (runs as /test.sh under busybox).
# The upstream virtio_gpu driver against canopy-gpu through QEMU's vhost-user-gpu-pci, judged with
# libdrm's modetest (run from the host's root, mounted read-only over 9p):
#   1. the driver binds, VIRTIO_GPU_F_EDID is negotiated, /dev/dri/card0 appears;
#   2. every scanout is a connected connector whose modes are the EDID's (canopy.gpu_modes lists the
#      expected preferred mode per connector, e.g. 1024x768,800x600);
#   3. modetest sets those modes with the "plain" pattern (every byte 0x77) on all connectors at once,
#      moves the hardware cursor and page-flips for canopy.gpu_flip_s seconds.
# The host checks what reached canopy-gpu's scanout output (checksums, cursor events).
# shellcheck disable=SC1091 # installed in the initramfs from guest/canopy-guest.sh
. /lib/canopy/guest.sh

modes=1024x768
flip_s=6
# shellcheck disable=SC2013 # words, not lines
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    canopy.gpu_modes=*) modes=${arg#canopy.gpu_modes=} ;;
    canopy.gpu_flip_s=*) flip_s=${arg#canopy.gpu_flip_s=} ;;
  esac
done

# 1. The virtio device with ID 16 (GPU), bound to virtio_gpu, EDID negotiated.
dev=$(virtio_device 16 virtio_gpu) || exit 1
features=$(cat "$dev/features")
[ "$(echo "$features" | cut -c2)" = "1" ] || fail "VIRTIO_GPU_F_EDID not negotiated (features $features)"
[ "$(echo "$features" | cut -c33)" = "1" ] || fail "VIRTIO_F_VERSION_1 not negotiated"
note "features $features"
wait_for /dev/dri/card0 10 || fail "no /dev/dri/card0"
note "/dev/dri/card0 present"

# 2. Host tools: the host's root over 9p, read-only.
mkdir -p /host
mount -t 9p -o trans=virtio,version=9p2000.L,ro host /host || fail "cannot mount the host's root over 9p"
for m in dev proc sys tmp; do mount --bind "/$m" "/host/$m" || fail "cannot bind /$m into /host"; done
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

# 3. Set the modes with the plain pattern on every connector, test the cursor, page-flip.
note "modetest$set_args -F plain,plain -C -v for ${flip_s}s"
# shellcheck disable=SC2086 # set_args is a list of options
(sleep "$flip_s"; echo) | mt $set_args -F plain,plain -C -v >/tmp/flip.txt 2>&1
rc=$?
grep -a -E 'setting mode|freq' /tmp/flip.txt | head -n 20 | while read -r l; do note "$l"; done
[ "$rc" -eq 0 ] || { tail -n 20 /tmp/flip.txt; fail "modetest exited with $rc"; }
grep -q 'freq:' /tmp/flip.txt || { tail -n 20 /tmp/flip.txt; fail "no page-flip rate reported (no flips completed)"; }
for m in dev proc sys tmp; do umount "/host/$m"; done
umount /host
exit 0
