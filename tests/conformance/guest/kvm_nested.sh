#!/bin/sh
# Guest side of the nested KVM test (runs as /test.sh in the outer guest, QEMU TCG with -cpu max): with
# kvm-amd loaded (AMD SVM is emulated by TCG) /dev/kvm exists; canopy-vmm, from the host's root over 9p,
# boots the same Linux kernel with the L2 initramfs on KVM and prints that guest's serial console. The L2
# guest reports its own verdict there and powers off through ACPI S5; canopy-vmm must exit 0.
# A second inner guest gets a virtio-rng device over virtio-mmio (described in ACPI, LNRO0005) bridged to
# canopy-vhost-rng: its own test (guest/rng.sh) checks that virtio_rng binds and reads the back-end's bytes.
# Then an inner guest with a virtio-gpu device bridged to canopy-gpu: its virtio_gpu driver must offer
# blob resources and context init, and canopy-guest-blob's blob scanouts (guest/kvm_l2_gpu.sh) must reach
# canopy-gpu's scanout output (its frame log) pixel for pixel with no byte copied. And one with a
# virtio-snd device bridged to canopy-snd (its timer-paced host recording to WAV): aplay's tone in the
# inner guest must reach that sink whole.
# Kernel command line: canopy.env=PATH, a file of the host's (KEY='value' lines, host paths) with VMM,
# KERNEL, L2, L2RNG, RNG, MANIFEST, GPU, L2GPU, SND, L2SND, WAVTOOL, L2VENUS and PROBE. Then an inner guest
# whose canopy-gpu runs virglrenderer with venus: its host-visible region mapped by canopy-vmm, venus
# host blobs mapped, written and read back in the inner guest (guest/kvm_l2_hostmem.sh). Last, canopy-vmm run
# starts that rng guest from a manifest with backend = "auto" (KVM here).
# shellcheck disable=SC1091 # installed in the initramfs
. /lib/canopy/guest.sh
env=$(cmdline_arg canopy.env)
[ -n "$env" ] || fail "canopy.env missing from the kernel command line"
[ -c /dev/kvm ] || fail "no /dev/kvm in the outer guest (kvm-amd did not load: is the CPU -cpu max?)"
mkdir -p /host
mount -t 9p -o trans=virtio,version=9p2000.L,ro host /host || fail "cannot mount the host's root over 9p"
for m in dev proc sys; do mount --bind "/$m" "/host/$m" || fail "cannot bind /$m into /host"; done
# Writable room for the back-ends' logs and PipeWire inside the read-only host root.
mount -t tmpfs tmpfs /host/run || fail "cannot mount a tmpfs on /host/run"
VMM="" KERNEL="" L2="" L2RNG="" RNG="" MANIFEST="" GPU="" L2GPU="" SND="" L2SND="" WAVTOOL="" L2VENUS="" PROBE="" CASES=""
[ -f "/host$env" ] || fail "no $env on the host"
# shellcheck disable=SC1090 # written by the host test
. "/host$env"
for v in VMM KERNEL L2 L2RNG RNG MANIFEST GPU L2GPU SND L2SND WAVTOOL L2VENUS PROBE CASES; do
  eval "[ -n \"\$$v\" ]" || fail "$v missing from $env"
done
# boot_l2 LABEL INITRD [DEVICE-ARGS...]: canopy-vmm boot of the inner guest; its console lines are shown,
# its verdict must be PASS and canopy-vmm's exit status 0 (the guest powered off).
# l2_timeout: the inner test script's hang guard in seconds (canopy.timeout), 60 unless a case sets it.
l2_timeout=60
# snd_virtio gives up on a control request the device has not answered in msg_timeout_ms (1000 ms by
# default; ALSA then reports EIO): a real-time limit that a loaded machine running canopy-snd in this
# TCG guest missed (aplay: "write error: Input/output error" in a run with two busy loops on the host).
# 30 s makes it a hang guard; init passes it to insmod as modprobe would.
SND_PARAMS="virtio_snd.msg_timeout_ms=30000"
boot_l2() {
  label=$1 initrd=$2
  shift 2
  note "canopy-vmm boot on KVM ($label)"
  t0=$(cut -d' ' -f1 /proc/uptime)
  chroot /host "$VMM" boot --kernel "$KERNEL" --initrd "$initrd" --memory 256M "$@" \
    --cmdline "console=ttyS0 panic=-1 quiet canopy.timeout=$l2_timeout $SND_PARAMS" >/tmp/l2.txt 2>&1
  rc=$?
  t1=$(cut -d' ' -f1 /proc/uptime)
  grep -a -E 'canopy-|CANOPY-TEST-RESULT|kvm:' /tmp/l2.txt | while read -r l; do note "L2 $label: $l"; done
  note "canopy-vmm boot ($label) exited $rc after $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s"
  # On failure: the inner guest's last lines, then its own verdict in this test's (the part of a long
  # log that survives truncation is its end).
  grep -q 'CANOPY-TEST-RESULT: PASS' /tmp/l2.txt || {
    tail -n 30 /tmp/l2.txt
    why=$(grep -a -E 'canopy-test: FAIL|CANOPY-TEST-RESULT|ERROR|error' /tmp/l2.txt | tail -n 3 | tr -s '\r\n' '  ')
    fail "the L2 guest ($label) did not pass (canopy-vmm exited $rc): ${why:-no verdict from the inner guest}"
  }
  [ "$rc" -eq 0 ] || fail "canopy-vmm boot ($label) exited $rc (0 = the guest powered off)"
  # The KVM child and its back-ends run under seccomp allowlists: a call outside one is logged.
  refused=$(grep -a 'seccomp: refused system call' /tmp/l2.txt | head -n 3 | tr -s '\r\n' '  ')
  [ -z "$refused" ] || fail "canopy-vmm boot ($label): a confined process made calls outside its allowlist: $refused"
}
# wants CASE: whether this run includes that inner guest (CASES, from the env file).
wants() { case " $CASES " in *" $1 "*) return 0 ;; esac; return 1; }

if wants plain; then
  boot_l2 plain "$L2"
fi

if wants probe; then
  # The KVM child taken over (docs/security.md, "Confinement"): the sandbox probe, preloaded into
  # canopy-vmm boot, runs in its main thread once it has confined itself (while its vCPU runs the plain
  # inner guest, which must still pass) and tries once what code an attacker got to run there would.
  # Refused, every one of the 14: a new process, a program, a network or netlink socket, a signal to or
  # the memory of the process that started it (this shell), a descriptor's SIGIO aimed at it, SysV
  # shared memory, another uid, writing a file outside (its files' view: nothing to write), opening a
  # memfd of mode 0444 it holds read-only again writable (Landlock does not look at memfds: no
  # CAP_DAC_OVERRIDE left after set-up), even after giving it its mode back as its owner (its
  # allowlist: no mode changes), reading a file of mode 0000 in /etc (inside its view of the files:
  # again only the capability) and one of mode 0644 outside the system's files (a sanitizer build keeps
  # processes and kill for its runtime: those two are not asserted there). Control, the same with
  # --no-sandbox: every attempt succeeds.
  mkdir -p /host/run/probe/outside
  echo "the operator's" >/host/run/probe/readable
  # An address of this shell's, canopy-vmm's parent (the chroot below execs it), for process_vm_readv.
  peek=$(sed -n '1s/-.*//p' "/proc/$$/maps")
  for mode in confined control; do
    sandbox="" any=""
    [ "$mode" = control ] && sandbox=--no-sandbox any=CANOPY_PROBE_ANY=1
    note "canopy-vmm boot on KVM with the sandbox probe ($mode)"
    rm -f /host/run/probe/line /host/run/probe/unreadable
    # A file of mode 0000 inside its view of the files (/etc; the host's is read-only here: bound over
    # /etc/issue, which nothing in it reads).
    echo secret >/host/run/probe/unreadable
    chmod 0 /host/run/probe/unreadable
    mount --bind /host/run/probe/unreadable /host/etc/issue || fail "cannot bind a file over /etc/issue"
    # shellcheck disable=SC2086 # $sandbox and $any: empty or one word
    env LD_PRELOAD="$PROBE" CANOPY_PROBE_FD=7 CANOPY_PROBE_OUTSIDE=/run/probe/outside CANOPY_PROBE_PEEK="$peek" \
      CANOPY_PROBE_READONLY_FD=memfd CANOPY_PROBE_UNREADABLE=/etc/issue \
      CANOPY_PROBE_READABLE=/run/probe/readable $any \
      chroot /host "$VMM" boot --kernel "$KERNEL" --initrd "$L2" --memory 256M $sandbox \
      --cmdline "console=ttyS0 panic=-1 quiet canopy.timeout=$l2_timeout" >/tmp/l2.txt 2>&1 \
      7>/host/run/probe/line
    rc=$?
    umount /host/etc/issue
    grep -q 'CANOPY-TEST-RESULT: PASS' /tmp/l2.txt || {
      tail -n 30 /tmp/l2.txt
      fail "the L2 guest with the probed KVM child ($mode) did not pass (canopy-vmm exited $rc)"
    }
    [ "$rc" -eq 0 ] || fail "canopy-vmm boot with the probe ($mode) exited $rc"
    line=$(cat /host/run/probe/line)
    note "KVM child ($mode): $line"
    # A sanitizer build (the probe sees its runtime) keeps processes and kill for it: not asserted there.
    loosened=""
    case " $line " in *" sanitizer=yes "*) loosened="fork signal_parent" ;; esac
    n=0
    for kv in ${line#probe:}; do
      what=${kv%%=*} answer=${kv#*=}
      [ "$what" = sanitizer ] && continue
      n=$((n + 1))
      if [ "$mode" = control ]; then
        [ "$answer" = ok ] || fail "control: $what was refused to the unconfined KVM child: $line"
        continue
      fi
      case " $loosened " in *" $what "*) continue ;; esac
      [ "$answer" = refused ] || fail "the confined KVM child could $what: $line"
    done
    [ "$n" -eq 14 ] || fail "the probe in the KVM child ($mode) reported $n attempts, want 14: '$line'"
  done
fi

if wants rng; then
  boot_l2 "virtio-rng over vhost-user" "$L2RNG" --device "rng=$RNG,--pattern"
  # A back-end that outlives its socket and blocks SIGTERM (canopy-test-hostile --outlive-socket, as the
  # plain inner guest's rng device, which it does not use): when the guest is done, the confined KVM
  # child must still stop it (SIGKILL through its pidfd: its own Landlock layers must not scope its
  # back-ends away) and exit; stuck, it would wait for it forever (killed after 120 s here: a hang guard;
  # it catches SIGTERM itself).
  note "canopy-vmm boot on KVM (a back-end that outlives its socket)"
  timeout -s KILL 120 chroot /host "$VMM" boot --kernel "$KERNEL" --initrd "$L2" --memory 256M \
    --device "rng=${VMM%/*}/canopy-test-hostile,--outlive-socket" \
    --cmdline "console=ttyS0 panic=-1 quiet canopy.timeout=$l2_timeout" >/tmp/l2.txt 2>&1
  rc=$?
  grep -q 'CANOPY-TEST-RESULT: PASS' /tmp/l2.txt || {
    tail -n 30 /tmp/l2.txt
    fail "the L2 guest with a back-end that outlives its socket did not pass (canopy-vmm exited $rc)"
  }
  grep -q 'hostile: front-end gone; staying' /tmp/l2.txt || fail "the back-end did not outlive its socket"
  [ "$rc" -eq 0 ] || {
    tail -n 10 /tmp/l2.txt
    fail "canopy-vmm boot with a back-end that outlives its socket exited $rc (or was ended by the hang guard)"
  }
  ! grep -q 'survives' /tmp/l2.txt || fail "the KVM child could not kill its back-end: $(grep -a survives /tmp/l2.txt | head -n1)"
  for d in /proc/[0-9]*; do
    [ "$(tr -d '\0' <"$d/cmdline" 2>/dev/null)" = "${VMM%/*}/canopy-test-hostile--fd=3--outlive-socket" ] &&
      fail "the back-end outlived the KVM child"
  done
  note "the KVM child stopped a back-end that outlived its socket"
fi

if wants gpu; then
  # virtio-gpu: canopy-gpu's headless output logs every frame (size, format, blob or not, bytes copied,
  # CRC-32 of the pixels); the inner guest prints the CRC of each blob's pattern.
  frames=/run/kvm-frames.log
  # The inner guest waits for canopy-gpu after each flip (its host barrier), so its time includes
  # canopy-gpu's: the hang guard is wider than the others' (a slow, loaded host is not a failure).
  l2_timeout=240
  boot_l2 "virtio-gpu over vhost-user" "$L2GPU" --device "gpu=$GPU,--mode=1024x768,--frame-log=$frames"
  l2_timeout=60
  mode=$(grep -a -o 'canopy-guest-blob: connector .* mode [0-9]*x[0-9]*' /tmp/l2.txt | head -n1 | awk '{ print $NF }')
  [ "$mode" = 1024x768 ] || fail "the inner guest scanned out '$mode', not canopy-gpu's 1024x768"
  frames=/host$frames
  [ -s "$frames" ] || fail "canopy-gpu logged no frame"
  note "canopy-gpu: $(grep -c '^frame ' "$frames") frame(s) in all, $(grep -c '^frame .* blob ' "$frames") from blobs"
  # The frame log in order, one word per scanout change, RESOURCExFRAMES (the inner guest printed which
  # resource each blob is; the others are fbcon's), so a kept work dir's console shows what arrived.
  note "frame log: $(awk '/^scanout 0 on /{ if (r != "") printf "%s ", r "x" n; r = $NF; n = 0 } /^frame 0 /{ ++n }
       END { if (r != "") print r "x" n }' "$frames")"
  # canopy-guest-blob waits for the host after each flip (a fenced barrier: the device answers in order),
  # so every flip it counts as shown reached canopy-gpu's output: the check is exact, not a rate.
  shown_line=$(grep -a -o 'canopy-guest-blob: [0-9]* flips done, shown A [0-9]* B [0-9]*' /tmp/l2.txt | head -n1)
  [ -n "$shown_line" ] || fail "the inner guest did not report its flips"
  for b in A B; do
    crc=$(grep -a -o "canopy-guest-blob: blob $b .* crc [0-9a-f]*" /tmp/l2.txt | head -n1 | awk '{ print $NF }')
    [ -n "$crc" ] || fail "the inner guest printed no checksum for blob $b"
    want=$(echo "$shown_line" | sed -n "s/.* $b \([0-9]*\).*/\1/p")
    [ "${want:-0}" -ge 1 ] || fail "the inner guest showed blob $b ${want:-no} times"
    n=$(grep -c "^frame 0 seq [0-9]* 1024x768 XR24 stride 4096 blob copied 0 .* crc $crc\$" "$frames")
    note "blob $b (crc $crc): $n frame(s) on scanout 0 as a blob, 0 bytes copied, pixels equal; the guest showed it $want times"
    if [ "$n" -lt "$want" ]; then
      # What did arrive (size, stride, copies, CRC), for the next reader of a failed run.
      grep '^\(frame\|scanout\) ' "$frames" | tail -n 40 | while read -r l; do note "frame log: $l"; done
      fail "only $n frame(s) of blob $b reached canopy-gpu's output whole and uncopied; the guest showed it $want times"
    fi
  done
  copied=$(grep '^frame .* blob ' "$frames" | grep -v -c ' copied 0 ')
  [ "$copied" -eq 0 ] || fail "$copied blob frame(s) were copied"
fi

if wants snd; then
  # virtio-snd: canopy-snd's timer-paced null host records what the inner guest delivered (content, not
  # time: where the guest was late, underruns in the stats); the tone must be there whole and exact:
  # frequency, level, its 1000 ms, no gaps.
  mkdir -p /host/run/snd
  boot_l2 "virtio-snd over vhost-user" "$L2SND" \
    --device "snd=$SND,--host=null,--vm=inner,--wav-dir=/run/snd,--stats=/run/snd/stats.txt"
  while read -r l; do note "canopy-snd: $l"; done </host/run/snd/stats.txt
  wav=$(find /host/run/snd -name '*.wav' | head -n1)
  [ -n "$wav" ] || fail "canopy-snd recorded no stream"
  report=$(chroot /host "$WAVTOOL" analyze "${wav#/host}" --channel 0) || fail "canopy-snd-wav analyze failed"
  note "at canopy-snd's sink ($(basename "$wav")): $report"
  found=0 hz=0 duration_ms=0 level_db=0 gaps=1
  # shellcheck disable=SC2086 # key=value words
  for kv in $report; do
    case "$kv" in
      found=* | hz=* | duration_ms=* | level_db=* | gaps=*) eval "${kv%%=*}=${kv#*=}" ;;
    esac
  done
  [ "$found" = 1 ] || fail "the inner guest's tone did not reach canopy-snd's sink"
  awk -v v="$hz" 'BEGIN { exit !(v >= 995 && v <= 1005) }' || fail "the sink heard $hz Hz, want 1000"
  awk -v v="$level_db" 'BEGIN { exit !(v >= -6.5 && v <= -5.5) }' || fail "the tone arrived at $level_db dB, want -6"
  awk -v v="$duration_ms" 'BEGIN { exit !(v >= 999 && v <= 1001) }' || fail "the inner guest delivered $duration_ms ms of the tone, want 1000"
  [ "$gaps" = 0 ] || fail "$gaps gap(s) in the tone the inner guest delivered"
fi

if wants venus; then
  # venus host blobs: canopy-gpu with virglrenderer (llvmpipe, lavapipe here); canopy-vmm must give the
  # inner guest canopy-gpu's host-visible region and map each blob there when canopy-gpu asks.
  boot_l2 "virtio-gpu host blobs" "$L2VENUS" --device "gpu=$GPU,--renderer=virgl,--venus,--host-visible-mb=256"
  grep -q 'kvm: device gpu: shared memory region 1, 256 MiB' /tmp/l2.txt || fail "canopy-vmm did not map canopy-gpu's host-visible region"
  grep -q 'canopy-guest-hostmem: PASS' /tmp/l2.txt || fail "canopy-guest-hostmem did not pass in the inner guest"
fi

if wants run; then
  note "canopy-vmm run $MANIFEST (backend auto)"
  chroot /host "$VMM" run "$MANIFEST" >/tmp/run.txt 2>&1 &
  pid=$!
  n=0
  # Until canopy-vmm says the VM stopped (the guest powered off; restart = "never") or exits; a 120 s
  # hang guard. Then SIGTERM, which canopy-vmm must take cleanly.
  while ! grep -q -E 'vm linux: .* -> (stopped|failed)' /tmp/run.txt && [ "$n" -lt 1200 ] && kill -0 "$pid" 2>/dev/null; do
    usleep 100000
    n=$((n + 1))
  done
  kill -TERM "$pid" 2>/dev/null
  rc=0
  wait "$pid" || rc=$?
  [ "$rc" -eq 0 ] || { tail -n 20 /tmp/run.txt; fail "canopy-vmm run exited with $rc"; }
  grep -a -E 'vm linux|CANOPY-TEST-RESULT|all VMs' /tmp/run.txt | while read -r l; do note "run: $l"; done
  grep -q 'vm linux: started on KVM' /tmp/run.txt || { tail -n 20 /tmp/run.txt; fail "backend auto did not start the VM on KVM"; }
  grep -q 'CANOPY-TEST-RESULT: PASS' /tmp/run.txt || { tail -n 30 /tmp/run.txt; fail "the manifest's KVM guest did not pass"; }
fi
