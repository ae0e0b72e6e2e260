#include "canopy/display/renderer.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "canopy/display/fallback.h"
#include "canopy/display/png.h"

namespace canopy::display {
namespace {

using buffers::Format;

struct Pixels {
  uint32_t w, h;
  std::vector<uint32_t> px;
  Pixels(uint32_t w_, uint32_t h_, uint32_t fill = 0) : w(w_), h(h_), px(size_t(w_) * h_, fill) {}
  uint32_t& at(uint32_t x, uint32_t y) { return px[size_t(y) * w + x]; }
  Image image(Format f = Format::kXRGB8888) const {
    return Image{reinterpret_cast<const uint8_t*>(px.data()), w, h, w * 4, f};
  }
  Canvas canvas() { return Canvas{reinterpret_cast<uint8_t*>(px.data()), w, h, w * 4}; }
};

// Distinct opaque pixels: 0x00XXYY00 + an index.
Pixels numbered(uint32_t w, uint32_t h) {
  Pixels p(w, h);
  for (uint32_t y = 0; y < h; ++y)
    for (uint32_t x = 0; x < w; ++x) p.at(x, y) = 0x00100000u * (x + 1) + 0x00001000u * (y + 1) + 7;
  return p;
}

LayerSpec layer(Rect dst, Rotation r = Rotation::k0) {
  LayerSpec l;
  l.dst = dst;
  l.rotation = r;
  return l;
}

uint32_t rgb(uint32_t p) { return p & 0x00ffffff; }
int channel_diff(uint32_t a, uint32_t b) {
  int d = 0;
  for (int s = 0; s < 24; s += 8) d = std::max(d, std::abs(int((a >> s) & 0xff) - int((b >> s) & 0xff)));
  return d;
}

// Every renderer must pass the same behaviour tests; Vulkan runs on whatever device the machine has
// (lavapipe in CI). Without any Vulkan device the Vulkan cases skip, except under CANOPY_NO_SKIP=1
// (the project's test run, which installs lavapipe).
class RendererTest : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    if (std::string(GetParam()) == "pixman") {
      r = make_pixman_renderer();
      return;
    }
    auto v = make_vulkan_renderer();
    if (!v.ok()) {
      if (std::getenv("CANOPY_NO_SKIP")) FAIL() << "no Vulkan renderer: " << v.error().what;
      GTEST_SKIP() << "no Vulkan renderer: " << v.error().what;
    }
    r = std::move(*v);
  }
  std::unique_ptr<Renderer> r;
};

TEST_P(RendererTest, OneToOneIsAnExactCopyOnTheBackground) {
  Pixels src = numbered(4, 4), out(10, 10, 0xdeadbeef);
  LayerSpec l = layer({2, 3, 4, 4});
  LayerDraw d{&l, src.image()};
  ASSERT_TRUE(r->compose({&d, 1}, out.canvas(), 0x112233).ok());
  for (uint32_t y = 0; y < 10; ++y)
    for (uint32_t x = 0; x < 10; ++x) {
      const bool in = x >= 2 && x < 6 && y >= 3 && y < 7;
      EXPECT_EQ(rgb(out.at(x, y)), in ? rgb(src.at(x - 2, y - 3)) : 0x112233u) << x << "," << y;
    }
}

TEST_P(RendererTest, CropShowsOnlyThePartAsked) {
  Pixels src = numbered(8, 8), out(4, 4);
  LayerSpec l = layer({0, 0, 4, 4});
  l.src = Rect{2, 3, 4, 4};
  LayerDraw d{&l, src.image()};
  ASSERT_TRUE(r->compose({&d, 1}, out.canvas(), 0).ok());
  for (uint32_t y = 0; y < 4; ++y)
    for (uint32_t x = 0; x < 4; ++x) EXPECT_EQ(rgb(out.at(x, y)), rgb(src.at(x + 2, y + 3))) << x << "," << y;
}

// Rotations at scale 1 sample pixel centres: exact values, in the rotated places.
TEST_P(RendererTest, RotationsPutEverySourcePixelInItsRotatedPlace) {
  Pixels src = numbered(3, 2);
  for (Rotation rot : {Rotation::k90, Rotation::k180, Rotation::k270}) {
    const bool swap = rot != Rotation::k180;
    Pixels out(swap ? 2 : 3, swap ? 3 : 2);
    LayerSpec l = layer({0, 0, out.w, out.h}, rot);
    LayerDraw d{&l, src.image()};
    ASSERT_TRUE(r->compose({&d, 1}, out.canvas(), 0).ok());
    for (uint32_t y = 0; y < out.h; ++y)
      for (uint32_t x = 0; x < out.w; ++x) {
        uint32_t sx = 0, sy = 0;  // the source pixel that belongs at (x, y) after a clockwise rotation
        if (rot == Rotation::k90) sx = y, sy = 1 - x;
        if (rot == Rotation::k180) sx = 2 - x, sy = 1 - y;
        if (rot == Rotation::k270) sx = 2 - y, sy = x;
        EXPECT_EQ(rgb(out.at(x, y)), rgb(src.at(sx, sy))) << int(rot) << " at " << x << "," << y;
      }
  }
}

TEST_P(RendererTest, ScalingFiltersBetweenNeighboursAndKeepsCorners) {
  Pixels src(2, 1);
  src.at(0, 0) = 0x000000;
  src.at(1, 0) = 0xc8c8c8;
  Pixels out(4, 1);
  LayerSpec l = layer({0, 0, 4, 1});
  LayerDraw d{&l, src.image()};
  ASSERT_TRUE(r->compose({&d, 1}, out.canvas(), 0x123456).ok());
  EXPECT_EQ(rgb(out.at(0, 0)), 0x000000u);
  EXPECT_EQ(rgb(out.at(3, 0)), 0xc8c8c8u);
  // Output pixel 1 samples source x = 0.75: a quarter of the way from pixel 0 to pixel 1 (200 * 0.25).
  EXPECT_LE(channel_diff(out.at(1, 0), 0x323232), 1);
  EXPECT_LE(channel_diff(out.at(2, 0), 0x969696), 1);
}

TEST_P(RendererTest, LayersStackInOrderWithAlpha) {
  Pixels red(4, 4, 0xff0000), blue(2, 2, 0x0000ff), out(4, 4);
  LayerSpec back = layer({0, 0, 4, 4}), front = layer({1, 1, 2, 2});
  front.alpha = 0.5;
  LayerDraw d[] = {{&back, red.image()}, {&front, blue.image()}};
  ASSERT_TRUE(r->compose(d, out.canvas(), 0).ok());
  EXPECT_EQ(rgb(out.at(0, 0)), 0xff0000u);
  EXPECT_LE(channel_diff(out.at(1, 1), 0x800080), 1) << std::hex << out.at(1, 1);
  EXPECT_LE(channel_diff(out.at(2, 2), 0x800080), 1);
  EXPECT_EQ(rgb(out.at(3, 3)), 0xff0000u);
}

TEST_P(RendererTest, PremultipliedArgbBlendsOverWhatIsBelow) {
  Pixels src(2, 1), out(2, 1);
  src.at(0, 0) = 0x00000000;  // fully transparent
  src.at(1, 0) = 0x80008000;  // half-transparent green, premultiplied
  LayerSpec l = layer({0, 0, 2, 1});
  LayerDraw d{&l, src.image(Format::kARGB8888)};
  ASSERT_TRUE(r->compose({&d, 1}, out.canvas(), 0x0000c8).ok());
  EXPECT_EQ(rgb(out.at(0, 0)), 0x0000c8u);
  EXPECT_LE(channel_diff(out.at(1, 0), 0x008064), 1) << std::hex << out.at(1, 0);
}

TEST_P(RendererTest, BadLayersAreReportedAndTheRestStillDrawn) {
  Pixels good(2, 2, 0x00ff00), out(4, 4);
  std::vector<uint8_t> nv12(64);
  LayerSpec a = layer({0, 0, 2, 2}), b = layer({2, 2, 2, 2});
  LayerDraw d[] = {{&a, Image{nv12.data(), 4, 4, 4, Format::kNV12}}, {&b, good.image()}};
  Status s = r->compose(d, out.canvas(), 0);
  EXPECT_EQ(s.code(), Errc::kUnsupported);
  EXPECT_EQ(rgb(out.at(3, 3)), 0x00ff00u);
  EXPECT_EQ(rgb(out.at(0, 0)), 0u);
  LayerDraw short_stride{&b, Image{good.image().data, 2, 2, 4, Format::kXRGB8888}};
  EXPECT_EQ(r->compose({&short_stride, 1}, out.canvas(), 0).code(), Errc::kInvalidArgument);
  EXPECT_EQ(r->compose({}, Canvas{}, 0).code(), Errc::kInvalidArgument);
}

TEST_P(RendererTest, LayersPartlyOffTheCanvasAreClipped) {
  Pixels src = numbered(4, 4), out(3, 3);
  LayerSpec l = layer({-2, 1, 4, 4});
  LayerDraw d{&l, src.image()};
  ASSERT_TRUE(r->compose({&d, 1}, out.canvas(), 0x010101).ok());
  EXPECT_EQ(rgb(out.at(0, 1)), rgb(src.at(2, 0)));
  EXPECT_EQ(rgb(out.at(1, 2)), rgb(src.at(3, 1)));
  EXPECT_EQ(rgb(out.at(2, 1)), 0x010101u);
  EXPECT_EQ(rgb(out.at(0, 0)), 0x010101u);
}

INSTANTIATE_TEST_SUITE_P(Renderers, RendererTest, ::testing::Values("pixman", "vulkan"),
                         [](const auto& info) { return std::string(info.param); });

TEST(Png, WritesAndReadsBackTheSamePixels) {
  Pixels p = numbered(5, 3);
  char tmpl[] = "/tmp/canopy-png-XXXXXX";
  const int fd = mkstemp(tmpl);
  ASSERT_GE(fd, 0);
  close(fd);
  ASSERT_TRUE(write_png(tmpl, p.canvas()).ok());
  auto back = read_png(tmpl);
  unlink(tmpl);
  ASSERT_TRUE(back.ok());
  ASSERT_EQ(back->width, 5u);
  ASSERT_EQ(back->height, 3u);
  for (uint32_t y = 0; y < 3; ++y)
    for (uint32_t x = 0; x < 5; ++x) EXPECT_EQ(rgb(back->at(x, y)), rgb(p.at(x, y)));
  EXPECT_EQ(read_png("/nonexistent.png").code(), Errc::kIo);
}

TEST(Fallback, AmberBorderAndTriangleOnDark) {
  FallbackImage f(400, 200);
  const Image im = f.image();
  auto px = [&](uint32_t x, uint32_t y) { return reinterpret_cast<const uint32_t*>(im.data)[y * 400 + x]; };
  EXPECT_EQ(px(0, 0), kFallbackAmber);
  EXPECT_EQ(px(399, 199), kFallbackAmber);
  EXPECT_EQ(px(30, 100), kFallbackBackground);
  EXPECT_EQ(px(200, 145), kFallbackAmber) << "the triangle's lower part";
  EXPECT_EQ(px(200, 110), kFallbackBackground) << "the exclamation mark's stem";
}

}  // namespace
}  // namespace canopy::display
