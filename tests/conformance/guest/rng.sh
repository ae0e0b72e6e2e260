#!/bin/sh
# Guest side of the virtio-rng conformance test (runs as /test.sh under busybox).
# Checks that Linux's virtio_rng driver binds to the device, that it is a modern (VIRTIO_F_VERSION_1)
# device, that hw_random selects it, and that /dev/hwrng returns bytes from the Canopy back-end, which
# serves the repeated text "canopy-rng:" (canopy-vhost-rng --pattern).
# canopy.rng_expect=any on the kernel command line skips the pattern check (for QEMU's own device).
# shellcheck disable=SC1091 # installed in the initramfs from guest/canopy-guest.sh
. /lib/canopy/guest.sh

expect=pattern
# shellcheck disable=SC2013 # words, not lines
for arg in $(cat /proc/cmdline); do
  case "$arg" in canopy.rng_expect=*) expect=${arg#canopy.rng_expect=} ;; esac
done

# 1. A virtio device with device ID 4 (entropy source), bound to virtio_rng.
dev=$(virtio_device 4 virtio_rng) || exit 1
note "rng device $(basename "$dev")"

# 2. Negotiated features: bit 32 (VIRTIO_F_VERSION_1) must be set. The sysfs file has one character
#    per feature bit, bit 0 first.
features=$(cat "$dev/features")
v1=$(echo "$features" | cut -c33)
[ "$v1" = "1" ] || fail "VIRTIO_F_VERSION_1 not negotiated (features $features)"
note "features $features"

# 3. hw_random core: virtio_rng is available and current.
hw=$(first_existing /sys/class/misc/hw_random /sys/devices/virtual/misc/hw_random) ||
  fail "no hw_random in sysfs"
wait_for "$hw/rng_current" 60 || fail "no $hw/rng_current"
available=$(cat "$hw/rng_available")
current=$(cat "$hw/rng_current")
note "rng_available='$available' rng_current='$current'"
case "$available" in *virtio_rng*) ;; *) fail "virtio_rng not in rng_available ('$available')" ;; esac
case "$current" in
  virtio_rng*) ;;
  *)
    name=$(echo "$available" | tr ' ' '\n' | grep '^virtio_rng' | head -n1)
    echo "$name" >"$hw/rng_current" || fail "cannot select $name (current '$current')"
    current=$(cat "$hw/rng_current")
    case "$current" in virtio_rng*) ;; *) fail "rng_current is '$current', not virtio_rng" ;; esac
    ;;
esac

# 4. Read from /dev/hwrng: 4 KiB, then 64 KiB (many requests in flight over time).
wait_for /dev/hwrng 60 || fail "no /dev/hwrng"
head -c 4096 /dev/hwrng >/tmp/rng.4k || fail "reading /dev/hwrng failed"
n=$(wc -c </tmp/rng.4k)
[ "$n" -eq 4096 ] || fail "read $n bytes from /dev/hwrng, wanted 4096"
head -c 65536 /dev/hwrng >/tmp/rng.64k || fail "reading 64 KiB from /dev/hwrng failed"
n=$(wc -c </tmp/rng.64k)
[ "$n" -eq 65536 ] || fail "read $n bytes from /dev/hwrng, wanted 65536"
note "read 4096 + 65536 bytes; first bytes: $(head -c 24 /tmp/rng.4k | od -An -c | tr -s ' ' | head -n1)"

if [ "$expect" = "pattern" ]; then
  grep -qF "canopy-rng:" /tmp/rng.4k || fail "the text canopy-rng: is not in the bytes read from /dev/hwrng"
  # Every byte must belong to the pattern: nothing else reached the guest.
  other=$(cat /tmp/rng.4k /tmp/rng.64k | tr -d 'acgnopry:-' | wc -c)
  [ "$other" -eq 0 ] || fail "$other byte(s) read from /dev/hwrng are not from the canopy-rng: pattern"
  # One ':' per repetition of the 11-byte text.
  count=$(cat /tmp/rng.4k /tmp/rng.64k | tr -cd ':' | wc -c)
  [ "$count" -ge $(((4096 + 65536) / 11 - 2)) ] || fail "only $count repetitions of canopy-rng: in 69632 bytes"
  note "all 69632 bytes are the pattern ($count repetitions)"
else
  # Random bytes: at least not all equal.
  distinct=$(od -An -v -tx1 /tmp/rng.4k | tr -s ' ' '\n' | sort -u | wc -l)
  [ "$distinct" -gt 16 ] || fail "only $distinct distinct byte values in 4 KiB"
fi
exit 0
