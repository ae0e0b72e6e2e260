#include "canopy/display/layout.h"

#include <algorithm>
#include <cmath>
#include <optional>

#include "canopy/config/manifest.h"

namespace canopy::display {

const char* to_string(OutputKind k) {
  switch (k) {
    case OutputKind::kHeadless: return "headless";
    case OutputKind::kWindow: return "window";
    case OutputKind::kKms: return "kms";
  }
  return "?";
}

const OutputSpec* Layout::find(std::string_view name) const {
  for (const auto& o : outputs)
    if (o.name == name) return &o;
  return nullptr;
}

namespace {

OutputKind from_manifest(config::DisplayOutput o) {
  switch (o) {
    case config::DisplayOutput::kKms: return OutputKind::kKms;
    case config::DisplayOutput::kWindow: return OutputKind::kWindow;
    case config::DisplayOutput::kHeadless: return OutputKind::kHeadless;
  }
  return OutputKind::kHeadless;
}

}  // namespace

Layout layout_from_manifest(const config::Manifest& m) {
  Layout out;
  for (const auto& d : m.displays) {
    OutputSpec o;
    o.name = d.name;
    o.width = d.width;
    o.height = d.height;
    o.refresh_hz = d.refresh_hz;
    o.kind = from_manifest(d.output);
    Criticality most = Criticality::kLow;
    for (const auto& l : m.layouts) {
      if (l.display != d.name) continue;
      const config::VmConfig* vm = m.find_vm(l.vm);
      LayerSpec s;
      s.vm = l.vm;
      s.scanout = l.scanout;
      s.src = Rect{int32_t(l.crop.x), int32_t(l.crop.y), l.crop.width, l.crop.height};
      s.dst = Rect{int32_t(l.x), int32_t(l.y), l.width, l.height};
      s.z = l.z;
      s.alpha = l.alpha;
      s.rotation = Rotation(l.rotation);
      s.criticality = vm ? vm->criticality : Criticality::kNormal;
      s.stale_ms = l.stale_ms ? *l.stale_ms : (s.criticality == Criticality::kSafety ? kDefaultSafetyStaleMs : 0);
      if (at_least(s.criticality, most)) most = s.criticality;
      o.layers.push_back(std::move(s));
    }
    // Back to front by z, ties in file order (a sort on (z, index): std::stable_sort trips clang's
    // deprecation warning on libstdc++ 12's temporary buffer).
    std::vector<std::pair<int32_t, size_t>> order;
    order.reserve(o.layers.size());
    for (size_t i = 0; i < o.layers.size(); ++i) order.emplace_back(o.layers[i].z, i);
    std::sort(order.begin(), order.end());
    std::vector<LayerSpec> sorted;
    sorted.reserve(order.size());
    for (const auto& [z, i] : order) sorted.push_back(std::move(o.layers[i]));
    o.layers = std::move(sorted);
    o.criticality = d.criticality ? *d.criticality : (o.layers.empty() ? Criticality::kNormal : most);
    out.outputs.push_back(std::move(o));
  }
  return out;
}

Rect resolved_src(const LayerSpec& l, uint32_t fw, uint32_t fh) {
  if (l.src.empty()) return Rect{0, 0, fw, fh};
  const int64_t x0 = std::max<int64_t>(l.src.x, 0), y0 = std::max<int64_t>(l.src.y, 0);
  const int64_t x1 = std::min<int64_t>(int64_t(l.src.x) + l.src.width, fw);
  const int64_t y1 = std::min<int64_t>(int64_t(l.src.y) + l.src.height, fh);
  if (x1 <= x0 || y1 <= y0) return Rect{};
  return Rect{int32_t(x0), int32_t(y0), uint32_t(x1 - x0), uint32_t(y1 - y0)};
}

Affine dst_to_src(const LayerSpec& l, const Rect& src) {
  const double W = l.dst.width, H = l.dst.height;
  const double sx = src.x, sy = src.y, sw = src.width, sh = src.height;
  Affine m;
  switch (l.rotation) {
    case Rotation::k0: m = {sw / W, 0, 0, sh / H, sx, sy}; break;
    case Rotation::k90: m = {0, sw / H, -sh / W, 0, sx, sy + sh}; break;
    case Rotation::k180: m = {-sw / W, 0, 0, -sh / H, sx + sw, sy + sh}; break;
    case Rotation::k270: m = {0, -sw / H, sh / W, 0, sx + sw, sy}; break;
  }
  return m;
}

std::optional<LayerSpec> sub_layer(const LayerSpec& l, const Rect& src, const Rect& piece) {
  const int64_t x0 = std::max<int64_t>(piece.x, src.x), y0 = std::max<int64_t>(piece.y, src.y);
  const int64_t x1 = std::min<int64_t>(int64_t(piece.x) + piece.width, int64_t(src.x) + src.width);
  const int64_t y1 = std::min<int64_t>(int64_t(piece.y) + piece.height, int64_t(src.y) + src.height);
  if (x1 <= x0 || y1 <= y0 || l.dst.empty()) return std::nullopt;
  // Where the visible part's corners land: the inverse of dst_to_src (axis aligned: a scaled rotation).
  const Affine m = dst_to_src(l, src);
  const double det = m.a * m.d - m.b * m.c;
  if (det == 0) return std::nullopt;
  auto to_dst = [&](double u, double v) {
    const double du = u - m.e, dv = v - m.f;
    return Affine::Point{(m.d * du - m.b * dv) / det, (-m.c * du + m.a * dv) / det};
  };
  const auto p = to_dst(double(x0), double(y0)), q = to_dst(double(x1), double(y1));
  const int64_t dx0 = std::llround(std::min(p.x, q.x)), dx1 = std::llround(std::max(p.x, q.x));
  const int64_t dy0 = std::llround(std::min(p.y, q.y)), dy1 = std::llround(std::max(p.y, q.y));
  if (dx1 <= dx0 || dy1 <= dy0) return std::nullopt;  // smaller than a pixel on the output
  LayerSpec s = l;
  s.src = Rect{int32_t(x0 - piece.x), int32_t(y0 - piece.y), uint32_t(x1 - x0), uint32_t(y1 - y0)};
  s.dst = Rect{int32_t(l.dst.x + dx0), int32_t(l.dst.y + dy0), uint32_t(dx1 - dx0), uint32_t(dy1 - dy0)};
  return s;
}

bool is_integer_translation(const Affine& m) {
  return m.a == 1 && m.b == 0 && m.c == 0 && m.d == 1 && m.e == std::floor(m.e) && m.f == std::floor(m.f);
}

}  // namespace canopy::display
