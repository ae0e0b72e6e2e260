#!/usr/bin/env bash
# Canopy's whole test run: installs what is missing, builds (gcc Release; clang-19 ASan+UBSan with
# libFuzzer instrumentation; clang-19 ThreadSanitizer for the threaded tests) and runs every tier,
# printing the time of each beside its budget:
#   install, build-release, lint (clang-format, clang-tidy), build-sanitize, unit (both builds), tsan,
#   conformance (QEMU + Linux guests, against the sanitized back-ends), fuzz (each libFuzzer target for
#   CANOPY_FUZZ_SECONDS), bench smoke.
# Usage: scripts/run-tests.sh [--quick]   (--quick: release build + unit tier only)
# Environment: CANOPY_FUZZ_SECONDS (default 30), CANOPY_JOBS (default: nproc), CANOPY_NO_SKIP (default 1
# here: everything a test needs is installed by this script, so a skip fails the run),
# CANOPY_TIER_BUDGETS=report (outside CI: a tier over budget is reported, not failed).
#
# Each tier runs with `set -e`: any failing command in it fails the tier, and the first failing tier
# ends the run. A tier that takes more than 150 % of its budget (docs/conformance.md, "Tier budgets")
# fails too. The counts come from what the runners wrote (ctest's JUnit report, each GoogleTest
# binary's XML report, the fuzz and bench tiers' own lists), tallied by scripts/test-results.py; the
# last line is "tests: N passed, N failed, N skipped".
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1
JOBS="${CANOPY_JOBS:-$(nproc)}"
FUZZ_SECONDS="${CANOPY_FUZZ_SECONDS:-30}"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1}"
# Tests skip (GTEST_SKIP, exit 77) when something they need is missing, except here, where the install
# tier provided everything: then a test that would skip fails instead, and the tally fails any skip.
export CANOPY_NO_SKIP="${CANOPY_NO_SKIP:-1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"

RESULTS="$ROOT/build/test-results"
rm -rf "$RESULTS"
mkdir -p "$RESULTS"
declare -a TIER_NAMES=() TIER_SECS=() TIER_BUDGETS=()
START_ALL=$(date +%s)

# budget_of TIER: the tier's budget in minutes from docs/conformance.md (empty when it has none).
budget_of() {
  awk -v t="$1" -F'|' '
    /^<!-- tier-budgets -->/ { on = 1; next }
    on && !/^\|/ { exit }
    on { name = $2; gsub(/[ `]/, "", name); min = $3; gsub(/ /, "", min); if (name == t) { print min; exit } }
  ' docs/conformance.md
}

tier() {  # tier NAME COMMAND...: runs COMMAND in a subshell with set -e
  local tier_name=$1; shift
  local t0 t1 secs rc budget
  budget=$(budget_of "$tier_name")
  t0=$(date +%s)
  echo "==== tier: $tier_name (budget ${budget:-none} min)"
  set +e
  ( set -e; "$@" )
  rc=$?
  set -e
  t1=$(date +%s)
  secs=$((t1 - t0))
  TIER_NAMES+=("$tier_name"); TIER_SECS+=("$secs"); TIER_BUDGETS+=("${budget:--}")
  echo "==== tier: $tier_name done in $secs s (budget ${budget:-none} min, rc=$rc)"
  if [ $rc -eq 0 ] && [ -n "$budget" ] && [ $((secs * 2)) -gt $((budget * 60 * 3)) ]; then
    echo "tier $tier_name took $secs s, more than 150 % of its budget of $budget min (docs/conformance.md)"
    # CANOPY_TIER_BUDGETS=report: say so without failing (a developer's run on a machine shared with
    # other heavy work); CI enforces the budgets.
    if [ "${CANOPY_TIER_BUDGETS:-enforce}" != report ] || [ "${CI:-}" = true ]; then rc=1; fi
  fi
  if [ $rc -ne 0 ]; then
    finish "FAILED in tier $tier_name"
  fi
}

summary() {
  echo "==== tier times (budgets: docs/conformance.md; a tier over 150 % of its budget fails)"
  printf '  %-16s %7s %12s\n' tier seconds "budget (min)"
  for i in "${!TIER_NAMES[@]}"; do
    printf '  %-16s %7d %12s\n' "${TIER_NAMES[$i]}" "${TIER_SECS[$i]}" "${TIER_BUDGETS[$i]}"
  done
  printf '  %-16s %7d\n' total $(( $(date +%s) - START_ALL ))
}

finish() {  # finish [MESSAGE]: prints the tier times and the tally, exits with the run's status
  summary
  [ -z "${1:-}" ] || echo "$1"
  local -a opts=()
  [ "$CANOPY_NO_SKIP" = 1 ] && opts+=(--no-skip)
  local rc=0
  python3 scripts/test-results.py "${opts[@]}" "$RESULTS" || rc=$?
  [ -z "${1:-}" ] || rc=1
  exit $rc
}

run_ctest() {  # run_ctest NAME BUILD_DIR ctest-args...: one ctest call, its reports under $RESULTS/NAME.*
  local name=$1 dir=$2; shift 2
  mkdir -p "$RESULTS/$name.gtest"
  GTEST_OUTPUT="xml:$RESULTS/$name.gtest/" \
    ctest --test-dir "$dir" --output-on-failure --no-tests=error --output-junit "$RESULTS/$name.junit.xml" "$@"
}

install() {
  if [ "$(id -u)" -eq 0 ]; then bash scripts/install-deps.sh; else sudo bash scripts/install-deps.sh; fi
  if [ $QUICK -eq 0 ]; then bash scripts/guest-kernel.sh >/dev/null; fi
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

lint() {
  bash scripts/lint.sh build
}

tsan() {
  # The threaded tests (label tsan: vhost-user back-end and front-end, timelines, compositor, snd policy
  # board, lifecycle), built with ThreadSanitizer; tests/tsan.supp names only uninstrumented libraries.
  CC=clang-19 CXX=clang++-19 cmake -S . -B build-tsan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCANOPY_TSAN=ON -DCANOPY_BUILD_BENCH=OFF >/dev/null
  local -a targets
  mapfile -t targets < <(ctest --test-dir build-tsan -L tsan -N | sed -n 's/^ *Test *#[0-9]*: //p')
  [ ${#targets[@]} -gt 0 ] || { echo "tsan: no tests labelled tsan"; exit 1; }
  ninja -C build-tsan -j "$JOBS" "${targets[@]}"
  TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 suppressions=$ROOT/tests/tsan.supp" \
    ASAN_OPTIONS= run_ctest tsan build-tsan -L tsan -j "$JOBS"
}

unit() {
  run_ctest unit-release build -L unit -j "$JOBS"
  if [ $QUICK -eq 0 ]; then run_ctest unit-asan build-asan -L unit -j "$JOBS"; fi
}

conformance() {
  # QEMU tests run against the sanitized back-ends; one at a time (each boots a guest under TCG). Then
  # one per program (and the KVM child) against the release build, whose seccomp allowlist is not loosened for a sanitizer
  # runtime: a call the allowlist lacks fails the test (lib.sh, canopy_pass).
  run_ctest conformance build-asan -L conformance -j 1
  run_ctest conformance-release build -L conformance -j 1 \
    -R '^conformance_(rng|gpu|gpu_virgl|snd|display_kms|kvm_nested)_qemu$'
}

fuzz() {
  local work name corpus failed=0
  work=$(mktemp -d)
  : >"$RESULTS/fuzz.plain"
  while IFS='|' read -r name corpus; do
    [ -n "$name" ] || continue
    mkdir -p "$work/$name"
    echo "fuzz: $name for ${FUZZ_SECONDS}s"
    # New inputs go to a scratch corpus; the checked-in seeds are only read. Every target runs even when
    # an earlier one found something; the tier fails after the last.
    if ! "build-asan/bin/$name" -max_total_time="$FUZZ_SECONDS" -timeout=10 -print_final_stats=0 -close_fd_mask=3 \
        -artifact_prefix="$work/$name-" "$work/$name" "$corpus" >"$work/$name.log" 2>&1; then
      echo "fuzz: $name found a problem:"; tail -n 40 "$work/$name.log"
      echo "fail $name found a problem (see the log above)" >>"$RESULTS/fuzz.plain"
      failed=1
    else
      grep -E '^#[0-9]+.*(DONE|pulse)' "$work/$name.log" | tail -n1 || true
      echo "pass $name" >>"$RESULTS/fuzz.plain"
    fi
  done < build-asan/fuzzers.txt
  rm -rf "$work"
  [ -s "$RESULTS/fuzz.plain" ] || { echo "fuzz: no targets in build-asan/fuzzers.txt"; exit 1; }
  [ $failed -eq 0 ]
}

bench_smoke() {
  bash bench/report.sh --smoke --results "$RESULTS/bench.plain" build
}

tier install install
tier build-release build_release
if [ $QUICK -eq 0 ]; then
  tier lint lint
  tier build-sanitize build_sanitize
fi
tier unit unit
if [ $QUICK -eq 0 ]; then
  tier tsan tsan
  tier conformance conformance
  tier fuzz fuzz
  tier bench-smoke bench_smoke
fi
finish
