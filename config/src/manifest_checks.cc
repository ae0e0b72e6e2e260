// The manifest's checks across sections: start_after references and boot-order cycles, layout entries
// against displays, VMs and scanouts, audio routes against VMs and their streams.
#include <string>

#include "manifest_parts.h"

namespace canopy::config::detail {

// --- cross references -------------------------------------------------------------------------------------

void check_start_after(Ctx& c, Manifest& m, const std::vector<VmSource>& srcs) {
  const size_t n = m.vms.size();
  std::unordered_map<std::string, size_t> by_name;
  for (size_t i = 0; i < n; ++i)
    if (!m.vms[i].name.empty()) by_name.emplace(m.vms[i].name, i);

  // deps[i]: (vm index, start_after element index) for every resolvable entry.
  std::vector<std::vector<std::pair<size_t, size_t>>> deps(n);
  for (size_t i = 0; i < n; ++i) {
    if (srcs[i].start_after == nullptr) continue;
    const auto& list = m.vms[i].start_after;
    for (size_t j = 0; j < list.size(); ++j) {
      const std::string p = idx(sub(idx("vm", i), "start_after"), j);
      const toml::node& node = (*srcs[i].start_after)[j];
      auto it = by_name.find(list[j]);
      if (it == by_name.end()) {
        c.add(node, p, "unknown VM " + quote(list[j]));
        continue;
      }
      if (std::find(list.begin(), list.begin() + static_cast<std::ptrdiff_t>(j), list[j]) !=
          list.begin() + static_cast<std::ptrdiff_t>(j)) {
        c.add(node, p, "duplicate entry " + quote(list[j]));
        continue;
      }
      deps[i].emplace_back(it->second, j);
    }
  }

  // Depth-first search for cycles (n <= kMaxVms, so recursion depth is bounded).
  enum class Color { kWhite, kGray, kBlack };
  std::vector<Color> color(n, Color::kWhite);
  std::vector<size_t> stack;
  bool cyclic = false;
  auto visit = [&](auto&& self, size_t v) -> void {
    color[v] = Color::kGray;
    stack.push_back(v);
    for (auto [d, j] : deps[v]) {
      if (color[d] == Color::kGray) {
        cyclic = true;
        std::string cycle;
        auto from = std::find(stack.begin(), stack.end(), d);
        for (auto it = from; it != stack.end(); ++it) cycle += m.vms[*it].name + " -> ";
        cycle += m.vms[d].name;
        c.add((*srcs[v].start_after)[j], idx(sub(idx("vm", v), "start_after"), j), "start_after cycle: " + cycle);
      } else if (color[d] == Color::kWhite) {
        self(self, d);
      }
    }
    stack.pop_back();
    color[v] = Color::kBlack;
  };
  for (size_t i = 0; i < n; ++i)
    if (color[i] == Color::kWhite) visit(visit, i);
  if (cyclic) return;

  // Boot order: repeatedly the first VM (file order) whose start_after VMs are all placed.
  std::vector<bool> placed(n, false);
  m.boot_order.clear();
  while (m.boot_order.size() < n) {
    for (size_t i = 0; i < n; ++i) {
      if (placed[i]) continue;
      if (std::all_of(deps[i].begin(), deps[i].end(), [&](auto dj) { return placed[dj.first]; })) {
        placed[i] = true;
        m.boot_order.push_back(i);
        break;
      }
    }
  }
}

void check_layouts(Ctx& c, const Manifest& m, const std::vector<const toml::table*>& srcs) {
  for (size_t i = 0; i < m.layouts.size(); ++i) {
    const LayoutEntry& l = m.layouts[i];
    const toml::table& t = *srcs[i];
    const std::string p = idx("layout", i);
    const DisplayConfig* d = l.display.empty() ? nullptr : m.find_display(l.display);
    if (!l.display.empty() && d == nullptr)
      c.add(*t.get("display"), sub(p, "display"), "unknown display " + quote(l.display));
    const VmConfig* vm = l.vm.empty() ? nullptr : m.find_vm(l.vm);
    if (!l.vm.empty() && vm == nullptr) c.add(*t.get("vm"), sub(p, "vm"), "unknown VM " + quote(l.vm));
    if (vm != nullptr) {
      if (!vm->gpu) {
        c.add(*t.get("vm"), sub(p, "vm"), "VM " + quote(l.vm) + " has no gpu");
      } else if (l.scanout >= vm->gpu->scanouts.size()) {
        const toml::node* sn = t.get("scanout");
        c.add(sn ? sn->source() : t.source(), sub(p, "scanout"),
              "VM " + quote(l.vm) + " has " + std::to_string(vm->gpu->scanouts.size()) + " scanout(s); index " +
                  std::to_string(l.scanout) + " does not exist");
      }
    }
    if (vm != nullptr && vm->gpu && l.scanout < vm->gpu->scanouts.size() && l.crop.width != 0 && l.crop.height != 0) {
      const Scanout& so = vm->gpu->scanouts[l.scanout];
      if (uint64_t{l.crop.x} + l.crop.width > so.width || uint64_t{l.crop.y} + l.crop.height > so.height)
        c.add(*t.get("crop"), sub(p, "crop"),
              "crop " + std::to_string(l.crop.x) + "," + std::to_string(l.crop.y) + " " + std::to_string(l.crop.width) +
                  "x" + std::to_string(l.crop.height) + " does not fit scanout " + std::to_string(l.scanout) +
                  " of VM " + quote(l.vm) + " (" + std::to_string(so.width) + "x" + std::to_string(so.height) + ")");
    }
    if (d != nullptr && l.width != 0 && l.height != 0 &&
        (uint64_t{l.x} + l.width > d->width || uint64_t{l.y} + l.height > d->height)) {
      c.add(t, p,
            "rectangle " + std::to_string(l.x) + "," + std::to_string(l.y) + " " + std::to_string(l.width) + "x" +
                std::to_string(l.height) + " does not fit display " + quote(d->name) + " (" + std::to_string(d->width) +
                "x" + std::to_string(d->height) + ")");
    }
  }
}

void check_routes(Ctx& c, const Manifest& m, const std::vector<const toml::table*>& srcs) {
  for (size_t i = 0; i < m.audio_routes.size(); ++i) {
    const AudioRoute& a = m.audio_routes[i];
    const toml::table& t = *srcs[i];
    const std::string p = idx("audio.route", i);
    if (a.vm.empty()) continue;
    const VmConfig* vm = m.find_vm(a.vm);
    if (vm == nullptr) {
      c.add(*t.get("vm"), sub(p, "vm"), "unknown VM " + quote(a.vm));
      continue;
    }
    if (a.stream.empty()) continue;
    const bool found = vm->snd && std::any_of(vm->snd->streams.begin(), vm->snd->streams.end(),
                                              [&](const SndStream& s) { return s.name == a.stream; });
    if (!found)
      c.add(*t.get("stream"), sub(p, "stream"), "VM " + quote(a.vm) + " has no snd stream " + quote(a.stream));
  }
}

}  // namespace canopy::config::detail
