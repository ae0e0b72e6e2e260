// libFuzzer target: arbitrary bytes as a VM manifest. The loader must never crash, hang or leak; whatever
// it returns must be self-consistent (a manifest xor errors, every error printable).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "canopy/config/manifest.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace canopy::config;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  LoadResult r = load_manifest_string(text, "fuzz.toml");
  if (r.ok() == !r.errors.empty()) std::abort();
  if (r.errors.size() > kMaxErrors + 1) std::abort();
  for (const auto& e : r.errors) {
    if (e.to_string().find('\n') != std::string::npos) std::abort();  // one error, one line
  }
  if (r.ok()) {
    if (r.manifest->boot_order.size() != r.manifest->vms.size()) std::abort();
    if (r.manifest->vms.empty() || r.manifest->vms.size() > kMaxVms) std::abort();
  }
  return 0;
}
