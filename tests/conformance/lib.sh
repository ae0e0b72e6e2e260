# shellcheck shell=bash
# Host-side helpers for conformance tests: QEMU + upstream Linux guest drivers against Canopy's
# vhost-user back-ends. Source it from a bash test script (which sets `set -euo pipefail`):
#
#   . "$(dirname "$0")/lib.sh"
#   canopy_begin rng                        # work dir + cleanup trap
#   canopy_guest --test guest/rng.sh virtio-rng   # kernel + initramfs (cached)
#   canopy_start backend "$BIN" --socket-path "$CANOPY_WORK/rng.sock"
#   canopy_wait_socket "$CANOPY_WORK/rng.sock" 60 backend
#   qemu_rc=0; canopy_qemu -chardev socket,id=c,path="$CANOPY_WORK/rng.sock" -device vhost-user-rng-pci,chardev=c || qemu_rc=$?
#   canopy_check_guest_run "$qemu_rc"      # QEMU in time and 0, guest PASS, back-end exited 0
#   canopy_pass / canopy_fail REASON
# (canopy_guest_result and canopy_wait_exit give the pieces of that check one by one.)
#
# Everything a test starts is killed on exit (TERM, then KILL after a grace period); the work dir
# is removed unless CANOPY_KEEP_WORK=1. On failure the tails of the logs are printed.
#
# Environment: CANOPY_KEEP_WORK=1, CANOPY_QEMU_TIMEOUT (s, default 360: a hang guard), CANOPY_QEMU
# (default qemu-system-x86_64), CANOPY_QEMU_MEMORY (the guest's RAM, default 512M), CANOPY_GUEST_TIMEOUT (s, default 300: a hang guard; the guest's own limit on
# /test.sh), CANOPY_CACHE (see scripts/guest-kernel.sh), CANOPY_QEMU_APPEND (extra kernel args).

CANOPY_CONFORMANCE_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CANOPY_REPO=$(cd "$CANOPY_CONFORMANCE_DIR/../.." && pwd)
CANOPY_WORK=""
CANOPY_TEST_NAME=""
CANOPY_STARTED_AT=0
CANOPY_RESULT=""
declare -A CANOPY_PIDS=()   # name -> pid
declare -A CANOPY_STATUS=() # name -> exit status, once reaped

canopy_log() { echo "[$CANOPY_TEST_NAME $(canopy_elapsed)] $*" >&2; }
canopy_elapsed() {
  local ms=$((($(date +%s%N) - CANOPY_STARTED_AT) / 1000000))
  printf '%d.%03ds' $((ms / 1000)) $((ms % 1000))
}

# canopy_begin NAME: make the work dir ($CANOPY_WORK) and install the cleanup trap.
canopy_begin() {
  CANOPY_TEST_NAME=$1
  CANOPY_STARTED_AT=$(date +%s%N)
  CANOPY_WORK=$(mktemp -d "${TMPDIR:-/tmp}/canopy-$1.XXXXXX")
  # As root, canopy-vmm runs each VM's back-ends under a uid of their own: they write their logs and
  # stats here too (sticky: none removes another's file).
  chmod 1777 "$CANOPY_WORK"
  trap 'canopy_cleanup $?' EXIT
  trap 'canopy_log "interrupted"; exit 130' INT
  trap 'canopy_log "terminated"; exit 143' TERM
  canopy_log "work dir $CANOPY_WORK"
}

# canopy_require CMD...: exit 77 (ctest SKIP_RETURN_CODE) when a host tool is missing.
canopy_require() {
  local c
  for c in "$@"; do
    if ! command -v "$c" >/dev/null; then
      # The full test run (scripts/run-tests.sh) installs everything: there a missing tool is a failure.
      if [ "${CANOPY_NO_SKIP:-0}" = 1 ]; then
        canopy_log "FAIL: $c not installed (scripts/install-deps.sh installs it)"
        exit 1
      fi
      canopy_log "SKIP: $c not installed (scripts/install-deps.sh installs it)"
      CANOPY_RESULT=skip
      exit 77
    fi
  done
}

# canopy_guest BUILD-INITRAMFS-ARGS...: fetch the guest kernel and build the initramfs (both
# cached); sets CANOPY_KVER, CANOPY_VMLINUZ, CANOPY_INITRD.
canopy_guest() {
  local env
  env=$("$CANOPY_REPO/scripts/guest-kernel.sh") || canopy_fail "guest kernel unavailable (scripts/guest-kernel.sh)"
  eval "$env"
  export CANOPY_KVER CANOPY_GUEST_KERNEL_ROOT CANOPY_VMLINUZ CANOPY_MODULES_DIR
  CANOPY_INITRD=$("$CANOPY_CONFORMANCE_DIR/build-initramfs.sh" "$@") || canopy_fail "initramfs build failed"
  canopy_log "guest kernel $CANOPY_KVER, initramfs $CANOPY_INITRD"
}

# canopy_start NAME CMD [ARGS...]: start CMD in the background, output in $CANOPY_WORK/NAME.log.
# A NAME may be reused once its previous process has exited (canopy_qemu reuses "qemu").
canopy_start() {
  local name=$1
  shift
  "$@" >"$CANOPY_WORK/$name.log" 2>&1 </dev/null &
  CANOPY_PIDS[$name]=$!
  unset "CANOPY_STATUS[$name]"
  canopy_log "started $name (pid $!): $*"
}

# canopy_alive NAME: status 0 while the process is running.
canopy_alive() {
  local pid=${CANOPY_PIDS[$1]:-}
  [ -n "$pid" ] && [ -z "${CANOPY_STATUS[$1]:-}" ] && kill -0 "$pid" 2>/dev/null
}

# canopy_reap NAME: wait for an exited process and record its status (no-op if already reaped).
canopy_reap() {
  local rc=0
  [ -n "${CANOPY_STATUS[$1]:-}" ] && return 0
  wait "${CANOPY_PIDS[$1]}" 2>/dev/null || rc=$?
  CANOPY_STATUS[$1]=$rc
}

# canopy_wait_socket PATH TIMEOUT_S [NAME]: wait until PATH is a unix socket. Fails at once when
# process NAME exits first.
canopy_wait_socket() {
  local path=$1 timeout=$2 name=${3:-} deadline
  deadline=$(($(date +%s%N) + timeout * 1000000000))
  while [ ! -S "$path" ]; do
    if [ -n "$name" ] && ! canopy_alive "$name"; then
      canopy_reap "$name"
      canopy_fail "$name exited (status ${CANOPY_STATUS[$name]}) before creating $path"
    fi
    [ "$(date +%s%N)" -lt "$deadline" ] || canopy_fail "no socket $path after ${timeout}s"
    sleep 0.02
  done
  canopy_log "socket $path ready"
}

# canopy_until GUARD_S WHAT CMD...: run CMD (a quiet test) every 50 ms until it succeeds; fail
# naming WHAT when the hang guard of GUARD_S seconds runs out. Readiness is the event CMD tests, never
# a time: GUARD_S is at least 10x what it takes on an idle machine.
canopy_until() {
  local guard=$1 what=$2 deadline
  shift 2
  deadline=$(($(date +%s%N) + guard * 1000000000))
  until "$@"; do
    [ "$(date +%s%N)" -lt "$deadline" ] || canopy_fail "$what: not within ${guard}s (hang guard)"
    sleep 0.05
  done
}

# canopy_wait_exit NAME TIMEOUT_S: wait for process NAME to exit; prints nothing, returns its exit
# status (124 if it is still running after the timeout).
canopy_wait_exit() {
  local name=$1 timeout=$2 deadline
  deadline=$(($(date +%s%N) + timeout * 1000000000))
  while canopy_alive "$name"; do
    [ "$(date +%s%N)" -lt "$deadline" ] || return 124
    sleep 0.02
  done
  canopy_reap "$name"
  return "${CANOPY_STATUS[$name]}"
}

# canopy_qemu EXTRA-QEMU-ARGS...: boot the guest (CANOPY_VMLINUZ, CANOPY_INITRD) under TCG with
# shared memfd RAM (as vhost-user needs), bounded by `timeout`; serial console in
# $CANOPY_WORK/console.log. Returns QEMU's exit status (124 on timeout).
canopy_qemu() {
  local qemu=${CANOPY_QEMU:-qemu-system-x86_64} limit=${CANOPY_QEMU_TIMEOUT:-360} rc=0 mem=${CANOPY_QEMU_MEMORY:-512M}
  local append="console=ttyS0 panic=-1 quiet canopy.timeout=${CANOPY_GUEST_TIMEOUT:-300} ${CANOPY_QEMU_APPEND:-}"
  # shellcheck disable=SC2054 # commas belong to QEMU's option syntax
  local -a cmd=(timeout --kill-after=5 "$limit" "$qemu"
    -accel tcg -nic none -nographic -no-reboot -m "$mem"
    -object memory-backend-memfd,id=mem,size="$mem",share=on -machine memory-backend=mem
    -kernel "$CANOPY_VMLINUZ" -initrd "$CANOPY_INITRD" -append "$append"
    "$@")
  printf '%q ' "${cmd[@]}" >"$CANOPY_WORK/qemu.cmd"
  echo >>"$CANOPY_WORK/qemu.cmd"
  canopy_log "booting guest (limit ${limit}s)"
  "${cmd[@]}" >"$CANOPY_WORK/console.log" 2>"$CANOPY_WORK/qemu.stderr" </dev/null &
  CANOPY_PIDS[qemu]=$!
  unset "CANOPY_STATUS[qemu]"
  canopy_reap qemu
  rc=${CANOPY_STATUS[qemu]}
  canopy_log "qemu exited with status $rc"
  [ "$rc" -ne 124 ] || canopy_log "qemu killed after ${limit}s"
  return "$rc"
}

# canopy_guest_result: read the guest's verdict from console.log; status 0 on PASS. Sets
# CANOPY_GUEST_VERDICT to the text after the marker ("PASS", "FAIL <reason>" or "none").
canopy_guest_result() {
  local line
  line=$(grep -a 'CANOPY-TEST-RESULT:' "$CANOPY_WORK/console.log" 2>/dev/null | tail -n1 | tr -d '\r') || true
  CANOPY_GUEST_VERDICT=${line#*CANOPY-TEST-RESULT: }
  [ -n "$line" ] || CANOPY_GUEST_VERDICT=none
  canopy_log "guest verdict: $CANOPY_GUEST_VERDICT"
  [ "$CANOPY_GUEST_VERDICT" = PASS ]
}

# canopy_check_guest_run QEMU_RC [BACKEND]: after canopy_qemu, fail unless QEMU finished in time and
# exited 0, the guest said PASS, and back-end process BACKEND (default "backend") noticed the
# disconnect and exited 0 by itself (60 s hang guard).
canopy_check_guest_run() {
  local qemu_rc=$1 backend=${2:-backend} verdict_ok=0 backend_rc=0
  canopy_guest_timing
  canopy_guest_result || verdict_ok=$?
  canopy_wait_exit "$backend" 60 || backend_rc=$?
  [ "$qemu_rc" -ne 124 ] || canopy_fail "QEMU did not finish within ${CANOPY_QEMU_TIMEOUT:-360}s (guest verdict: $CANOPY_GUEST_VERDICT)"
  [ "$verdict_ok" -eq 0 ] || canopy_fail "guest: $CANOPY_GUEST_VERDICT"
  [ "$qemu_rc" -eq 0 ] || canopy_fail "QEMU exited with status $qemu_rc"
  [ "$backend_rc" -ne 124 ] || canopy_fail "$backend still running 60 s after QEMU exited"
  [ "$backend_rc" -eq 0 ] || canopy_fail "$backend exited with status $backend_rc"
}

# canopy_start_gpu2 BACKEND: start canopy-gpu (process "backend") with two scanouts, 1024x768 and
# 800x600, logging what reaches them to $CANOPY_FRAMES; its socket is $CANOPY_GPU_SOCK.
canopy_start_gpu2() {
  CANOPY_GPU_SOCK="$CANOPY_WORK/gpu.sock"
  CANOPY_FRAMES="$CANOPY_WORK/frames.log"
  canopy_start backend "$1" --socket-path "$CANOPY_GPU_SOCK" --scanouts 2 --mode 1024x768 \
    --scanout-mode 1:800x600 --frame-log "$CANOPY_FRAMES"
  canopy_wait_socket "$CANOPY_GPU_SOCK" 60 backend
}

# canopy_qemu_gpu2: canopy_qemu with that back-end behind vhost-user-gpu-pci (max_outputs=2) and the
# host's root on 9p (mount tag "host", read-only) for host tools. Returns QEMU's status.
canopy_qemu_gpu2() {
  canopy_qemu -chardev "socket,id=gpu,path=$CANOPY_GPU_SOCK" -device vhost-user-gpu-pci,chardev=gpu,max_outputs=2 \
    -virtfs local,path=/,mount_tag=host,security_model=none,readonly=on
}

# canopy_pixel_crc PIXEL BYTES: the IEEE CRC-32 (gzip's trailer) of BYTES bytes of the 4-byte pixel
# PIXEL (hex bytes in memory order, e.g. 777777ff; no 0a byte) repeated.
canopy_pixel_crc() {
  local p=$1 bytes
  bytes=$(printf '\\x%s\\x%s\\x%s\\x%s' "${p:0:2}" "${p:2:2}" "${p:4:2}" "${p:6:2}")
  # yes stops on SIGPIPE once head has enough: not a failure here.
  (set +o pipefail; LC_ALL=C yes "$(printf '%b' "$bytes")" | LC_ALL=C tr -d '\n' | head -c "$2" | gzip -c |
    tail -c 8 | od -An -tx4 -N4 | tr -d ' \n')
}

# canopy_check_frames SCANOUT W H PIXEL WHAT: fail unless at least 10 frames of W x H on SCANOUT in
# $CANOPY_FRAMES have every pixel equal to PIXEL (see canopy_pixel_crc); WHAT names it in the log.
canopy_check_frames() {
  local s=$1 w=$2 h=$3 crc frames good
  crc=$(canopy_pixel_crc "$4" $((w * h * 4)))
  frames=$(grep -c "^frame $s .* ${w}x${h} XR24 " "$CANOPY_FRAMES" || true)
  good=$(grep -c "^frame $s .* ${w}x${h} XR24 .* crc $crc\$" "$CANOPY_FRAMES" || true)
  canopy_log "scanout $s: $frames frame(s) of ${w}x${h}, $good with $5 (crc $crc)"
  [ "$good" -ge 10 ] || canopy_fail "scanout $s: only $good frame(s) with $5 (want >= 10 page flips)"
}

# canopy_guest_timing: log when the guest reached /init and finished, from its console markers.
canopy_guest_timing() {
  local up finished
  up=$(grep -a -o 'canopy-init: up at [0-9.]*' "$CANOPY_WORK/console.log" | head -n1 | awk '{print $4}') || true
  finished=$(grep -a -o 'canopy-init: test finished at [0-9.]*' "$CANOPY_WORK/console.log" | head -n1 | awk '{print $5}') || true
  canopy_log "guest: /init at ${up:-?} s guest uptime, test done at ${finished:-?} s"
}

canopy_pass() {
  # A confined process that made a call outside its allowlist says so (backend_sandbox.h): a driver or
  # library need the allowlist lacks, or a fault. Either way not a pass.
  local refused
  refused=$(grep -a -h 'seccomp: refused system call' "$CANOPY_WORK"/*.log 2>/dev/null | sort -u | head -n 5) || true
  [ -z "$refused" ] || canopy_fail "a confined process made calls outside its allowlist: $refused"
  CANOPY_RESULT=pass
  canopy_log "PASS"
  exit 0
}

canopy_fail() {
  CANOPY_RESULT=fail
  canopy_log "FAIL: $*"
  exit 1
}

# Kill every started process (TERM, then KILL after CANOPY_KILL_GRACE seconds, default 3).
canopy_kill_all() {
  local name pid grace=${CANOPY_KILL_GRACE:-3} deadline alive
  for name in "${!CANOPY_PIDS[@]}"; do
    pid=${CANOPY_PIDS[$name]}
    [ -z "${CANOPY_STATUS[$name]:-}" ] || continue
    if kill -0 "$pid" 2>/dev/null; then
      canopy_log "stopping $name (pid $pid)"
      kill -TERM "$pid" 2>/dev/null || true
    fi
  done
  deadline=$(($(date +%s%N) + grace * 1000000000))
  while :; do
    alive=0
    for name in "${!CANOPY_PIDS[@]}"; do
      [ -z "${CANOPY_STATUS[$name]:-}" ] || continue
      if kill -0 "${CANOPY_PIDS[$name]}" 2>/dev/null; then alive=1; else canopy_reap "$name"; fi
    done
    [ "$alive" -eq 1 ] || break
    if [ "$(date +%s%N)" -ge "$deadline" ]; then
      for name in "${!CANOPY_PIDS[@]}"; do
        [ -z "${CANOPY_STATUS[$name]:-}" ] || continue
        canopy_log "killing $name (pid ${CANOPY_PIDS[$name]}) after ${grace}s"
        kill -KILL "${CANOPY_PIDS[$name]}" 2>/dev/null || true
        canopy_reap "$name"
      done
      break
    fi
    sleep 0.05
  done
}

canopy_cleanup() {
  local rc=$1 f
  trap - EXIT INT TERM
  set +e
  canopy_kill_all
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 77 ] && [ -n "$CANOPY_WORK" ] && [ -d "$CANOPY_WORK" ]; then
    for f in "$CANOPY_WORK"/*.log "$CANOPY_WORK"/qemu.stderr "$CANOPY_WORK"/qemu.cmd; do
      [ -s "$f" ] || continue
      echo "----- tail of $(basename "$f") -----" >&2
      tail -n "${CANOPY_LOG_TAIL:-40}" "$f" | tr -d '\r' >&2
    done
    echo "-----" >&2
  fi
  if [ -n "$CANOPY_WORK" ] && [ -d "$CANOPY_WORK" ]; then
    if [ "${CANOPY_KEEP_WORK:-0}" = 1 ]; then
      canopy_log "kept work dir $CANOPY_WORK"
    else
      rm -rf "$CANOPY_WORK"
    fi
  fi
  [ "$rc" -eq 0 ] || [ -n "$CANOPY_RESULT" ] || canopy_log "FAIL (exit status $rc)"
  exit "$rc"
}

# canopy_pipewire_start: a private headless PipeWire + WirePlumber for this test (own XDG_RUNTIME_DIR
# and config under $CANOPY_WORK, no session bus) with the null sink canopy-test-sink and the null source
# canopy-test-source (scripts/pipewire/canopy-headless.conf) as the defaults. Exports XDG_RUNTIME_DIR and
# XDG_CONFIG_HOME so every later command (canopy-snd, pw-record ...) uses it; processes "pipewire" and
# "wireplumber" are cleaned up with the rest.
canopy_pipewire_start() {
  export XDG_RUNTIME_DIR="$CANOPY_WORK/xdg-run" XDG_CONFIG_HOME="$CANOPY_WORK/xdg-config"
  unset DBUS_SESSION_BUS_ADDRESS PIPEWIRE_REMOTE
  mkdir -p "$XDG_RUNTIME_DIR" "$XDG_CONFIG_HOME/pipewire/pipewire.conf.d"
  chmod 700 "$XDG_RUNTIME_DIR"
  cp "$CANOPY_REPO/scripts/pipewire/canopy-headless.conf" "$XDG_CONFIG_HOME/pipewire/pipewire.conf.d/"
  canopy_start pipewire pipewire
  canopy_until 60 "PipeWire answering" _canopy_pw_up
  canopy_start wireplumber wireplumber
  canopy_until 60 "WirePlumber making canopy-test-sink the default sink" _canopy_default_sink
  # Pin the defaults: otherwise WirePlumber may pick the sink's monitor as the default source.
  pw-metadata -n default 0 default.configured.audio.sink '{ "name": "canopy-test-sink" }' Spa:String:JSON >/dev/null
  pw-metadata -n default 0 default.configured.audio.source '{ "name": "canopy-test-source" }' Spa:String:JSON >/dev/null
  canopy_until 60 "canopy-test-source as the default source" _canopy_default_source
  wpctl inspect @DEFAULT_AUDIO_SINK@ 2>/dev/null | grep -q canopy-test-sink || canopy_fail "canopy-test-sink is not the default sink"
  wpctl inspect @DEFAULT_AUDIO_SOURCE@ 2>/dev/null | grep -q canopy-test-source || canopy_fail "canopy-test-source is not the default source"
  canopy_log "pipewire + wireplumber up (XDG_RUNTIME_DIR=$XDG_RUNTIME_DIR)"
}

# canopy_record_sink NAME FILE: record everything reaching canopy-test-sink into FILE (48 kHz stereo
# float WAV) as process NAME; stop it with canopy_stop_recording NAME (SIGINT: the file is finished).
canopy_record_sink() {
  canopy_start "$1" pw-record -P '{ stream.capture.sink = true }' --target canopy-test-sink --rate 48000 \
    --channels 2 --format f32 "$2"
  # Audio flowing into the file (0.1 s past its header), not just the file made: the players start next.
  canopy_until 60 "pw-record recording from canopy-test-sink" _canopy_file_reached "$2" $((44 + 38400))
}

# canopy_wait_recorded FILE SECONDS: wait until the recording FILE (canopy_record_sink's format, 384000
# bytes a second) grew by SECONDS (a decimal) of audio from now. The graph moves in order, so audio behind
# that point proves that everything played before now reached the sink, however slow the machine.
canopy_wait_recorded() {
  local want
  want=$(awk -v now="$(stat -c %s "$1" 2>/dev/null || echo 0)" -v s="$2" 'BEGIN { printf "%d", now + s * 384000 }')
  canopy_until 60 "$2 s more audio in $1" _canopy_file_reached "$1" "$want"
}

# canopy_stop_recording NAME: SIGINT to pw-record NAME, which then finishes its WAV file; a recorder that
# does not exit (an unfinished header) fails the test.
canopy_stop_recording() {
  local pid=${CANOPY_PIDS[$1]:-}
  [ -n "$pid" ] || return 0
  kill -INT "$pid" 2>/dev/null || true
  local rc=0
  canopy_wait_exit "$1" 60 || rc=$?  # its status after SIGINT says nothing; only not exiting does
  [ "$rc" -ne 124 ] || canopy_fail "$1 (pw-record) did not finish its file within 60 s of SIGINT"
}

# canopy_feed_source NAME FILE: play FILE into canopy-test-source (so guests recording from the default
# source hear it), looped by pw-play's own means: the test makes FILE as long as it needs.
canopy_feed_source() {
  canopy_start "$1" pw-play --target 0 -P "{ node.name = canopy-test-feed }" "$2"
  canopy_until 60 "linking the tone into canopy-test-source" _canopy_link_feed
  pw-link canopy-test-feed:output_FR canopy-test-source:input_FR >/dev/null 2>&1 ||
    canopy_fail "cannot link the tone into canopy-test-source"
}

_canopy_pw_up() {
  canopy_alive pipewire || canopy_fail "pipewire exited at start (see pipewire.log)"
  pw-cli info 0 >/dev/null 2>&1
}
_canopy_default_sink() {
  canopy_alive wireplumber || canopy_fail "wireplumber exited at start (see wireplumber.log)"
  wpctl inspect @DEFAULT_AUDIO_SINK@ 2>/dev/null | grep -q canopy-test-sink
}
_canopy_default_source() { wpctl inspect @DEFAULT_AUDIO_SOURCE@ 2>/dev/null | grep -q canopy-test-source; }
_canopy_link_feed() { pw-link canopy-test-feed:output_FL canopy-test-source:input_FL >/dev/null 2>&1; }
_canopy_file_reached() { [ "$(stat -c %s "$1" 2>/dev/null || echo 0)" -ge "$2" ]; }
