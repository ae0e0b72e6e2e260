#!/usr/bin/env bash
# The import graph of docs/architecture.md, checked (the lint tier runs this):
#
#   demos, tests, bench                        may use anything below
#   gpu   audio   display   hypervisor          peers: never one another
#   guest-drivers                              protocol, not the device folders
#   config (the manifest, back-end options with their printer and parser, Criticality)
#   protocol (wire formats: virtio-gpu, virtio-snd, the scanout channel)
#   transport (guest memory, virtqueues, vhost-user, virtio-mmio, partition messages)
#   core/buffers   core/base
#
# 1. Every #include "canopy/X/..." in a folder's sources names a folder that folder may use.
# 2. Every canopy_* library a folder's CMake targets link (DEPS, PUBLIC_DEPS) is one it may use and one
#    whose headers its sources include: no target links a library it does not use.
# Usage: scripts/check-layers.sh   (from anywhere; reads the sources git tracks)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# Folder -> the include roots (canopy/<root>/) it may use, its own included.
declare -A allowed=(
  [core/base]="base"
  [core/buffers]="base buffers"
  [transport]="base buffers transport"
  [protocol]="base buffers protocol"
  [config]="base buffers protocol config"
  [gpu]="base buffers transport protocol config gpu"
  [audio]="base buffers transport protocol config audio"
  [display]="base buffers transport protocol config display"
  [hypervisor]="base buffers transport protocol config hypervisor"
  [guest-drivers]="base buffers transport protocol guest"
)
# Include root -> the folder that holds it.
declare -A home=(
  [base]=core/base [buffers]=core/buffers [transport]=transport [protocol]=protocol [config]=config
  [gpu]=gpu [audio]=audio [display]=display [hypervisor]=hypervisor [guest]=guest-drivers
)

fail=0
for folder in "${!allowed[@]}"; do
  [ -d "$folder" ] || { echo "layers: folder $folder is missing" >&2; fail=1; continue; }
  ok=" ${allowed[$folder]} "
  # 1. includes
  while IFS= read -r hit; do
    file=${hit%%:*}
    root=$(sed -E 's|.*#include "canopy/([a-z_-]+)/.*|\1|' <<<"$hit")
    # Tests may use the shared test helpers (tests/support).
    if [ "$root" = test_support ] && [[ "$file" == *_test.cc ]]; then continue; fi
    case "$ok" in
      *" $root "*) ;;
      *)
        echo "layers: $file includes canopy/$root/ (${home[$root]:-?}), which $folder may not use" >&2
        fail=1
        ;;
    esac
  done < <(git ls-files "$folder" | grep -E '\.(cc|h)$' | xargs -r grep -H -E '^#include "canopy/[a-z_-]+/' || true)
done

# 2. links: library name -> its folder (where canopy_library / add_library defines it)
declare -A lib_home=()
while IFS=: read -r file rest; do
  name=$(sed -E 's/.*(canopy_library|add_library)\(([A-Za-z0-9_]+).*/\2/' <<<"$rest")
  dir=$(dirname "$file")
  case "$dir" in core/*) dir=$(cut -d/ -f1-2 <<<"$dir") ;; *) dir=${dir%%/*} ;; esac
  lib_home[$name]=$dir
done < <(git ls-files '*CMakeLists.txt' '*.cmake' | xargs grep -H -E '^\s*(canopy_library|add_library)\(canopy_' || true)

root_of() {  # folder -> its include root
  local r
  for r in "${!home[@]}"; do
    if [ "${home[$r]}" = "$1" ]; then
      echo "$r"
      return 0
    fi
  done
  return 0
}
for folder in "${!allowed[@]}"; do
  ok=" ${allowed[$folder]} "
  deps=$(git ls-files "$folder" | grep -E '(CMakeLists\.txt|\.cmake)$' | xargs -r cat |
    tr '\n' ' ' | grep -oE '(DEPS|PUBLIC_DEPS)[^)]*' | grep -oE 'canopy_[a-z_]+' | sort -u || true)
  for dep in $deps; do
    dhome=${lib_home[$dep]:-}
    [ -n "$dhome" ] || continue  # a test-support target (canopy_transport_testing, canopy_test_support)
    [ "$dhome" = "$folder" ] && continue
    [ "$dhome" = tests ] && continue  # tests/support: helpers for test programs
    droot=$(root_of "$dhome")
    case "$ok" in
      *" $droot "*) ;;
      *)
        echo "layers: $folder links $dep ($dhome), which it may not use" >&2
        fail=1
        continue
        ;;
    esac
    if ! git ls-files "$folder" | grep -E '\.(cc|h)$' | xargs -r grep -q -E "^#include \"canopy/$droot/"; then
      echo "layers: $folder links $dep but includes nothing of canopy/$droot/" >&2
      fail=1
    fi
  done
done

if [ $fail -ne 0 ]; then
  echo "layers: the import graph breaks docs/architecture.md's layers (see above)" >&2
  exit 1
fi
echo "layers: ${#allowed[@]} folders, includes and links within their layers"
