#!/usr/bin/env bash
# canopy-vmm's KVM backend beside QEMU -M microvm, in the same nested run (QEMU 10 TCG outer guest with
# -cpu max and kvm-amd, as tests/conformance/kvm_nested_qemu.sh): the same Debian 6.12 kernel and busybox
# initramfs booted to /init and powered off, rounds interleaved. Reported per VMM (median over rounds):
# start -> power-off wall time, the inner guest's uptime when /init ran, and the ratio canopy / microvm;
# for canopy-vmm the exits to userspace during the boot; and exits per second on a loop of 20000 port
# writes in the inner guest (each one a KVM_EXIT_IO to the VMM).
#
# Usage: bench/kvm_bench.sh [--smoke] [BUILD_DIR]   writes BUILD_DIR/bench-kvm.md
#   --smoke: one round; otherwise CANOPY_BENCH_ROUNDS (3).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
SMOKE=0
if [ "${1:-}" = "--smoke" ]; then SMOKE=1; shift; fi
BUILD=$(cd "${1:-build}" && pwd)
# shellcheck source=../tests/conformance/lib.sh
. "$HERE/../tests/conformance/lib.sh"
ROUNDS=$([ $SMOKE -eq 1 ] && echo 1 || echo "${CANOPY_BENCH_ROUNDS:-3}")
REPORT="$BUILD/bench-kvm.md"

canopy_begin kvm_bench
canopy_require "${CANOPY_QEMU:-qemu-system-x86_64}" busybox cpio modinfo gzip
VMM="$BUILD/bin/canopy-vmm"
[ -x "$VMM" ] || canopy_fail "$VMM missing (build first)"
L2=$("$HERE/../tests/conformance/build-initramfs.sh" --test "$HERE/../tests/conformance/guest/kvm_l2_hello.sh") ||
  canopy_fail "L2 initramfs build failed"
canopy_guest --test "$HERE/guest/kvm.sh" kvm-amd netfs 9pnet 9p 9pnet_virtio
qemu_rc=0
CANOPY_QEMU_TIMEOUT=$((120 + ROUNDS * 90)) CANOPY_GUEST_TIMEOUT=$((60 + ROUNDS * 80)) \
  CANOPY_QEMU_APPEND="canopy.vmm=$VMM canopy.kernel=$CANOPY_VMLINUZ canopy.l2initrd=$L2 canopy.rounds=$ROUNDS" \
  canopy_qemu -cpu max -virtfs local,path=/,mount_tag=host,security_model=none,readonly=on || qemu_rc=$?
grep -a 'kvm-bench:' "$CANOPY_WORK/console.log" | tr -d '\r' >"$CANOPY_WORK/results.txt" || true
while read -r l; do canopy_log "$l"; done <"$CANOPY_WORK/results.txt"
[ -s "$CANOPY_WORK/results.txt" ] || canopy_fail "no results from the outer guest (QEMU status $qemu_rc)"
grep -q 'status=[1-9]' "$CANOPY_WORK/results.txt" && canopy_fail "a run failed: $(grep 'status=[1-9]' "$CANOPY_WORK/results.txt" | head -n1)"
# The outer QEMU must have finished by itself (the guest's power-off) with its guest's PASS: otherwise
# the results may be a partial set of rounds.
[ "$qemu_rc" -ne 124 ] || canopy_fail "the outer QEMU did not finish in time"
canopy_guest_result || canopy_fail "outer guest: $CANOPY_GUEST_VERDICT"
[ "$qemu_rc" -eq 0 ] || canopy_fail "the outer QEMU exited with status $qemu_rc"
for vmm in canopy qemu-microvm; do
  n=$(grep -c "vmm=$vmm " "$CANOPY_WORK/results.txt" || true)
  [ "$n" -eq "$ROUNDS" ] || canopy_fail "$vmm: $n run(s) reported, $ROUNDS expected"
done
median() {  # median VMM FIELD: the median over rounds; fails unless every round measured it
  local v
  v=$(grep "vmm=$1 " "$CANOPY_WORK/results.txt" | grep -o " $2=[^ ]*" | cut -d= -f2)
  if [ -z "$v" ] || grep -qvE '^[0-9]+(\.[0-9]+)?$' <<<"$v"; then
    canopy_fail "$1: $2 not measured in every round ($(echo "$v" | paste -sd' ' -))"
  fi
  sort -n <<<"$v" | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
}
# (median fails from a command substitution: `set -e` then ends the script on the assignment.)
ct=$(median canopy total_ms); qt=$(median qemu-microvm total_ms)
ci=$(median canopy init_s); qi=$(median qemu-microvm init_s)
ce=$(median canopy exits)
cp=$(median canopy port_writes_per_s); qp=$(median qemu-microvm port_writes_per_s)
ratio() {  # ratio LABEL A B: the ratio line (smoke: labelled, no number); fails when B is 0
  awk -v a="$2" -v b="$3" 'BEGIN { exit !(b > 0) }' || canopy_fail "ratio $1 cannot be computed ($2 / $3)"
  if [ $SMOKE -eq 1 ]; then
    echo "ratio $1: smoke: not a measurement (one round)"
  else
    awk -v l="$1" -v a="$2" -v b="$3" 'BEGIN { printf "ratio %s = %.3f\n", l, a / b }'
  fi
}
r_total=$(ratio "canopy-vmm / microvm start -> power-off" "$ct" "$qt")
r_port=$(ratio "canopy-vmm / microvm port-write exits per second" "$cp" "$qp")
{
  echo "## canopy-vmm on KVM beside QEMU -M microvm (bench/kvm_bench.sh, nested KVM in a TCG guest)"
  echo
  echo "- $ROUNDS round(s), medians; the same Debian kernel and busybox initramfs, 256 MiB, 1 vCPU"
  echo
  echo "| VMM | start -> power-off ms | inner /init at (guest uptime) s | exits to userspace | port writes (exits) per s |"
  echo "| --- | --- | --- | --- | --- |"
  echo "| canopy-vmm boot | $ct | $ci | $ce | $cp |"
  echo "| QEMU -M microvm,acpi=on | $qt | $qi | - | $qp |"
  echo
  echo "$r_total"
  echo "$r_port"
} >"$REPORT"
cat "$REPORT"
canopy_pass
