// What the compositor shows where: outputs (size, refresh, criticality) and, per output, layers that
// place one VM scanout each (source crop, destination rectangle, z-order, alpha, rotation), plus the
// geometry that maps a layer's destination pixels back to its source frame.
//
// Geometry: a layer shows the source rectangle `src` of its frame (the crop; width 0 means the whole
// frame), rotated clockwise by `rotation`, scaled to fill `dst` on the output. dst_to_src() gives the
// affine map from a point in dst (relative to dst's top-left corner, in output pixels; pixel centres
// at +0.5) to source pixel coordinates; renderers sample there (nearest for 1:1, bilinear otherwise).
//
// Criticality is the manifest's (canopy/config/criticality.h): safety > high > normal > low. An output's
// criticality is given or else the most critical of its layers' VMs.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "canopy/base/result.h"
#include "canopy/config/criticality.h"

namespace canopy::config {
struct Manifest;
}

namespace canopy::display {

using config::at_least;
using config::Criticality;

enum class Rotation : uint16_t { k0 = 0, k90 = 90, k180 = 180, k270 = 270 };
enum class OutputKind { kHeadless, kWindow, kKms };
const char* to_string(OutputKind k);

struct Rect {
  int32_t x = 0, y = 0;
  uint32_t width = 0, height = 0;
  bool empty() const { return width == 0 || height == 0; }
  bool operator==(const Rect&) const = default;
};

// The stale-frame watchdog a safety VM's layers get when the manifest does not set stale_ms.
inline constexpr uint32_t kDefaultSafetyStaleMs = 250;

struct LayerSpec {
  std::string vm;
  uint32_t scanout = 0;
  Rect src;  // crop in frame pixels; width 0: the whole frame
  Rect dst;  // on the output
  int32_t z = 0;
  double alpha = 1.0;
  Rotation rotation = Rotation::k0;
  Criticality criticality = Criticality::kNormal;  // the VM's
  uint32_t stale_ms = 0;                           // 0: no stale-frame watchdog
};

struct OutputSpec {
  std::string name;
  uint32_t width = 0, height = 0;
  uint32_t refresh_hz = 60;
  OutputKind kind = OutputKind::kHeadless;
  Criticality criticality = Criticality::kNormal;
  std::vector<LayerSpec> layers;  // back to front (z ascending, then manifest order)
};

struct Layout {
  std::vector<OutputSpec> outputs;
  const OutputSpec* find(std::string_view name) const;
};

// The manifest's displays and layout entries as a Layout (the manifest has been validated by its
// loader). Defaults applied: output criticality, stale_ms for safety VMs, z order.
Layout layout_from_manifest(const config::Manifest& m);

// p' = (a*x + b*y + e, c*x + d*y + f)
struct Affine {
  double a = 1, b = 0, c = 0, d = 1, e = 0, f = 0;
  struct Point {
    double x, y;
  };
  Point apply(double x, double y) const { return {a * x + b * y + e, c * x + d * y + f}; }
};

// The crop actually used for a frame of frame_w x frame_h: the layer's crop clamped to the frame
// (the whole frame when no crop is set); empty when nothing of the crop lies inside the frame.
Rect resolved_src(const LayerSpec& l, uint32_t frame_w, uint32_t frame_h);
// The map from dst-relative output coordinates to source pixel coordinates for that crop.
Affine dst_to_src(const LayerSpec& l, const Rect& src);
// A layer drawing `piece` (a rectangle in the frame's pixels, e.g. the guest's cursor) with its own
// image of piece's size, exactly where that part of the frame appears on the output: the part of piece
// inside the crop `src`, with the layer's rotation, scale and alpha; its src is relative to piece's
// image. None when nothing of piece is visible (outside the crop, or under a pixel on the output).
std::optional<LayerSpec> sub_layer(const LayerSpec& l, const Rect& src, const Rect& piece);
// Whether the map is a pure translation by whole pixels (renderers may copy instead of filtering).
bool is_integer_translation(const Affine& m);

}  // namespace canopy::display
