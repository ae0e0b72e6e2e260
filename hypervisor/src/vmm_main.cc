// canopy-vmm: the VM manager. For now only `--check FILE` (validate a manifest) is implemented.
#include <cstdio>
#include <cstring>
#include <string>

#include "canopy/hypervisor/manifest.h"

namespace {

constexpr const char* kUsage =
    "usage: canopy-vmm --check FILE   check a VM manifest (docs/manifest.md) and exit\n"
    "       canopy-vmm --help         this text\n"
    "       canopy-vmm FILE           run the VMs of a manifest (not implemented yet)\n";

int check(const std::string& path) {
  const canopy::hypervisor::LoadResult r = canopy::hypervisor::load_manifest_file(path);
  if (!r.ok()) {
    for (const auto& e : r.errors) std::fprintf(stderr, "%s\n", e.to_string().c_str());
    return 1;
  }
  std::printf("%s: ok (%zu VMs, %zu displays)\n", path.c_str(), r.manifest->vms.size(),
              r.manifest->displays.size());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 2 && (std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0)) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  if (argc == 3 && std::strcmp(argv[1], "--check") == 0) return check(argv[2]);
  if (argc == 2 && argv[1][0] != '-') {
    std::fprintf(stderr, "canopy-vmm: running VMs is not implemented yet (try --check %s)\n", argv[1]);
    return 2;
  }
  std::fprintf(stderr, "canopy-vmm: not implemented yet or bad arguments\n%s", kUsage);
  return 2;
}
