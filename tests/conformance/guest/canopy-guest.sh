# Helpers for guest-side test scripts (busybox sh). Installed in the initramfs as
# /lib/canopy/guest.sh; a test script starts with `. /lib/canopy/guest.sh`.
#
# Contract with /init: the test script exits 0 for PASS; anything else is FAIL, and the reason is
# the text given to `fail` (or "test script exited N").

CANOPY_FAIL_FILE=/tmp/canopy-fail-reason

# note MESSAGE...: a progress line on the console.
note() { echo "canopy-test: $*"; }

# fail REASON...: record the reason and end the test script with status 1. The line goes to stderr (the
# console too), so that a fail inside $(...) is still seen.
fail() {
  echo "$*" >"$CANOPY_FAIL_FILE"
  echo "canopy-test: FAIL: $*" >&2
  exit 1
}

# wait_for PATH [SECONDS]: wait (10 ms steps) until PATH exists; status 1 on timeout.
wait_for() {
  _p=$1
  _n=$((${2:-60} * 100))
  while [ ! -e "$_p" ]; do
    _n=$((_n - 1))
    [ "$_n" -gt 0 ] || return 1
    usleep 10000
  done
  return 0
}

# first_existing PATH...: print the first PATH that exists; status 1 when none does.
first_existing() {
  for _p in "$@"; do
    if [ -e "$_p" ]; then
      echo "$_p"
      return 0
    fi
  done
  return 1
}

# cmdline_arg NAME [DEFAULT]: the value of NAME=VALUE on the kernel command line, else DEFAULT.
cmdline_arg() {
  # shellcheck disable=SC2013 # words, not lines
  for _a in $(cat /proc/cmdline); do
    case "$_a" in "$1="*) echo "${_a#"$1"=}" && return 0 ;; esac
  done
  echo "${2:-}"
}

# virtio_device ID DRIVER: print the sysfs folder of the virtio device with device ID (decimal) once
# DRIVER has bound to it (10 s at most); fail otherwise. Use as `dev=$(virtio_device 16 virtio_gpu) || exit 1`.
virtio_device() {
  _want=$(printf '0x%04x' "$1")
  for _d in /sys/bus/virtio/devices/*; do
    [ "$(cat "$_d/device" 2>/dev/null)" = "$_want" ] || continue
    wait_for "$_d/driver" 60 || fail "$(basename "$_d") (virtio ID $1): no driver bound"
    _drv=$(basename "$(readlink "$_d/driver")")
    [ "$_drv" = "$2" ] || fail "$(basename "$_d") (virtio ID $1) bound to '$_drv', not $2"
    echo "$_d"
    return 0
  done
  fail "no virtio device with ID $1 on the virtio bus"
}
