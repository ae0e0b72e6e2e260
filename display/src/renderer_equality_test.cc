// pixman and Vulkan compose the same pixels. Stated tolerance (docs/display.md): kTolerance levels
// per 8-bit channel on every pixel, for every format, crop, rotation, scale, alpha and clipping the
// layout allows. Both of the Vulkan renderer's memory paths are covered: frames and canvas in page-
// aligned mappings (imported in place, nothing staged) and in plain heap memory (staged).
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "canopy/buffers/shared_memory.h"
#include "canopy/display/renderer.h"

namespace canopy::display {
namespace {

using buffers::Format;

constexpr int kTolerance = 0;

std::unique_ptr<Renderer> vulkan_or_skip() {
  auto v = make_vulkan_renderer();
  if (!v.ok()) return nullptr;
  return std::move(*v);
}

#define VULKAN_OR_SKIP(var)                                                            \
  auto var = vulkan_or_skip();                                                         \
  if (!var) {                                                                          \
    if (std::getenv("CANOPY_NO_SKIP")) FAIL() << "no Vulkan renderer on this machine"; \
    GTEST_SKIP() << "no Vulkan renderer on this machine";                              \
  }

// Whole pages of a memfd, mapped: what the compositor's buffer views and canvases are.
class Pages {
 public:
  explicit Pages(size_t bytes) {
    const size_t page = size_t(::sysconf(_SC_PAGESIZE));
    auto shm = buffers::SharedMemory::create("canopy-test", (bytes + page - 1) / page * page);
    if (!shm.ok()) return;
    auto m = shm->map();
    if (m.ok()) map_ = std::move(*m);
  }
  uint8_t* data() { return reinterpret_cast<uint8_t*>(map_.data()); }
  Mapping mapping() const { return Mapping{map_.data(), map_.size()}; }

 private:
  buffers::Mapping map_;
};

uint32_t bpp_of(Format f) { return f == Format::kRGB565 ? 2 : 4; }

// Random pixels with smooth gradients and sharp edges; alpha formats get valid premultiplied values.
void fill(uint8_t* data, uint32_t w, uint32_t h, uint32_t stride, Format f, uint32_t seed) {
  std::mt19937 rng(seed);
  for (uint32_t y = 0; y < h; ++y)
    for (uint32_t x = 0; x < w; ++x) {
      uint8_t* p = data + size_t(y) * stride + size_t(x) * bpp_of(f);
      const uint32_t noise = rng();
      if (f == Format::kRGB565) {
        const uint16_t v = uint16_t(((x * 7 + y) & 0x1f) << 11 | ((noise >> 3) & 0x3f) << 5 | ((y / 3) & 0x1f));
        std::memcpy(p, &v, 2);
        continue;
      }
      const uint8_t a = (f == Format::kARGB8888 || f == Format::kABGR8888) ? uint8_t(noise >> 24) : 0x5a;
      const bool premult = a != 0x5a;
      uint8_t c[3] = {uint8_t(x * 255 / (w ? w : 1)), uint8_t((x ^ y) & 0xff), uint8_t(noise & 0xff)};
      if ((x / 8 + y / 8) % 2) c[0] = 255 - c[0];
      for (auto& v : c)
        if (premult) v = uint8_t(v * a / 255);
      p[0] = c[0];
      p[1] = c[1];
      p[2] = c[2];
      p[3] = a;  // for X formats: garbage the renderers must ignore
    }
}

// Memory for a frame or a canvas, `offset` bytes into its allocation: in a mapping (the Vulkan
// renderer imports it) or on the heap, 4-aligned but not page-aligned (it is staged).
struct Memory {
  std::unique_ptr<Pages> pages;
  std::vector<uint8_t> heap;
  uint8_t* data = nullptr;
  Mapping mapping;
};

Memory memory(size_t bytes, bool mapped, size_t offset) {
  Memory m;
  if (mapped) {
    m.pages = std::make_unique<Pages>(bytes + offset);
    m.data = m.pages->data() + offset;
    m.mapping = m.pages->mapping();
  } else {
    m.heap.assign(bytes + offset, 0xcd);
    m.data = m.heap.data() + offset;
  }
  return m;
}

struct Frame {
  Memory mem;
  Image image;
};

Frame make_frame(uint32_t w, uint32_t h, Format f, bool mapped, uint32_t seed) {
  const uint32_t stride = (w * bpp_of(f) + 63) / 64 * 64;  // padded rows, as drivers make them
  // Mapped frames do not start at the mapping's start (offsets are honoured).
  Frame fr{memory(size_t(stride) * h, mapped, mapped ? 4096 : 4), {}};
  fill(fr.mem.data, w, h, stride, f, seed);
  fr.image = Image{fr.mem.data, w, h, stride, f, fr.mem.mapping};
  return fr;
}

struct Target {
  Memory mem;
  Canvas canvas;
};

Target make_target(uint32_t w, uint32_t h, bool mapped) {
  const uint32_t stride = w * 4 + (mapped ? 0 : 32);
  Target t{memory(size_t(stride) * h, mapped, 0), {}};
  t.canvas = Canvas{t.mem.data, w, h, stride, t.mem.mapping};
  return t;
}

struct Diff {
  int max = 0;
  uint64_t pixels = 0;
  uint32_t x = 0, y = 0, a = 0, b = 0;
};

Diff compare(const Canvas& a, const Canvas& b) {
  Diff d;
  for (uint32_t y = 0; y < a.height; ++y)
    for (uint32_t x = 0; x < a.width; ++x) {
      uint32_t pa, pb;
      std::memcpy(&pa, a.data + size_t(y) * a.stride + x * 4, 4);
      std::memcpy(&pb, b.data + size_t(y) * b.stride + x * 4, 4);
      int m = 0;
      for (int s = 0; s < 24; s += 8) m = std::max(m, std::abs(int((pa >> s) & 0xff) - int((pb >> s) & 0xff)));
      if (m) ++d.pixels;
      if (m > d.max) d = Diff{m, d.pixels, x, y, pa, pb};
    }
  return d;
}

struct Case {
  const char* name;
  uint32_t frame_w, frame_h;
  Format format;
  Rect src, dst;
  Rotation rotation;
  double alpha;
};

// The same layers through both renderers; returns the difference.
void expect_same(Renderer& vk, const std::vector<Case>& layers, uint32_t out_w, uint32_t out_h, bool mapped,
                 uint32_t seed) {
  std::vector<Frame> frames;
  std::vector<LayerSpec> specs;
  for (const Case& c : layers) {
    frames.push_back(make_frame(c.frame_w, c.frame_h, c.format, mapped, seed++));
    LayerSpec l;
    l.src = c.src;
    l.dst = c.dst;
    l.rotation = c.rotation;
    l.alpha = c.alpha;
    specs.push_back(l);
  }
  std::vector<LayerDraw> draws;
  for (size_t i = 0; i < layers.size(); ++i) draws.push_back({&specs[i], frames[i].image});
  Target want = make_target(out_w, out_h, false), got = make_target(out_w, out_h, mapped);
  auto pixman = make_pixman_renderer();
  ASSERT_TRUE(pixman->compose(draws, want.canvas, 0x203040).ok());
  const Status s = vk.compose(draws, got.canvas, 0x203040);
  ASSERT_TRUE(s.ok()) << s.error().what;
  const Diff d = compare(want.canvas, got.canvas);
  EXPECT_LE(d.max, kTolerance) << layers[0].name << (mapped ? " (mapped)" : " (staged)") << ": " << d.pixels
                               << " pixels differ, most at " << d.x << "," << d.y << ": pixman " << std::hex << d.a
                               << " vulkan " << d.b;
  for (auto& f : frames)
    if (f.image.mapping.base) vk.forget_memory(f.image.mapping.base);
  if (got.canvas.mapping.base) vk.forget_memory(got.canvas.mapping.base);
}

std::vector<Case> single_layer_cases() {
  std::vector<Case> cs;
  const Format formats[] = {Format::kXRGB8888, Format::kARGB8888, Format::kXBGR8888, Format::kABGR8888,
                            Format::kRGB565};
  const Rotation rots[] = {Rotation::k0, Rotation::k90, Rotation::k180, Rotation::k270};
  const double alphas[] = {1.0, 0.9, 0.37};
  int i = 0;
  for (Format f : formats)
    for (Rotation r : rots)
      for (double a : alphas) {
        ++i;
        const bool swap = r == Rotation::k90 || r == Rotation::k270;
        // 1:1, an odd upscale, a downscale with a crop, and a layer hanging off the canvas.
        cs.push_back({"one-to-one", 97, 61, f, {}, {5, 3, swap ? 61u : 97u, swap ? 97u : 61u}, r, a});
        cs.push_back({"upscale", 37, 23, f, {}, {-3, 7, 131, 89}, r, a});
        cs.push_back({"downscale-crop", 211, 149, f, {13, 9, 170, 120}, {40, 20, 77, 51}, r, a});
        cs.push_back({"off-canvas", 120, 80, f, {0, 0, 100, 80}, {int32_t(90 + i % 7), -20, 90, 70}, r, a});
      }
  return cs;
}

TEST(RendererEquality, EveryFormatRotationScaleAndAlphaMatchesPixman) {
  VULKAN_OR_SKIP(vk);
  int n = 0;
  for (bool mapped : {true, false})
    for (const Case& c : single_layer_cases()) expect_same(*vk, {c}, 160, 120, mapped, uint32_t(++n));
  const auto st = vk->stats();
  EXPECT_GT(st.imports, 0u);
  EXPECT_GT(st.bytes_staged, 0u);
}

// The demo's outputs at their real sizes: the cluster with the IVI inset, the center display.
TEST(RendererEquality, DemoOutputsMatchPixman) {
  VULKAN_OR_SKIP(vk);
  const Case cluster{"cluster", 1920, 720, Format::kXRGB8888, {}, {0, 0, 1920, 720}, Rotation::k0, 1.0};
  const Case inset{"inset",      1920, 1080, Format::kXRGB8888, {300, 370, 680, 600}, {790, 390, 340, 300},
                   Rotation::k0, 0.9};
  const Case center{"center", 1920, 1080, Format::kXRGB8888, {}, {0, 0, 1920, 1080}, Rotation::k0, 1.0};
  expect_same(*vk, {cluster, inset}, 1920, 720, true, 100);
  expect_same(*vk, {center}, 1920, 1080, true, 200);
  EXPECT_EQ(vk->stats().bytes_staged, 0u) << "mapped frames and canvases are used in place";
}

// Several layers blend in order over each other.
TEST(RendererEquality, StackedLayersMatchPixman) {
  VULKAN_OR_SKIP(vk);
  const std::vector<Case> stack = {
      {"stack", 64, 48, Format::kXRGB8888, {}, {0, 0, 200, 150}, Rotation::k0, 1.0},
      {"stack", 50, 50, Format::kARGB8888, {}, {30, 20, 100, 100}, Rotation::k90, 1.0},
      {"stack", 40, 30, Format::kRGB565, {5, 5, 30, 20}, {90, 60, 90, 60}, Rotation::k180, 0.6},
      {"stack", 33, 33, Format::kABGR8888, {}, {-10, 100, 70, 70}, Rotation::k270, 0.8},
  };
  expect_same(*vk, stack, 200, 150, true, 300);
  expect_same(*vk, stack, 200, 150, false, 400);
}

// After forget_memory the renderer must not use what it derived from a mapping: new pages at the
// same address show their own content.
TEST(RendererEquality, ForgottenMappingsAreImportedAfresh) {
  VULKAN_OR_SKIP(vk);
  const size_t bytes = 64 * 64 * 4;
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(p, MAP_FAILED);
  std::memset(p, 0x11, bytes);
  LayerSpec l;
  l.dst = Rect{0, 0, 64, 64};
  Image im{static_cast<uint8_t*>(p), 64, 64, 256, Format::kXRGB8888, Mapping{p, bytes}};
  LayerDraw d{&l, im};
  std::vector<uint32_t> out(64 * 64);
  Canvas c{reinterpret_cast<uint8_t*>(out.data()), 64, 64, 256};
  ASSERT_TRUE(vk->compose({&d, 1}, c, 0).ok());
  EXPECT_EQ(out[100] & 0xffffff, 0x111111u);
  const uint64_t imports = vk->stats().imports;
  vk->forget_memory(p);
  ASSERT_EQ(::munmap(p, bytes), 0);
  void* q = ::mmap(p, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
  ASSERT_EQ(q, p) << "the test needs the same address again";
  std::memset(q, 0x77, bytes);
  ASSERT_TRUE(vk->compose({&d, 1}, c, 0).ok());
  EXPECT_EQ(out[100] & 0xffffff, 0x777777u);
  EXPECT_EQ(vk->stats().imports, imports + 1);
  vk->forget_memory(q);
  ::munmap(q, bytes);
}

}  // namespace
}  // namespace canopy::display
