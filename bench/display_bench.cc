// Composition cost per output at the cockpit demo's sizes (demos/cockpit.toml) for each renderer,
// against memcpy of the same output bytes measured in the same run (the machine's own limit: a
// composition writes every output pixel at least once).
#include <benchmark/benchmark.h>

#include <cstring>
#include <memory>
#include <vector>

#include "bench_main.h"
#include "canopy/buffers/shared_memory.h"
#include "canopy/config/manifest.h"
#include "canopy/display/layout.h"
#include "canopy/display/renderer.h"

namespace {

using namespace canopy;
using namespace canopy::display;

const Layout& demo_layout() {
  static const Layout l = [] {
    auto m = config::load_manifest_file(CANOPY_SOURCE_DIR "/demos/cockpit.toml");
    return m.ok() ? layout_from_manifest(*m.manifest) : Layout{};
  }();
  return l;
}

// Whole pages of a memfd, mapped, as the compositor's buffer views and canvases are (the Vulkan
// renderer imports them in place).
struct PageMem {
  buffers::Mapping map;
  explicit PageMem(size_t bytes) {
    auto shm = buffers::SharedMemory::create("canopy-bench", (bytes + 4095) & ~size_t(4095));
    if (!shm.ok()) return;
    auto m = shm->map();
    if (m.ok()) map = std::move(*m);
  }
  void* p() const { return map.data(); }
  uint32_t* px() const { return reinterpret_cast<uint32_t*>(map.data()); }
  Mapping mapping() const { return Mapping{map.data(), map.size()}; }
};

// Frames the size the demo's VMs send: cluster 1920x720, IVI 1920x1080 (XRGB8888, some texture).
struct Frames {
  PageMem cluster = pattern(1920, 720), ivi = pattern(1920, 1080);
  static PageMem pattern(uint32_t w, uint32_t h) {
    PageMem m(size_t(w) * h * 4);
    for (uint32_t y = 0; y < h; ++y)
      for (uint32_t x = 0; x < w; ++x) m.px()[size_t(y) * w + x] = (x * 3) ^ (y << 8) ^ ((x + y) << 16);
    return m;
  }
  Image image(const std::string& vm) const {
    const auto& p = vm == "cluster" ? cluster : ivi;
    const uint32_t w = 1920, h = vm == "cluster" ? 720 : 1080;
    return Image{reinterpret_cast<const uint8_t*>(p.p()), w, h, w * 4, buffers::Format::kXRGB8888, p.mapping()};
  }
};

void compose_loop(benchmark::State& st, Renderer& r) {
  const OutputSpec& o = demo_layout().outputs.at(size_t(st.range(0)));
  static const Frames frames;
  std::vector<LayerDraw> draws;
  for (const auto& l : o.layers) draws.push_back({&l, frames.image(l.vm)});
  PageMem canvas(size_t(o.width) * o.height * 4);
  Canvas c{static_cast<uint8_t*>(canvas.p()), o.width, o.height, o.width * 4, canvas.mapping()};
  for (auto _ : st) {
    if (!r.compose(draws, c, 0).ok()) st.SkipWithError("compose failed");
    benchmark::DoNotOptimize(canvas.p());
  }
  r.forget_memory(canvas.p());
  st.SetLabel(o.name + " (" + std::to_string(o.layers.size()) + " layers)");
  st.SetBytesProcessed(int64_t(st.iterations()) * int64_t(size_t(o.width) * o.height * 4));
  st.counters["bytes_staged"] = double(r.stats().bytes_staged);
}

void BM_Memcpy(benchmark::State& st) {
  const OutputSpec& o = demo_layout().outputs.at(size_t(st.range(0)));
  const size_t bytes = size_t(o.width) * o.height * 4;
  std::vector<uint8_t> a(bytes, 1), b(bytes);
  for (auto _ : st) {
    std::memcpy(b.data(), a.data(), bytes);
    benchmark::DoNotOptimize(b.data());
  }
  st.SetLabel(o.name);
  st.SetBytesProcessed(int64_t(st.iterations()) * int64_t(bytes));
}

void BM_ComposePixman(benchmark::State& st) {
  auto r = make_pixman_renderer();
  compose_loop(st, *r);
}

// The Vulkan renderer on the best device there is (lavapipe on a machine without a GPU; the label
// says which): frames and canvas imported in place, one submit and a timeline-semaphore wait per
// composition, included in the time.
void BM_ComposeVulkan(benchmark::State& st) {
  static auto r = make_vulkan_renderer();
  if (!r.ok()) {
    st.SkipWithError(r.error().what);
    return;
  }
  compose_loop(st, **r);
  st.SetLabel(st.range(0) == 0 ? std::string("cluster on ") + (*r)->name() : std::string("center on ") + (*r)->name());
}

BENCHMARK(BM_Memcpy)->Arg(0)->Arg(1)->UseRealTime();
BENCHMARK(BM_ComposePixman)->Arg(0)->Arg(1)->UseRealTime();
BENCHMARK(BM_ComposeVulkan)->Arg(0)->Arg(1)->UseRealTime();

[[maybe_unused]] const bool kRatios = [] {
  for (const char* i : {"0", "1"}) {
    const std::string out = std::string(i) == "0" ? "cluster 1920x720 + inset" : "center 1920x1080";
    canopy::bench::add_ratio({std::string("compose pixman / memcpy, ") + out,
                              std::string("BM_ComposePixman/") + i + "/real_time",
                              std::string("BM_Memcpy/") + i + "/real_time", "time"});
    canopy::bench::add_ratio({std::string("compose vulkan / memcpy, ") + out,
                              std::string("BM_ComposeVulkan/") + i + "/real_time",
                              std::string("BM_Memcpy/") + i + "/real_time", "time"});
  }
  return true;
}();

}  // namespace

CANOPY_BENCH_MAIN();
