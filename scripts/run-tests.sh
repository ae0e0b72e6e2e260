#!/usr/bin/env bash
# Canopy's whole test run: installs what is missing, builds twice (gcc Release; clang-19 ASan+UBSan
# with libFuzzer instrumentation) and runs every tier, printing the time of each:
#   install, build-release, build-sanitize, unit (both builds), conformance (QEMU + Linux guests,
#   against the sanitized back-ends), fuzz (each libFuzzer target for CANOPY_FUZZ_SECONDS), bench smoke.
# Usage: scripts/run-tests.sh [--quick]   (--quick: release build + unit tier only)
# Environment: CANOPY_FUZZ_SECONDS (default 30), CANOPY_JOBS (default: nproc).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1
JOBS="${CANOPY_JOBS:-$(nproc)}"
FUZZ_SECONDS="${CANOPY_FUZZ_SECONDS:-30}"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1}"
# Conformance tests skip (exit 77) when QEMU is missing, except here, where everything was installed.
export CANOPY_NO_SKIP=1
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"

declare -a TIER_NAMES=() TIER_SECS=()
TOTAL_PASSED=0
TOTAL_FAILED=0
START_ALL=$(date +%s)

tier() {  # tier NAME COMMAND...
  local tier_name=$1; shift
  local t0 t1
  t0=$(date +%s)
  echo "==== tier: $tier_name"
  local rc=0
  "$@" || rc=$?
  t1=$(date +%s)
  TIER_NAMES+=("$tier_name"); TIER_SECS+=($((t1 - t0)))
  echo "==== tier: $tier_name done in $((t1 - t0)) s (rc=$rc)"
  if [ $rc -ne 0 ]; then
    summary
    echo "FAILED in tier $tier_name"
    exit $rc
  fi
}

summary() {
  echo "==== tier times"
  for i in "${!TIER_NAMES[@]}"; do printf '  %-16s %5d s\n' "${TIER_NAMES[$i]}" "${TIER_SECS[$i]}"; done
  printf '  %-16s %5d s\n' total $(( $(date +%s) - START_ALL ))
}

run_ctest() {  # run_ctest BUILD_DIR ctest-args...
  local dir=$1; shift
  local log
  log=$(mktemp)
  local rc=0
  ctest --test-dir "$dir" --output-on-failure --no-tests=error "$@" 2>&1 | tee "$log" || rc=$?
  local line
  line=$(grep -E 'tests passed, [0-9]+ tests? failed out of [0-9]+' "$log" | tail -n1 || true)
  if [ -n "$line" ]; then
    local failed total
    failed=$(sed -E 's/.* ([0-9]+) tests? failed out of ([0-9]+).*/\1/' <<<"$line")
    total=$(sed -E 's/.* failed out of ([0-9]+).*/\1/' <<<"$line")
    TOTAL_PASSED=$((TOTAL_PASSED + total - failed))
    TOTAL_FAILED=$((TOTAL_FAILED + failed))
  fi
  rm -f "$log"
  return $rc
}

install() {
  if [ "$(id -u)" -eq 0 ]; then bash scripts/install-deps.sh; else sudo bash scripts/install-deps.sh; fi
  [ $QUICK -eq 1 ] || bash scripts/guest-kernel.sh >/dev/null
}

build_release() {
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
  ninja -C build -j "$JOBS"
}

build_sanitize() {
  CC=clang-19 CXX=clang++-19 cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCANOPY_SANITIZE=ON -DCANOPY_BUILD_BENCH=OFF >/dev/null
  ninja -C build-asan -j "$JOBS"
}

unit() {
  run_ctest build -L unit -j "$JOBS"
  [ $QUICK -eq 1 ] || run_ctest build-asan -L unit -j "$JOBS"
}

conformance() {
  # QEMU tests run once, against the sanitized back-ends; one at a time (each boots a guest under TCG).
  run_ctest build-asan -L conformance -j 1
}

fuzz() {
  local work rc=0 name corpus
  work=$(mktemp -d)
  while IFS='|' read -r name corpus; do
    [ -n "$name" ] || continue
    mkdir -p "$work/$name"
    echo "fuzz: $name for ${FUZZ_SECONDS}s"
    # New inputs go to a scratch corpus; the checked-in seeds are only read.
    if ! "build-asan/bin/$name" -max_total_time="$FUZZ_SECONDS" -timeout=10 -print_final_stats=0 -close_fd_mask=3 \
        -artifact_prefix="$work/$name-" "$work/$name" "$corpus" >"$work/$name.log" 2>&1; then
      echo "fuzz: $name found a problem:"; tail -n 40 "$work/$name.log"; rc=1
      TOTAL_FAILED=$((TOTAL_FAILED + 1))
    else
      grep -E '^#[0-9]+.*(DONE|pulse)' "$work/$name.log" | tail -n1 || true
      TOTAL_PASSED=$((TOTAL_PASSED + 1))
    fi
  done < build-asan/fuzzers.txt
  rm -rf "$work"
  return $rc
}

bench_smoke() {
  bash bench/report.sh --smoke build
}

tier install install
tier build-release build_release
if [ $QUICK -eq 0 ]; then tier build-sanitize build_sanitize; fi
tier unit unit
if [ $QUICK -eq 0 ]; then
  tier conformance conformance
  tier fuzz fuzz
  tier bench-smoke bench_smoke
fi
summary
echo "tests: $TOTAL_PASSED passed, $TOTAL_FAILED failed"
[ "$TOTAL_FAILED" -eq 0 ]
