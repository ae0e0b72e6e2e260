#!/usr/bin/env bash
# Canopy's source gates (the lint tier of scripts/run-tests.sh):
#   1. clang-format-19 in check mode over every C and C++ file git tracks (.clang-format);
#   2. the import graph of docs/architecture.md (scripts/check-layers.sh);
#   3. clang-tidy-19 with the curated checks of .clang-tidy (warnings are errors) over the project's
#      non-test sources: libraries, programs and tools (tests, fuzz targets and benchmarks are formatted
#      but not tidied), with the compile commands of BUILD_DIR.
# Usage: scripts/lint.sh [BUILD_DIR]   (default build; it must have been configured)
# Fix formatting with: git ls-files '*.cc' '*.h' '*.c' | xargs clang-format-19 -i
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BUILD="${1:-build}"
JOBS="${CANOPY_JOBS:-$(nproc)}"
[ -f "$BUILD/compile_commands.json" ] || { echo "lint: no $BUILD/compile_commands.json (configure first)" >&2; exit 1; }

echo "lint: clang-format (check mode)"
fmt_rc=0
git ls-files -z '*.cc' '*.h' '*.c' | xargs -0 -n 32 -P "$JOBS" clang-format-19 --dry-run --Werror || fmt_rc=$?
[ $fmt_rc -eq 0 ] || echo "lint: clang-format found files to reformat (see above)" >&2

echo "lint: layers (scripts/check-layers.sh)"
layers_rc=0
scripts/check-layers.sh || layers_rc=$?

echo "lint: clang-tidy (.clang-tidy, warnings are errors)"
tidy_log=$(mktemp)
trap 'rm -f "$tidy_log"' EXIT
# Sources compiled into libraries and programs; tests, fuzz targets and benchmarks are left out.
git ls-files '*.cc' | grep -v -E '_test\.cc$|/fuzz/|^bench/|^tests/' >"$tidy_log.files"
tidy_rc=0
xargs -a "$tidy_log.files" -n 4 -P "$JOBS" clang-tidy-19 -p "$BUILD" --quiet >"$tidy_log" 2>/dev/null || tidy_rc=$?
rm -f "$tidy_log.files"
if [ $tidy_rc -ne 0 ] || grep -q -E ': (error|warning): ' "$tidy_log"; then
  grep -E -A3 ': (error|warning): ' "$tidy_log" | head -n 200
  echo "lint: clang-tidy: $(grep -c -E ': (error|warning): ' "$tidy_log") finding(s)" >&2
  tidy_rc=1
fi
echo "lint: $(git ls-files '*.cc' '*.h' '*.c' | wc -l) files format-checked, clang-tidy over the non-test sources"
[ $fmt_rc -eq 0 ] && [ $layers_rc -eq 0 ] && [ $tidy_rc -eq 0 ]
