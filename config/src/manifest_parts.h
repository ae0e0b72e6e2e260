// The manifest's parts (internal to config/): each section's schema (manifest_sections.cc) and the
// checks across sections (manifest_checks.cc), which load_manifest_string (manifest.cc) runs in turn.
#pragma once

#include <string>
#include <unordered_map>
#include <vector>

#include "toml_access.h"

namespace canopy::config::detail {

// A [[vm]] table and its start_after array, kept for the boot-order check.
struct VmSource {
  const toml::table* table = nullptr;
  const toml::array* start_after = nullptr;
};

// --- sections (manifest_sections.cc) ----------------------------------------------------------------------

GpuConfig parse_gpu(Ctx& c, const toml::table& t, const std::string& path);
SndConfig parse_snd(Ctx& c, const toml::table& t, const std::string& path);
VmConfig parse_vm(Ctx& c, const toml::table& t, const std::string& path, VmSource& src);
DisplayConfig parse_display(Ctx& c, const toml::table& t, const std::string& path);
LayoutEntry parse_layout(Ctx& c, const toml::table& t, const std::string& path);
AudioRoute parse_route(Ctx& c, const toml::table& t, const std::string& path);

// An array of tables at the top level (or under [audio]), capped.
template <typename F>
void section_array(Ctx& c, const toml::node& n, const std::string& path, size_t max, F&& f) {
  const auto* a = n.as_array();
  if (a == nullptr) {
    c.add(n, path, std::string("expected an array of tables ([[") + path + "]]), got " + type_name(n.type()));
    return;
  }
  if (a->size() > max) {
    c.add(n, path, std::to_string(a->size()) + " entries; at most " + std::to_string(max) + " allowed");
    return;
  }
  each_table(c, *a, path, f);
}

// --- checks across sections (manifest_checks.cc) ------------------------------------------------------------

void check_start_after(Ctx& c, Manifest& m, const std::vector<VmSource>& srcs);
void check_layouts(Ctx& c, const Manifest& m, const std::vector<const toml::table*>& srcs);
void check_routes(Ctx& c, const Manifest& m, const std::vector<const toml::table*>& srcs);

template <typename T>
void check_unique_names(Ctx& c, const std::vector<T>& items, const std::vector<const toml::table*>& srcs,
                        const char* section, const char* what) {
  std::unordered_map<std::string, size_t> seen;
  for (size_t i = 0; i < items.size(); ++i) {
    if (items[i].name.empty()) continue;
    auto [it, fresh] = seen.emplace(items[i].name, i);
    if (!fresh)
      c.add(*srcs[i]->get("name"), sub(idx(section, i), "name"),
            std::string("duplicate ") + what + " name " + quote(items[i].name) + " (first at " +
                idx(section, it->second) + ")");
  }
}

}  // namespace canopy::config::detail
