// VM manifest loader: TOML (toml++, header-only, no exceptions) -> plain structs, with every error
// collected. The parts: toml_access.h (toml++ and typed access), manifest_sections.cc (each section's
// schema), manifest_checks.cc (cross references and boot order).
#include "canopy/config/manifest.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "manifest_parts.h"

namespace canopy::config {
namespace {

// Top-level sections reserved for later versions of the schema: named so that a manifest written for a newer
// canopy-vmm fails with a clear message instead of "unknown key".
constexpr std::string_view kReservedSections[] = {"host",    "network",  "storage", "input",
                                                  "console", "watchdog", "health",  "usb"};

}  // namespace

using namespace detail;  // NOLINT(google-build-using-namespace): the loader's own parts

const VmConfig* Manifest::find_vm(std::string_view name) const {
  for (const auto& v : vms)
    if (v.name == name) return &v;
  return nullptr;
}

const DisplayConfig* Manifest::find_display(std::string_view name) const {
  for (const auto& d : displays)
    if (d.name == name) return &d;
  return nullptr;
}

std::string ManifestError::to_string() const {
  // Appends only (GCC 12 warns of an overlapping memcpy, wrongly, for "x" + std::string here).
  std::string s = file;
  if (line != 0) {
    s += ':';
    s += std::to_string(line);
    s += ':';
    s += std::to_string(column);
  }
  s += ": ";
  if (!key_path.empty()) {
    s += key_path;
    s += ": ";
  }
  s += message;
  return s;
}

LoadResult load_manifest_string(std::string_view text, std::string_view name) {
  Ctx c(name);
  LoadResult out;
  if (text.size() > kMaxManifestBytes) {
    c.add_at(0, 0, "", "manifest is larger than " + std::to_string(kMaxManifestBytes) + " bytes");
    out.errors = c.take();
    return out;
  }
  if (auto bad = find_unsupported_code_point(text)) {
    char cp[16];
    std::snprintf(cp, sizeof cp, "U+%04X", static_cast<unsigned>(bad->cp));
    c.add_at(bad->line, bad->column, "",
             std::string("character ") + cp +
                 " is not supported by this build's TOML parser outside \\u escapes (toml++ bug, "
                 "docs/manifest.md)");
    out.errors = c.take();
    return out;
  }
  toml::parse_result parsed = toml::parse(text, name);
  if (!parsed) {
    const auto& e = parsed.error();
    std::string desc(e.description());
    for (char& ch : desc)
      if (static_cast<unsigned char>(ch) < 0x20) ch = ' ';
    c.add(e.source(), "", "TOML syntax error: " + desc);
    out.errors = c.take();
    return out;
  }
  const toml::table& root = parsed.table();

  Manifest m;
  std::vector<VmSource> vm_srcs;
  std::vector<const toml::table*> vm_tables, display_srcs, layout_srcs, route_srcs;
  for (auto&& [k, v] : root) {
    const std::string_view key = k.str();
    const std::string path = key_segment(key);
    if (key == "version") {
      if (auto ver = node_int(c, v, path, 0, INT32_MAX)) {
        if (*ver != 1) c.add(v, path, std::to_string(*ver) + " is not supported (this canopy-vmm reads version 1)");
      }
    } else if (key == "vm") {
      section_array(c, v, path, kMaxVms, [&](const toml::table& t, const std::string& p, size_t) {
        VmSource src;
        m.vms.push_back(parse_vm(c, t, p, src));
        vm_srcs.push_back(src);
        vm_tables.push_back(&t);
      });
    } else if (key == "display") {
      section_array(c, v, path, kMaxDisplays, [&](const toml::table& t, const std::string& p, size_t) {
        m.displays.push_back(parse_display(c, t, p));
        display_srcs.push_back(&t);
      });
    } else if (key == "layout") {
      section_array(c, v, path, kMaxLayouts, [&](const toml::table& t, const std::string& p, size_t) {
        m.layouts.push_back(parse_layout(c, t, p));
        layout_srcs.push_back(&t);
      });
    } else if (key == "audio") {
      if (const auto* at = node_table(c, v, path)) {
        Reader ar(c, *at, path, {"route"});
        if (const auto* rn = at->get("route")) {
          section_array(c, *rn, ar.at("route"), kMaxAudioRoutes,
                        [&](const toml::table& t, const std::string& p, size_t) {
                          m.audio_routes.push_back(parse_route(c, t, p));
                          route_srcs.push_back(&t);
                        });
        }
      }
    } else if (std::find(std::begin(kReservedSections), std::end(kReservedSections), key) !=
               std::end(kReservedSections)) {
      c.add(k.source(), path, "section reserved for a future version of the manifest (not supported yet)");
    } else {
      c.add(k.source(), path, "unknown key (known: version, vm, display, layout, audio)");
    }
  }
  if (root.get("vm") == nullptr) c.add_at(1, 1, "vm", "no VMs: add at least one [[vm]] table");

  check_unique_names(c, m.vms, vm_tables, "vm", "VM");
  check_unique_names(c, m.displays, display_srcs, "display", "display");
  check_start_after(c, m, vm_srcs);
  check_layouts(c, m, layout_srcs);
  check_routes(c, m, route_srcs);

  if (c.ok()) {
    out.manifest = std::move(m);
  } else {
    out.errors = c.take();
  }
  return out;
}

LoadResult load_manifest_file(const std::string& path) {
  LoadResult out;
  auto fail = [&](std::string msg) {
    out.errors.push_back(ManifestError{path, 0, 0, "", std::move(msg)});
    return std::move(out);
  };
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) return fail(std::string("cannot open: ") + std::strerror(errno));
  std::string text;
  char buf[65536];
  size_t got = 0;
  while ((got = std::fread(buf, 1, sizeof buf, f)) > 0) {
    text.append(buf, got);
    if (text.size() > kMaxManifestBytes) break;
  }
  const bool err = std::ferror(f) != 0;
  const int saved = errno;
  std::fclose(f);
  if (err) return fail(std::string("cannot read: ") + std::strerror(saved));
  return load_manifest_string(text, path);
}

}  // namespace canopy::config
