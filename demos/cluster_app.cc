// canopy-cluster-app: the cockpit demo's instrument cluster, a guest partition drawing through its
// virtio-gpu device (zero copy blob scanout): a speedometer and a tachometer with animated needles,
// the speed in digits, the gear, telltales (turn signals blinking, high beam, seat belt, engine) and
// fuel / temperature bars. Flags: demos/swapchain.h (run_app).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include "swapchain.h"

using namespace canopy::demo;

namespace {

constexpr double kStart = 0.75 * M_PI, kSweep = 1.5 * M_PI;  // gauge from 135 deg clockwise over 270 deg
constexpr uint32_t kCyan = 0xff19d3e6, kWhite = 0xffe6edf5, kDim = 0xff3a4656, kRed = 0xffe0301e;

struct Gauge {
  double cx, cy, r;
  double max;
  double red_from;  // value where the red zone starts (max: none)
};

pixman_image_t* g_background = nullptr;
std::vector<uint32_t> g_background_px;

void draw_dial(pixman_image_t* img, const Gauge& g, int majors) {
  fill_circle(img, 0xff0d1420, g.cx, g.cy, g.r + 14);
  fill_arc(img, kDim, g.cx, g.cy, g.r - 8, g.r, kStart, kStart + kSweep);
  if (g.red_from < g.max)
    fill_arc(img, kRed, g.cx, g.cy, g.r - 26, g.r, kStart + kSweep * g.red_from / g.max, kStart + kSweep);
  for (int i = 0; i <= majors * 2; ++i) {
    const double a = kStart + kSweep * i / (majors * 2);
    const double r0 = i % 2 ? g.r - 22 : g.r - 40;
    draw_line(img, i % 2 ? kDim : kWhite, g.cx + r0 * std::cos(a), g.cy + r0 * std::sin(a),
              g.cx + (g.r - 4) * std::cos(a), g.cy + (g.r - 4) * std::sin(a), i % 2 ? 3 : 6);
  }
}

// The static parts, drawn once into a private image and copied under every frame.
void make_background(uint32_t w, uint32_t h, const Gauge& speed, const Gauge& rpm) {
  g_background_px.assign(size_t(w) * h, 0);
  g_background = pixman_image_create_bits(PIXMAN_x8r8g8b8, int(w), int(h), g_background_px.data(), int(w * 4));
  pixman_gradient_stop_t stops[2] = {{0, {0x0b00, 0x1000, 0x2000, 0xffff}},
                                     {pixman_int_to_fixed(1), {0x0300, 0x0500, 0x0a00, 0xffff}}};
  pixman_point_fixed_t p0{0, 0}, p1{0, pixman_int_to_fixed(int(h))};
  pixman_image_t* grad = pixman_image_create_linear_gradient(&p0, &p1, stops, 2);
  pixman_image_composite32(PIXMAN_OP_SRC, grad, nullptr, g_background, 0, 0, 0, 0, 0, 0, int(w), int(h));
  pixman_image_unref(grad);
  draw_dial(g_background, speed, 13);
  draw_dial(g_background, rpm, 8);
  // Fuel and temperature bar frames at the bottom centre.
  fill_rect(g_background, kDim, int(w / 2) - 170, int(h) - 60, 140, 14);
  fill_rect(g_background, kDim, int(w / 2) + 30, int(h) - 60, 140, 14);
}

void needle(pixman_image_t* img, const Gauge& g, double value, uint32_t colour) {
  const double v = std::clamp(value, 0.0, g.max);
  const double a = kStart + kSweep * v / g.max;
  fill_arc(img, (colour & 0x00ffffff) | 0x60000000, g.cx, g.cy, g.r - 8, g.r, kStart, a);  // the swept arc
  const double c = std::cos(a), s = std::sin(a), nx = -s, ny = c;
  fill_polygon(img, colour,
               {{g.cx + (g.r - 12) * c, g.cy + (g.r - 12) * s},
                {g.cx + 9 * nx - 30 * c, g.cy + 9 * ny - 30 * s},
                {g.cx - 9 * nx - 30 * c, g.cy - 9 * ny - 30 * s}});
  fill_circle(img, 0xff1b2433, g.cx, g.cy, 34);
  fill_circle(img, colour, g.cx, g.cy, 10);
}

void arrow(pixman_image_t* img, uint32_t colour, double x, double y, double dir) {
  fill_polygon(img, colour,
               {{x + dir * 36, y},
                {x, y - 26},
                {x, y - 10},
                {x - dir * 30, y - 10},
                {x - dir * 30, y + 10},
                {x, y + 10},
                {x, y + 26}});
}

void draw(const DrawArgs& a) {
  const double w = a.width, h = a.height;
  const Gauge speed{w * 0.25, h * 0.53, std::min(h * 0.41, w * 0.15), 260, 260};
  const Gauge rpm{w * 0.75, h * 0.53, std::min(h * 0.41, w * 0.15), 8, 6.5};
  if (!g_background) make_background(a.width, a.height, speed, rpm);
  pixman_image_composite32(PIXMAN_OP_SRC, g_background, nullptr, a.image, 0, 0, 0, 0, 0, 0, int(a.width),
                           int(a.height));

  const double t = a.t;
  const double kmh = 90 + 70 * std::sin(t * 0.35) + 10 * std::sin(t * 1.3);
  const int gear = kmh < 20 ? 1 : kmh < 40 ? 2 : kmh < 65 ? 3 : kmh < 90 ? 4 : kmh < 120 ? 5 : 6;
  static const double kLow[] = {0, 0, 20, 40, 65, 90, 120};
  const double rev = 1.2 + (kmh - kLow[gear]) / 30.0 * 3.5 + 0.15 * std::sin(t * 7);
  needle(a.image, speed, kmh, kCyan);
  needle(a.image, rpm, rev, rev > 6.5 ? kRed : kCyan);

  char digits[16];
  std::snprintf(digits, sizeof digits, "%d", int(kmh));
  const int dh = int(h * 0.16);
  const int tw = draw_text(a.image, 0x00000000, 0, 0, dh, digits);  // measure (transparent)
  draw_text(a.image, kWhite, int(w / 2) - tw / 2, int(h * 0.12), dh, digits);
  char g[4] = {'D', char('0' + gear), 0, 0};
  draw_text(a.image, kCyan, int(w / 2) - dh / 3, int(h * 0.12) + dh + 18, dh / 2, g);

  // Telltales: turn signals blink at 1.5 Hz, high beam, seat belt (red), engine (amber).
  const bool blink = std::fmod(t * 1.5, 1.0) < 0.5;
  const double ty = h * 0.07;
  arrow(a.image, blink ? 0xff20d040 : 0xff17301d, w * 0.42, ty, -1);
  arrow(a.image, blink ? 0xff17301d : 0xff20d040, w * 0.58, ty, 1);
  fill_polygon(a.image, 0xff2f6bff,
               {{w * 0.47, ty - 18},
                {w * 0.47 + 26, ty - 18},
                {w * 0.47 + 34, ty},
                {w * 0.47 + 26, ty + 18},
                {w * 0.47, ty + 18}});
  fill_circle(a.image, 0xffe0301e, w * 0.53, ty - 10, 9);
  fill_rect(a.image, 0xffe0301e, int(w * 0.53) - 9, int(ty), 18, 20);
  fill_rect(a.image, 0xffffb000, int(w * 0.36) - 20, int(ty) - 14, 40, 28);

  // Fuel (slowly going down) and coolant temperature.
  const double fuel = 0.8 - std::fmod(t / 600.0, 0.6);
  fill_rect(a.image, kCyan, int(w / 2) - 170, int(h) - 60, int(140 * fuel), 14);
  fill_rect(a.image, 0xffffb000, int(w / 2) + 30, int(h) - 60, int(140 * 0.55), 14);
}

// The chime: a 500 ms "ding" at 880 Hz with an octave overtone (-8 dBFS, 5 ms attack, a gentle decay),
// a seat-belt reminder every 5 s from 1.5 s (docs/demo.md).
void chime(int16_t* out, size_t frames, uint64_t pos) {
  for (size_t i = 0; i < frames; ++i) {
    const double t = double(pos + i) / 48000.0;
    const double env = t < 0.5 ? std::pow(10.0, -8.0 / 20) * std::min(1.0, t / 0.005) * std::exp(-t * 0.8) : 0.0;
    const double v = env * (std::sin(2 * M_PI * 880.0 * t) + 0.25 * std::sin(2 * M_PI * 1760.0 * t)) / 1.25;
    out[2 * i] = out[2 * i + 1] = int16_t(std::lround(v * 32767));
  }
}

}  // namespace

int main(int argc, char** argv) {
  AudioPlan sound;
  sound.kind = AudioPlan::Kind::kChimes;
  sound.period_ms = 5;
  sound.periods = 4;
  sound.render = chime;
  sound.first_s = 1.5;
  sound.every_s = 5;
  sound.length_s = 0.5;
  return run_app("canopy-cluster-app", 60, argc, argv, draw, &sound);
}
