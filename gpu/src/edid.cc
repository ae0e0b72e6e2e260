#include "canopy/gpu/edid.h"

#include <cmath>
#include <cstdio>
#include <cstring>

namespace canopy::gpu {
namespace {

// Manufacturer id "CNP": three 5-bit letters, big-endian.
constexpr uint16_t kManufacturer = (('C' - '@') << 10) | (('N' - '@') << 5) | ('P' - '@');

uint32_t vsync_width(uint32_t w, uint32_t h) {
  // CVT: the vertical sync width encodes the aspect ratio.
  if (w * 3 == h * 4) return 4;
  if (w * 9 == h * 16) return 5;
  if (w * 10 == h * 16) return 6;
  if (w * 4 == h * 5) return 7;
  if (w * 9 == h * 15) return 7;
  return 10;
}

void chromaticity(uint8_t* p) {
  // sRGB primaries and D65 white, 10-bit binary fractions.
  const double xy[8] = {0.640, 0.330, 0.300, 0.600, 0.150, 0.060, 0.3127, 0.3290};
  uint16_t v[8];
  for (int i = 0; i < 8; ++i) v[i] = uint16_t(std::lround(xy[i] * 1024.0));
  p[0] = uint8_t((v[0] & 3) << 6 | (v[1] & 3) << 4 | (v[2] & 3) << 2 | (v[3] & 3));
  p[1] = uint8_t((v[4] & 3) << 6 | (v[5] & 3) << 4 | (v[6] & 3) << 2 | (v[7] & 3));
  for (int i = 0; i < 8; ++i) p[2 + i] = uint8_t(v[i] >> 2);
}

void text_descriptor(uint8_t* d, uint8_t tag, const char* text) {
  d[3] = tag;
  size_t n = std::strlen(text);
  if (n > 13) n = 13;
  std::memcpy(d + 5, text, n);
  if (n < 13) {
    d[5 + n] = 0x0a;
    for (size_t i = n + 1; i < 13; ++i) d[5 + i] = 0x20;
  }
}

}  // namespace

Result<ModeTiming> cvt_reduced_blanking(const DisplayMode& m) {
  if (m.width == 0 || m.height == 0 || m.width > kMaxModeDimension || m.height > kMaxModeDimension)
    return make_error(Errc::kInvalidArgument, "mode size outside 1..4095");
  if (m.refresh_hz == 0 || m.refresh_hz > 240) return make_error(Errc::kInvalidArgument, "refresh rate outside 1..240");
  ModeTiming t;
  // CVT 1.2 reduced blanking v1: fixed 160-pixel horizontal blank (48 front, 32 sync, 80 back), a
  // vertical blank of at least 460 us, front porch 3 lines, back porch at least 6 lines.
  t.h_front = 48;
  t.h_sync = 32;
  t.h_total = m.width + 160;
  t.v_front = 3;
  t.v_sync = vsync_width(m.width, m.height);
  const double h_period_us = (1e6 / m.refresh_hz - 460.0) / m.height;
  uint32_t vbi = h_period_us > 0 ? uint32_t(460.0 / h_period_us) + 1 : m.height;
  const uint32_t min_vbi = t.v_front + t.v_sync + 6;
  if (vbi < min_vbi) vbi = min_vbi;
  t.v_total = m.height + vbi;
  // Clock in 0.25 MHz steps (rounded down), as CVT does.
  const double clock_mhz = std::floor(double(t.h_total) * t.v_total * m.refresh_hz / 1e6 / 0.25) * 0.25;
  t.pixel_clock_khz = uint32_t(clock_mhz * 1000.0);
  if (t.pixel_clock_khz / 10 > 0xffff || t.pixel_clock_khz < 10)
    return make_error(Errc::kInvalidArgument, "pixel clock does not fit an EDID detailed timing");
  return t;
}

Result<std::array<uint8_t, kEdidSize>> make_edid(const DisplayMode& mode, uint32_t scanout) {
  CANOPY_ASSIGN_OR_RETURN(ModeTiming t, cvt_reduced_blanking(mode));
  std::array<uint8_t, kEdidSize> e{};
  const uint8_t header[8] = {0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00};
  std::memcpy(e.data(), header, 8);
  e[8] = uint8_t(kManufacturer >> 8);
  e[9] = uint8_t(kManufacturer & 0xff);
  e[10] = 0x01;  // product code 0x0001 (LE)
  e[11] = 0x00;
  const uint32_t serial = scanout + 1;
  std::memcpy(&e[12], &serial, 4);  // little-endian hosts only build this project (le.h asserts)
  e[16] = 1;                        // week
  e[17] = 2026 - 1990;              // year
  e[18] = 1;                        // EDID 1.4
  e[19] = 4;
  e[20] = 0xa0;  // digital input, 8 bits per colour, interface not defined
  // Physical size in cm at 96 dpi (a guest computes DPI from it).
  const uint32_t w_mm = uint32_t(std::lround(mode.width * 25.4 / 96.0));
  const uint32_t h_mm = uint32_t(std::lround(mode.height * 25.4 / 96.0));
  e[21] = uint8_t(std::min<uint32_t>(255, (w_mm + 5) / 10));
  e[22] = uint8_t(std::min<uint32_t>(255, (h_mm + 5) / 10));
  e[23] = 120;   // gamma 2.2
  e[24] = 0x06;  // RGB 4:4:4, sRGB default colour space, preferred timing is native
  chromaticity(&e[25]);
  // Established timings that fit inside the preferred mode.
  if (mode.width >= 640 && mode.height >= 480) e[35] |= 0x20;   // 640x480@60
  if (mode.width >= 800 && mode.height >= 600) e[35] |= 0x01;   // 800x600@60
  if (mode.width >= 1024 && mode.height >= 768) e[36] |= 0x08;  // 1024x768@60
  for (int i = 0; i < 8; ++i) {                                 // no standard timings
    e[38 + 2 * i] = 0x01;
    e[39 + 2 * i] = 0x01;
  }
  // Descriptor 1: the preferred mode.
  uint8_t* d = &e[54];
  const uint32_t clk = t.pixel_clock_khz / 10;
  const uint32_t hblank = t.h_total - mode.width, vblank = t.v_total - mode.height;
  d[0] = uint8_t(clk & 0xff);
  d[1] = uint8_t(clk >> 8);
  d[2] = uint8_t(mode.width & 0xff);
  d[3] = uint8_t(hblank & 0xff);
  d[4] = uint8_t((mode.width >> 8) << 4 | (hblank >> 8));
  d[5] = uint8_t(mode.height & 0xff);
  d[6] = uint8_t(vblank & 0xff);
  d[7] = uint8_t((mode.height >> 8) << 4 | (vblank >> 8));
  d[8] = uint8_t(t.h_front & 0xff);
  d[9] = uint8_t(t.h_sync & 0xff);
  d[10] = uint8_t((t.v_front & 0xf) << 4 | (t.v_sync & 0xf));
  d[11] = uint8_t((t.h_front >> 8) << 6 | (t.h_sync >> 8) << 4 | (t.v_front >> 4) << 2 | (t.v_sync >> 4));
  d[12] = uint8_t(w_mm & 0xff);
  d[13] = uint8_t(h_mm & 0xff);
  d[14] = uint8_t(((w_mm >> 8) & 0xf) << 4 | ((h_mm >> 8) & 0xf));
  d[17] = 0x1a;  // digital separate sync, hsync +, vsync - (CVT reduced blanking)
  // Descriptor 2: range limits that include the preferred mode.
  d = &e[72];
  d[3] = 0xfd;
  const uint32_t h_khz = (t.pixel_clock_khz + t.h_total - 1) / t.h_total;
  d[5] = uint8_t(std::min<uint32_t>(mode.refresh_hz, 50));
  d[6] = uint8_t(std::max<uint32_t>(mode.refresh_hz, 75));
  d[7] = 1;
  d[8] = uint8_t(std::min<uint32_t>(255, std::max<uint32_t>(h_khz + 1, 90)));
  d[9] = uint8_t(std::min<uint32_t>(255, (t.pixel_clock_khz + 9999) / 10000));
  d[10] = 0x01;  // range limits only
  d[11] = 0x0a;
  for (int i = 12; i < 18; ++i) d[i] = 0x20;
  // Descriptor 3: the monitor name; descriptor 4: a serial number string.
  char name[16];
  std::snprintf(name, sizeof name, "Canopy-%u", scanout);
  text_descriptor(&e[90], 0xfc, name);
  std::snprintf(name, sizeof name, "CNP%04u", scanout);
  text_descriptor(&e[108], 0xff, name);
  e[126] = 0;  // no extension blocks
  uint8_t sum = 0;
  for (uint32_t i = 0; i < kEdidSize - 1; ++i) sum = uint8_t(sum + e[i]);
  e[127] = uint8_t(0x100 - sum);
  return e;
}

}  // namespace canopy::gpu
