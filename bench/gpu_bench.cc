// virtio-gpu device benchmarks (in process: the device model and a headless consumer; no transport).
//  BM_Memcpy/WxH            reference: one memcpy of a WxH XRGB8888 frame (the cost a copy path pays).
//  BM_Present2d/WxH         guest pixels -> TRANSFER_TO_HOST_2D + RESOURCE_FLUSH -> the frame reaches the
//                           scanout output (2D resources keep the spec's copy into host storage).
//  BM_PresentBlob/WxH       RESOURCE_FLUSH of a blob scanout -> the frame reaches the output, pixels
//                           mapped from guest memory (zero copy), the consumer's view built once.
//  BM_BlobViewBuild/WxH     what a consumer pays once per blob: mapping its scattered 4 KiB pages back
//                           to back (worst case: every page a separate piece).
//  BM_FenceRetire           a fenced RESOURCE_FLUSH answered after the output released the frame.
// Ratios: present / memcpy of the same frame, measured in this run.
#include <benchmark/benchmark.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <vector>

#include "bench_main.h"
#include "canopy/gpu/device.h"

namespace {

using namespace canopy;
using namespace canopy::gpu;

struct Sizes {
  uint32_t w, h;
};
constexpr Sizes kSizes[] = {{1280, 720}, {1920, 1080}, {3840, 2160}};

// A device over guest RAM big enough for one 4K frame, with a consumer that maps each frame.
struct Rig {
  transport::GuestMemory mem;
  HeadlessOutput out{HeadlessOutput::Options{.checksum = false}};
  std::unique_ptr<GpuDevice> dev;
  uint64_t answered = 0;
  uint64_t frames = 0;
  Rig() {
    UniqueFd fd(memfd_create("bench-ram", MFD_CLOEXEC));
    const uint64_t ram = 64 << 20;
    if (ftruncate(fd.get(), off_t(ram)) != 0) abort();
    if (!mem.add_region({0, ram, 0, 0}, std::move(fd)).ok()) abort();
    GpuOptions o;
    o.scanouts = {{1024, 768, 60}};
    o.caps.max_backing_entries = 1 << 14;
    auto d = GpuDevice::create(o, make_2d_renderer(), &out, [this](uint64_t, std::span<const uint8_t>) { ++answered; });
    if (!d.ok()) abort();
    dev = std::move(*d);
    dev->set_memory(&mem);
    dev->set_acked_features(dev->offered_features());
    out.on_frame_hook = [this](const Frame& f) {
      auto v = f.map();  // the consumer's view (cached per resource)
      if (v.ok()) benchmark::DoNotOptimize((*v)->data()[f.offset]);
      ++frames;
    };
  }
  template <typename T>
  void send(const T& cmd, std::span<const uint8_t> tail = {}) {
    std::vector<uint8_t> b(sizeof(T) + tail.size());
    std::memcpy(b.data(), &cmd, sizeof(T));
    if (!tail.empty()) std::memcpy(b.data() + sizeof(T), tail.data(), tail.size());
    dev->control(1, b, 4096);
  }
  // Page-sized entries, every other page (scattered as a Linux guest's are).
  std::vector<proto::MemEntry> pages(uint64_t bytes) {
    std::vector<proto::MemEntry> e;
    for (uint64_t off = 0; off < bytes; off += 4096) {
      proto::MemEntry m{};
      m.addr = 2 * off;
      m.length = uint32_t(std::min<uint64_t>(4096, bytes - off));
      e.push_back(m);
    }
    return e;
  }
};

void BM_Memcpy(benchmark::State& st) {
  const size_t bytes = size_t(st.range(0)) * st.range(1) * 4;
  std::vector<uint8_t> a(bytes, 1), b(bytes);
  for (auto _ : st) {
    std::memcpy(b.data(), a.data(), bytes);
    benchmark::ClobberMemory();
  }
  st.SetBytesProcessed(int64_t(st.iterations()) * int64_t(bytes));
}

void BM_Present2d(benchmark::State& st) {
  const uint32_t w = uint32_t(st.range(0)), h = uint32_t(st.range(1));
  Rig r;
  proto::ResourceCreate2d c{};
  c.hdr = proto::make_hdr(proto::Cmd::kResourceCreate2d);
  c.resource_id = 1;
  c.format = uint32_t(proto::Format::kB8G8R8X8);
  c.width = w;
  c.height = h;
  r.send(c);
  proto::ResourceAttachBacking a{};
  a.hdr = proto::make_hdr(proto::Cmd::kResourceAttachBacking);
  a.resource_id = 1;
  proto::MemEntry e{};
  e.length = w * h * 4;  // one contiguous entry: the copy itself is what is measured
  a.nr_entries = 1;
  r.send(a, std::span(reinterpret_cast<const uint8_t*>(&e), sizeof e));
  proto::SetScanout s{};
  s.hdr = proto::make_hdr(proto::Cmd::kSetScanout);
  s.resource_id = 1;
  s.r.width = w;
  s.r.height = h;
  r.send(s);
  proto::TransferToHost2d t{};
  t.hdr = proto::make_hdr(proto::Cmd::kTransferToHost2d);
  t.resource_id = 1;
  t.r.width = w;
  t.r.height = h;
  proto::ResourceFlush f{};
  f.hdr = proto::make_hdr(proto::Cmd::kResourceFlush);
  f.resource_id = 1;
  f.r.width = w;
  f.r.height = h;
  for (auto _ : st) {
    r.send(t);
    r.send(f);
  }
  if (r.frames != uint64_t(st.iterations())) st.SkipWithError("frames missing");
  st.SetBytesProcessed(int64_t(st.iterations()) * int64_t(w) * h * 4);
  st.counters["copied_per_frame"] = double(r.dev->stats().bytes_copied) / double(st.iterations());
}

void BM_PresentBlob(benchmark::State& st) {
  const uint32_t w = uint32_t(st.range(0)), h = uint32_t(st.range(1));
  Rig r;
  const uint64_t bytes = uint64_t(w) * h * 4;
  auto pages = r.pages(bytes);
  proto::ResourceCreateBlob b{};
  b.hdr = proto::make_hdr(proto::Cmd::kResourceCreateBlob);
  b.resource_id = 1;
  b.blob_mem = uint32_t(proto::BlobMem::kGuest);
  b.nr_entries = uint32_t(pages.size());
  b.size = bytes;
  r.send(b, std::span(reinterpret_cast<const uint8_t*>(pages.data()), pages.size() * sizeof pages[0]));
  proto::SetScanoutBlob s{};
  s.hdr = proto::make_hdr(proto::Cmd::kSetScanoutBlob);
  s.resource_id = 1;
  s.width = w;
  s.height = h;
  s.format = uint32_t(proto::Format::kB8G8R8X8);
  s.strides[0] = w * 4;
  s.r.width = w;
  s.r.height = h;
  r.send(s);
  proto::ResourceFlush f{};
  f.hdr = proto::make_hdr(proto::Cmd::kResourceFlush);
  f.resource_id = 1;
  f.r.width = w;
  f.r.height = h;
  r.send(f);  // builds the consumer's view once
  for (auto _ : st) r.send(f);
  if (r.frames != uint64_t(st.iterations()) + 1) st.SkipWithError("frames missing");
  st.SetBytesProcessed(int64_t(st.iterations()) * int64_t(bytes));
  st.counters["copied_per_frame"] = double(r.dev->stats().bytes_copied) / double(st.iterations());
}

void BM_BlobViewBuild(benchmark::State& st) {
  const uint64_t bytes = uint64_t(st.range(0)) * st.range(1) * 4;
  Rig r;
  std::vector<buffers::FilePiece> pieces;
  auto ranges = r.mem.file_ranges(0, 1);
  const int fd = (*ranges)[0].fd;
  for (auto& e : r.pages(bytes)) pieces.push_back({fd, e.addr.get(), e.length.get()});
  for (auto _ : st) {
    auto m = buffers::map_scattered(pieces, buffers::Access::kRead);
    if (!m.ok()) st.SkipWithError("map failed");
    benchmark::DoNotOptimize(m->data());
  }
}

void BM_FenceRetire(benchmark::State& st) {
  Rig r;
  proto::ResourceCreate2d c{};
  c.hdr = proto::make_hdr(proto::Cmd::kResourceCreate2d);
  c.resource_id = 1;
  c.format = uint32_t(proto::Format::kB8G8R8X8);
  c.width = 64;
  c.height = 64;
  r.send(c);
  proto::SetScanout s{};
  s.hdr = proto::make_hdr(proto::Cmd::kSetScanout);
  s.resource_id = 1;
  s.r.width = 64;
  s.r.height = 64;
  r.send(s);
  proto::ResourceFlush f{};
  f.hdr = proto::make_hdr(proto::Cmd::kResourceFlush, proto::kFlagFence);
  f.resource_id = 1;
  f.r.width = 64;
  f.r.height = 64;
  uint64_t fence = 0;
  for (auto _ : st) {
    f.hdr.fence_id = ++fence;
    const uint64_t before = r.answered;
    r.send(f);
    if (r.answered != before + 1) r.dev->process_releases();
  }
  if (r.dev->stats().fences_retired != uint64_t(st.iterations())) st.SkipWithError("fences missing");
}

void sizes(benchmark::internal::Benchmark* b) {
  for (auto s : kSizes) b->Args({s.w, s.h});
}

BENCHMARK(BM_Memcpy)->Apply(sizes)->UseRealTime();
BENCHMARK(BM_Present2d)->Apply(sizes)->UseRealTime();
BENCHMARK(BM_PresentBlob)->Apply(sizes)->UseRealTime();
BENCHMARK(BM_BlobViewBuild)->Apply(sizes)->UseRealTime();
BENCHMARK(BM_FenceRetire)->UseRealTime();

[[maybe_unused]] const bool kRatios = [] {
  for (auto s : kSizes) {
    const std::string a = std::to_string(s.w) + "/" + std::to_string(s.h) + "/real_time";
    canopy::bench::add_ratio({"present 2D / memcpy " + std::to_string(s.w) + "x" + std::to_string(s.h),
                              "BM_Present2d/" + a, "BM_Memcpy/" + a, "time"});
    canopy::bench::add_ratio({"present blob / memcpy " + std::to_string(s.w) + "x" + std::to_string(s.h),
                              "BM_PresentBlob/" + a, "BM_Memcpy/" + a, "time"});
  }
  return true;
}();

}  // namespace

CANOPY_BENCH_MAIN();
