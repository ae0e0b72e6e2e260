// canopy-ivi-app: the cockpit demo's infotainment screen, a guest partition drawing through its
// virtio-gpu device (zero copy blob scanout): a scrolling navigation map with the route and the car
// (left 2/3; the cluster display shows a crop of it as an inset) and a media player with cover art,
// progress and an animated equaliser (right 1/3). Flags: demos/swapchain.h (run_app).
#include <cmath>
#include <cstdio>
#include <vector>

#include "swapchain.h"

using namespace canopy::demo;

namespace {

constexpr int kMapSize = 2048;
constexpr uint32_t kGround = 0xffe9e2d0, kRoad = 0xfffdfdfb, kMajor = 0xfff6c945, kPark = 0xff9fd08a,
                   kWater = 0xff7fb6e8, kRoute = 0xff5b3fd6, kPanel = 0xff1c1c26;

pixman_image_t* g_map = nullptr;
std::vector<uint32_t> g_map_px;

// A city map drawn once (it repeats: the car drives on forever).
void make_map() {
  g_map_px.assign(size_t(kMapSize) * kMapSize, 0);
  g_map = pixman_image_create_bits(PIXMAN_x8r8g8b8, kMapSize, kMapSize, g_map_px.data(), kMapSize * 4);
  pixman_image_set_repeat(g_map, PIXMAN_REPEAT_NORMAL);
  fill_rect(g_map, kGround, 0, 0, kMapSize, kMapSize);
  for (int by = 0; by < kMapSize; by += 256)
    for (int bx = 0; bx < kMapSize; bx += 256)
      if (((bx / 256) * 7 + (by / 256) * 3) % 5 == 0) fill_rect(g_map, kPark, bx + 20, by + 20, 216, 216);
  fill_polygon(g_map, kWater, {{0, 1500}, {kMapSize, 700}, {kMapSize, 800}, {0, 1600}});
  for (int i = 0; i < kMapSize; i += 256) {
    const bool major = i % 1024 == 0;
    fill_rect(g_map, major ? kMajor : kRoad, i - (major ? 14 : 8), 0, major ? 28 : 16, kMapSize);
    fill_rect(g_map, major ? kMajor : kRoad, 0, i - (major ? 14 : 8), kMapSize, major ? 28 : 16);
  }
}

void draw(const DrawArgs& a) {
  if (!g_map) make_map();
  const int w = int(a.width), h = int(a.height);
  const int map_w = w * 2 / 3;
  // The car drives north along the major road at x = 1024 of the map, shown at (map_w/2, h*0.62).
  const double car_x = map_w / 2.0, car_y = h * 0.62;
  const int scroll = int(std::fmod(a.t * 60.0, double(kMapSize)));
  const int src_x = (1024 - int(car_x)) & (kMapSize - 1);
  const int src_y = ((kMapSize - scroll) - int(car_y)) & (kMapSize - 1);
  pixman_image_composite32(PIXMAN_OP_SRC, g_map, nullptr, a.image, src_x, src_y, 0, 0, 0, 0, map_w, h);
  // The route: ahead along the road, then right at the next crossing.
  const double cross = car_y - std::fmod(double(scroll) + car_y, 256.0) + 0;  // next street above the car
  draw_line(a.image, kRoute, car_x, car_y, car_x, cross, 14);
  draw_line(a.image, kRoute, car_x - 7, cross, map_w, cross, 14);
  fill_polygon(a.image, 0xff1060ff,
               {{car_x, car_y - 30}, {car_x + 20, car_y + 20}, {car_x, car_y + 8}, {car_x - 20, car_y + 20}});

  // Media player.
  fill_rect(a.image, kPanel, map_w, 0, w - map_w, h);
  const int art = std::min(w - map_w - 80, h / 2);
  const int ax = map_w + (w - map_w - art) / 2, ay = h / 8;
  const double hue = std::fmod(a.t * 0.05, 1.0);
  const uint32_t r = uint32_t(128 + 127 * std::sin(2 * M_PI * hue)),
                 g = uint32_t(128 + 127 * std::sin(2 * M_PI * (hue + 0.33))),
                 b = uint32_t(128 + 127 * std::sin(2 * M_PI * (hue + 0.66)));
  fill_rect(a.image, 0xff000000 | r << 16 | g << 8 | b, ax, ay, art, art);
  fill_circle(a.image, 0xff1c1c26, ax + art / 2.0, ay + art / 2.0, art * 0.18);
  const double song = 215.0, pos = std::fmod(a.t, song);
  const int bar_y = ay + art + 50;
  fill_rect(a.image, 0xff444455, ax, bar_y, art, 8);
  fill_rect(a.image, 0xffe6edf5, ax, bar_y, int(art * pos / song), 8);
  char clock[24];
  std::snprintf(clock, sizeof clock, "%d-%02d", int(pos) / 60, int(pos) % 60);
  draw_text(a.image, 0xffe6edf5, ax, bar_y + 30, 40, clock);
  const int bars = 12, bw = art / (bars * 2);
  for (int i = 0; i < bars; ++i) {
    const double level = 0.5 + 0.45 * std::sin(a.t * (3.1 + i * 0.7) + i);
    const int bh = int(120 * level);
    fill_rect(a.image, 0xff19d3e6, ax + i * bw * 2, h - 80 - bh, bw, bh);
  }
}

// The music: an A major pad (220, 277.2, 329.6 Hz at -18 dBFS each) under a slow melody an octave up
// (-26 dBFS, a note every 500 ms). The pad's 220 Hz is what the demo measures the ducking on.
void music(int16_t* out, size_t frames, uint64_t pos) {
  static const double kMelody[] = {440.0, 493.9, 554.4, 659.3, 554.4, 493.9};
  for (size_t i = 0; i < frames; ++i) {
    const double t = double(pos + i) / 48000.0;
    const double pad = std::pow(10.0, -18.0 / 20);
    double v =
        pad * (std::sin(2 * M_PI * 220.0 * t) + std::sin(2 * M_PI * 277.18 * t) + std::sin(2 * M_PI * 329.63 * t));
    const double nt = std::fmod(t, 0.5);
    const double hz = kMelody[size_t(t / 0.5) % 6];
    v += std::pow(10.0, -26.0 / 20) * std::min(1.0, nt / 0.01) * std::exp(-nt * 3) * std::sin(2 * M_PI * hz * t);
    const int16_t s = int16_t(std::lround(std::clamp(v, -1.0, 1.0) * 32767));
    out[2 * i] = out[2 * i + 1] = s;
  }
}

}  // namespace

int main(int argc, char** argv) {
  AudioPlan sound;
  sound.kind = AudioPlan::Kind::kContinuous;
  sound.period_ms = 10;
  sound.periods = 6;
  sound.render = music;
  return run_app("canopy-ivi-app", 30, argc, argv, draw, &sound);
}
