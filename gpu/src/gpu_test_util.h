// Test harness for the device model: guest RAM in a memfd at GPA 0, a headless output, and helpers
// that build commands and collect responses (immediate or fenced).
#pragma once

#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <map>
#include <vector>

#include "canopy/gpu/device.h"

namespace canopy::gpu::testing {

using proto::make_hdr;

struct Harness {
  static constexpr uint64_t kRam = 32 << 20;
  transport::GuestMemory mem;
  HeadlessOutput out;
  std::unique_ptr<GpuDevice> dev;
  std::map<uint64_t, std::vector<uint8_t>> responses;  // by token
  std::vector<uint64_t> order;                         // tokens in response order
  uint64_t next = 1;

  // output: where frames go instead of `out` (nullptr: `out`).
  explicit Harness(GpuOptions o = {}, HeadlessOutput::Options ho = {}, std::unique_ptr<Renderer> renderer = nullptr,
                   ScanoutOutput* output = nullptr)
      : out(ho) {
    UniqueFd fd(memfd_create("gpu-test-ram", MFD_CLOEXEC));
    EXPECT_EQ(ftruncate(fd.get(), off_t(kRam)), 0);
    EXPECT_TRUE(mem.add_region({0, kRam, 0, 0}, std::move(fd)).ok());
    if (!renderer) renderer = make_2d_renderer();
    auto d = GpuDevice::create(std::move(o), std::move(renderer), output ? output : &out,
                               [this](uint64_t t, std::span<const uint8_t> b) {
                                 responses[t].assign(b.begin(), b.end());
                                 order.push_back(t);
                               });
    EXPECT_TRUE(d.ok());
    dev = std::move(*d);
    dev->set_memory(&mem);
    dev->set_acked_features(dev->offered_features());
  }

  // Sends a command; returns its token.
  template <typename T>
  uint64_t send(const T& body, std::span<const uint8_t> tail = {}) {
    std::vector<uint8_t> req(sizeof(T) + tail.size());
    std::memcpy(req.data(), &body, sizeof(T));
    if (!tail.empty()) std::memcpy(req.data() + sizeof(T), tail.data(), tail.size());
    return send_bytes(req);
  }
  uint64_t send_bytes(std::span<const uint8_t> req) {
    const uint64_t t = next++;
    dev->control(t, req, 4096);
    return t;
  }
  bool answered(uint64_t t) const { return responses.count(t) != 0; }
  proto::CtrlHdr response(uint64_t t) const {
    proto::CtrlHdr h{};
    auto it = responses.find(t);
    if (it != responses.end() && it->second.size() >= sizeof h) std::memcpy(&h, it->second.data(), sizeof h);
    return h;
  }
  // Sends a command and returns the response type (0 when not answered yet).
  template <typename T>
  uint32_t call(const T& body, std::span<const uint8_t> tail = {}) {
    return response(send(body, tail)).type.get();
  }

  // Helpers for common sequences.
  uint32_t create_2d(uint32_t id, uint32_t w, uint32_t h, proto::Format f = proto::Format::kB8G8R8X8) {
    proto::ResourceCreate2d c{};
    c.hdr = make_hdr(proto::Cmd::kResourceCreate2d);
    c.resource_id = id;
    c.format = uint32_t(f);
    c.width = w;
    c.height = h;
    return call(c);
  }
  uint32_t attach(uint32_t id, const std::vector<proto::MemEntry>& entries) {
    proto::ResourceAttachBacking a{};
    a.hdr = make_hdr(proto::Cmd::kResourceAttachBacking);
    a.resource_id = id;
    a.nr_entries = uint32_t(entries.size());
    return call(a,
                std::span(reinterpret_cast<const uint8_t*>(entries.data()), entries.size() * sizeof(proto::MemEntry)));
  }
  static proto::MemEntry entry(uint64_t addr, uint32_t len) {
    proto::MemEntry e{};
    e.addr = addr;
    e.length = len;
    return e;
  }
  uint32_t set_scanout(uint32_t scanout, uint32_t id, uint32_t w, uint32_t h) {
    proto::SetScanout s{};
    s.hdr = make_hdr(proto::Cmd::kSetScanout);
    s.scanout_id = scanout;
    s.resource_id = id;
    s.r.width = w;
    s.r.height = h;
    return call(s);
  }
  uint32_t transfer(uint32_t id, uint32_t w, uint32_t h, uint64_t offset = 0, uint32_t x = 0, uint32_t y = 0) {
    proto::TransferToHost2d t{};
    t.hdr = make_hdr(proto::Cmd::kTransferToHost2d);
    t.resource_id = id;
    t.r.x = x;
    t.r.y = y;
    t.r.width = w;
    t.r.height = h;
    t.offset = offset;
    return call(t);
  }
  proto::ResourceFlush flush_cmd(uint32_t id, uint32_t w, uint32_t h, uint32_t flags = 0, uint64_t fence = 0,
                                 uint32_t ctx = 0, uint8_t ring = 0) {
    proto::ResourceFlush f{};
    f.hdr = make_hdr(proto::Cmd::kResourceFlush, flags, fence, ctx, ring);
    f.resource_id = id;
    f.r.width = w;
    f.r.height = h;
    return f;
  }
  void fill_ram(uint64_t gpa, uint64_t len, uint32_t pixel) {
    std::vector<uint32_t> px(len / 4, pixel);
    ASSERT_TRUE(mem.write(gpa, px.data(), px.size() * 4).ok());
  }
};

}  // namespace canopy::gpu::testing
