// EDID 1.4 base blocks (VESA E-EDID) generated for a scanout's configured mode, answered to GET_EDID
// (virtio 1.2 §5.7.6.8, VIRTIO_GPU_F_EDID). The preferred mode is a detailed timing descriptor with
// CVT reduced-blanking (v1) timings; the VESA established modes 640x480, 800x600 and 1024x768 at 60 Hz
// that fit inside it are listed too, so a guest can switch modes. A range-limits descriptor covers the
// preferred mode and the monitor name is "Canopy-<scanout>".
#pragma once

#include <array>
#include <cstdint>

#include "canopy/base/result.h"

namespace canopy::gpu {

inline constexpr uint32_t kEdidSize = 128;
// A detailed timing descriptor holds 12-bit sizes and a 16-bit clock in 10 kHz units.
inline constexpr uint32_t kMaxModeDimension = 4095;

struct DisplayMode {
  uint32_t width = 1024;
  uint32_t height = 768;
  uint32_t refresh_hz = 60;
};

// CVT reduced-blanking timings of a mode.
struct ModeTiming {
  uint32_t pixel_clock_khz = 0;
  uint32_t h_total = 0, h_front = 0, h_sync = 0;
  uint32_t v_total = 0, v_front = 0, v_sync = 0;
};

// Errors: kInvalidArgument for a zero or oversized dimension, a refresh rate outside [1, 240] or a
// pixel clock that does not fit an EDID detailed timing.
Result<ModeTiming> cvt_reduced_blanking(const DisplayMode& mode);
Result<std::array<uint8_t, kEdidSize>> make_edid(const DisplayMode& mode, uint32_t scanout);

}  // namespace canopy::gpu
