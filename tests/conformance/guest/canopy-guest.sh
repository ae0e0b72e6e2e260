# Helpers for guest-side test scripts (busybox sh). Installed in the initramfs as
# /lib/canopy/guest.sh; a test script starts with `. /lib/canopy/guest.sh`.
#
# Contract with /init: the test script exits 0 for PASS; anything else is FAIL, and the reason is
# the text given to `fail` (or "test script exited N").

CANOPY_FAIL_FILE=/tmp/canopy-fail-reason

# note MESSAGE...: a progress line on the console.
note() { echo "canopy-test: $*"; }

# fail REASON...: record the reason and end the test script with status 1.
fail() {
  echo "$*" >"$CANOPY_FAIL_FILE"
  echo "canopy-test: FAIL: $*"
  exit 1
}

# wait_for PATH [SECONDS]: wait (10 ms steps) until PATH exists; status 1 on timeout.
wait_for() {
  _p=$1
  _n=$((${2:-10} * 100))
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
