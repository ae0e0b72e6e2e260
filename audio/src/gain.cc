// A gain and its ramp applied to samples in place, for each format the device offers (device.h's
// apply_gain): the policy's ducking and the volume control, in dB.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "canopy/audio/device.h"

namespace canopy::audio {

// ---------------------------------------------------------------------------------------------------
// Gain

namespace {
template <typename T, typename Fn>
void ramp_samples(uint8_t* data, size_t frames, uint32_t channels, double db, double step, Fn&& scale) {
  for (size_t f = 0; f < frames; ++f, db += step) {
    const double g = db <= kMuteDb ? 0.0 : std::pow(10.0, db / 20.0);
    for (uint32_t c = 0; c < channels; ++c) {
      T v;
      uint8_t* at = data + (f * channels + c) * sizeof(T);
      std::memcpy(&v, at, sizeof v);
      v = scale(v, g);
      std::memcpy(at, &v, sizeof v);
    }
  }
}
template <typename T>
T clamp_to(double v, double lo, double hi) {
  return T(std::lround(std::clamp(v, lo, hi)));
}
}  // namespace

void apply_gain(uint8_t format, uint8_t* data, size_t frames, uint32_t channels, double db, double step) {
  using F = proto::Format;
  switch (F(format)) {
    case F::kU8:
      ramp_samples<uint8_t>(data, frames, channels, db, step, [](uint8_t v, double g) {
        return clamp_to<uint8_t>((double(v) - 128.0) * g + 128.0, 0, 255);
      });
      break;
    case F::kS16:
      ramp_samples<int16_t>(data, frames, channels, db, step,
                            [](int16_t v, double g) { return clamp_to<int16_t>(v * g, -32768, 32767); });
      break;
    case F::kS24:
      ramp_samples<int32_t>(data, frames, channels, db, step, [](int32_t v, double g) {
        const int32_t s = int32_t(uint32_t(v) << 8) >> 8;  // the low 24 bits, sign-extended
        return clamp_to<int32_t>(s * g, -8388608.0, 8388607.0);
      });
      break;
    case F::kS32:
      ramp_samples<int32_t>(data, frames, channels, db, step,
                            [](int32_t v, double g) { return clamp_to<int32_t>(v * g, -2147483648.0, 2147483647.0); });
      break;
    case F::kFloat:
      ramp_samples<float>(data, frames, channels, db, step, [](float v, double g) { return float(v * g); });
      break;
    default: break;
  }
}

}  // namespace canopy::audio
